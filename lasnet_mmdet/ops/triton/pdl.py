"""Programmatic dependent launch (PDL): the next kernel starts before this one ends.

Even inside a CUDA graph a dependent kernel on an H100 starts about 2 us after the previous
one ends, and a sparse ResNet-101 forward is some 180 small kernels: the gaps cost a tenth
of it at batch 1. On Hopper and later, a kernel launched with ``launch_pdl=True`` may be
scheduled once every program of the previous kernel has called ``gdc_launch_dependents``;
it must call ``gdc_wait`` (which returns when the previous kernel has completed and its
writes are visible) before it touches memory that kernel may write or read. Every Triton
kernel here starts with ``grid_dependency(PDL)``: wait, then let the next one launch. Work
before the wait is only index arithmetic, so the order of all memory accesses is exactly
the stream's, and a kernel after a non-Triton one (cuDNN, PyTorch) just waits for it.

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
    """Wait for the previous kernel (its writes visible), then let the next one launch."""
    if PDL:
        tl.extra.cuda.gdc_wait()
        tl.extra.cuda.gdc_launch_dependents()


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
