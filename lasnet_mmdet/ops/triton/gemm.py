"""The two GEMM kernels of a sparse LAS bottleneck: 1x1 convs and the 3x3 conv on row lists.

Feature maps are channels-last, so a pixel is a contiguous row of channels and a conv is a
GEMM whose A rows are gathered pixels (implicit GEMM: the gather happens in the kernel's
loads, nothing is materialised). Rows come from a device-side list whose length is read by
each program (``count_ptr``); the grid covers the largest possible list and surplus programs
return at once. Operands go to ``tl.dot`` in their own dtype (fp16 / bf16 on tensor cores),
accumulation is fp32; fp32 inputs use IEEE products when ``ieee`` (the sparse path then
matches the dense one to 1e-4), else TF32 as cuDNN's convs do under ``allow_tf32``.

* ``rows_gemm_kernel``: ``out[dst] = relu(A[src] @ W + bias (+ res[dst] + res_bias))``: conv1
  (gather the needed input rows, scatter into the conv1 map) and conv3 (read the compact conv2
  rows, scatter into the output, fused with the residual add and the ReLU; ``res_bias`` is the
  downsample conv's folded BN, added here instead of in a pass over its output). With
  ``RELU_REST`` (conv3) the row list holds every output row, the active ones first, and the
  programs past the active rows' tiles write ``relu(res + res_bias)`` at the others: the
  block's output in one launch.
* ``conv3x3_rows_kernel``: conv2 for the active output rows, one K loop over the nine taps x
  the input channels (a single loop, so loads are software-pipelined across taps too); each
  tap is gathered from the conv1 map (zero outside the image, exactly the dense zero padding),
  output written compact. Programs take their output tiles N tile first (``_tile_of_program``),
  so programs that run side by side share their A rows; a tile with ``split_k`` > 1 shares
  its K loop among that many programs.

Tile configs (no autotuning): ``tile_config`` picks (BLOCK_M, BLOCK_N, BLOCK_K, warps, stages)
from the kernel, N, K, the dtype and the GPU's compute capability, from a table measured once
per GPU architecture (``tools/benchmark_kernels.py --tune``); where few and many rows want
different tiles, the table switches at one row count, compared with the largest list the
input's shape allows. So a layer compiles at most two variants per dtype, and a new image
size never tunes anything: spatial sizes are runtime arguments that Triton does not
specialise on (``do_not_specialize``), and the row-list pointers are not specialised on
alignment (lists may be slices of one buffer). Under TRITON_INTERPRET=1 a single small tile
is used. ``LASNET_TRITON_TILES=FILE`` (the JSON that ``tools/benchmark_kernels.py --tune
--json FILE`` writes on your GPU) overrides the table for the dtype it was tuned in (fp32, or
fp16/bf16), e.g. on a GPU the table was not measured on.
"""
import functools
import json
import os
from typing import NamedTuple

import torch
import triton
import triton.language as tl

from ..counters import zeroed_semaphores
from .pdl import grid_dependency, use_pdl


class Tile(NamedTuple):
    block_m: int
    block_n: int
    block_k: int
    num_warps: int
    num_stages: int
    # conv3x3 only: its K loop (9 taps x channel blocks) split over this many programs per
    # output tile, for the few-row layers whose tiles alone do not fill the GPU.
    split_k: int = 1


class Tiles(NamedTuple):
    """A tile for lists of at most ``split_rows`` rows and one for longer lists."""
    few_rows: Tile
    many_rows: Tile
    split_rows: int

    def pick(self, max_rows):
        return self.few_rows if max_rows <= self.split_rows else self.many_rows


# Hopper (sm_90), measured on an H100 SXM (torch 2.11, Triton 3.6) with
#   python tools/benchmark_kernels.py --tune --batch 1 8 --rep 10 [--dtype fp32] --json FILE
# (every ResNet-101 layer at 800x1216, rows of a random r = 0.5 mask at S = 4-4-2-1, each
# candidate tile's median time in CUDA-graph replays). Per (kernel, N, K), with conv3x3's
# K = 9 x C_in: the tile with the smallest geometric mean of time / best time over the layers
# of that key, at batch 1 (few rows) and at batch 8 (many rows); where they differ, ``Tiles``
# switches at the geometric mean of the two runs' largest row counts. A few rows want small
# tiles that fill the 132 SMs (stage 3's conv2 at batch 1: 30 programs of 128 x 256 take 35
# us, 120 of 128 x 64 take 17); many rows want large tiles that read the weights fewer times
# (at batch 8: 35 us vs 55). Runs: docs/sparse_ops_results/h100_tune_fp16.json. Summed over
# the backbone's kernels, fp16: 1.04 ms at batch 1 and 4.42 ms at batch 8, where one tile per
# key took 1.10 and 5.33 ms. fp32 (TF32) was retuned when its weights became N x K
# (``fold_bn.weight_layout``: Hopper's TF32 MMA reads B K-contiguous only, so K x N weights
# were copied to shared memory 4 bytes at a time), on an H200 (same SM count): at the previous
# table's tiles that layout alone took the sparse kernels from 3.91 to 2.06 ms at batch 1 and
# from 21.96 to 12.39 ms at batch 8 (docs/sparse_ops_results/h200_s5_run1_kernels_fp32_*.json).
# The fp16 conv1 keys ('gemm', mid, 4 x mid or the stage input) were retuned for the launch
# with the masker (``conv1_masker``, M tiles of whole cells; ``--convs conv1 --tune``, ninth
# session, h100_s9_run2_tune_conv1_fp16.json): backbone 1.72 -> 1.69 ms at batch 1, 6.54 ->
# 6.50 at batch 8 (two interleaved pairs each). The unfused conv1 (S = 7) shares them.
# The few-row conv2 tiles of stages 3-4 split their K loop (``split_k``; ``--convs conv2
# --stages 3 4 --tune --batch 1``, h100_s9_run3_tune_conv2_b1_split.json): stage 3 17.7 ->
# 16.3 us, stage 4 26.0 -> 19.9 us; backbone at batch 1 1.70 / 1.66 -> 1.64 / 1.62 ms.
HOPPER_16BIT = {
    ('conv3x3', 64, 576): Tile(128, 64, 64, 4, 4),
    ('conv3x3', 128, 1152): Tiles(Tile(64, 128, 64, 4, 3), Tile(128, 128, 64, 4, 3), 42992),
    ('conv3x3', 256, 2304): Tiles(Tile(64, 64, 64, 4, 4, 3), Tile(128, 256, 64, 8, 3), 10748),
    ('conv3x3', 512, 4608): Tiles(Tile(64, 128, 64, 4, 3, 2), Tile(64, 256, 64, 8, 3), 2687),
    ('gemm', 64, 64): Tile(128, 64, 32, 4, 4),
    ('gemm', 64, 256): Tile(128, 64, 32, 4, 4),
    ('gemm', 128, 256): Tile(128, 64, 32, 4, 4),
    ('gemm', 128, 512): Tile(128, 128, 64, 4, 3),
    ('gemm', 256, 64): Tile(64, 128, 32, 4, 4),
    ('gemm', 256, 512): Tiles(Tile(64, 128, 64, 4, 3), Tile(64, 128, 32, 4, 4), 42992),
    ('gemm', 256, 1024): Tiles(Tile(64, 64, 64, 4, 4), Tile(128, 128, 64, 8, 3), 10748),
    ('gemm', 512, 128): Tiles(Tile(128, 128, 64, 4, 3), Tile(64, 128, 64, 4, 3), 42992),
    ('gemm', 512, 1024): Tiles(Tile(64, 128, 64, 4, 3), Tile(128, 256, 64, 8, 3), 10748),
    ('gemm', 512, 2048): Tiles(Tile(64, 64, 64, 4, 3), Tile(64, 128, 64, 4, 3), 2687),
    ('gemm', 1024, 256): Tiles(Tile(128, 128, 64, 8, 3), Tile(128, 128, 64, 4, 3), 10748),
    ('gemm', 2048, 512): Tiles(Tile(64, 128, 64, 4, 3), Tile(128, 128, 64, 4, 3), 2687),
}
HOPPER_32BIT = {  # measured on an H200 (sm_90, 132 SMs), weights N x K (see the comment above)
    ('conv3x3', 64, 576): Tile(128, 64, 32, 4, 4),
    ('conv3x3', 128, 1152): Tiles(Tile(64, 128, 64, 4, 3), Tile(128, 128, 32, 8, 3), 42992),
    ('conv3x3', 256, 2304): Tiles(Tile(64, 64, 64, 4, 4), Tile(128, 128, 32, 8, 3), 10748),
    ('conv3x3', 512, 4608): Tiles(Tile(64, 64, 64, 4, 3), Tile(128, 128, 64, 8, 3), 2687),
    ('gemm', 64, 64): Tile(128, 64, 32, 4, 4),
    ('gemm', 64, 256): Tile(128, 64, 32, 4, 4),
    ('gemm', 128, 256): Tile(64, 128, 32, 4, 4),
    ('gemm', 128, 512): Tiles(Tile(128, 128, 32, 8, 3), Tile(64, 128, 32, 4, 4), 42992),
    ('gemm', 256, 64): Tiles(Tile(128, 64, 32, 4, 4), Tile(64, 128, 32, 4, 4), 171968),
    ('gemm', 256, 512): Tile(64, 128, 32, 4, 4),
    ('gemm', 256, 1024): Tile(64, 128, 32, 4, 4),
    ('gemm', 512, 128): Tile(64, 128, 32, 4, 4),
    ('gemm', 512, 1024): Tiles(Tile(128, 128, 32, 8, 3), Tile(64, 128, 32, 4, 4), 10748),
    ('gemm', 512, 2048): Tiles(Tile(64, 64, 64, 4, 3), Tile(128, 128, 64, 8, 3), 2687),
    ('gemm', 1024, 256): Tiles(Tile(64, 128, 32, 4, 4), Tile(128, 64, 32, 4, 4), 10748),
    ('gemm', 2048, 512): Tiles(Tile(128, 128, 32, 8, 3), Tile(64, 128, 32, 4, 4), 2687),
}

# Used where the table has no entry (other GPUs, other channel counts), by N.
_DEFAULT_16BIT = {  # N <= 64, N <= 128, larger
    'gemm': (Tile(64, 64, 64, 4, 4), Tile(64, 128, 64, 4, 3), Tile(128, 128, 64, 8, 3)),
    'conv3x3': (Tile(64, 64, 64, 4, 4), Tile(64, 128, 64, 4, 3), Tile(128, 128, 64, 8, 3)),
}
# fp32 (TF32 or IEEE products): twice the bytes per element, so half the K per stage.
_DEFAULT_32BIT = (Tile(64, 64, 32, 4, 3), Tile(64, 128, 32, 4, 3), Tile(128, 128, 32, 8, 3))
_INTERPRETER = Tile(16, 32, 32, 1, 1)


def _interpreting():
    return os.environ.get('TRITON_INTERPRET', '0') not in ('', '0')


def _capability(device):
    if device.type != 'cuda':
        return None
    return torch.cuda.get_device_capability(device)


@functools.lru_cache(maxsize=None)
def _tiles_from_file(path):
    """``(fp32, {(kernel, N, K): Tile | Tiles})`` from a ``--tune`` JSON: whether it was tuned
    in fp32, and its ``table``."""
    with open(path) as f:
        data = json.load(f)
    table = {}
    for r in data['table']:
        key = (r['kernel'], int(r['N']), int(r['K']))
        if 'tile' in r:
            table[key] = Tile(*r['tile'])
        else:
            table[key] = Tiles(Tile(*r['few_rows']), Tile(*r['many_rows']), int(r['split_rows']))
    return data.get('dtype') == 'fp32', table


def tile_config(kernel, n, k, dtype, device, max_rows):
    """The ``Tile`` of ``kernel`` ('gemm' or 'conv3x3') for an N x K weight in ``dtype`` and a
    row list of at most ``max_rows`` rows.

    Depends on channel counts, dtype, the GPU and, where the table says so, on which side of
    one row count ``max_rows`` lies (so a layer compiles at most two variants); never on the
    rows of a forward (they stay on the device) and never tuned at run time."""
    if _interpreting():
        return _INTERPRETER
    cap = _capability(torch.device(device))
    size = 0 if n <= 64 else 1 if n <= 128 else 2
    path = os.environ.get('LASNET_TRITON_TILES')
    fp32 = dtype == torch.float32
    tile = None
    if path and _tiles_from_file(path)[0] == fp32:
        tile = _tiles_from_file(path)[1].get((kernel, n, k))
    if tile is None and cap is not None and cap[0] == 9:
        tile = (HOPPER_32BIT if fp32 else HOPPER_16BIT).get((kernel, n, k))
    if isinstance(tile, Tiles):
        return tile.pick(max_rows)
    if tile is not None:
        return tile
    return _DEFAULT_32BIT[size] if fp32 else _DEFAULT_16BIT[kernel][size]


@triton.jit
def _dot(a, b, acc, IEEE: tl.constexpr):
    if IEEE:
        return tl.dot(a, b, acc, input_precision='ieee')
    return tl.dot(a, b, acc)


@triton.jit
def _relu_rows(res_ptr, res_bias, out_ptr, rows_ptr, start, stop, offs_n, n_ok, N,
               BLOCK_M: tl.constexpr):
    """``out[r] = relu(res[r] + res_bias)`` for the rows ``rows[start:stop]`` (at most
    BLOCK_M); ``res_bias``: a fp32 [BLOCK_N] vector, or None."""
    offs = start + tl.arange(0, BLOCK_M)
    ok = offs < stop
    rows = tl.load(rows_ptr + offs, mask=ok, other=0).to(tl.int64)
    offs_2d = rows[:, None] * N + offs_n[None, :]
    mask = ok[:, None] & n_ok[None, :]
    x = tl.load(res_ptr + offs_2d, mask=mask, other=0.0)
    if res_bias is not None:
        x = (x.to(tl.float32) + res_bias[None, :]).to(out_ptr.dtype.element_ty)
    tl.store(out_ptr + offs_2d, tl.maximum(x, 0.0), mask=mask)


@triton.jit
def _tile_of_program(pid, N, BLOCK_N: tl.constexpr):
    """(M tile, N tile) of a program, N tiles fastest: the programs that run side by side
    read the same A rows, so each row comes from DRAM once (at batch 8 an M-first order
    re-read stage 1's 31 MB of conv2 rows once per N tile, evicted by the output traffic
    in between); the weights are small enough to stay in L2 either way."""
    n_tiles = tl.cdiv(N, BLOCK_N)
    return pid // n_tiles, pid % n_tiles


@triton.jit(do_not_specialize=['total_rows'],
            do_not_specialize_on_alignment=['rows_ptr', 'count_ptr'])
def rows_gemm_kernel(a_ptr, w_ptr, bias_ptr, res_ptr, res_bias_ptr, out_ptr, rows_ptr,
                     count_ptr, N, K, stride_wk, stride_wn, total_rows, GATHER_A: tl.constexpr,
                     SCATTER_OUT: tl.constexpr, HAS_RES: tl.constexpr,
                     HAS_RES_BIAS: tl.constexpr, RELU_REST: tl.constexpr, IEEE: tl.constexpr,
                     BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
                     PDL: tl.constexpr):
    pid_m, pid_n = _tile_of_program(tl.program_id(0), N, BLOCK_N)
    grid_dependency(PDL)
    count = tl.load(count_ptr)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    n_ok = offs_n < N
    res_bias = None
    if HAS_RES_BIAS:
        res_bias = tl.load(res_bias_ptr + offs_n, mask=n_ok, other=0.0).to(tl.float32)
    gemm_tiles = tl.cdiv(count, BLOCK_M)
    if pid_m >= gemm_tiles:
        # Past this forward's list: idle, or with RELU_REST the list's other rows.
        if RELU_REST:
            start = count + (pid_m - gemm_tiles) * BLOCK_M
            if start < total_rows:
                _relu_rows(res_ptr, res_bias, out_ptr, rows_ptr, start,
                           tl.minimum(start + BLOCK_M, total_rows), offs_n, n_ok, N, BLOCK_M)
        return
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    m_ok = offs_m < count
    rows = tl.load(rows_ptr + offs_m, mask=m_ok, other=0).to(tl.int64)
    src = rows if GATHER_A else offs_m.to(tl.int64)
    dst = rows if SCATTER_OUT else offs_m.to(tl.int64)

    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for k0 in range(0, K, BLOCK_K):
        offs_k = k0 + tl.arange(0, BLOCK_K)
        k_ok = offs_k < K
        a = tl.load(a_ptr + src[:, None] * K + offs_k[None, :], mask=m_ok[:, None] & k_ok[None, :],
                    other=0.0)
        b = tl.load(w_ptr + offs_k[:, None] * stride_wk + offs_n[None, :] * stride_wn,
                    mask=k_ok[:, None] & n_ok[None, :], other=0.0)
        acc = _dot(a, b, acc, IEEE)

    acc += tl.load(bias_ptr + offs_n, mask=n_ok, other=0.0).to(tl.float32)[None, :]
    out_offs = dst[:, None] * N + offs_n[None, :]
    mask = m_ok[:, None] & n_ok[None, :]
    if HAS_RES:
        acc += tl.load(res_ptr + out_offs, mask=mask, other=0.0).to(tl.float32)
    if HAS_RES_BIAS:
        acc += res_bias[None, :]
    acc = tl.maximum(acc, 0.0)
    tl.store(out_ptr + out_offs, acc.to(out_ptr.dtype.element_ty), mask=mask)


@triton.jit(do_not_specialize=['H', 'W', 'Ho', 'Wo', 'max_rows'],
            do_not_specialize_on_alignment=['rows_ptr', 'count_ptr', 'sem_ptr'])
def conv3x3_rows_kernel(x_ptr, w_ptr, bias_ptr, out_ptr, rows_ptr, count_ptr, part_ptr, sem_ptr,
                        C, N, stride_wk, stride_wn, H, W, Ho, Wo, max_rows,
                        STRIDE: tl.constexpr, IEEE: tl.constexpr, BLOCK_M: tl.constexpr,
                        BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, SPLIT_K: tl.constexpr,
                        PDL: tl.constexpr):
    pid_m, pid_n = _tile_of_program(tl.program_id(0), N, BLOCK_N)
    pid_k = tl.program_id(1)
    grid_dependency(PDL)
    count = tl.load(count_ptr)
    if pid_m * BLOCK_M >= count:
        return
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    m_ok = offs_m < count
    rows = tl.load(rows_ptr + offs_m, mask=m_ok, other=0)
    b = rows // (Ho * Wo)
    oy = (rows // Wo) % Ho
    ox = rows % Wo
    top = b * H + oy * STRIDE - 1  # row of tap (0, 0) in the (B*H, W) conv1 map
    left = ox * STRIDE - 1
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    n_ok = offs_n < N

    # One loop over (tap, channel block): the pipeliner prefetches across taps as well. With
    # SPLIT_K, this program takes the pid_k-th part of the loop.
    k_tiles = tl.cdiv(C, BLOCK_K)
    steps = tl.cdiv(9 * k_tiles, SPLIT_K)
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for it in range(pid_k * steps, tl.minimum(pid_k * steps + steps, 9 * k_tiles)):
        tap = it // k_tiles
        c0 = (it - tap * k_tiles) * BLOCK_K
        dy = tap // 3
        dx = tap - dy * 3
        iy = oy * STRIDE - 1 + dy
        ix = left + dx
        ok = m_ok & (iy >= 0) & (iy < H) & (ix >= 0) & (ix < W)
        src = ((top + dy) * W + ix).to(tl.int64)
        offs_c = c0 + tl.arange(0, BLOCK_K)
        c_ok = offs_c < C
        a = tl.load(x_ptr + src[:, None] * C + offs_c[None, :], mask=ok[:, None] & c_ok[None, :],
                    other=0.0)
        wb = tl.load(w_ptr + (tap * C + offs_c)[:, None] * stride_wk
                     + offs_n[None, :] * stride_wn, mask=c_ok[:, None] & n_ok[None, :], other=0.0)
        acc = _dot(a, wb, acc, IEEE)

    out_offs = offs_m.to(tl.int64)[:, None] * N + offs_n[None, :]
    out_ok = m_ok[:, None] & n_ok[None, :]
    if SPLIT_K > 1:
        # Each part stores its fp32 sum; the last of the tile's parts to arrive adds them up
        # in part order (the same result whichever arrives last) and leaves the tile's
        # semaphore at zero again for the next launch.
        slab = max_rows.to(tl.int64) * N
        tl.store(part_ptr + pid_k * slab + out_offs, acc, mask=out_ok)
        tl.debug_barrier()  # every thread's part is written before the release below
        sem = sem_ptr + tl.program_id(0)  # one per output tile
        if tl.atomic_add(sem, 1, sem='acq_rel') < SPLIT_K - 1:
            return
        acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
        for part in tl.static_range(SPLIT_K):
            acc += tl.load(part_ptr + part * slab + out_offs, mask=out_ok, other=0.0,
                           cache_modifier='.cg')  # from L2: other SMs wrote them
        tl.atomic_xchg(sem, 0)
    acc += tl.load(bias_ptr + offs_n, mask=n_ok, other=0.0).to(tl.float32)[None, :]
    acc = tl.maximum(acc, 0.0)
    tl.store(out_ptr + out_offs, acc.to(out_ptr.dtype.element_ty), mask=out_ok)


def _ieee(dtype, ieee):
    """IEEE fp32 products: as asked (default: yes), and only where it changes anything."""
    return dtype == torch.float32 and (True if ieee is None else bool(ieee))


def rows_gemm(a, w, bias, out, rows, count, max_rows, gather_a, scatter_out, res=None,
              res_bias=None, relu_rest=False, ieee=None, tile=None):
    """``out[dst] = relu(a[src] @ w + bias (+ res[dst] + res_bias))`` for the first ``count``
    list rows.

    Args:
        a (Tensor): ``(rows, K)`` A rows (channels-last pixels), read at ``rows`` when
            ``gather_a``, else in list order.
        w (Tensor): ``(K, N)`` weight, any strides (``w_nk.t()`` of an N x K weight reads K
            contiguous, which fp32 wants: ``fold_bn.weight_layout``); ``bias``: ``(N, )``.
        out (Tensor): ``(rows, N)``, written at ``rows`` when ``scatter_out``, else in order.
        rows (Tensor): int32 row list; ``count``: a one-element int32 device tensor, its length.
        max_rows (int): The largest ``count`` can be (sizes the grid, never a compile key).
        res (Tensor | None): Added before the ReLU, read at the output rows (not ``out``).
        res_bias (Tensor | None): ``(N, )``, added with ``res`` (needs ``res``).
        relu_rest (bool): ``rows`` holds ``max_rows`` rows (the whole output); the rows past
            ``count`` get ``out = relu(res + res_bias)`` in the same launch (needs ``res``).
        ieee (bool | None): fp32 only: IEEE products (True, the default) or TF32 (False).
        tile (Tile | None): Override of ``tile_config`` (benchmarks, tuning).
    """
    if res is None and (relu_rest or res_bias is not None):
        raise ValueError('relu_rest and res_bias need res')
    k, n = w.shape
    t = tile or tile_config('gemm', n, k, a.dtype, a.device, max_rows)
    # With relu_rest the two parts of the list each end in a partial tile: one tile more.
    m_tiles = triton.cdiv(max_rows, t.block_m) + int(relu_rest)
    grid = (m_tiles * triton.cdiv(n, t.block_n), )
    pdl = use_pdl(a.device)
    rows_gemm_kernel[grid](
        a, w, bias, out if res is None else res, bias if res_bias is None else res_bias, out,
        rows, count, n, k, *w.stride(), max_rows, GATHER_A=gather_a, SCATTER_OUT=scatter_out,
        HAS_RES=res is not None, HAS_RES_BIAS=res_bias is not None, RELU_REST=relu_rest,
        IEEE=_ieee(a.dtype, ieee), BLOCK_M=t.block_m, BLOCK_N=t.block_n, BLOCK_K=t.block_k,
        PDL=pdl, num_warps=t.num_warps, num_stages=t.num_stages, launch_pdl=pdl)


def conv3x3_rows(x, w, bias, out, rows, count, max_rows, in_hw, out_hw, stride, ieee=None,
                 tile=None, semaphores=None):
    """``out[m] = relu(conv3x3(x)[rows[m]] + bias)`` (x: channels-last rows of the conv1 map,
    ``w``: ``(9 * C, N)``, any strides, with K ordered (dy, dx, c); other args as
    ``rows_gemm``). A tile with ``split_k`` > 1 adds fp32 partial sums (``split_k`` x
    ``max_rows`` x N) and one int32 semaphore per output tile: ``semaphores``, zeros that the
    launch leaves at zero (default: ``counters.zeroed_semaphores``)."""
    c, n = w.shape[0] // 9, w.shape[1]
    t = tile or tile_config('conv3x3', n, w.shape[0], x.dtype, x.device, max_rows)
    grid = (triton.cdiv(max_rows, t.block_m) * triton.cdiv(n, t.block_n), t.split_k)
    if t.split_k > 1:
        part = torch.empty(t.split_k, max_rows, n, dtype=torch.float32, device=x.device)
        sem = semaphores if semaphores is not None else zeroed_semaphores(grid[0], x.device)
        if sem.numel() < grid[0] or sem.dtype != torch.int32:
            raise ValueError(f'semaphores: {grid[0]} int32 needed, got '
                             f'{sem.numel()} {sem.dtype}')
    else:
        part, sem = out, count  # not read
    pdl = use_pdl(x.device)
    conv3x3_rows_kernel[grid](
        x, w, bias, out, rows, count, part, sem, c, n, *w.stride(), *in_hw, *out_hw, max_rows,
        STRIDE=stride, IEEE=_ieee(x.dtype, ieee), BLOCK_M=t.block_m, BLOCK_N=t.block_n,
        BLOCK_K=t.block_k, SPLIT_K=t.split_k, PDL=pdl, num_warps=t.num_warps,
        num_stages=t.num_stages, launch_pdl=pdl)
