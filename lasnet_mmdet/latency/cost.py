"""Predicted latency as a differentiable training cost.

Each block's predicted latency is tabulated over r in [0, 1] at the training input size and
interpolated linearly, so the cost is piecewise linear in the block's activation rate and its
gradient reaches the masker through the straight-through Gumbel mask, just like the MACs cost.
The tables are cached per input size (padded batches take only a few distinct sizes).

    cost = LatencyCost('h100')
    ratio = cost.ratio(backbone)   # predicted latency of the last forward / static latency
"""
import torch

from .hardware import load_profile
from .predictor import (BlockShape, get_schedule, kernels_time, las_kernels,
                        predict_static_block, stem_kernels)


def piecewise_linear(x, ys):
    """Linear interpolation of ``ys`` (values at ``x = 0, 1/n, ..., 1``) at tensor ``x``."""
    n = ys.numel() - 1
    pos = x.clamp(0, 1) * n
    idx = pos.detach().floor().clamp(max=n - 1).long()
    frac = pos - idx
    return ys[idx] * (1 - frac) + ys[idx + 1] * frac


class LatencyCost:
    """Per-block piecewise-linear latency tables of a LAS backbone on one hardware profile.

    Args:
        profile: preset name, JSON path or ``HardwareProfile``.
        schedule: schedule name or ``Schedule`` (default: the profile's backend).
        dtype: precision to predict (default: the profile's).
        knots (int): segments of each table over r in [0, 1].
    """

    def __init__(self, profile, schedule=None, dtype=None, knots=20):
        self.profile = load_profile(profile)
        self.schedule = get_schedule(schedule, self.profile)
        self.dtype = dtype or self.profile.dtype
        self.knots = int(knots)
        self._tables = {}

    def _block_shapes(self, backbone, in_h, in_w, batch):
        for name, block, (h, w) in backbone.block_input_sizes(in_h, in_w):
            yield name, block.granularity, BlockShape.of_block(block, h, w, batch)

    def tables(self, backbone, in_h, in_w, batch=1):
        """``((las_stem_s, static_stem_s), {name: (static_s, tensor of knots+1 latencies)})``
        at an input size. The static reference is the best dense network a practitioner
        would deploy (channels-last, BN folded, fused epilogues: ``static_kernels(deployed=
        True)``), so a cost ratio means what the benchmark's ratio against the fastest dense
        baseline means; both stems have their BN folded."""
        key = (id(backbone), in_h, in_w, batch)
        if key not in self._tables:
            p, dt = self.profile, self.dtype
            rates = [i / self.knots for i in range(self.knots + 1)]
            blocks = {}
            for name, S, shape in self._block_shapes(backbone, in_h, in_w, batch):
                # Continuous patch counts: the quantisation to whole patches is not useful
                # to the gradient.
                lat = [kernels_time(las_kernels(shape, S, r, self.schedule, dt, exact=False),
                                    p, dt) for r in rates]
                blocks[name] = (predict_static_block(shape, p, dt, deployed=True),
                                torch.tensor(lat, dtype=torch.float64))
            stem = tuple(kernels_time(stem_kernels(in_h, in_w, batch, dt, folded=True,
                                                   fused_pool=fused), p, dt)
                         for fused in (self.schedule.stem_pool_fused, False))
            self._tables[key] = (stem, blocks)
        return self._tables[key]

    def __call__(self, backbone, batch=1):
        """``(predicted_s, static_s)`` of the backbone's last forward; the first has grad."""
        stats = backbone.las_stats
        (predicted, static), tables = self.tables(backbone, *backbone.input_size, batch)
        for name, block in stats['blocks'].items():
            block_static, table = tables[name]
            rate = block['rate']
            if not torch.is_tensor(rate):
                rate = torch.tensor(float(rate))
            predicted = predicted + piecewise_linear(rate, table.to(rate.device)).to(rate.dtype)
            static += block_static
        return predicted, static

    def ratio(self, backbone):
        """Predicted latency of the last forward over the static backbone's (differentiable)."""
        predicted, static = self(backbone)
        return predicted / static
