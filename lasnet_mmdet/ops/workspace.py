"""Buffers the PyTorch backend reuses from block to block (and call to call).

On CPUs a fresh tensor of tens of MiB is served by a fresh ``mmap`` whose pages fault in on
first touch; on a virtual machine that costs as much as the copy itself (a 35 MiB row gather:
7.8 ms into a fresh tensor, 1.1 ms into an existing one, 2 vCPUs). A backbone's blocks all
need the same kinds of intermediates (conv1 map, gathered rows, im2col columns), so one
buffer per kind, grown to the largest request, serves every block.

Block outputs alternate between two more buffers (``output``): a block's output is read by the
next block only, which writes the other one (or, an identity block, updates it in place).
Whoever holds a workspace output longer (a stage
output) copies it before the second next block runs: ``LASResNet`` converts each stage output
to a fresh NCHW tensor as soon as the stage ends.

``LASResNet`` owns one ``Workspace`` and makes it current for its forward; without a current
workspace (an op called on its own) every request is a fresh tensor.
"""
import math
import threading
from contextlib import contextmanager

import torch

_current = threading.local()


class Workspace:
    """Named flat buffers, grown on demand; ``get`` returns views of them."""

    def __init__(self):
        self._buffers = {}
        self._last_output = 1

    def get(self, name, shape, dtype, device):
        numel = math.prod(shape)
        buf = self._buffers.get(name)
        if buf is None or buf.numel() < numel or buf.dtype != dtype or buf.device != device:
            buf = torch.empty(numel, dtype=dtype, device=device)
            self._buffers[name] = buf
        return buf[:numel].view(shape)

    def output(self, shape, dtype, device):
        """A channels-last ``(B, C, H, W)`` view of the output buffer the last call did not
        return."""
        self._last_output = 1 - self._last_output
        batch, channels, height, width = shape
        buf = self.get(f'output{self._last_output}', (batch, height, width, channels), dtype,
                       device)
        return buf.permute(0, 3, 1, 2)

    def owns_output(self, t):
        """Whether ``t`` is a view returned by ``output`` (a block output of this workspace)."""
        return any(t.data_ptr() == buf.data_ptr() for name, buf in self._buffers.items()
                   if name.startswith('output'))

    def release(self):
        """Free every buffer (they are allocated again when next needed)."""
        self._buffers.clear()

    @property
    def nbytes(self):
        return sum(b.numel() * b.element_size() for b in self._buffers.values())


@contextmanager
def use_workspace(workspace):
    """Make ``workspace`` the current one of this thread for the duration."""
    previous = getattr(_current, 'workspace', None)
    _current.workspace = workspace
    try:
        yield workspace
    finally:
        _current.workspace = previous


def scratch(name, shape, dtype, device):
    """A buffer of the current workspace, or a fresh tensor when none is current."""
    workspace = getattr(_current, 'workspace', None)
    if workspace is None:
        return torch.empty(shape, dtype=dtype, device=device)
    return workspace.get(name, shape, dtype, device)


def is_block_output(t):
    """Whether ``t`` is a block output held by the current workspace."""
    workspace = getattr(_current, 'workspace', None)
    return workspace is not None and workspace.owns_output(t)


def block_output(shape, dtype, device):
    """A channels-last block output: the current workspace's next output buffer, or fresh."""
    workspace = getattr(_current, 'workspace', None)
    if workspace is None:
        return torch.empty(shape, dtype=dtype, device=device,
                           memory_format=torch.channels_last)
    return workspace.output(shape, dtype, device)
