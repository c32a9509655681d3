"""The LASNet mask generator: one execute/skip decision per SxS output patch.

A masker looks at the block input, pools it onto the coarse grid of exact SxS output patches
(the last row/column clipped when S does not divide the output size), turns each cell into two
logits (index 0 = execute, 1 = skip) with a 1x1 conv, and decides:

* training: hard Gumbel-softmax at temperature ``tau`` with a straight-through gradient; the
  Gumbel noise can be scaled down (``noise`` < 1, scheduled by ``LatencyLossHook``) so that the
  sampled masks approach the deterministic eval decision by the end of training;
* eval: ``execute >= skip`` (ties execute), no noise.

In eval, when the block runs the Triton backend, one fused Triton kernel
(``ops.triton.masker``) computes the same decision from the input directly; ``logits`` stays
the PyTorch reference.

The module is named ``masker`` inside a block and its conv ``conv2``, so LASNet checkpoints
(``layerX.i.masker.conv2.{weight,bias}``) load 1:1.
"""
import math
from contextlib import contextmanager

import torch
import torch.nn as nn
import torch.nn.functional as F
from mmengine.model import BaseModule

from ...ops.geometry import coarse_grid_size, dilate_mask, upsample_mask  # noqa: F401


def random_coarse_mask(batch, h, w, rate, generator, device):
    """Exactly ``round(rate * h * w)`` active cells per image, at seeded random places."""
    cells = h * w
    active = int(round(rate * cells))
    scores = torch.rand(batch, cells, generator=generator)
    order = scores.argsort(dim=1)
    mask = torch.zeros(batch, cells)
    mask.scatter_(1, order[:, :active], 1.0)
    return mask.view(batch, 1, h, w).to(device)


def gumbel_execute(logits, tau=1.0, noise=1.0):
    """Hard execute decision ``(B, 1, h, w)`` from ``(B, 2, h, w)`` logits, straight-through.

    ``F.gumbel_softmax(logits, tau, hard=True)[:, :1]`` with its Gumbel noise scaled by
    ``noise``: 1 samples execute with probability ``softmax(logits)[0]`` (LASNet), 0 is the
    eval decision ``execute >= skip`` with the same tempered-softmax gradient.
    """
    if noise == 1.0:
        return F.gumbel_softmax(logits, tau=tau, hard=True, dim=1)[:, :1]
    gumbels = -torch.empty_like(logits).exponential_().log()
    soft = ((logits + noise * gumbels) / tau).softmax(dim=1)[:, :1]
    hard = (soft >= 0.5).to(soft.dtype)  # ties execute, as in eval
    return hard - soft.detach() + soft


class MaskPin:
    """Masks that replace a masker's decision: fixed, or seeded random at exactly ``rate``.

    Random masks are drawn once per (batch, grid) shape on the host and then kept on the
    device, so a pinned forward does no host work (and stays capturable in a CUDA graph).
    """

    def __init__(self, rate=None, generator=None, mask=None, run_masker=False):
        self.rate, self.generator, self.mask = rate, generator, mask
        self.run_masker = run_masker
        self._drawn = {}

    def __call__(self, shape, device, dtype):
        if self.mask is not None:
            if tuple(self.mask.shape) != tuple(shape):
                raise ValueError(f'pinned mask has shape {tuple(self.mask.shape)}, the block '
                                 f'needs {tuple(shape)} for this input')
            return self.mask.to(device, dtype)
        key = (tuple(shape), device, dtype)
        if key not in self._drawn:
            batch, _, h, w = shape
            self._drawn[key] = random_coarse_mask(batch, h, w, self.rate, self.generator,
                                                  device).to(dtype)
        return self._drawn[key]


class Masker(BaseModule):
    """Coarse spatial mask of one LAS bottleneck.

    Args:
        in_channels (int): Channels of the block input.
        granularity (int): Patch size S in output pixels.
        stride (int): Stride of the block (the input covers ``stride*S`` pixels per patch).
    """

    EXECUTE_BIAS = 5.0
    SKIP_BIAS = 0.0

    def __init__(self, in_channels, granularity, stride=1, execute_bias=EXECUTE_BIAS,
                 skip_bias=SKIP_BIAS, init_cfg=None):
        super().__init__(init_cfg)
        if isinstance(granularity, bool) or not isinstance(granularity, (int, float)) or \
                int(granularity) != granularity or granularity < 1:
            raise ValueError(f'granularity must be an integer >= 1, got {granularity!r}')
        for name, value in (('execute_bias', execute_bias), ('skip_bias', skip_bias)):
            if isinstance(value, bool) or not isinstance(value, (int, float)) \
                    or not math.isfinite(value):
                raise ValueError(f'masker {name} must be a finite number, got {value!r}')
        self.granularity = int(granularity)
        self.stride = stride
        self.execute_bias, self.skip_bias = float(execute_bias), float(skip_bias)
        self.conv2 = nn.Conv2d(in_channels, 2, kernel_size=1, bias=True)
        self.pin = None  # a MaskPin while masks are pinned
        self.use_triton = False  # eval decision by the fused kernel (set by the block)
        self._reset()

    def _reset(self):
        # PyTorch's default conv init (as LASNet, which skips maskers in its Kaiming loop);
        # the execute bias makes almost every patch execute at the start of training.
        self.conv2.reset_parameters()
        with torch.no_grad():
            self.conv2.bias.copy_(torch.tensor([self.execute_bias, self.skip_bias]))

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
        # In x's dtype: the sparse path runs in autocast's dtype with autocast off.
        weight, bias = self.conv2.weight.view(2, -1).to(x.dtype), self.conv2.bias.to(x.dtype)
        return (x.permute(0, 2, 3, 1) @ weight.t() + bias).permute(0, 3, 1, 2)

    def forward(self, x, out_h, out_w, tau=1.0, noise=1.0):
        """Coarse mask ``(B, 1, h, w)`` in {0, 1} (float, differentiable in training)."""
        if self.pin is not None:
            if self.pin.run_masker:
                self.decide(x, tau, noise)  # its cost is real (benchmarks), its decision unused
            h, w = coarse_grid_size(out_h, out_w, self.granularity)
            return self.pin((x.shape[0], 1, h, w), x.device, x.dtype)
        return self.decide(x, tau, noise)

    def decide(self, x, tau=1.0, noise=1.0):
        """The masker's own decision: hard Gumbel in training, ``execute >= skip`` in eval."""
        if self.use_triton and not self.training and not (
                torch.is_grad_enabled() and self.conv2.weight.requires_grad):
            # Imported here so that installs without triton still import this module.
            from ...ops.triton.masker import masker_decision
            return masker_decision(x, self.conv2.weight, self.conv2.bias,
                                   self.stride * self.granularity)
        logits = self.logits(x)
        if self.training:
            return gumbel_execute(logits, tau, noise)
        return (logits[:, :1] >= logits[:, 1:]).to(x.dtype)

    @contextmanager
    def pinned(self, pin):
        """Replace the decision by ``pin`` (a ``MaskPin``) for the duration."""
        self.pin = pin
        try:
            yield
        finally:
            self.pin = None
