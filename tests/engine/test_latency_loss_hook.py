"""The hook inside the real mmdet Runner, on the generated sample data."""
import glob
import math
import os.path as osp

import pytest
from mmengine.config import Config
from mmengine.runner import Runner

import lasnet_mmdet  # noqa: F401
from lasnet_mmdet.engine.hooks import LatencyLossHook
from conftest import REPO, resize_options, sample_data_options, small_las_options


def build_runner(config, sample_coco, tmp_path, detector, **overrides):
    cfg = Config.fromfile(osp.join(REPO, config))
    cfg.merge_from_dict(sample_data_options(sample_coco, with_mask=detector == 'mask'))
    cfg.merge_from_dict(resize_options(cfg))
    cfg.merge_from_dict(small_las_options(detector=detector))
    cfg.merge_from_dict({'train_cfg.val_interval': 100, 'default_hooks.logger.interval': 1})
    cfg.merge_from_dict(overrides)
    cfg.work_dir = str(tmp_path)
    # mmengine names the logger after the experiment (config name + time in seconds): two
    # Runners built within one second would share a logger and its log file.
    cfg.experiment_name = tmp_path.name
    return Runner.from_cfg(cfg)


def record_masker_grads(backbone):
    grads = []
    for name, block in backbone.las_blocks():
        for param in block.masker.parameters():
            param.register_hook(lambda g: grads.append(float(g.abs().sum())))
    return grads


def scalar(runner, name):
    return runner.message_hub.get_scalar(f'train/{name}').current()


@pytest.mark.parametrize('config, detector', [
    ('configs/lasnet_r101_fpn.py', 'two_stage'),
    ('configs/mask-rcnn_las-r101-4421_fpn_1x_coco.py', 'mask'),
])
def test_training_adds_latency_loss(config, detector, sample_coco, tmp_path):
    runner = build_runner(config, sample_coco, tmp_path, detector)
    grads = record_masker_grads(runner.model.backbone)
    runner.train()
    target = runner.hooks[[type(h) for h in runner.hooks].index(LatencyLossHook)].target
    ratio, loss = scalar(runner, 'las_cost_ratio'), scalar(runner, 'loss_latency')
    assert 0 < ratio <= 1
    assert loss == pytest.approx((ratio - target)**2, rel=1e-5)
    assert 0 < scalar(runner, 'las_act_rate') <= 1
    # the total loss includes loss_latency (mmengine sums every key containing 'loss')
    logged = runner.message_hub.log_scalars
    assert 'train/loss_latency' in logged and 'train/loss' in logged
    assert grads and sum(grads) > 0, 'no gradient reached the maskers'
    log = open(glob.glob(f'{tmp_path}/*/*.log')[0]).read()
    assert 'loss_latency' in log and 'las_act_rate' in log and 'las_cost_ratio' in log


def test_exponential_temperature_schedule(sample_coco, tmp_path):
    runner = build_runner('configs/lasnet_r101_fpn.py', sample_coco, tmp_path, 'two_stage',
                          custom_hooks=[dict(type='LatencyLossHook', tau=2.0, tau_end=0.05)])
    runner.train()  # 4 iterations: tau goes 2.0 -> 0.05 geometrically
    assert runner.model.backbone.tau == pytest.approx(0.05)
    hook = LatencyLossHook(tau=2.0, tau_end=0.05)
    assert hook.tau_at(0.5) == pytest.approx(math.sqrt(2.0 * 0.05))


def test_linear_gumbel_noise_schedule(sample_coco, tmp_path):
    runner = build_runner('configs/lasnet_r101_fpn.py', sample_coco, tmp_path, 'two_stage',
                          custom_hooks=[dict(type='LatencyLossHook', gumbel_noise_end=0.0)])
    assert runner.model.backbone.gumbel_noise == 1.0
    runner.train()  # 4 iterations: the noise goes 1 -> 0 linearly
    backbone = runner.model.backbone
    assert backbone.gumbel_noise == 0.0
    assert all(block.gumbel_noise == 0.0 for _, block in backbone.las_blocks())
    hook = LatencyLossHook(gumbel_noise=0.8, gumbel_noise_end=0.2)
    assert [hook.gumbel_noise_at(p) for p in (0, 0.5, 1)] == pytest.approx([0.8, 0.5, 0.2])
    assert LatencyLossHook().gumbel_noise_at(0.5) is None  # leaves the backbone's own


def test_hook_without_las_backbone_fails(sample_coco, tmp_path):
    runner = build_runner('configs/lasnet_r101_fpn.py', sample_coco, tmp_path, 'two_stage',
                          **{'model.backbone': dict(_delete_=True, type='ResNet', depth=18,
                                                    init_cfg=None),
                             'model.neck.in_channels': [64, 128, 256, 512]})
    with pytest.raises(TypeError, match='LatencyLossHook needs .* LAS backbone.*ResNet'):
        runner.train()


def test_las_backbone_without_hook_trains_and_warns_once(sample_coco, tmp_path):
    runner = build_runner('configs/lasnet_r101_fpn.py', sample_coco, tmp_path, 'two_stage',
                          custom_hooks=[])
    runner.train()
    assert 'train/loss_latency' not in runner.message_hub.log_scalars
    log = open(glob.glob(f'{tmp_path}/*/*.log')[0]).read()
    assert log.count('without LatencyLossHook') == 1


@pytest.mark.parametrize('kwargs, match', [
    (dict(target=0), 'target'), (dict(target=1.2), 'target'), (dict(weight=-1), 'weight'),
    (dict(tau=0), 'tau'), (dict(tau_end=-0.1), 'tau_end'), (dict(cost='flops'), 'cost'),
    # not numbers, or not finite: a ValueError naming the parameter and the value
    (dict(target='0.5'), "target .*'0.5'"), (dict(tau='0.1'), "tau .*'0.1'"),
    (dict(weight=True), 'weight .*True'), (dict(tau=math.inf), 'tau .*inf'),
    (dict(weight=math.inf), 'weight .*inf'), (dict(tau_end=math.inf), 'tau_end .*inf'),
    (dict(target=math.nan), 'target .*nan'),
    (dict(gumbel_noise=-1), 'gumbel_noise .*-1'), (dict(gumbel_noise_end=math.inf),
                                                   'gumbel_noise_end .*inf'),
])
def test_bad_hook_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        LatencyLossHook(**kwargs)
