"""The user's inference path: CUDA graphs captured by the backbone itself, autocast.

CUDA tests skip on CPU and run on the device (``LASNET_TRITON_AUTOTUNE`` is not needed: the
kernels have no autotuning)."""
import os
import sys

import pytest
import torch

from lasnet_mmdet.models import LASResNet

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(__file__)), 'ops'))
from ops_helpers import assert_close_to_scale, randomise_bn  # noqa: E402

CUDA = torch.cuda.is_available()
requires_cuda = pytest.mark.skipif(not CUDA, reason='needs a CUDA device')


def make_backbone(**kwargs):
    torch.manual_seed(0)
    backbone = LASResNet(depth=50, granularity=(4, 4, 2, 1), **kwargs)
    randomise_bn(backbone)
    for _, block in backbone.las_blocks():  # decide by the input: some patches skipped
        block.masker.conv2.bias.data.zero_()
    return backbone.eval()


@requires_cuda
def test_graphed_backbone_equals_eager_and_dense_masked_across_shapes():
    graphed = make_backbone(cuda_graph_cache=2).cuda().half()
    eager = make_backbone(cuda_graph=False).cuda().half()
    off = make_backbone(sparse_inference='off').cuda().half()
    shapes = [(96, 128), (64, 96), (96, 128), (128, 64), (64, 96)]  # hit, then evictions
    with torch.no_grad():
        for h, w in shapes:
            for seed in (0, 1):  # new values on the same shape: no stale graph input
                torch.manual_seed(seed + h)
                x = torch.randn(2, 3, h, w, device='cuda', dtype=torch.half)
                out, ref, dense = graphed(x), eager(x), off(x)
                for o, r, d in zip(out, ref, dense):
                    assert torch.equal(o, r)
                    assert o.is_contiguous() and r.is_contiguous()  # NCHW, as mmdet's ResNet
                    assert_close_to_scale(o, d, 2e-2)
                # Statistics and masks follow the replayed call, not the capture.
                assert torch.equal(graphed.las_stats['macs_dynamic_per_image'],
                                   eager.las_stats['macs_dynamic_per_image'])
                for name, mask in graphed.last_masks().items():
                    assert torch.equal(mask, eager.last_masks()[name]), name
    stats = graphed._graphs.stats
    assert stats['hits'] > 0 and stats['evictions'] > 0 and len(graphed._graphs) == 2


@requires_cuda
def test_graphs_honour_changing_pins_and_weights():
    backbone = make_backbone().cuda().half()
    x = torch.randn(1, 3, 96, 96, device='cuda', dtype=torch.half)
    with torch.no_grad():
        with backbone.pinned_masks(0.2, seed=1):
            low = float(backbone.las_stats['macs_dynamic']) if backbone(x) else None
        with backbone.pinned_masks(0.8, seed=1):
            backbone(x)
            high = float(backbone.las_stats['macs_dynamic'])
        assert high > low
        before = backbone(x)
        state = backbone.state_dict()
        state['layer4.2.bn3.bias'] = state['layer4.2.bn3.bias'] + 1.0
        backbone.load_state_dict(state)
        after = backbone(x)
        backbone.cuda_graph = False
        assert torch.equal(after[-1], backbone(x)[-1])
    assert not torch.equal(before[-1], after[-1])


@requires_cuda
def test_graph_cache_eager_fallback_returns_nchw():
    """Grad mode on with frozen weights: the sparse path runs, the graph cache calls the
    forward eagerly, and its channels-last stage outputs still reach the caller as NCHW."""
    backbone = make_backbone().cuda().half().requires_grad_(False)
    x = torch.randn(1, 3, 64, 96, device='cuda', dtype=torch.half)
    with torch.no_grad():
        ref = backbone(x)  # replayed
    outs = backbone(x)  # grad mode: eager
    assert backbone._graphs.stats['eager'] >= 1
    for o, r in zip(outs, ref):
        assert o.is_contiguous() and torch.equal(o, r)


@requires_cuda
def test_no_graph_while_hooks_watch_blocks():
    backbone = make_backbone().cuda().half()
    seen = []
    handle = backbone.layer2[0].register_forward_hook(lambda m, a, o: seen.append(1))
    x = torch.randn(1, 3, 64, 64, device='cuda', dtype=torch.half)
    with torch.no_grad():
        backbone(x)
        backbone(x)
    handle.remove()
    assert len(seen) == 2 and len(backbone._graphs) == 0


@requires_cuda
@pytest.mark.parametrize('dtype', [torch.float16, torch.bfloat16])
def test_autocast_runs_the_half_precision_kernels(dtype):
    backbone = make_backbone().cuda()  # fp32 weights, as mmdet's test loop has them
    x = torch.randn(1, 3, 96, 96, device='cuda')
    with torch.no_grad():
        ref = make_backbone(sparse_inference='off').cuda()(x)
        with torch.autocast('cuda', dtype=dtype):
            outs = backbone(x)
    for o, r in zip(outs, ref):
        assert o.dtype == dtype
        assert_close_to_scale(o, r, 3e-2)


def test_cpu_autocast_follows_bf16():
    backbone = make_backbone(sparse_inference='torch')
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        ref = backbone(x)
        with torch.autocast('cpu', dtype=torch.bfloat16):
            outs = backbone(x)
    for o, r in zip(outs, ref):
        assert o.dtype == torch.bfloat16
        assert_close_to_scale(o, r, 5e-2)


def test_eval_with_autograd_keeps_gradients():
    """Eval mode with autograd recording (e.g. saliency): dense-masked everywhere, so every
    weight, the stem's included, gets its gradient; an explicit sparse backend refuses."""
    backbone = make_backbone(sparse_inference='auto')
    x = torch.randn(1, 3, 64, 64, requires_grad=True)
    sum(o.sum() for o in backbone(x)).backward()
    assert backbone.conv1.weight.grad is not None and x.grad is not None
    backbone.sparse_inference = 'torch'
    with pytest.raises(ValueError, match='torch.no_grad'):
        backbone(x)


def test_support_check_and_folding_run_once_until_invalidated(monkeypatch):
    """The per-block support check and the BN folding run on the first sparse forward only;
    load_state_dict and train()/eval() make them run again (once)."""
    from lasnet_mmdet.models.backbones import las_resnet
    calls = {'reason': 0, 'fold': 0, 'stem': 0}

    def counted(name, fn):
        def wrapper(*args, **kwargs):
            calls[name] += 1
            return fn(*args, **kwargs)
        return wrapper
    for name, attr in (('reason', 'sparse_unsupported_reason'), ('fold', 'fold_bottleneck'),
                       ('stem', 'fold_conv')):
        monkeypatch.setattr(las_resnet, attr, counted(name, getattr(las_resnet, attr)))
    backbone = make_backbone(sparse_inference='torch')
    blocks = len(list(backbone.las_blocks()))
    x = torch.randn(1, 3, 64, 64)
    once = {'reason': blocks, 'fold': blocks, 'stem': 1}

    def forwards(n=3):
        before = dict(calls)
        with torch.no_grad():
            for _ in range(n):
                backbone(x)
        return {name: calls[name] - before[name] for name in calls}
    assert forwards() == once
    assert forwards() == {'reason': 0, 'fold': 0, 'stem': 0}
    backbone.load_state_dict(backbone.state_dict())
    assert forwards() == once
    backbone.train().eval()
    assert forwards() == once
