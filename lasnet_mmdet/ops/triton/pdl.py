"""Programmatic dependent launch (PDL): the next kernel's launch overlaps this one's end.

Even inside a CUDA graph a dependent kernel on an H100 starts a microsecond or two after the
previous one ends, and a sparse ResNet-101 forward is some 180 small kernels. On Hopper and
later, a kernel launched with ``launch_pdl=True`` may be scheduled before the previous
kernel has completed; it must call ``gdc_wait`` (which returns once the previous kernel has
completed and its writes are visible) before it touches memory. Every Triton kernel here
starts with ``grid_dependency(PDL)``, before any load or store, so all memory accesses keep
the stream's order; a kernel after a non-Triton one (cuDNN, PyTorch) simply waits for it.

No kernel triggers its dependents early (``gdc_launch_dependents``): they launch as its
programs exit. Measured on an H100 (graphed LAS-R101 backbone, fp16, 800x1216, batch 1,
r = 0.5; ``LASNET_TRITON_PDL=0`` / ``1`` interleaved, two runs each): 2.15 / 2.14 ms without
PDL, 2.12 / 2.10 with it. With a trigger at each kernel's start batch 1 got slower, 2.20 ->
2.37 ms (batch 8: 8.71 / 8.70).

``use_pdl(device)``: on for CUDA devices of compute capability 9.0 or later, off in Triton's
interpreter and with ``LASNET_TRITON_PDL=0`` (read once per process).
"""
import functools
import os

import torch
import triton
import triton.language as tl


@triton.jit
def grid_dependency(PDL: tl.constexpr):
    """Wait for the previous kernel (its writes visible). The next kernel launches as this
    one's programs exit (no early trigger)."""
    if PDL:
        tl.extra.cuda.gdc_wait()


def use_pdl(device):
    """Whether kernels on ``device`` launch with PDL (pass it as ``PDL=`` and ``launch_pdl=``)."""
    device = torch.device(device)
    if device.type != 'cuda':
        return False
    return _supported(device.index if device.index is not None
                      else torch.cuda.current_device())


@functools.lru_cache(maxsize=None)
def _supported(index):
    if os.environ.get('TRITON_INTERPRET', '0') not in ('', '0'):
        return False
    if os.environ.get('LASNET_TRITON_PDL', '1') == '0':
        return False
    return torch.cuda.get_device_capability(index)[0] >= 9
