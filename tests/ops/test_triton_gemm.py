"""The Triton kernels of the sparse path on their own: the row GEMM and the 3x3 row conv equal
PyTorch's, write only their list's rows, and take their tiles from channels, dtype, GPU and
which side of one row count the largest list lies, so a new image size compiles nothing
(counted on the device).

Without CUDA the kernels run in Triton's interpreter (set before they are decorated).
"""
import functools
import json
import math
import os
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

if not torch.cuda.is_available():
    os.environ.setdefault('TRITON_INTERPRET', '1')
triton = pytest.importorskip('triton')

from lasnet_mmdet.ops.triton.gemm import (HOPPER_16BIT, HOPPER_32BIT,  # noqa: E402
                                          Downsample, Tile, Tiles, conv3x3_rows, rows_gemm,
                                          tile_config)

CUDA = torch.cuda.is_available()
DEVICE = 'cuda' if CUDA else 'cpu'
requires_cuda = pytest.mark.skipif(not CUDA, reason='needs a CUDA device')
DTYPES = [torch.float32, torch.float16] + ([torch.bfloat16] if CUDA else [])  # (no bf16 in
# the interpreter: numpy has none)


pytestmark = pytest.mark.usefixtures('no_tf32')  # tests/conftest.py


def _tol(dtype, ieee):
    if dtype == torch.float32:
        return 1e-5 if ieee or not CUDA else 5e-3  # TF32 products on the GPU
    return 5e-3 if dtype == torch.float16 else 2e-2


def _rel_err(out, ref):
    return float((out.float() - ref.float()).abs().max() / ref.float().abs().max())


def _row_list(total, fraction, seed):
    g = torch.Generator().manual_seed(seed)
    n = max(1, int(total * fraction))
    return torch.randperm(total, generator=g)[:n].to(torch.int32).to(DEVICE)


def _as_layout(w_kn, layout):
    """The K x N weight as given ('kn'), or as the K x N view of an N x K tensor ('nk')."""
    return w_kn if layout == 'kn' else w_kn.t().contiguous().t()


@pytest.mark.parametrize('layout', ['kn', 'nk'])
@pytest.mark.parametrize('ieee', [True, False])
@pytest.mark.parametrize('dtype', DTYPES, ids=str)
@pytest.mark.parametrize('batch,c,n,h,w,stride', [(2, 16, 32, 7, 9, 1), (1, 48, 16, 9, 6, 2),
                                                  (1, 64, 64, 5, 5, 1)])
def test_conv3x3_rows_equals_conv2d(batch, c, n, h, w, stride, dtype, ieee, layout):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(batch, c, h, w, generator=g)
    weight = torch.randn(n, c, 3, 3, generator=g) / math.sqrt(9 * c)
    bias = torch.randn(n, generator=g)
    ref = F.relu(F.conv2d(x.to(dtype).double(), weight.to(dtype).double(),
                          bias.to(dtype).double(), stride, 1))
    ho, wo = ref.shape[2:]
    rows = _row_list(batch * ho * wo, 0.6, seed=1)
    count = torch.tensor([rows.numel()], dtype=torch.int32, device=DEVICE)
    x_rows = x.permute(0, 2, 3, 1).reshape(-1, c).to(DEVICE, dtype).contiguous()
    w_kn = _as_layout(weight.permute(2, 3, 1, 0).reshape(9 * c, n).to(DEVICE, dtype)
                      .contiguous(), layout)
    out = torch.full((batch * ho * wo, n), float('nan'), device=DEVICE, dtype=dtype)
    conv3x3_rows(x_rows, w_kn, bias.to(DEVICE, dtype), out, rows, count, batch * ho * wo,
                 (h, w), (ho, wo), stride, ieee=ieee)
    want = ref.permute(0, 2, 3, 1).reshape(-1, n)[rows.long().cpu()]
    got = out[:rows.numel()].cpu()
    assert not got.isnan().any()
    assert _rel_err(got, want) < _tol(dtype, ieee)
    assert out[rows.numel():].isnan().all()  # nothing written past the list


@pytest.mark.parametrize('dtype', DTYPES, ids=str)
@pytest.mark.parametrize('split_k', [2, 3, 4])
def test_conv3x3_rows_split_k_sums_its_parts_in_a_fixed_order(split_k, dtype):
    """A tile with ``split_k``: the parts of each output tile's K loop (here 9 taps x 2 channel
    blocks, not a multiple of 3 or 4) add up to the unsplit conv, bit for bit the same on a
    second launch (the order of the sum does not depend on which part arrives last), and the
    semaphores are left at zero (a CUDA graph or the next block reuses them), also when they
    come from a forward's pool; nothing is written past the list."""
    from lasnet_mmdet.ops import counters
    g = torch.Generator().manual_seed(0)
    batch, c, n, h, w, stride = 2, 48, 32, 9, 7, 1
    x = torch.randn(batch, c, h, w, generator=g)
    weight = torch.randn(n, c, 3, 3, generator=g) / math.sqrt(9 * c)
    bias = torch.randn(n, generator=g)
    ref = F.relu(F.conv2d(x.to(dtype).double(), weight.to(dtype).double(),
                          bias.to(dtype).double(), stride, 1))
    rows = _row_list(batch * h * w, 0.7, seed=2)
    count = torch.tensor([rows.numel()], dtype=torch.int32, device=DEVICE)
    x_rows = x.permute(0, 2, 3, 1).reshape(-1, c).to(DEVICE, dtype).contiguous()
    w_kn = weight.permute(2, 3, 1, 0).reshape(9 * c, n).to(DEVICE, dtype).contiguous()
    tile = Tile(16, 16, 32, 1, 1, split_k) if not CUDA else Tile(32, 32, 32, 4, 2, split_k)

    def run():
        out = torch.full((batch * h * w, n), float('nan'), device=DEVICE, dtype=dtype)
        conv3x3_rows(x_rows, w_kn, bias.to(DEVICE, dtype), out, rows, count, batch * h * w,
                     (h, w), (h, w), stride, ieee=True, tile=tile)
        return out

    dev = x_rows.device
    with counters.counters_for(3, dev, semaphores=64):
        first, second = run(), run()
        pool = counters.zeroed_semaphores(64, dev)
    assert pool._base is not None and pool.eq(0).all()
    assert torch.equal(first[:rows.numel()], second[:rows.numel()])
    want = ref.permute(0, 2, 3, 1).reshape(-1, n)[rows.long().cpu()]
    got = first[:rows.numel()].cpu()
    assert not got.isnan().any()
    assert _rel_err(got, want) < _tol(dtype, True)
    assert first[rows.numel():].isnan().all()
    with pytest.raises(ValueError, match='semaphores: .* int32 needed, got 1 torch.int32'):
        conv3x3_rows(x_rows, w_kn, bias.to(DEVICE, dtype), first, rows, count, batch * h * w,
                     (h, w), (h, w), stride, tile=tile,
                     semaphores=torch.zeros(1, dtype=torch.int32, device=DEVICE))
    if CUDA:  # replays of a captured launch: the semaphores are reset every time
        with counters.counters_for(3, dev, semaphores=64):
            graph_out = torch.full_like(first, float('nan'))
            sems = counters.zeroed_semaphores(64, dev)
            run()  # compiled outside the capture
            bias_dev = bias.to(DEVICE, dtype)  # (no host copy inside a capture)
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph):
                conv3x3_rows(x_rows, w_kn, bias_dev, graph_out, rows, count,
                             batch * h * w, (h, w), (h, w), stride, ieee=True, tile=tile)
            for _ in range(3):
                graph.replay()
            torch.cuda.synchronize()
            assert torch.equal(graph_out[:rows.numel()], first[:rows.numel()])
            assert sems.eq(0).all()


@pytest.mark.parametrize('layout', ['kn', 'nk'])
@pytest.mark.parametrize('dtype', DTYPES, ids=str)
@pytest.mark.parametrize('gather,scatter,with_res', [(True, True, False), (False, True, True),
                                                     (True, False, False)])
def test_rows_gemm_equals_matmul(gather, scatter, with_res, dtype, layout):
    g = torch.Generator().manual_seed(2)
    total, k, n = 50, 48, 80
    a = torch.randn(total, k, generator=g).to(DEVICE, dtype)
    w = _as_layout((torch.randn(k, n, generator=g) / math.sqrt(k)).to(DEVICE, dtype), layout)
    bias = torch.randn(n, generator=g).to(DEVICE, dtype)
    res = torch.randn(total, n, generator=g).to(DEVICE, dtype) if with_res else None
    rows = _row_list(total, 0.5, seed=3)
    m = rows.numel()
    count = torch.tensor([m], dtype=torch.int32, device=DEVICE)
    out = torch.full((total, n), float('nan'), device=DEVICE, dtype=dtype)
    rows_gemm(a, w, bias, out, rows, count, total, gather_a=gather, scatter_out=scatter, res=res)
    src = rows.long() if gather else torch.arange(m, device=DEVICE)
    dst = rows.long() if scatter else torch.arange(m, device=DEVICE)
    want = a[src].double() @ w.double() + bias.double()
    if with_res:
        want = want + res[dst].double()
    want = want.relu()
    assert _rel_err(out[dst], want) < _tol(dtype, True)
    untouched = torch.ones(total, dtype=torch.bool, device=DEVICE)
    untouched[dst] = False
    assert out[untouched].isnan().all()


@pytest.mark.parametrize('dtype', DTYPES, ids=str)
@pytest.mark.parametrize('with_res_bias', [False, True], ids=['res', 'res+bias'])
@pytest.mark.parametrize('active', [0, 17, 50])
def test_rows_gemm_relu_rest_writes_the_whole_output(active, with_res_bias, dtype):
    """conv3's launch: the list holds every row, active first; GEMM + residual (+ the
    downsample's bias) + ReLU at the active rows and ReLU(residual (+ bias)) at the others,
    nothing left unwritten (all or none active too)."""
    g = torch.Generator().manual_seed(4)
    total, k, n = 50, 32, 72
    a = torch.randn(total, k, generator=g).to(DEVICE, dtype)
    w = (torch.randn(k, n, generator=g) / math.sqrt(k)).to(DEVICE, dtype)
    bias = torch.randn(n, generator=g).to(DEVICE, dtype)
    res = torch.randn(total, n, generator=g).to(DEVICE, dtype)
    res_bias = torch.randn(n, generator=g).to(DEVICE, dtype) if with_res_bias else None
    rows = torch.randperm(total, generator=g).to(DEVICE, torch.int32)
    count = torch.tensor([active], dtype=torch.int32, device=DEVICE)
    out = torch.full((total, n), float('nan'), device=DEVICE, dtype=dtype)
    rows_gemm(a, w, bias, out, rows, count, total, gather_a=False, scatter_out=True, res=res,
              res_bias=res_bias, relu_rest=True)
    on, off = rows[:active].long(), rows[active:].long()
    residual = res.double() + (0 if res_bias is None else res_bias.double())
    want = (a[:active].double() @ w.double() + bias.double() + residual[on]).relu()
    assert not out.isnan().any()
    if active:
        assert _rel_err(out[on], want) < _tol(dtype, True)
    if res_bias is None:
        assert torch.equal(out[off], res[off].relu())
    else:  # the fp32 sum, rounded once
        want_off = (res[off].float() + res_bias.float()).relu().to(dtype)
        assert torch.equal(out[off], want_off)
    for kwargs in (dict(relu_rest=True), dict(res_bias=bias)):
        with pytest.raises(ValueError, match='relu_rest and res_bias need res or downsample'):
            rows_gemm(a, w, bias, out, rows, count, total, False, True, **kwargs)


@pytest.mark.parametrize('dtype', DTYPES, ids=str)
@pytest.mark.parametrize('stride', [1, 2])
@pytest.mark.parametrize('active', [0, 9, 'all'])
def test_rows_gemm_runs_the_downsample_conv_in_its_launch(active, stride, dtype):
    """A downsample block's conv3 launch: relu(conv3 + bias + downsample(x) + its bias) at
    the active rows and relu(downsample(x) + its bias) at the others, the 1x1 conv read at its
    stride from the channels-last block input (odd sizes: the last row and column count)."""
    g = torch.Generator().manual_seed(6)
    batch, c, h, w, k, n = 2, 24, 7, 5, 16, 40
    ho, wo = (h - 1) // stride + 1, (w - 1) // stride + 1
    total = batch * ho * wo
    active = total if active == 'all' else active
    x = torch.randn(batch, c, h, w, generator=g).to(DEVICE, dtype).contiguous(
        memory_format=torch.channels_last)
    w_ds = (torch.randn(n, c, 1, 1, generator=g) / math.sqrt(c)).to(DEVICE, dtype)
    a = torch.randn(total, k, generator=g).to(DEVICE, dtype)
    w3 = (torch.randn(k, n, generator=g) / math.sqrt(k)).to(DEVICE, dtype)
    bias, ds_bias = (torch.randn(n, generator=g).to(DEVICE, dtype) for _ in range(2))
    rows = torch.randperm(total, generator=g).to(DEVICE, torch.int32)
    count = torch.tensor([active], dtype=torch.int32, device=DEVICE)
    out = torch.full((batch, n, ho, wo), float('nan'), device=DEVICE, dtype=dtype).contiguous(
        memory_format=torch.channels_last)
    ds = Downsample(x, w_ds.reshape(n, c).t(), stride)
    rows_gemm(a, w3, bias, out, rows, count, total, gather_a=False, scatter_out=True,
              res_bias=ds_bias, relu_rest=True, downsample=ds)
    residual = F.conv2d(x.double(), w_ds.double(), ds_bias.double(), stride=stride)
    residual = residual.permute(0, 2, 3, 1).reshape(total, n)
    out_rows = out.permute(0, 2, 3, 1).reshape(total, n)
    on, off = rows[:active].long(), rows[active:].long()
    assert not out.isnan().any()
    if active:
        want = (a[:active].double() @ w3.double() + bias.double() + residual[on]).relu()
        assert _rel_err(out_rows[on], want) < _tol(dtype, True)
    if active < total:
        assert _rel_err(out_rows[off], residual[off].relu()) < _tol(dtype, True)
    with pytest.raises(ValueError, match='res or downsample, not both'):
        rows_gemm(a, w3, bias, out, rows, count, total, False, True, res=out_rows,
                  downsample=ds)
    with pytest.raises(ValueError, match=r'downsample: a \(24, 40\) weight'):
        rows_gemm(a, w3, bias, out, rows, count, total, False, True, relu_rest=True,
                  downsample=ds._replace(stride=3 - stride))


@pytest.mark.parametrize('stride,s', [(1, 1), (1, 3), (2, 2)])
def test_compact_rows_lists_needed_rows_and_partitions_the_output(stride, s):
    """The needed rows are the dilated mask at conv1's resolution; the output list is every
    output row once, the active ones (``counts[1]``) first, then the ``counts[2]`` others."""
    from lasnet_mmdet.ops.geometry import conv_out
    from lasnet_mmdet.ops.triton.compact import compact_rows

    batch, h, w = 2, 11, 9
    ho, wo = conv_out(h, stride), conv_out(w, stride)
    g = torch.Generator().manual_seed(5)
    coarse = (torch.rand(batch, 1, -(-ho // s), -(-wo // s), generator=g) < 0.4).float()
    counts = torch.zeros(3, dtype=torch.int32, device=DEVICE)
    needed = torch.full((batch * h * w, ), -1, dtype=torch.int32, device=DEVICE)
    rows = torch.full((batch * ho * wo, ), -1, dtype=torch.int32, device=DEVICE)
    compact_rows(coarse.to(DEVICE), counts, needed, rows, (h, w), (ho, wo), s, stride)
    n_needed, n_active, n_inactive = counts.tolist()

    fine = coarse.repeat_interleave(s, 2).repeat_interleave(s, 3)[:, :, :ho, :wo]
    want_active = fine.flatten().nonzero().flatten()
    # conv1 pixels read by a 3x3, stride-s conv at the active outputs (zero padding 1): the
    # transposed conv spreads each active output over them (output_padding: back to h x w).
    reach = F.conv_transpose2d(fine, torch.ones(1, 1, 3, 3), stride=stride, padding=1,
                               output_padding=(h - 1 - (ho - 1) * stride,
                                               w - 1 - (wo - 1) * stride))
    want_needed = (reach.flatten() > 0).nonzero().flatten()

    assert n_active + n_inactive == batch * ho * wo
    assert sorted(rows[:n_active].tolist()) == want_active.tolist()
    assert sorted(rows.tolist()) == list(range(batch * ho * wo))
    assert sorted(needed[:n_needed].tolist()) == want_needed.tolist()


def test_tile_depends_on_channels_dtype_and_gpu_only(monkeypatch):
    monkeypatch.delenv('TRITON_INTERPRET', raising=False)
    shapes = [(n, k) for n, k in [(64, 64), (64, 256), (256, 64), (128, 512), (512, 128),
                                  (256, 1024), (1024, 256), (512, 2048), (2048, 512)]]
    for dtype in (torch.float16, torch.bfloat16, torch.float32):
        for n, k in shapes:
            for max_rows in (1, 10**6):
                t = tile_config('gemm', n, k, dtype, torch.device('cpu'), max_rows)
                assert isinstance(t, Tile) and t.block_k >= 16
                if dtype == torch.float32:
                    assert t.block_k <= 32  # half the K per stage: same shared memory as 16-bit
        for c in (64, 128, 256, 512):
            assert isinstance(tile_config('conv3x3', c, 9 * c, dtype, 'cpu', 100), Tile)
    for table in (HOPPER_16BIT, HOPPER_32BIT):
        for (kernel, n, k), entry in table.items():
            assert kernel in ('gemm', 'conv3x3')
            tiles = [entry] if isinstance(entry, Tile) else [entry.few_rows, entry.many_rows]
            if isinstance(entry, Tiles):
                assert entry.few_rows != entry.many_rows and entry.split_rows > 0
            for t in tiles:
                assert isinstance(t, Tile)
                for v in (t.block_m, t.block_n, t.block_k, t.num_warps):
                    assert v & (v - 1) == 0
                assert t.block_k >= 16 and t.num_stages >= 1


def test_tiles_switch_at_their_row_count_from_a_tuning_file(monkeypatch, tmp_path):
    """A ``--tune`` JSON with two tiles for a key: lists up to ``split_rows`` rows get the
    few-rows tile, longer ones the other; the file applies to the dtype it was tuned in."""
    sys.path.insert(0, str(Path(__file__).parents[2] / 'tools'))
    from benchmark_kernels import tune_table
    few, many = (64, 64, 64, 4, 4), (128, 256, 64, 8, 3)
    # Times / best per layer, per batch: batch 1 prefers `few`, batch 8 `many`.
    tune = {('conv3x3', 256, 2304): {1: {few: [1.0, 1.0], many: [2.0, 2.1]},
                                     8: {few: [1.6, 1.5], many: [1.0, 1.0]}},
            ('gemm', 64, 64): {1: {few: [1.0], many: [1.3]}, 8: {few: [1.0], many: [1.2]}}}
    table = tune_table(tune, {('conv3x3', 256, 2304): {1: 100, 8: 900},
                              ('gemm', 64, 64): {1: 10, 8: 80}})
    assert table == [dict(kernel='conv3x3', N=256, K=2304, few_rows=list(few),
                          many_rows=list(many), split_rows=300),
                     dict(kernel='gemm', N=64, K=64, tile=list(few))]
    path = tmp_path / 'tiles.json'
    path.write_text(json.dumps(dict(dtype='fp16', table=table)))
    monkeypatch.delenv('TRITON_INTERPRET', raising=False)
    monkeypatch.setenv('LASNET_TRITON_TILES', str(path))
    pick = functools.partial(tile_config, 'conv3x3', 256, 2304, device='cpu')
    assert pick(torch.float16, max_rows=300) == Tile(*few)
    assert pick(torch.bfloat16, max_rows=301) == Tile(*many)
    assert tile_config('gemm', 64, 64, torch.float16, 'cpu', 10**6) == Tile(*few)
    # An fp16 file leaves fp32 to the built-in choice.
    assert pick(torch.float32, max_rows=300) not in (Tile(*few), Tile(*many))


@requires_cuda
def test_a_new_image_size_compiles_nothing():
    """A LAS bottleneck's kernels at one size, then at sizes of other divisibility (and batch):
    no kernel is compiled again (spatial sizes are runtime arguments; tiles come from channels)."""
    import triton.language as tl
    from triton import knobs

    from lasnet_mmdet.ops.triton.compact import compact_rows
    from lasnet_mmdet.ops.triton.layout import cl_to_nchw
    from lasnet_mmdet.ops.triton.masker import masker_decision

    compiled = []

    def block(batch, h, w, stride=2, s=2, c_in=64, mid=32):
        ho, wo = (h - 1) // stride + 1, (w - 1) // stride + 1
        x = torch.randn(batch, c_in, h, w, device='cuda', dtype=torch.float16).contiguous(
            memory_format=torch.channels_last)
        mw, mb = torch.randn(2, c_in, device='cuda'), torch.zeros(2, device='cuda')
        coarse = masker_decision(x, mw.half(), mb.half(), stride * s)
        counts = torch.zeros(3, dtype=torch.int32, device='cuda')
        # Lists sliced from one buffer at size-dependent offsets, as a workspace may do.
        lists = torch.empty(batch * (h * w + ho * wo) + 1, dtype=torch.int32, device='cuda')
        needed, active = lists[1:1 + batch * h * w], lists[1 + batch * h * w:]
        compact_rows(coarse, counts, needed, active, (h, w), (ho, wo), s, stride)
        x_rows = x.permute(0, 2, 3, 1).reshape(-1, c_in)
        mid_map = torch.empty(batch * h * w, mid, device='cuda', dtype=torch.float16)
        w1 = torch.randn(c_in, mid, device='cuda', dtype=torch.float16)
        b = torch.randn(4 * mid, device='cuda', dtype=torch.float16)
        rows_gemm(x_rows, w1, b[:mid], mid_map, needed, counts[0:], batch * h * w, True, True)
        y2 = torch.empty(batch * ho * wo, mid, device='cuda', dtype=torch.float16)
        w2 = torch.randn(9 * mid, mid, device='cuda', dtype=torch.float16)
        conv3x3_rows(mid_map, w2, b[:mid], y2, active, counts[1:], batch * ho * wo, (h, w),
                     (ho, wo), stride)
        res = torch.randn(batch * ho * wo, 4 * mid, device='cuda', dtype=torch.float16)
        out = torch.empty_like(res)
        w3 = torch.randn(mid, 4 * mid, device='cuda', dtype=torch.float16)
        rows_gemm(y2, w3, b, out, active, counts[1:], batch * ho * wo, False, True, res=res,
                  relu_rest=True)
        cl_to_nchw(out.view(batch, ho, wo, 4 * mid).permute(0, 3, 1, 2))
        torch.cuda.synchronize()

    @triton.jit
    def fresh_kernel(out_ptr):  # defined here: never compiled before this test
        tl.store(out_ptr, 1)

    saved = knobs.runtime.jit_post_compile_hook
    knobs.runtime.jit_post_compile_hook = lambda *a, **kw: compiled.append(kw.get('repr'))
    try:
        fresh_kernel[(1, )](torch.zeros(1, device='cuda'))
        assert len(compiled) == 1  # the hook sees compilations
        block(1, 64, 96)  # compiles every variant once (unless an earlier test did)
        first = len(compiled)
        for batch, h, w in ((1, 37, 53), (3, 50, 34), (2, 129, 65), (1, 64, 96)):
            block(batch, h, w)
        assert compiled[first:] == []
    finally:
        knobs.runtime.jit_post_compile_hook = saved
