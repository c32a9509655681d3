"""The from-dense recipe as configs set it, seen through the real mmengine Runner.

The Runner initialises the model (``init_weights``, then ``Pretrained``) and builds the
optimizer in ``train()``; a hook stops the run at ``before_train``, when both are done and no
step has changed anything yet.
"""
import os.path as osp

import pytest
import torch
from mmdet.models.backbones import ResNet
from mmengine.config import Config
from mmengine.hooks import Hook
from mmengine.runner import Runner

import lasnet_mmdet  # noqa: F401
from conftest import REPO, resize_options, sample_data_options

# (Mask R-CNN's from-dense config: test_from_dense_config_loads_torchvision_layout.)
# config: (detector, backbone lr_mult); maskers: base lr from dense weights, 10x from scratch.
FROM_DENSE = {
    'configs/from-dense/faster-rcnn_las-r101-4421_fpn_1x_coco.py': ('two_stage', 0.5),
    'configs/from-dense/retinanet_las-r101-4421_fpn_1x_coco.py': ('single_stage', 0.2),
}


class StopBeforeTraining(Exception):
    pass


class Snapshot(Hook):
    """Keeps the masker biases and the optimizer's groups as training is about to start."""

    def before_train(self, runner):
        model = runner.model
        self.biases = {name: block.masker.conv2.bias.detach().clone()
                       for name, block in model.backbone.las_blocks()}
        self.groups = {}
        params = {id(p): name for name, p in model.named_parameters()}
        for group in runner.optim_wrapper.optimizer.param_groups:
            for p in group['params']:
                self.groups[params[id(p)]] = (group.get('initial_lr', group['lr']),
                                              group['weight_decay'])
        self.state = {k: v.detach().clone() for k, v in model.backbone.state_dict().items()}
        raise StopBeforeTraining


def snapshot(config, sample_coco, tmp_path, detector, **overrides):
    cfg = Config.fromfile(osp.join(REPO, config))
    cfg.merge_from_dict(sample_data_options(sample_coco, with_mask=detector == 'mask'))
    cfg.merge_from_dict(resize_options(cfg))
    key = {'mask': 'roi_head', 'two_stage': 'roi_head'}.get(detector)
    if key:
        cfg.merge_from_dict({f'model.{key}.bbox_head.num_classes': 3})
        if detector == 'mask':
            cfg.merge_from_dict({f'model.{key}.mask_head.num_classes': 3})
    else:
        cfg.merge_from_dict({'model.bbox_head.num_classes': 3})
    cfg.merge_from_dict(overrides)
    cfg.work_dir = str(tmp_path)
    cfg.experiment_name = tmp_path.name
    runner = Runner.from_cfg(cfg)
    hook = Snapshot()
    runner.register_hook(hook, priority='LOWEST')
    with pytest.raises(StopBeforeTraining):
        runner.train()
    return cfg, hook


def check_recipe(cfg, hook, backbone_lr_mult, masker_lr_mult=1.0):
    masker_cfg = cfg.model.backbone.masker_cfg
    expected = torch.tensor([masker_cfg['execute_bias'], masker_cfg['skip_bias']])
    assert hook.biases, 'no LAS blocks'
    for name, bias in hook.biases.items():
        assert torch.equal(bias, expected), (name, bias)
    base_lr = cfg.optim_wrapper.optimizer.lr
    base_wd = cfg.optim_wrapper.optimizer.weight_decay
    maskers = [n for n in hook.groups if '.masker.conv2.' in n]
    assert maskers and all(n.startswith('backbone.layer') for n in maskers)
    for name in maskers:
        assert hook.groups[name] == (pytest.approx(base_lr * masker_lr_mult), 0.0), name
    conv = hook.groups['backbone.layer2.0.conv2.weight']
    assert conv == (pytest.approx(base_lr * backbone_lr_mult),
                    pytest.approx(base_wd * (0.9 if backbone_lr_mult != 1 else 1)))


@pytest.mark.parametrize('config', FROM_DENSE)
def test_from_dense_config_sets_masker_bias_and_lr(config, sample_coco, tmp_path):
    detector, backbone_lr_mult = FROM_DENSE[config]
    cfg, hook = snapshot(config, sample_coco, tmp_path, detector,
                         **{'model.backbone.init_cfg': None})
    check_recipe(cfg, hook, backbone_lr_mult)
    assert cfg.model.backbone.depth == 101 and cfg.model.backbone.granularity == (4, 4, 2, 1)
    latency = [h for h in cfg.custom_hooks if h['type'] == 'LatencyLossHook'][0]
    assert latency['bounds']['weight'] > 0 and latency['tau_end'] < latency['tau']
    assert latency['gumbel_noise_end'] == 0  # trains on the eval decisions at the end


def test_demo_config_sets_masker_bias_and_lr(sample_coco, tmp_path):
    cfg, hook = snapshot('configs/demo/mask-rcnn_las-r50-4421_fpn_sample.py', sample_coco,
                         tmp_path, 'mask')
    check_recipe(cfg, hook, backbone_lr_mult=1, masker_lr_mult=10.0)


def test_from_dense_config_loads_torchvision_layout(sample_coco, tmp_path):
    """torchvision's ResNet-101 keys (as mmdet's ResNet names them) load into LAS-R101."""
    dense = ResNet(depth=101)
    torch.manual_seed(1)
    for p in dense.parameters():
        torch.nn.init.normal_(p, std=0.01)
    weights = {**dense.state_dict(), 'fc.weight': torch.zeros(1000, 2048),
               'fc.bias': torch.zeros(1000)}
    path = str(tmp_path / 'resnet101_torchvision_layout.pth')
    torch.save(weights, path)
    config = 'configs/from-dense/mask-rcnn_las-r101-4421_fpn_1x_coco.py'
    cfg, hook = snapshot(config, sample_coco, tmp_path, 'mask',
                         **{'model.backbone.init_cfg.checkpoint': path})
    assert cfg.model.backbone.init_cfg.checkpoint == path
    loaded = [k for k in weights if not k.startswith('fc.')]
    for key in loaded:
        assert torch.equal(hook.state[key], weights[key]), key
    maskers = [k for k in hook.state if k not in weights]
    assert maskers and all('.masker.conv2.' in k for k in maskers)
    check_recipe(cfg, hook, backbone_lr_mult=0.5)
