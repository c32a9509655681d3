"""The fused masker + conv1 launch: the masker's decision and the sparse block's output.

``sparse_bottleneck_with_masker`` must decide as ``Masker`` does (up to near-ties) and give
the dense-masked block's output under the mask it decided (or a pinned one). Without CUDA the
kernels run in Triton's interpreter on small CPU tensors (TRITON_INTERPRET is set before the
kernels are decorated: ``lasnet_mmdet.ops.triton`` is imported lazily).
"""
import os
import sys

import pytest
import torch

if not torch.cuda.is_available():
    os.environ.setdefault('TRITON_INTERPRET', '1')

from lasnet_mmdet.ops import sparse_bottleneck_with_masker  # noqa: E402

pytest.importorskip('triton')

sys.path.insert(0, os.path.dirname(__file__))
from ops_helpers import (assert_close_to_scale, coarse_for, dense_masked_forward,  # noqa: E402
                         make_block)

CUDA = torch.cuda.is_available()
requires_cuda = pytest.mark.skipif(not CUDA, reason='needs a CUDA device')
DEVICE = 'cuda' if CUDA else 'cpu'
pytestmark = pytest.mark.usefixtures('no_tf32')  # tests/conftest.py

# (inplanes, planes, S, stride, downsample, batch, H, W): windows (stride x S) 1, 2, 4 and 8,
# sizes the window does not divide, identity and downsample blocks, batch 2.
CASES = [
    (64, 16, 1, 1, False, 1, 6, 7),
    (64, 16, 2, 1, True, 2, 9, 11),
    (32, 16, 2, 2, True, 1, 9, 9),
    (64, 16, 4, 1, False, 1, 16, 12),
    (32, 16, 4, 2, True, 2, 13, 10),
    (64, 16, 8, 1, False, 1, 10, 17),
]


def _block(case, device=DEVICE, dtype=torch.float32):
    inplanes, planes, s, stride, down, batch, h, w = case
    block = make_block(inplanes, planes, s, stride, down).to(device, dtype)
    # Zero biases: the decision follows the input (about half the cells execute).
    block.masker.conv2.bias.data.zero_()
    x = torch.randn(batch, inplanes, h, w, device=device, dtype=dtype)
    return block, x


def _fused(block, x, **kwargs):
    with torch.no_grad():
        return sparse_bottleneck_with_masker(
            x, block.masker_columns(x.dtype), block.masker.conv2.bias,
            block.folded_weights(x.dtype, 'triton'), block.granularity, block.stride, **kwargs)


def _masker_reference(block, x):
    """Torch decision and the margins ``execute - skip`` (fp32, ``Masker.logits``)."""
    with torch.no_grad():
        logits = block.masker.float().logits(x.float())
    block.masker.to(x.dtype)
    return (logits[:, :1] >= logits[:, 1:]).to(x.dtype), logits[:, :1] - logits[:, 1:]


@pytest.mark.parametrize('case', CASES, ids=str)
def test_decides_as_the_masker_and_runs_the_block_on_its_mask(case):
    block, x = _block(case)
    out, coarse = _fused(block, x)
    ref_mask, margin = _masker_reference(block, x)
    clear = margin.abs() > 1e-4  # near-ties may round either way
    assert coarse.shape == ref_mask.shape and clear.float().mean() > 0.9
    assert torch.equal(coarse[clear], ref_mask[clear])
    assert 0 < coarse.mean() < 1 or coarse.numel() < 4  # both decisions are tested
    with torch.no_grad():
        ref = dense_masked_forward(block, x, coarse)
    assert_close_to_scale(out, ref, 1e-4)


@pytest.mark.parametrize('run_masker', [True, False])
@pytest.mark.parametrize('rate', [0.0, 0.5, 1.0])
@pytest.mark.parametrize('case', [CASES[1], CASES[4]], ids=str)
def test_pinned_mask_replaces_the_decision(case, rate, run_masker):
    block, x = _block(case)
    pin = coarse_for(block, x, rate, seed=3)
    out, coarse = _fused(block, x, pin=pin, run_masker=run_masker)
    assert torch.equal(coarse, pin)
    with torch.no_grad():
        ref = dense_masked_forward(block, x, pin)
    assert_close_to_scale(out, ref, 1e-4)


def test_identity_block_in_place_matches():
    """An identity block allowed to (a previous block's output, >= 0) updates x in place."""
    block, x = _block(CASES[3])
    x = x.relu().contiguous(memory_format=torch.channels_last)
    with torch.no_grad():
        expected_mask = _fused(block, x.clone())[1]
        ref = dense_masked_forward(block, x, expected_mask)
    out, coarse = _fused(block, x, reuse_output=True)
    assert out.data_ptr() == x.data_ptr() and torch.equal(coarse, expected_mask)
    assert_close_to_scale(out, ref, 1e-4)


def test_bad_inputs_name_the_bad_value():
    block, x = _block(CASES[0])
    weights = block.folded_weights(x.dtype, 'triton')
    columns, bias = block.masker_columns(x.dtype), block.masker.conv2.bias
    with pytest.raises(ValueError, match=r'3 x 1'):
        sparse_bottleneck_with_masker(x, columns, bias, weights, 1, 3)
    with pytest.raises(ValueError, match=r'\(64, 16\)'):
        sparse_bottleneck_with_masker(x, columns[:, :2], bias, weights, 1, 1)
    with pytest.raises(ValueError, match='pinned mask'):
        sparse_bottleneck_with_masker(x, columns, bias, weights, 1, 1,
                                      pin=torch.zeros(1, 1, 2, 2, device=x.device))


def test_block_fuses_only_without_masker_hooks(monkeypatch):
    """A hook on the masker sees it called: the block then runs it on its own."""
    import lasnet_mmdet.ops.triton.launcher as launcher
    block, x = _block(CASES[3])
    block.sparse_inference = 'triton'
    calls, seen = [], []
    launch = launcher.conv1_masker

    def counting(*args, **kwargs):
        calls.append(1)
        return launch(*args, **kwargs)

    monkeypatch.setattr(launcher, 'conv1_masker', counting)
    with torch.no_grad():
        fused_out = block(x)
        assert len(calls) == 1
        handle = block.masker.register_forward_hook(lambda m, i, o: seen.append(o))
        hooked_out = block(x)
        handle.remove()
    assert len(calls) == 1 and len(seen) == 1
    assert torch.equal(seen[0], block.last_coarse_mask)
    assert_close_to_scale(fused_out, hooked_out, 1e-5)


@requires_cuda
@pytest.mark.parametrize('dtype', [torch.float16, torch.bfloat16])
@pytest.mark.parametrize('case', CASES, ids=str)
def test_half_precision(case, dtype):
    block, x = _block(case, 'cuda', dtype)
    out, coarse = _fused(block, x)
    with torch.no_grad():
        ref = dense_masked_forward(block.float(), x.float(), coarse.float())
    assert_close_to_scale(out, ref, 2e-2)


@requires_cuda
def test_realistic_shape_and_graph_capture():
    """A ResNet stage-2 block at 100x152, batch 2, captured in a CUDA graph: a new input
    replays into new decisions and outputs."""
    block, _ = _block((512, 128, 4, 1, False, 2, 100, 152), 'cuda', torch.half)
    x = torch.randn(2, 512, 100, 152, device='cuda', dtype=torch.half)
    _fused(block, x)  # compile outside the capture
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        out, coarse = _fused(block, x)
    x.copy_(torch.randn_like(x))
    graph.replay()
    with torch.no_grad():
        ref_mask = _fused(block, x.clone())[1]
        ref = dense_masked_forward(block, x, coarse)
    assert torch.equal(coarse, ref_mask)
    assert_close_to_scale(out, ref, 2e-2)


def test_kernel_benchmark_times_conv1_as_the_backbone_runs_it():
    """``tools/benchmark_kernels.py`` times conv1 through the fused launch where the window
    fits (every pixel, a fresh row list each replay; beside it the plain GEMM over the same
    pixels) and the gathered GEMM where not."""
    sys.path.insert(0, os.path.join(os.path.dirname(__file__), '..', '..', 'tools'))
    from benchmark_kernels import Layer, layers
    lays = {(lay['stage'], lay['name']): lay for lay in layers(64, 64)}
    bench = Layer(lays[(1, 'conv1')], 1, 0.5, (4, 4, 2, 1), torch.float32, 'kn', device=DEVICE)
    assert bench.fused and bench.rows_done == 16 * 16
    for _ in range(2):  # replayed: the counters start from zero each time
        bench.sparse()()
        assert bench.counts[1:].sum().item() == 16 * 16
    x_rows = bench.x.permute(0, 2, 3, 1).reshape(-1, bench.x.shape[1])
    assert_close_to_scale(bench.out, (x_rows @ bench.w + bench.b).relu(), 1e-4)
    bench.plain()()  # the same conv1 as a plain GEMM over every pixel: the same map
    assert_close_to_scale(bench.plain_out, bench.out, 1e-5)
    unfused = Layer(lays[(1, 'conv1')], 1, 0.5, (7, 4, 2, 1), torch.float32, 'kn',
                    device=DEVICE)
    assert not unfused.fused and unfused.rows_done < 16 * 16
    with pytest.raises(ValueError, match='plain'):
        unfused.plain()


@pytest.mark.parametrize('decide,pinned', [(True, False), (True, True), (False, True)])
@pytest.mark.parametrize('window,s', [(2, 2), (4, 2), (1, 1)])
def test_one_conv1_program_deciding_equals_a_masker_program(window, s, decide, pinned):
    """conv1 of one N tile per M tile decides in that program (``MERGED``); with two N tiles
    one more program per M tile does. Both give the same decisions and row lists, and the
    same conv1 map (the same K loop per output either way)."""
    from lasnet_mmdet.ops.triton.conv1_masker import conv1_masker
    from lasnet_mmdet.ops.triton.gemm import Tile
    g = torch.Generator().manual_seed(0)
    batch, c, n, h, w = 2, 64, 64, 11, 9
    stride = window // s
    ho, wo = (h - 1) // stride + 1, (w - 1) // stride + 1
    ch, cw = -(-ho // s), -(-wo // s)
    x = torch.randn(batch, c, h, w, generator=g).to(DEVICE).contiguous(
        memory_format=torch.channels_last)
    w1 = (torch.randn(c, n, generator=g) / 8).to(DEVICE)
    b1, mb = torch.randn(n, generator=g).to(DEVICE), torch.zeros(2, device=DEVICE)
    mw = torch.zeros(c, 16, device=DEVICE)
    mw[:, :2] = torch.randn(c, 2, generator=g).to(DEVICE)
    pin = ((torch.rand(batch, 1, ch, cw, generator=g) < 0.5).float().to(DEVICE)
           if pinned else None)
    results = []
    for block_n in (64, 32):  # one N tile (merged), two (a masker program)
        tile = Tile(16, block_n, 32, 1, 1) if not CUDA else Tile(64, block_n, 32, 4, 2)
        mid = torch.full((batch * h * w, n), float('nan'), device=DEVICE)
        coarse = torch.empty(batch, 1, ch, cw, device=DEVICE)
        active = torch.full((batch * ho * wo, ), -1, dtype=torch.int32, device=DEVICE)
        counts = torch.zeros(2, dtype=torch.int32, device=DEVICE)
        conv1_masker(x, w1, b1, mid, mw, mb, coarse, active, counts, window, s, (ho, wo),
                     pin=pin, decide=decide, ieee=True, tile=tile)
        n_act = int(counts[0])
        results.append((mid, coarse, counts.tolist(), set(active[:n_act].tolist()),
                        set(active[n_act:].tolist())))
    (mid_a, coarse_a, *lists_a), (mid_b, coarse_b, *lists_b) = results
    assert not mid_a.isnan().any() and torch.allclose(mid_a, mid_b, rtol=1e-5, atol=1e-5)
    assert torch.equal(coarse_a, coarse_b) and 0 < coarse_a.mean() < 1
    assert lists_a == lists_b and sum(lists_a[0]) == batch * ho * wo
    if not pinned:  # the decisions are the masker's
        pooled = torch.nn.functional.avg_pool2d(x.float(), window, ceil_mode=True)
        logits = torch.einsum('bchw,ck->bkhw', pooled, mw[:, :2].float())
        margin = logits[:, :1] - logits[:, 1:]
        clear = margin.abs() > 1e-4  # (near-ties may go either way: other sum orders)
        assert torch.equal(coarse_a[clear], (margin >= 0).float()[clear])
