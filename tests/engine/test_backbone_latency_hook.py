"""BackboneLatencyHook's report and the dense backbones its latency prediction accepts (the
end-to-end runs are in tests/tools/test_test_tool_flags.py)."""
import pytest
import torch
from mmdet.models.backbones import ResNet

from lasnet_mmdet.engine.hooks import BackboneLatencyHook
from lasnet_mmdet.engine.hooks.utils import predictable_resnet_depth


def test_measured_mean_and_median_leave_the_warmup_out():
    hook = BackboneLatencyHook(measure=True)
    records = [dict(measured_latency_ms=ms, warmup=i == 0)
               for i, ms in enumerate([500.0, 20.0, 30.0, 900.0])]
    lines, metrics = hook.report(records)
    assert metrics['las/measured_latency_ms'] == pytest.approx(950 / 3)
    assert metrics['las/measured_latency_median_ms'] == 30.0  # the slow outlier ignored
    assert 'mean 316.67 ms / median 30.00 ms (over 3 images' in lines[-1]


def test_the_predictor_models_mmdets_plain_resnet_only():
    with torch.device('meta'):  # the module's settings, no memory
        assert predictable_resnet_depth(ResNet(101)) == 101
        with pytest.raises(ValueError, match='deep_stem=False, got deep_stem=True'):
            predictable_resnet_depth(ResNet(50, deep_stem=True))
    assert predictable_resnet_depth(dict(type='ResNet', depth=50, strides=[1, 2, 2, 2])) == 50
    with pytest.raises(ValueError, match=r"strides=\(1, 2, 2, 2\), got strides=\(1, 2, 2, 1\)"):
        predictable_resnet_depth(dict(type='ResNet', depth=50, strides=(1, 2, 2, 1)))
    with pytest.raises(ValueError, match="not 'LASResNet'"):
        predictable_resnet_depth(dict(type='LASResNet', depth=50))
