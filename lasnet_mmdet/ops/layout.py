"""Channels-last feature maps back to the plain NCHW layout necks and heads expect.

PyTorch's copy from channels-last to NCHW walks one of the two sides with a stride of C or
H*W elements: 103 ms for a 1x256x200x304 fp32 map on 2 vCPUs, and about 35 us per stage
output on an H100. On the CPU, copying blocks of pixels whose source and destination both stay
in cache is 2-3x faster; on CUDA a Triton kernel transposes tiles in registers
(``triton/layout.py``).
"""
import torch

PIXELS_PER_BLOCK = 256  # 256 pixels x C channels: source and destination fit in L2


def to_nchw(t, fresh=False, use_triton=False):
    """``t`` (B, C, H, W) as a contiguous NCHW tensor: ``t`` itself when it already is one,
    unless ``fresh`` asks for a tensor that shares no memory with ``t``. ``use_triton``: CUDA
    channels-last tensors go through the Triton transpose (the caller's choice of backend;
    the kernel has no backward)."""
    if t.is_contiguous():
        return t.clone() if fresh else t
    if not t.is_contiguous(memory_format=torch.channels_last):
        return t.contiguous()
    if use_triton and t.is_cuda:
        from .triton.layout import cl_to_nchw
        return cl_to_nchw(t)
    if t.device.type != 'cpu':
        return t.contiguous()
    batch, channels, height, width = t.shape
    out = t.new_empty(t.shape)
    src = t.permute(0, 2, 3, 1).reshape(batch, height * width, channels)
    dst = out.view(batch, channels, height * width)
    for b in range(batch):
        for start in range(0, height * width, PIXELS_PER_BLOCK):
            stop = start + PIXELS_PER_BLOCK
            dst[b, :, start:stop].copy_(src[b, start:stop].t())
    return out
