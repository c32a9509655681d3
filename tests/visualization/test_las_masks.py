"""Choosing masks by name, and reading them from a real LAS backbone's eval forward."""
import pytest
import torch
from mmengine.config import ConfigDict

from lasnet_mmdet.models.backbones.las_resnet import LASResNet
from lasnet_mmdet.visualization import (choose_panels, las_block_names, panel_masks,
                                        stage_strides)

R50 = las_block_names(ConfigDict(type='LASResNet', depth=50))


def test_block_names_follow_the_config():
    assert len(R50) == 16 and R50[0] == 'layer1.0' and R50[-1] == 'layer4.2'
    r101 = las_block_names(dict(type='LASResNet', depth=101, num_stages=3))
    assert len(r101) == 3 + 4 + 23 and r101[-1] == 'layer3.22'


def test_a_dense_backbone_has_no_masks():
    with pytest.raises(ValueError, match="'ResNet', not a LAS backbone"):
        las_block_names(dict(type='ResNet', depth=50))


def test_panels_default_to_every_stage_and_name_unknown_ones():
    assert list(choose_panels(R50)) == ['layer1', 'layer2', 'layer3', 'layer4']
    panels = choose_panels(R50, stages=['layer2'], blocks=['layer3.5', 'layer1.0'])
    assert list(panels) == ['layer2', 'layer1.0', 'layer3.5']  # forward order
    assert panels['layer2'] == ['layer2.0', 'layer2.1', 'layer2.2', 'layer2.3']
    with pytest.raises(ValueError, match="unknown stage 'layer5'"):
        choose_panels(R50, stages=['layer5'])
    with pytest.raises(ValueError, match="unknown block 'layer3.6'"):
        choose_panels(R50, blocks=['layer3.6'])


def test_panel_masks_are_the_backbones_own_decisions():
    torch.manual_seed(0)
    backbone = LASResNet(depth=50, granularity=(4, 4, 2, 1), init_cfg=None).eval()
    for _, block in backbone.las_blocks():
        block.masker.conv2.bias.data.zero_()  # mixed decisions instead of execute-everything
    with torch.no_grad():
        backbone(torch.randn(2, 3, 96, 160))
    assert stage_strides(backbone) == {'layer1': 4, 'layer2': 8, 'layer3': 16, 'layer4': 32}
    panels = choose_panels([name for name, _ in backbone.las_blocks()], stages=['layer2'],
                           blocks=['layer1.2', 'layer3.4', 'layer4.2'])
    masks = panel_masks(backbone, panels)
    blocks = backbone.las_stats['blocks']
    mixed = blocks['layer4.2']['rate_per_image'].tolist()
    assert 0 < mixed[0] < 1 and mixed[0] != mixed[1]  # the test can see a mix
    for name, (mask, stride) in masks.items():
        assert mask.shape == (2, -(-96 // stride), -(-160 // stride)), name
        expected = torch.stack([blocks[block]['rate_per_image'] for block in panels[name]])
        assert mask.mean(axis=(1, 2)) == pytest.approx(expected.mean(0).tolist(), abs=1e-6)
