"""Adds LASNet's cost loss to the detector's losses and schedules the Gumbel temperature.

``loss_latency = weight * (dynamic_cost / dense_cost - target) ** 2`` joins the dict the
detector's ``loss()`` returns (through a forward hook on the detector, so any detector works
unchanged), hence it is summed with the detection losses, back-propagated through the
straight-through masks and logged, next to ``las_act_rate``, ``las_cost_ratio`` and the mean
rate of every stage (``las_act_rate_layer1`` ...).

Optionally (``bounds=dict(...)``) LASNet's ImageNet criterion joins it as
``loss_latency_bounds``: every block's activation rate must lie in ``[l, u]``, bounds that
start at the target and relax to ``[0, 1]`` over the first part of the run. It keeps masks
that start all-on (dense weights) from reaching the target by switching whole blocks off.

Under DDP the cost ratio and the rates are means over ranks, so the losses equal the ones a
single process would compute on the whole batch (and their gradients too, after DDP's
averaging).
"""
import math
import numbers
from collections import defaultdict

import torch
from mmengine import dist
from mmengine.hooks import Hook
from mmengine.runner import EpochBasedTrainLoop
from mmdet.registry import HOOKS

from .utils import las_backbone, unwrap

COSTS = ('macs', 'latency')
BOUNDS_KEYS = ('relax', 'weight', 'by_epoch')


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


def block_bounds(progress, target, relax):
    """LASNet's per-block bounds ``(lower, upper)`` at ``progress`` in [0, 1] of the run.

    ``pi = cos^2(pi/2 * min(progress / relax, 1))``, ``upper = 1 - pi (1 - target)``,
    ``lower = pi * target``: both equal the target at the start and reach 0 / 1 at ``relax``.
    """
    pi = math.cos(math.pi / 2 * min(progress / relax, 1.0))**2
    return pi * target, 1.0 - pi * (1.0 - target)


def bounds_penalty(rates, lower, upper):
    """``mean_i [max(0, r_i - upper)^2 + max(0, lower - r_i)^2]`` over a 1-d tensor of rates."""
    return ((rates - upper).clamp(min=0)**2 + (lower - rates).clamp(min=0)**2).mean()


def _number(name, value, low=None, low_open=False, high=None):
    """``value`` as a float; a ValueError naming ``name`` if it is no finite number in range."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise ValueError(f'{name} must be a number, got {value!r} ({type(value).__name__})')
    value = float(value)
    if not math.isfinite(value):
        raise ValueError(f'{name} must be finite, got {value!r}')
    if low is not None and (value < low or (low_open and value == low)):
        bracket = '(' if low_open else '['
        top = f'{high}]' if high is not None else 'inf)'
        raise ValueError(f'{name} must be in {bracket}{low}, {top}, got {value!r}')
    if high is not None and value > high:
        raise ValueError(f'{name} must be <= {high}, got {value!r}')
    return value


def _bounds_options(bounds):
    """Validated ``dict(relax, weight, by_epoch)`` of the bounds criterion (or None)."""
    if bounds is None:
        return None
    if not isinstance(bounds, dict):
        raise ValueError(f'bounds must be a dict like dict(relax=0.33, weight=10.0, '
                         f'by_epoch=False) or None, got {bounds!r}')
    unknown = sorted(set(bounds) - set(BOUNDS_KEYS))
    if unknown:
        raise ValueError(f'bounds got unknown keys {unknown}; it takes {list(BOUNDS_KEYS)}')
    options = dict(relax=0.33, weight=10.0, by_epoch=False)  # LASNet's ImageNet values
    options.update(bounds)
    if not isinstance(options['by_epoch'], bool):
        raise ValueError(f"bounds['by_epoch'] must be True or False, got {options['by_epoch']!r}")
    options['relax'] = _number("bounds['relax']", options['relax'], low=0, low_open=True)
    options['weight'] = _number("bounds['weight']", options['weight'], low=0)
    return options


@HOOKS.register_module()
class LatencyLossHook(Hook):
    """Cost loss and temperature schedule of a LAS backbone.

    Args:
        target (float): Target cost ratio t in (0, 1] (the paper: 0.5 Faster R-CNN/RetinaNet,
            0.4 Mask R-CNN).
        weight (float): Loss weight (the paper: 1.0).
        tau (float): Gumbel temperature; constant unless ``tau_end`` is given.
        tau_end (float, optional): If given, tau decays exponentially from ``tau`` at the first
            iteration to ``tau_end`` at the last one (LASNet on ImageNet: 5.0 -> 0.1).
        gumbel_noise (float, optional): Scale of the Gumbel noise of the training masks
            (``LASResNet.gumbel_noise``; 1 is LASNet's sampling). None leaves the backbone's.
        gumbel_noise_end (float, optional): If given, the noise scale goes linearly from
            ``gumbel_noise`` (default 1) at the first iteration to this at the last one. With
            0, the masks of the last iterations are the eval decisions, so the cost the loss
            reaches in training is the cost of the deployed network (with full noise, cells
            whose logits sit near the boundary execute in training but not in eval).
        cost (str): What the ratio measures: 'macs' (backbone multiply-accumulates) or
            'latency' (predicted backbone latency on ``profile`` over the static backbone's,
            piecewise linear in each block's rate at the training input size; logged as
            ``las_latency_ms``).
        profile (str | dict, optional): Hardware for ``cost='latency'``: a preset name
            ('v100', 'a100', 'h100', 'rtx3090', 'tx2') or a calibrated profile JSON path.
        schedule (str, optional): Sparse schedule for ``cost='latency'`` (default: the
            profile's; see ``lasnet_mmdet.latency.predictor.SCHEDULES``).
        bounds (dict, optional): LASNet's per-block bounds criterion, added as
            ``loss_latency_bounds = weight * mean_i [max(0, r_i - u)^2 + max(0, l - r_i)^2]``
            over the activation rates r_i of the blocks whose masker trains (a masker frozen by
            ``frozen_stages`` cannot move). Keys: ``relax`` (fraction of the run over which
            the bounds open from ``[t, t]`` to ``[0, 1]``, default 0.33), ``weight`` (default
            10.0), ``by_epoch`` (progress counted in whole epochs as LASNet does, default
            False: in iterations). ``dict()`` gives LASNet's values.
    """

    priority = 'NORMAL'

    def __init__(self, target=0.5, weight=1.0, tau=0.1, tau_end=None, cost='macs',
                 profile=None, schedule=None, bounds=None, gumbel_noise=None,
                 gumbel_noise_end=None):
        self.target = _number('target', target, low=0, low_open=True, high=1)
        self.weight = _number('weight', weight, low=0)
        self.tau = _number('tau', tau, low=0, low_open=True)
        self.tau_end = None if tau_end is None else _number('tau_end', tau_end, low=0,
                                                            low_open=True)
        if gumbel_noise is None and gumbel_noise_end is not None:
            gumbel_noise = 1.0
        self.gumbel_noise = None if gumbel_noise is None else _number(
            'gumbel_noise', gumbel_noise, low=0)
        self.gumbel_noise_end = None if gumbel_noise_end is None else _number(
            'gumbel_noise_end', gumbel_noise_end, low=0)
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
        self.cost = cost
        self.bounds = _bounds_options(bounds)
        self._bounds_now = (self.target, self.target)
        self._handle = None

    def tau_at(self, progress):
        """Temperature at ``progress`` in [0, 1] of the run."""
        if self.tau_end is None:
            return self.tau
        return self.tau * math.exp(progress * math.log(self.tau_end / self.tau))

    def gumbel_noise_at(self, progress):
        """Gumbel noise scale at ``progress`` in [0, 1] of the run (None: the backbone's)."""
        if self.gumbel_noise_end is None:
            return self.gumbel_noise
        return self.gumbel_noise + progress * (self.gumbel_noise_end - self.gumbel_noise)

    def bounds_at(self, progress):
        """Per-block rate bounds ``(lower, upper)`` at ``progress`` in [0, 1] of the run."""
        if self.bounds is None:
            raise RuntimeError('bounds_at needs LatencyLossHook(bounds=dict(...))')
        return block_bounds(progress, self.target, self.bounds['relax'])

    def before_run(self, runner):
        backbone = las_backbone(runner.model, type(self).__name__)
        backbone.cost_loss_attached = True
        self._backbone = backbone
        # The bounds leave out maskers frozen by frozen_stages (set when the model is built).
        self._bounded = [name for name, block in backbone.las_blocks()
                         if any(p.requires_grad for p in block.masker.parameters())]
        self._handle = unwrap(runner.model).register_forward_hook(
            self._add_cost_loss, with_kwargs=True)

    def after_run(self, runner):
        if self._handle is not None:
            self._handle.remove()
            self._handle = None

    def before_train(self, runner):
        if (self.bounds is not None and self.bounds['by_epoch']
                and not isinstance(runner.train_loop, EpochBasedTrainLoop)):
            raise ValueError("bounds['by_epoch']=True needs an epoch-based train loop, got "
                             f'{type(runner.train_loop).__name__}; use by_epoch=False')

    def before_train_iter(self, runner, batch_idx, data_batch=None):
        progress = runner.iter / max(runner.max_iters - 1, 1)
        self._backbone.tau = self.tau_at(min(progress, 1.0))
        noise = self.gumbel_noise_at(min(progress, 1.0))
        if noise is not None:
            self._backbone.gumbel_noise = noise
        if self.bounds is not None:
            if self.bounds['by_epoch']:
                progress = runner.epoch / runner.max_epochs
            else:
                progress = runner.iter / runner.max_iters
            self._bounds_now = self.bounds_at(progress)

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

        blocks = backbone.las_stats['blocks']
        names = list(blocks)
        # One all-reduce for every block's rate, used by the bounds and the logs alike.
        rates = mean_over_ranks(torch.stack([blocks[name]['rate'].float() for name in names]))
        if self.bounds is not None:
            bounded = [names.index(name) for name in self._bounded]
            lower, upper = self._bounds_now
            penalty = (bounds_penalty(rates[bounded], lower, upper) if bounded
                       else rates.sum() * 0)
            output['loss_latency_bounds'] = self.bounds['weight'] * penalty

        rates = rates.detach()
        output['las_act_rate'] = rates.mean()
        by_stage = defaultdict(list)
        for i, name in enumerate(names):
            by_stage[name.split('.')[0]].append(i)
        for stage, indices in by_stage.items():
            output[f'las_act_rate_{stage}'] = rates[indices].mean()
        output['las_cost_ratio'] = ratio.detach()
        if self._latency is not None:
            output['las_latency_ms'] = mean_over_ranks(self._latency_ms)
        return output
