"""The LASNet mask generator: one execute/skip decision per SxS output patch.

A masker looks at the block input, pools it onto the coarse grid of exact SxS output patches
(the last row/column clipped when S does not divide the output size), turns each cell into two
logits (index 0 = execute, 1 = skip) with a 1x1 conv, and decides:

* training: hard Gumbel-softmax at temperature ``tau`` with a straight-through gradient;
* eval: ``execute >= skip`` (ties execute), no noise.

In eval on CUDA, without autograd, one fused Triton kernel (``ops.triton.masker``) computes the
same decision from the input directly; ``logits`` stays the PyTorch reference.

The module is named ``masker`` inside a block and its conv ``conv2``, so LASNet checkpoints
(``layerX.i.masker.conv2.{weight,bias}``) load 1:1.
"""
import importlib.util
import math
from contextlib import contextmanager

import torch
import torch.nn as nn
import torch.nn.functional as F
from mmengine.model import BaseModule


def coarse_grid_size(out_h, out_w, granularity):
    """Cells of the coarse grid covering an ``out_h x out_w`` map with SxS patches."""
    return math.ceil(out_h / granularity), math.ceil(out_w / granularity)


def upsample_mask(coarse, granularity, out_h, out_w):
    """Nearest upsampling of a coarse mask to exact SxS patches, clipped to ``out_h x out_w``."""
    mask = coarse.repeat_interleave(granularity, dim=2).repeat_interleave(granularity, dim=3)
    return mask[:, :, :out_h, :out_w]


def dilate_mask(mask, stride, in_h, in_w):
    """Positions of the conv1 output that a 3x3 conv2 (padding 1, ``stride``) reads for ``mask``.

    Output pixel (i, j) reads conv1 rows ``stride*i-1 .. stride*i+1``: place the mask at
    ``(stride*i, stride*j)`` on the ``in_h x in_w`` grid and max-dilate it by 3x3.
    """
    if stride > 1:
        placed = mask.new_zeros(mask.shape[0], mask.shape[1], in_h, in_w)
        placed[:, :, ::stride, ::stride] = mask
    else:
        placed = mask
    return F.max_pool2d(placed, kernel_size=3, stride=1, padding=1)


def random_coarse_mask(batch, h, w, rate, generator, device):
    """Exactly ``round(rate * h * w)`` active cells per image, at seeded random places."""
    cells = h * w
    active = int(round(rate * cells))
    scores = torch.rand(batch, cells, generator=generator)
    order = scores.argsort(dim=1)
    mask = torch.zeros(batch, cells)
    mask.scatter_(1, order[:, :active], 1.0)
    return mask.view(batch, 1, h, w).to(device)


class Masker(BaseModule):
    """Coarse spatial mask of one LAS bottleneck.

    Args:
        in_channels (int): Channels of the block input.
        granularity (int): Patch size S in output pixels.
        stride (int): Stride of the block (the input covers ``stride*S`` pixels per patch).
    """

    EXECUTE_BIAS = 5.0
    SKIP_BIAS = 0.0

    def __init__(self, in_channels, granularity, stride=1, init_cfg=None):
        super().__init__(init_cfg)
        if int(granularity) != granularity or granularity < 1:
            raise ValueError(f'granularity must be an integer >= 1, got {granularity!r}')
        self.granularity = int(granularity)
        self.stride = stride
        self.conv2 = nn.Conv2d(in_channels, 2, kernel_size=1, bias=True)
        self.pinned = None  # (rate, torch.Generator) while masks are pinned
        self._reset()

    def _reset(self):
        # PyTorch's default conv init (as LASNet, which skips maskers in its Kaiming loop);
        # the execute bias makes almost every patch execute at the start of training.
        self.conv2.reset_parameters()
        with torch.no_grad():
            self.conv2.bias.copy_(torch.tensor([self.EXECUTE_BIAS, self.SKIP_BIAS]))

    def init_weights(self):
        # Runs after the backbone's Kaiming init_cfg (and before any Pretrained load).
        self._reset()
        self._is_init = True

    def logits(self, x):
        """Execute/skip logits on the coarse grid, shape ``(B, 2, h, w)``."""
        window = self.stride * self.granularity
        if window > 1:
            x = F.avg_pool2d(x, window, window, ceil_mode=True)
        # The 1x1 conv to two channels as a matmul over channels: oneDNN's conv costs 0.36 ms
        # a call on 2 CPU cores for this 2 MMAC product (setup and weight reorders).
        weight = self.conv2.weight.view(2, -1)
        return (x.permute(0, 2, 3, 1) @ weight.t() + self.conv2.bias).permute(0, 3, 1, 2)

    def forward(self, x, out_h, out_w, tau=1.0):
        """Coarse mask ``(B, 1, h, w)`` in {0, 1} (float, differentiable in training)."""
        if self.pinned is not None:
            rate, generator = self.pinned
            h, w = coarse_grid_size(out_h, out_w, self.granularity)
            return random_coarse_mask(x.shape[0], h, w, rate, generator, x.device).to(x.dtype)
        if self._fused_eval(x):
            # Imported here so that installs without triton still import this module.
            from ...ops.triton.masker import masker_decision
            return masker_decision(x, self.conv2.weight, self.conv2.bias,
                                   self.stride * self.granularity)
        logits = self.logits(x)
        if self.training:
            return F.gumbel_softmax(logits, tau=tau, hard=True, dim=1)[:, :1]
        return (logits[:, :1] >= logits[:, 1:]).to(x.dtype)

    def _fused_eval(self, x):
        # Inference only (the kernel has no backward), on CUDA, in the kernel's dtypes.
        return (not self.training
                and not (torch.is_grad_enabled() and self.conv2.weight.requires_grad)
                and x.is_cuda and x.dtype in (torch.float16, torch.bfloat16, torch.float32)
                and importlib.util.find_spec('triton') is not None)

    @contextmanager
    def pin(self, rate, generator):
        """Replace the learned mask by seeded random masks at exactly ``rate``."""
        self.pinned = (rate, generator)
        try:
            yield
        finally:
            self.pinned = None
