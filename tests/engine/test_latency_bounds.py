"""LASNet's per-block bounds criterion: schedule, penalty, gradient, and inside the Runner."""
import glob
import math

import pytest
import torch
from mmengine.hooks import Hook

import lasnet_mmdet  # noqa: F401
from lasnet_mmdet.engine.hooks import LatencyLossHook
from lasnet_mmdet.engine.hooks.latency_loss_hook import block_bounds, bounds_penalty
from lasnet_mmdet.models.backbones.las_resnet import LASResNet
from test_latency_loss_hook import build_runner, scalar


@pytest.mark.parametrize('progress, lower, upper', [
    (0.0, 0.4, 0.4),                        # pi = 1: every block exactly at the target
    (0.15, 0.5 * 0.4, 1 - 0.5 * 0.6),       # relax / 2: pi = cos^2(pi / 4) = 1/2
    (0.3, 0.0, 1.0),                        # relax: pi = 0, bounds fully open
    (1.0, 0.0, 1.0),                        # past relax: stays open
    (0.1, 0.75 * 0.4, 1 - 0.75 * 0.6),      # relax / 3: pi = cos^2(pi / 6) = 3/4
])
def test_bounds_schedule(progress, lower, upper):
    got = block_bounds(progress, target=0.4, relax=0.3)
    assert got == pytest.approx((lower, upper), abs=1e-12)
    hook = LatencyLossHook(target=0.4, bounds=dict(relax=0.3))
    assert hook.bounds_at(progress) == pytest.approx((lower, upper), abs=1e-12)


def test_bounds_penalty_by_hand():
    lower, upper = 0.3, 0.7
    inside = torch.tensor([0.3, 0.5, 0.7])
    assert float(bounds_penalty(inside, lower, upper)) == 0.0
    rates = torch.tensor([0.1, 0.5, 0.9, 1.0])
    # (0.3 - 0.1)^2 + 0 + (0.9 - 0.7)^2 + (1.0 - 0.7)^2 = 0.04 + 0.04 + 0.09, over 4 blocks
    assert float(bounds_penalty(rates, lower, upper)) == pytest.approx(0.17 / 4)


def test_bounds_gradient_reaches_the_maskers():
    torch.manual_seed(0)
    backbone = LASResNet(depth=50, granularity=(4, 4, 2, 1), tau=1.0)
    backbone.init_weights()
    backbone.train()
    backbone(torch.rand(2, 3, 64, 64))
    names = [name for name, _ in backbone.las_blocks()]
    rates = torch.stack([backbone.las_stats['blocks'][n]['rate'] for n in names])
    # At progress 0 the bounds are [t, t]: every block (rate ~1 at the init) is pushed down.
    lower, upper = block_bounds(0.0, target=0.5, relax=0.33)
    bounds_penalty(rates, lower, upper).backward()
    for name, block in backbone.las_blocks():
        bias_grad = block.masker.conv2.bias.grad
        assert bias_grad is not None and bias_grad.abs().sum() > 0, name
        # the descent step lowers execute - skip, i.e. the block's rate
        assert bias_grad[0] - bias_grad[1] > 0, name
    # Open bounds: no penalty, no gradient.
    backbone.zero_grad()
    backbone(torch.rand(2, 3, 64, 64))
    rates = torch.stack([backbone.las_stats['blocks'][n]['rate'] for n in names])
    loss = bounds_penalty(rates, *block_bounds(1.0, target=0.5, relax=0.33))
    assert float(loss.detach()) == 0.0


def test_bounds_loss_and_stage_rates_in_training(sample_coco, tmp_path):
    """All-on masks at progress 0: each block pays (1 - t)^2; stage rates are logged."""
    runner = build_runner(
        'configs/lasnet_r101_fpn.py', sample_coco, tmp_path, 'two_stage',
        **{'model.backbone.masker_cfg': dict(execute_bias=30.0, skip_bias=0.0),
           'train_cfg.max_epochs': 1,
           'custom_hooks': [dict(type='LatencyLossHook', target=0.5, weight=1.0,
                                 bounds=dict(relax=0.9, weight=10.0))]})
    losses = []
    runner.register_hook(LossRecorder(losses), priority='LOWEST')
    runner.train()  # 4 iterations: progress 0, 1/4, 2/4, 3/4 of the run
    hook = runner.hooks[[type(h) for h in runner.hooks].index(LatencyLossHook)]
    for i, loss in enumerate(losses):
        lower, upper = hook.bounds_at(i / len(losses))
        assert upper < 1
        assert loss == pytest.approx(10.0 * (1.0 - upper)**2, rel=1e-5), i
    stage_rates = [scalar(runner, f'las_act_rate_layer{k}') for k in (1, 2, 3, 4)]
    blocks = (3, 4, 6, 3)  # LAS-R50
    mean = sum(r * n for r, n in zip(stage_rates, blocks)) / sum(blocks)
    assert mean == pytest.approx(scalar(runner, 'las_act_rate'), rel=1e-5)
    log = open(glob.glob(f'{tmp_path}/*/*.log')[0]).read()
    for key in ('loss_latency_bounds', 'las_act_rate_layer1', 'las_act_rate_layer4'):
        assert key in log, key


class LossRecorder(Hook):
    """Records ``loss_latency_bounds`` of every training iteration."""

    def __init__(self, losses):
        self.losses = losses

    def after_train_iter(self, runner, batch_idx, data_batch=None, outputs=None):
        self.losses.append(float(outputs['loss_latency_bounds'].detach()))


@pytest.mark.parametrize('bounds, match', [
    (dict(relax=0), "relax"), (dict(relax=-0.1), "relax"), (dict(relax=math.inf), "relax"),
    (dict(weight=-1), "weight"), (dict(weight=math.nan), "weight"),
    (dict(by_epoch='yes'), 'by_epoch'), (dict(relaxx=0.3), 'relaxx'), ([0.33, 10], 'bounds'),
])
def test_bad_bounds(bounds, match):
    with pytest.raises(ValueError, match=match):
        LatencyLossHook(bounds=bounds)
