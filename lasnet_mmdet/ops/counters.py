"""Zeroed row counters for the Triton blocks of one forward, from a single memset.

Each sparse Triton block needs three zeroed int32 counters (``compact_rows`` appends its row
lists with atomic adds). A fresh ``torch.zeros(3)`` per block is one fill kernel each: 33 of
them per ResNet-101 forward, each with its launch (or graph node) and host call. Inside
``counters_for(n, device)`` the blocks take consecutive slices of one zeroed tensor instead;
outside it (an op called on its own), or once the slices run out, each request gets its own
``torch.zeros``.
"""
import threading
from contextlib import contextmanager

import torch

_current = threading.local()


@contextmanager
def counters_for(n, device):
    """One zeroed int32 tensor of ``n`` counters, handed out by ``zeroed_counters``."""
    previous = getattr(_current, 'pool', None)
    _current.pool = [torch.zeros(n, dtype=torch.int32, device=device), 0]
    try:
        yield
    finally:
        _current.pool = previous


def zeroed_counters(n, device):
    """``n`` zeroed int32 counters on ``device``: the next slice of the current pool, or fresh."""
    pool = getattr(_current, 'pool', None)
    if pool is None or pool[1] + n > pool[0].numel() or pool[0].device != device:
        return torch.zeros(n, dtype=torch.int32, device=device)
    start = pool[1]
    pool[1] = start + n
    return pool[0][start:start + n]
