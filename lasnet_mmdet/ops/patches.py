"""Which pixels a sparse LAS bottleneck touches, as flat row indices of channels-last maps.

A feature map ``(B, C, H, W)`` in channels-last memory is a ``(B*H*W, C)`` matrix; every sparse
step is a GEMM on some of its rows. From the coarse mask:

* ``active``: output pixels inside active SxS patches (conv2, conv3, the scatter);
* ``needed``: conv1 outputs that conv2 reads for them (the 3x3, stride-s receptive field:
  output (i, j) reads rows ``s*i-1 .. s*i+1``), i.e. the dilated mask; no halo is computed twice;
* ``taps``: for each active output pixel, the rows of its nine conv2 inputs, with rows outside
  the image pointing at an extra zero row (index ``B*H*W``): zero padding exactly as the dense
  conv, which pads conv1's *output*.
"""
import torch

from .geometry import conv_out, dilate_mask, upsample_mask


def pixel_masks(coarse, granularity, stride, in_h, in_w):
    """Boolean ``(B, H_o, W_o)`` active mask and ``(B, H, W)`` needed (dilated) mask."""
    out_h, out_w = conv_out(in_h, stride), conv_out(in_w, stride)
    active = upsample_mask(coarse, granularity, out_h, out_w)
    needed = dilate_mask(active, stride, in_h, in_w)
    return active[:, 0] > 0, needed[:, 0] > 0


def conv2_taps(active_rows, batch, out_h, out_w, in_h, in_w, stride):
    """``(N, 9)`` input rows of each active output row; ``batch*H*W`` (the zero row) outside."""
    hw = out_h * out_w
    b, rem = active_rows // hw, active_rows % hw
    oy, ox = rem // out_w, rem % out_w
    offs = torch.arange(-1, 2, device=active_rows.device)
    iy = (oy * stride)[:, None] + offs  # (N, 3)
    ix = (ox * stride)[:, None] + offs
    inside = ((iy >= 0) & (iy < in_h))[:, :, None] & ((ix >= 0) & (ix < in_w))[:, None, :]
    rows = (b * in_h * in_w)[:, None, None] + iy[:, :, None] * in_w + ix[:, None, :]
    return torch.where(inside, rows, batch * in_h * in_w).reshape(-1, 9)
