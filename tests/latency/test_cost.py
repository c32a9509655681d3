import pytest
import torch

from lasnet_mmdet.latency.cost import LatencyCost, piecewise_linear
from lasnet_mmdet.latency.hardware import PRESETS
from lasnet_mmdet.latency.predictor import predict_backbone
from lasnet_mmdet.models.backbones.las_resnet import LASResNet


def test_piecewise_linear_interpolates_and_has_gradient():
    ys = torch.tensor([0.0, 1.0, 4.0], dtype=torch.float64)
    x = torch.tensor(0.75, dtype=torch.float64, requires_grad=True)
    y = piecewise_linear(x, ys)
    assert y.item() == pytest.approx(2.5)
    y.backward()
    assert x.grad.item() == pytest.approx(6.0)  # slope of the second segment
    assert piecewise_linear(torch.tensor(1.0), ys).item() == pytest.approx(4.0)


def test_latency_cost_of_a_backbone_forward():
    torch.manual_seed(0)
    backbone = LASResNet(50, granularity=(4, 4, 2, 1), sparse_inference='off')
    backbone.train()
    backbone(torch.randn(1, 3, 64, 96))
    # At this tiny size every V100 kernel would be launch-bound (a flat cost): no launches.
    v100 = PRESETS['v100'].with_efficiency(launch_us=0.0)
    cost = LatencyCost(v100)
    ratio = cost.ratio(backbone)
    ratio.backward()
    assert 0 < ratio.item() < 1.5
    grads = [b.masker.conv2.bias.grad for _, b in backbone.las_blocks()
             if b.masker.conv2.bias.grad is not None]
    assert grads and any(g.abs().sum() > 0 for g in grads)
    # At r = 1 for every block the table gives the predictor's value.
    for _, block in backbone.las_blocks():
        block.stats['rate'] = torch.tensor(1.0)
    predicted, static = cost(backbone)
    full = predict_backbone(v100, 64, 96, (4, 4, 2, 1), 1.0, depth=50, exact=False,
                            nchw_outputs=False)
    assert predicted.item() == pytest.approx(full['total'], rel=1e-6)
    # The reference is the best dense network (BN folded, channels-last, fused epilogues).
    assert static == pytest.approx(predict_backbone(v100, 64, 96, depth=50,
                                                    deployed=True)['total'])
    assert static < predict_backbone(v100, 64, 96, depth=50)['total']


def test_all_active_las_backbone_is_not_cheaper_than_the_best_dense():
    """At a MACs ratio of 1 (every patch on) the cost ratio is >= 1: ``target`` means a
    fraction of the deployed dense network's latency, as the benchmark reports it."""
    backbone = LASResNet(101, granularity=(4, 4, 2, 1), sparse_inference='off').eval()
    with torch.no_grad(), backbone.pinned_masks(1.0):
        backbone(torch.randn(1, 3, 320, 512))
    stats = backbone.las_stats
    assert float(stats['macs_dynamic']) == pytest.approx(stats['macs_dense'])
    for profile in ('v100', 'h100', 'tx2', 'lasnet_mmdet/latency/profiles/cpu-2t.json'):
        assert LatencyCost(profile).ratio(backbone).item() >= 1.0, profile


def test_latency_loss_hook_with_latency_cost():
    from lasnet_mmdet.engine.hooks import LatencyLossHook
    from lasnet_mmdet.latency import ProfileError
    with pytest.raises(ValueError, match='needs profile'):
        LatencyLossHook(cost='latency')
    with pytest.raises(ProfileError, match='unknown hardware preset'):
        LatencyLossHook(cost='latency', profile='b200')
    with pytest.raises(ValueError, match='only with'):
        LatencyLossHook(cost='macs', profile='v100')
    hook = LatencyLossHook(target=0.5, cost='latency', profile='v100')
    backbone = LASResNet(50, granularity=(4, 4, 2, 1), sparse_inference='off')
    backbone.train()
    backbone(torch.randn(1, 3, 64, 64))
    hook._backbone = backbone
    out = hook._add_cost_loss(backbone, (), {'mode': 'loss'}, {})
    assert set(out) >= {'loss_latency', 'las_cost_ratio', 'las_latency_ms'}
    ratio = out['las_cost_ratio']
    assert out['loss_latency'].item() == pytest.approx((ratio.item() - 0.5)**2, rel=1e-5)
    out['loss_latency'].backward()
    assert any(b.masker.conv2.weight.grad is not None for _, b in backbone.las_blocks())


def test_latency_tables_are_cheap():
    import time
    backbone = LASResNet(101, granularity=(4, 4, 7, 1), sparse_inference='off')
    t0 = time.perf_counter()
    LatencyCost('h100').tables(backbone, 800, 1216)
    assert time.perf_counter() - t0 < 2.0


def test_report_hook_predicts_backbone_latency():
    from types import SimpleNamespace

    from lasnet_mmdet.engine.hooks import LASReportHook
    backbone = LASResNet(50, granularity=(4, 4, 2, 1), sparse_inference='off')
    backbone.eval()
    hook = LASReportHook(profile='v100')
    hook._reset(SimpleNamespace(model=SimpleNamespace(backbone=backbone)))
    with torch.no_grad(), backbone.pinned_masks(0.5):
        backbone(torch.randn(1, 3, 64, 96))
    hook._accumulate({'inputs': [None]})
    lines, metrics = hook.report()
    assert any('predicted backbone latency' in line for line in lines)
    assert 0 < metrics['las/pred_latency_ratio'] < 1.5 and metrics['las/pred_latency_ms'] > 0
