"""Geometry of a LAS bottleneck's mask, shared by the backbone, the sparse ops and the
latency predictor (one definition, so that the three cannot drift apart).

A block with stride ``s`` and patch size ``S`` maps an ``H x W`` input to an
``conv_out(H, s) x conv_out(W, s)`` output; its mask has one cell per ``S x S`` output patch
(the last row/column clipped when S does not divide the size). conv2 (3x3, padding 1, stride s)
reads, for output pixel (i, j), conv1 outputs ``s*i-1 .. s*i+1``: the *dilated* mask says
which conv1 outputs an output mask needs.
"""
import math

import torch.nn.functional as F


def conv_out(size, stride):
    """Output size of the block's 3x3 (padding 1) or 1x1 conv at ``stride``."""
    return (size - 1) // stride + 1


def coarse_grid_size(out_h, out_w, granularity):
    """Cells of the coarse grid covering an ``out_h x out_w`` map with SxS patches."""
    return math.ceil(out_h / granularity), math.ceil(out_w / granularity)


def upsample_mask(coarse, granularity, out_h, out_w):
    """Nearest upsampling of a coarse mask to exact SxS patches, clipped to ``out_h x out_w``."""
    mask = coarse.repeat_interleave(granularity, dim=2).repeat_interleave(granularity, dim=3)
    return mask[:, :, :out_h, :out_w]


def dilate_mask(mask, stride, in_h, in_w):
    """Positions of the conv1 output that a 3x3 conv2 (padding 1, ``stride``) reads for ``mask``.

    Place the mask at ``(stride*i, stride*j)`` on the ``in_h x in_w`` grid and max-dilate 3x3.
    """
    if stride > 1:
        placed = mask.new_zeros(mask.shape[0], mask.shape[1], in_h, in_w)
        placed[:, :, ::stride, ::stride] = mask
    else:
        placed = mask
    return F.max_pool2d(placed, kernel_size=3, stride=1, padding=1)


def coarse_shape(batch, in_h, in_w, stride, granularity):
    """Shape ``(B, 1, h, w)`` of a block's coarse mask for an ``in_h x in_w`` input."""
    out_h, out_w = conv_out(in_h, stride), conv_out(in_w, stride)
    return (batch, 1, *coarse_grid_size(out_h, out_w, granularity))
