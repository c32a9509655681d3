"""Which pixels a sparse LAS bottleneck touches, as flat row indices of channels-last maps.

A feature map ``(B, C, H, W)`` in channels-last memory is a ``(B*H*W, C)`` matrix; every sparse
step is a GEMM on some of its rows. From the coarse mask:

* ``active``: output pixels inside active SxS patches (conv2, conv3, the scatter);
* ``needed``: conv1 outputs that conv2 reads for them (the 3x3, stride-s receptive field:
  output (i, j) reads rows ``s*i-1 .. s*i+1``), i.e. the dilated mask; no halo is computed twice;
* ``taps``: for each active output pixel, the rows of its nine conv2 inputs in conv1's map
  stored with a zero border (``(B, H+2, W+2)`` rows, ``padded_rows``): taps outside the image
  read the border, zero padding exactly as the dense conv, which pads conv1's *output*. A tap
  is its centre row plus a fixed offset, no bounds checks (with an unpadded map and a zero row
  the checks made the tap lists 6 ms of a 200x304 block on 2 CPU cores; now 0.3 ms).
"""
import torch

from .geometry import conv_out, dilate_mask, upsample_mask


def pixel_masks(coarse, granularity, stride, in_h, in_w):
    """Boolean ``(B, H_o, W_o)`` active mask and ``(B, H, W)`` needed (dilated) mask."""
    out_h, out_w = conv_out(in_h, stride), conv_out(in_w, stride)
    active = upsample_mask(coarse, granularity, out_h, out_w)
    needed = dilate_mask(active, stride, in_h, in_w)
    return active[:, 0] > 0, needed[:, 0] > 0


def padded_rows(rows, height, width):
    """Rows ``b*H*W + y*W + x`` of an ``H x W`` map as rows of the same map with a one-pixel
    zero border, ``(b*(H+2) + y+1) * (W+2) + x+1`` (= rows + 2*(rows // W) + W + 3 + b*(2W+4))."""
    image_rows = rows // width  # b*H + y
    out = rows + 2 * image_rows + (width + 3)
    return out.add_((image_rows // height) * (2 * width + 4))


def conv2_taps(active_rows, out_h, out_w, in_h, in_w, stride):
    """``(N, 9)`` rows of each active output's conv2 inputs in the zero-bordered conv1 map."""
    image_rows = active_rows // out_w  # b*H_o + y_o
    ox = active_rows - image_rows * out_w
    b = image_rows // out_h
    iy = (image_rows - b * out_h) * stride + 1
    centre = (b * (in_h + 2) + iy) * (in_w + 2) + ox * stride + 1
    offs = torch.arange(-1, 2, device=active_rows.device)
    offs = (offs[:, None] * (in_w + 2) + offs).flatten()  # (dy, dx) order, as the weight's K
    return centre[:, None] + offs
