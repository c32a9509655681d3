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
  downsample conv's folded BN). A downsample block's 1x1 downsample conv can run in the same
  launch (``downsample``; where, ``ops.triton_fuses_downsample`` decides): its K loop over the
  block input's pixels (gathered at the conv's stride) adds into conv3's accumulator, so its
  output never goes through DRAM and its launch is saved. With ``RELU_REST``
  (conv3) the row list holds every output row, the active ones first, and the programs past
  the active rows' tiles write ``relu(res + res_bias)`` (or ``relu(downsample + res_bias)``)
  at the others: the block's output in one launch.
* ``conv3x3_rows_kernel``: conv2 for the active output rows, one K loop over the nine taps x
  the input channels (a single loop, so loads are software-pipelined across taps too); each
  tap is gathered from the conv1 map (zero outside the image, exactly the dense zero padding),
  output written compact. Programs take their output tiles N tile first (``_tile_of_program``),
  so programs that run side by side share their A rows; a tile with ``split_k`` > 1 shares
  its K loop among that many programs.

Tile configs (no autotuning): ``tile_config`` picks (BLOCK_M, BLOCK_N, BLOCK_K, warps, stages)
from the kernel, N, K, the dtype and the GPU's compute capability, from a table measured once
per GPU architecture (``tools/benchmark_kernels.py --tune``; the tables live in ``ops.tiles``);
where few and many rows want different tiles, the table switches at one row count, compared
with the largest list the input's shape allows. So a layer compiles at most two variants per
dtype, and a new image size never tunes anything: spatial sizes are runtime arguments that
Triton does not specialise on (``do_not_specialize``), and the row-list pointers are not
specialised on alignment (lists may be slices of one buffer). Under TRITON_INTERPRET=1 a
single small tile is used. ``LASNET_TRITON_TILES=FILE`` (the JSON that
``tools/benchmark_kernels.py --tune --json FILE`` writes on your GPU) overrides the table for
the dtype it was tuned in (fp32, or fp16/bf16), e.g. on a GPU the table was not measured on.
"""
import os
from typing import NamedTuple

import torch
import triton
import triton.language as tl

from ..counters import zeroed_semaphores
from ..tiles import HOPPER_16BIT, HOPPER_32BIT, Tile, Tiles, table_tile  # noqa: F401
from .pdl import grid_dependency, use_pdl

_INTERPRETER = Tile(16, 32, 32, 1, 1)


class Downsample(NamedTuple):
    """A block's 1x1 downsample conv for ``rows_gemm`` to run in its launch: ``x`` the
    channels-last ``(B, C, H, W)`` block input, ``weight`` ``(C, N)`` (any strides), ``stride``
    the conv's; its folded BN's bias goes in as ``rows_gemm``'s ``res_bias``."""
    x: torch.Tensor
    weight: torch.Tensor
    stride: int


def _interpreting():
    return os.environ.get('TRITON_INTERPRET', '0') not in ('', '0')


def tile_config(kernel, n, k, dtype, device, max_rows):
    """The ``Tile`` of ``kernel`` ('gemm' or 'conv3x3') for an N x K weight in ``dtype`` and a
    row list of at most ``max_rows`` rows (``ops.tiles``; ``LASNET_TRITON_TILES`` first).

    Depends on channel counts, dtype, the GPU and, where the table says so, on which side of
    one row count ``max_rows`` lies (so a layer compiles at most two variants); never on the
    rows of a forward (they stay on the device) and never tuned at run time."""
    if _interpreting():
        return _INTERPRETER
    device = torch.device(device)
    major = torch.cuda.get_device_capability(device)[0] if device.type == 'cuda' else None
    return table_tile(kernel, n, k, dtype == torch.float32, major, max_rows,
                      os.environ.get('LASNET_TRITON_TILES'))


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
def _row_tile(a_ptr, src, m_ok, offs_k, k_ok, K):
    """Channels ``offs_k`` of the A rows ``src`` (pixels of K contiguous channels)."""
    return tl.load(a_ptr + src[:, None] * K + offs_k[None, :],
                   mask=m_ok[:, None] & k_ok[None, :], other=0.0)


@triton.jit
def _weight_tile(w_ptr, offs_k, k_ok, offs_n, n_ok, stride_wk, stride_wn):
    """Rows ``offs_k``, columns ``offs_n`` of a K x N weight of any strides."""
    return tl.load(w_ptr + offs_k[:, None] * stride_wk + offs_n[None, :] * stride_wn,
                   mask=k_ok[:, None] & n_ok[None, :], other=0.0)


@triton.jit
def _rows_product(acc, a_ptr, src, m_ok, w_ptr, offs_n, n_ok, K, stride_wk, stride_wn,
                  IEEE: tl.constexpr, BLOCK_K: tl.constexpr):
    """``acc + A[src] @ W[:, offs_n]``: the K loop of a 1x1 conv over the A rows ``src``
    (pixels of K contiguous channels, gathered by row index) and a K x N weight of any
    strides."""
    for k0 in range(0, K, BLOCK_K):
        acc, _, _, _ = _rows_step(acc, a_ptr, src, m_ok, w_ptr, offs_n, n_ok, K, stride_wk,
                                  stride_wn, k0, IEEE, BLOCK_K)
    return acc


@triton.jit
def _rows_step(acc, a_ptr, src, m_ok, w_ptr, offs_n, n_ok, K, stride_wk, stride_wn, k0,
               IEEE: tl.constexpr, BLOCK_K: tl.constexpr):
    """One step of ``_rows_product`` at K offset ``k0``: ``(acc, A tile, offs_k, k_ok)``
    (a caller may multiply the same A tile by another weight)."""
    offs_k = k0 + tl.arange(0, BLOCK_K)
    k_ok = offs_k < K
    a = _row_tile(a_ptr, src, m_ok, offs_k, k_ok, K)
    acc = _dot(a, _weight_tile(w_ptr, offs_k, k_ok, offs_n, n_ok, stride_wk, stride_wn), acc,
               IEEE)
    return acc, a, offs_k, k_ok


@triton.jit
def _downsample_product(acc, x_ptr, w_ptr, out_rows, m_ok, offs_n, n_ok, K, stride_wk,
                        stride_wn, H, W, Ho, Wo, STRIDE: tl.constexpr, IEEE: tl.constexpr,
                        BLOCK_K: tl.constexpr):
    """``acc + x[pixel of each output row] @ w``: the 1x1 downsample conv at stride STRIDE for
    the (int64) output rows ``out_rows`` of a ``(B, Ho, Wo)`` map, gathered from the
    channels-last ``(B, H, W, K)`` block input."""
    b = out_rows // (Ho * Wo)
    oy = (out_rows // Wo) % Ho
    ox = out_rows % Wo
    src = (b * H + oy * STRIDE) * W + ox * STRIDE
    return _rows_product(acc, x_ptr, src, m_ok, w_ptr, offs_n, n_ok, K, stride_wk, stride_wn,
                         IEEE, BLOCK_K)


@triton.jit
def _tile_of_program(pid, N, BLOCK_N: tl.constexpr):
    """(M tile, N tile) of a program, N tiles fastest: the programs that run side by side
    read the same A rows, so each row comes from DRAM once (at batch 8 an M-first order
    re-read stage 1's 31 MB of conv2 rows once per N tile, evicted by the output traffic
    in between); the weights are small enough to stay in L2 either way."""
    n_tiles = tl.cdiv(N, BLOCK_N)
    return pid // n_tiles, pid % n_tiles


@triton.jit(do_not_specialize=['total_rows', 'H', 'W', 'Ho', 'Wo'],
            do_not_specialize_on_alignment=['rows_ptr', 'count_ptr'])
def rows_gemm_kernel(a_ptr, w_ptr, bias_ptr, res_ptr, res_bias_ptr, out_ptr, rows_ptr,
                     count_ptr, ds_x_ptr, ds_w_ptr, N, K, stride_wk, stride_wn, K_DS,
                     stride_dk, stride_dn, H, W, Ho, Wo, total_rows, GATHER_A: tl.constexpr,
                     SCATTER_OUT: tl.constexpr, HAS_RES: tl.constexpr,
                     HAS_RES_BIAS: tl.constexpr, RELU_REST: tl.constexpr,
                     HAS_DS: tl.constexpr, DS_STRIDE: tl.constexpr, IEEE: tl.constexpr,
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
                stop = tl.minimum(start + BLOCK_M, total_rows)
                if HAS_DS:
                    # relu(downsample + res_bias): the downsample conv's GEMM on these rows.
                    offs = start + tl.arange(0, BLOCK_M)
                    ok = offs < stop
                    rows = tl.load(rows_ptr + offs, mask=ok, other=0).to(tl.int64)
                    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
                    acc = _downsample_product(acc, ds_x_ptr, ds_w_ptr, rows, ok, offs_n, n_ok,
                                              K_DS, stride_dk, stride_dn, H, W, Ho, Wo,
                                              DS_STRIDE, IEEE, BLOCK_K)
                    if HAS_RES_BIAS:
                        acc += res_bias[None, :]
                    acc = tl.maximum(acc, 0.0)
                    tl.store(out_ptr + rows[:, None] * N + offs_n[None, :],
                             acc.to(out_ptr.dtype.element_ty), mask=ok[:, None] & n_ok[None, :])
                else:
                    _relu_rows(res_ptr, res_bias, out_ptr, rows_ptr, start, stop, offs_n, n_ok,
                               N, BLOCK_M)
        return
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    m_ok = offs_m < count
    rows = tl.load(rows_ptr + offs_m, mask=m_ok, other=0).to(tl.int64)
    src = rows if GATHER_A else offs_m.to(tl.int64)
    dst = rows if SCATTER_OUT else offs_m.to(tl.int64)

    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    acc = _rows_product(acc, a_ptr, src, m_ok, w_ptr, offs_n, n_ok, K, stride_wk, stride_wn,
                        IEEE, BLOCK_K)
    if HAS_DS:
        acc = _downsample_product(acc, ds_x_ptr, ds_w_ptr, dst, m_ok, offs_n, n_ok, K_DS,
                                  stride_dk, stride_dn, H, W, Ho, Wo, DS_STRIDE, IEEE, BLOCK_K)

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
              res_bias=None, relu_rest=False, ieee=None, tile=None, downsample=None):
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
        res_bias (Tensor | None): ``(N, )``, added with ``res`` or ``downsample``.
        relu_rest (bool): ``rows`` holds ``max_rows`` rows (the whole output); the rows past
            ``count`` get ``out = relu(res + res_bias)`` (or ``relu(downsample + res_bias)``)
            in the same launch (needs ``res`` or ``downsample``).
        ieee (bool | None): fp32 only: IEEE products (True, the default) or TF32 (False).
        tile (Tile | None): Override of ``tile_config`` (benchmarks, tuning).
        downsample (Downsample | None): Instead of ``res``: the residual is this 1x1 conv of
            the block input, computed in the launch at the output rows (``scatter_out``; ``out``
            then has the conv's ``(B, Ho, Wo)`` rows). Its tile is conv3's.
    """
    if res is not None and downsample is not None:
        raise ValueError('give res or downsample, not both')
    if res is None and downsample is None and (relu_rest or res_bias is not None):
        raise ValueError('relu_rest and res_bias need res or downsample')
    k, n = w.shape
    t = tile or tile_config('gemm', n, k, a.dtype, a.device, max_rows)
    ds_args, ds_stride = (a, w, 0, 0, 0, 1, 1, 1, 1), 1  # not read without a downsample
    if downsample is not None:
        x, w_ds, ds_stride = downsample
        batch, c, height, width = x.shape
        out_h, out_w = (height - 1) // ds_stride + 1, (width - 1) // ds_stride + 1
        if not scatter_out or tuple(w_ds.shape) != (c, n) or batch * out_h * out_w != max_rows:
            raise ValueError(f'downsample: a ({c}, {n}) weight and {max_rows} scattered output '
                             f'rows needed, got {tuple(w_ds.shape)}, x {tuple(x.shape)} at '
                             f'stride {ds_stride}, scatter_out={scatter_out}')
        ds_args = (x.contiguous(memory_format=torch.channels_last), w_ds, c, *w_ds.stride(),
                   height, width, out_h, out_w)
    # With relu_rest the two parts of the list each end in a partial tile: one tile more.
    m_tiles = triton.cdiv(max_rows, t.block_m) + int(relu_rest)
    grid = (m_tiles * triton.cdiv(n, t.block_n), )
    pdl = use_pdl(a.device)
    ds_x, ds_w, k_ds, *ds_rest = ds_args
    rows_gemm_kernel[grid](
        a, w, bias, out if res is None else res, bias if res_bias is None else res_bias, out,
        rows, count, ds_x, ds_w, n, k, *w.stride(), k_ds, *ds_rest, max_rows,
        GATHER_A=gather_a, SCATTER_OUT=scatter_out, HAS_RES=res is not None,
        HAS_RES_BIAS=res_bias is not None, RELU_REST=relu_rest, HAS_DS=downsample is not None,
        DS_STRIDE=ds_stride, IEEE=_ieee(a.dtype, ieee), BLOCK_M=t.block_m, BLOCK_N=t.block_n,
        BLOCK_K=t.block_k, PDL=pdl, num_warps=t.num_warps, num_stages=t.num_stages,
        launch_pdl=pdl)


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
