"""The fused stem epilogue (bias, ReLU, max-pool in one launch) equals PyTorch's three passes.

Without CUDA the kernel runs in Triton's interpreter on small CPU tensors (TRITON_INTERPRET is
set before the kernel is decorated: ``lasnet_mmdet.ops.triton`` is imported lazily).
"""
import os

import pytest
import torch
import torch.nn.functional as F

if not torch.cuda.is_available():
    os.environ.setdefault('TRITON_INTERPRET', '1')

pytest.importorskip('triton')

CUDA = torch.cuda.is_available()
DEVICE = 'cuda' if CUDA else 'cpu'
DTYPES = [torch.float32, torch.float16] + ([torch.bfloat16] if CUDA else [])

pytestmark = pytest.mark.usefixtures('no_tf32')  # tests/conftest.py: fp32 references in fp32


@pytest.mark.parametrize('dtype', DTYPES, ids=str)
@pytest.mark.parametrize('batch,c,h,w', [(1, 64, 16, 24), (2, 24, 13, 7), (1, 8, 2, 3)])
def test_stem_pool_equals_bias_relu_then_max_pool(batch, c, h, w, dtype):
    """Exactly equal: bias + rounding and ReLU are monotone, so they commute with the max."""
    from lasnet_mmdet.ops.triton.stem_pool import stem_pool
    g = torch.Generator().manual_seed(0)
    y = torch.randn(batch, c, h, w, generator=g).to(DEVICE, dtype)
    bias = torch.randn(c, generator=g).to(DEVICE, dtype)
    want = F.max_pool2d(F.relu(y + bias.view(1, c, 1, 1)), 3, 2, 1)
    for layout in (torch.channels_last, torch.contiguous_format):
        got = stem_pool(y.contiguous(memory_format=layout), bias)
        assert got.is_contiguous(memory_format=torch.channels_last)
        assert got.shape == want.shape and got.dtype == dtype
        assert torch.equal(got, want)


def test_stem_pool_names_bad_arguments():
    from lasnet_mmdet.ops.triton.stem_pool import stem_pool
    y = torch.zeros(1, 4, 8, 8, device=DEVICE)
    with pytest.raises(ValueError, match=r'bias \(C, \)'):
        stem_pool(y, torch.zeros(3, device=DEVICE))
    with pytest.raises(ValueError, match='padding must be at most'):
        stem_pool(y, torch.zeros(4, device=DEVICE), kernel=3, padding=2)
    with pytest.raises(ValueError, match='smaller than the pooling window'):
        stem_pool(torch.zeros(1, 4, 1, 1, device=DEVICE), torch.zeros(4, device=DEVICE),
                  kernel=5, padding=1)


@pytest.mark.parametrize('ceil_mode', [False, True], ids=['fused', 'ceil-mode-pool-alone'])
def test_las_backbone_with_the_fused_stem_equals_off(ceil_mode):
    """The Triton backbone (its stem through ``stem_pool``; a max-pool it cannot take, e.g.
    ceil_mode, runs on its own) gives the dense-masked path's outputs."""
    from ops_helpers import randomise_bn

    from lasnet_mmdet.models import LASResNet
    torch.manual_seed(0)
    backbone = LASResNet(depth=50, num_stages=1, out_indices=(0, ), strides=(1, ),
                         dilations=(1, ), granularity=(2, ), sparse_inference='off').eval()
    randomise_bn(backbone)  # a non-zero stem bias
    backbone.maxpool.ceil_mode = ceil_mode
    assert (backbone._fusable_maxpool() is None) == ceil_mode
    backbone.to(DEVICE)
    x = torch.randn(1, 3, 37, 45, device=DEVICE)
    with torch.no_grad(), backbone.pinned_masks(0.5, seed=1):
        ref = backbone(x)
        backbone.sparse_inference = 'triton'
        out = backbone(x)
    for o, r in zip(out, ref):
        assert o.shape == r.shape
        assert (o - r).abs().max() <= 1e-4 * r.abs().max()


@pytest.mark.skipif(CUDA, reason='checks the refusal without a CUDA device')
def test_benchmark_tool_refuses_to_run_without_cuda(capsys):
    import importlib.util
    from pathlib import Path
    path = Path(__file__).parents[2] / 'tools' / 'benchmark_stem_pool.py'
    spec = importlib.util.spec_from_file_location('benchmark_stem_pool', path)
    tool = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tool)
    with pytest.raises(SystemExit) as exit_info:
        tool.main(['--batch', '1'])
    assert exit_info.value.code == 2
    assert 'needs a CUDA device' in capsys.readouterr().err
