"""Zeroed row counters and semaphores for the Triton blocks of one forward, from one memset.

Each sparse Triton block needs three zeroed int32 counters (``compact_rows`` appends its row
lists with atomic adds). A fresh ``torch.zeros(3)`` per block is one fill kernel each: 33 of
them per ResNet-101 forward, each with its launch (or graph node) and host call. Inside
``counters_for(n, device, semaphores)`` the blocks take consecutive slices of one zeroed tensor
instead; outside it (an op called on its own), or once the slices run out, each request gets
its own ``torch.zeros``.

The same tensor ends in ``semaphores`` int32 that every split-K launch (``conv3x3_rows``) may
use: each launch leaves its semaphores at zero again, and the launches of one forward run in
order on one stream, so they share that one region (``zeroed_semaphores``).
"""
import threading
from contextlib import contextmanager

import torch

_current = threading.local()
# A backbone forward's shared semaphores: enough for the split-K tiles of conv2 at few rows
# (R101 at 800x1216, batch 1, stage 3: 60 x 4 tiles of 64 x 64); a launch that needs more
# gets its own zeros.
SPLIT_K_SEMAPHORES = 4096


@contextmanager
def counters_for(n, device, semaphores=0):
    """One zeroed int32 tensor: ``n`` counters handed out by ``zeroed_counters``, then
    ``semaphores`` shared by ``zeroed_semaphores``."""
    previous = getattr(_current, 'pool', None)
    _current.pool = [torch.zeros(n + semaphores, dtype=torch.int32, device=device), 0, n]
    try:
        yield
    finally:
        _current.pool = previous


def zeroed_counters(n, device):
    """``n`` zeroed int32 counters on ``device``: the next slice of the current pool, or fresh."""
    pool = getattr(_current, 'pool', None)
    if pool is None or pool[1] + n > pool[2] or not _on(pool[0], device):
        return torch.zeros(n, dtype=torch.int32, device=device)
    start = pool[1]
    pool[1] = start + n
    return pool[0][start:start + n]


def zeroed_semaphores(n, device):
    """``n`` zeroed int32 semaphores on ``device`` that the caller's launch leaves at zero: the
    current pool's shared region, or fresh."""
    pool = getattr(_current, 'pool', None)
    if pool is None or pool[2] + n > pool[0].numel() or not _on(pool[0], device):
        return torch.zeros(n, dtype=torch.int32, device=device)
    return pool[0][pool[2]:pool[2] + n]


def _on(t, device):
    """Whether ``t`` is on ``device`` ('cuda' without an index: the current CUDA device)."""
    device = torch.device(device)
    if device.type == 'cuda' and device.index is None:
        device = torch.device('cuda', torch.cuda.current_device())
    return t.device == device
