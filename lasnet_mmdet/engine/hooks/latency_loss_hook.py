"""Adds LASNet's cost loss to the detector's losses and schedules the Gumbel temperature.

``loss_latency = weight * (dynamic_cost / dense_cost - target) ** 2`` joins the dict the
detector's ``loss()`` returns (through a forward hook on the detector, so any detector works
unchanged), hence it is summed with the detection losses, back-propagated through the
straight-through masks and logged, next to ``las_act_rate`` and ``las_cost_ratio``.
Under DDP the cost ratio is the mean over ranks, so the loss equals the one a single process
would compute on the whole batch (and its gradient too, after DDP's averaging).
"""
import math

import torch
from mmengine import dist
from mmengine.hooks import Hook
from mmdet.registry import HOOKS

from .utils import las_backbone, unwrap

COSTS = ('macs', 'latency')


def mean_over_ranks(value):
    """Mean of ``value`` over ranks whose gradient w.r.t. the local value is 1.

    DDP averages gradients over ranks, so a unit local gradient gives, after averaging,
    exactly the gradient of a single process computing the loss on the whole batch.
    """
    if dist.get_world_size() == 1:
        return value
    total = value.detach().clone()
    dist.all_reduce(total, op='mean')
    return value - value.detach() + total


@HOOKS.register_module()
class LatencyLossHook(Hook):
    """Cost loss and temperature schedule of a LAS backbone.

    Args:
        target (float): Target cost ratio t in (0, 1] (the paper: 0.5 Faster R-CNN/RetinaNet,
            0.4 Mask R-CNN).
        weight (float): Loss weight (the paper: 1.0).
        tau (float): Gumbel temperature; constant unless ``tau_end`` is given.
        tau_end (float, optional): If given, tau decays exponentially from ``tau`` at the first
            iteration to ``tau_end`` at the last one.
        cost (str): What the ratio measures: 'macs' (backbone multiply-accumulates) or
            'latency' (predicted backbone latency on ``profile`` over the static backbone's,
            piecewise linear in each block's rate at the training input size; logged as
            ``las_latency_ms``).
        profile (str | dict, optional): Hardware for ``cost='latency'``: a preset name
            ('v100', 'a100', 'h100', 'rtx3090', 'tx2') or a calibrated profile JSON path.
        schedule (str, optional): Sparse schedule for ``cost='latency'`` (default: the
            profile's; see ``lasnet_mmdet.latency.predictor.SCHEDULES``).
    """

    priority = 'NORMAL'

    def __init__(self, target=0.5, weight=1.0, tau=0.1, tau_end=None, cost='macs',
                 profile=None, schedule=None):
        if not 0 < target <= 1:
            raise ValueError(f'target must be in (0, 1], got {target!r}')
        if not weight >= 0:
            raise ValueError(f'weight must be >= 0, got {weight!r}')
        for name, value in (('tau', tau), ('tau_end', tau_end)):
            if value is not None and not value > 0:
                raise ValueError(f'{name} must be > 0, got {value!r}')
        if cost not in COSTS:
            raise ValueError(f'cost must be one of {COSTS}, got {cost!r}')
        self._latency = None
        if cost == 'latency':
            if profile is None:
                raise ValueError("cost='latency' needs profile= (a preset name or a JSON path)")
            from ...latency import LatencyCost
            self._latency = LatencyCost(profile, schedule)  # fails early on a bad profile
        elif profile is not None or schedule is not None:
            raise ValueError(f"profile/schedule are used only with cost='latency', not {cost!r}")
        self.target = float(target)
        self.weight = float(weight)
        self.tau = float(tau)
        self.tau_end = None if tau_end is None else float(tau_end)
        self.cost = cost
        self._handle = None

    def tau_at(self, progress):
        """Temperature at ``progress`` in [0, 1] of the run."""
        if self.tau_end is None:
            return self.tau
        return self.tau * math.exp(progress * math.log(self.tau_end / self.tau))

    def before_run(self, runner):
        backbone = las_backbone(runner.model, type(self).__name__)
        backbone.cost_loss_attached = True
        self._backbone = backbone
        self._handle = unwrap(runner.model).register_forward_hook(
            self._add_cost_loss, with_kwargs=True)

    def after_run(self, runner):
        if self._handle is not None:
            self._handle.remove()
            self._handle = None

    def before_train_iter(self, runner, batch_idx, data_batch=None):
        progress = runner.iter / max(runner.max_iters - 1, 1)
        self._backbone.tau = self.tau_at(min(progress, 1.0))

    def cost_ratio(self, backbone):
        """dynamic / dense cost of the last forward (a tensor with gradient)."""
        if self._latency is not None:
            predicted, static = self._latency(backbone)
            self._latency_ms = predicted.detach().float() * 1e3
            return (predicted / static).float()
        stats = backbone.las_stats
        return stats['macs_dynamic'] / stats['macs_dense']

    def _add_cost_loss(self, module, args, kwargs, output):
        if kwargs.get('mode') != 'loss' or not module.training:
            return output
        backbone = self._backbone
        ratio = mean_over_ranks(self.cost_ratio(backbone))
        if not torch.is_tensor(ratio):
            ratio = torch.tensor(float(ratio))
        output['loss_latency'] = self.weight * (ratio - self.target)**2
        rates = torch.stack([stats['rate'].detach()
                             for stats in backbone.las_stats['blocks'].values()])
        output['las_act_rate'] = mean_over_ranks(rates.mean())
        output['las_cost_ratio'] = ratio.detach()
        if self._latency is not None:
            output['las_latency_ms'] = mean_over_ranks(self._latency_ms)
        return output
