"""conv1 of a LAS bottleneck, its masker's decision and the active row list in one launch.

The masker (``avg_pool2d(x, window, ceil_mode=True)``, a 1x1 conv to two logits, ``execute
>= skip``) and conv1 both read every pixel of the block input ``x``. Run apart, the masker
reads ``x`` once (a fifth of the sparse backbone's GPU time at batch 8 on the H100), a
compaction launch turns its decision into row lists, and conv1 gathers the rows the 3x3 conv
will read. Here one launch reads ``x`` once for both:

* conv1 runs on every pixel (``relu(x @ w1 + b1)`` into the ``(B*H*W, C_mid)`` map): before
  the decision nothing tells which rows conv2 will need, and the rows it skips at r = 0.5
  (a quarter at S = 4) cost less than the two launches and the read of ``x`` they need;
* one more program per M tile multiplies the same A tiles by the masker's two weight
  columns (padded to an MMA-sized ``(C, 16)``; by linearity the pooled logit is the sum of
  per-pixel logits over the window, divided by its in-bounds size, plus the bias), decides
  each coarse cell of its tile, writes the decision and appends the cells' output rows to
  the row list: active ones from the front (``counts[0]``), inactive ones from the back
  (``counts[1]``), one atomic add each per program, as ``compact.compact_rows`` does;
* where conv1 is one program per M tile (N fits one tile: stages 1-2 of a ResNet), that
  program multiplies its A tiles by the masker's columns too and decides after its conv1
  (``MERGED``): no second read of the rows, half the programs. (Where conv1 has several N
  tiles the masker stays apart: one program carrying it was the launch's slowest, tenth
  session.)

An M tile is ``BLOCK_M / window**2`` whole cells (consecutive over image, cell row and cell
column), their pixels cell by cell, so each cell's logits are a reduction inside one program
(no atomics on logits: the decision is deterministic); only the last tile is padded. Windows
of 1, 2, 4 and 8 pixels fit (``FUSED_MASKER_WINDOWS``); others run the masker,
``compact_rows`` and the gathered conv1 apart (``launcher``). ``PINNED``: the decision comes
from a given mask (benchmarks pin masks at exactly r), the logits are still computed when
``DECIDE`` (their cost is real), else skipped.
"""
import torch
import triton
import triton.language as tl

from .. import FUSED_MASKER_WINDOWS
from .compact import _append, _append_back
from .gemm import _dot, _ieee, _rows_product, _rows_step, _weight_tile, tile_config
from .pdl import grid_dependency, use_pdl

MASKER_COLUMNS = 16  # the masker's 2 logits padded to the smallest MMA width


# Sizes are runtime values (no specialisation): a new image size compiles nothing.
@triton.jit(do_not_specialize=['H', 'W', 'h', 'w', 'n_cells', 'Ho', 'Wo', 'total_out'],
            do_not_specialize_on_alignment=['active_ptr', 'counts_ptr'])
def conv1_masker_kernel(x_ptr, w_ptr, bias_ptr, mid_ptr, mw_ptr, mb_ptr, pin_ptr, coarse_ptr,
                        active_ptr, counts_ptr, C, N, stride_wk, stride_wn, H, W, h, w,
                        n_cells, Ho, Wo, total_out, WIN: tl.constexpr, S: tl.constexpr,
                        N_TILES: tl.constexpr, DECIDE: tl.constexpr, PINNED: tl.constexpr,
                        MERGED: tl.constexpr, IEEE: tl.constexpr, MASKER_IEEE: tl.constexpr,
                        BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
                        PDL: tl.constexpr):
    # N_TILES conv1 programs and one masker program per M tile (MERGED: the one conv1
    # program), side by side in launch order: they read the same A rows, the later ones
    # from L2.
    PROGRAMS: tl.constexpr = N_TILES if MERGED else N_TILES + 1
    pid = tl.program_id(0)
    pid_n = pid % PROGRAMS
    pid_m = pid // PROGRAMS
    grid_dependency(PDL)
    PIX: tl.constexpr = WIN * WIN
    CELLS: tl.constexpr = BLOCK_M // PIX
    # Tile row j: pixel j % PIX (row-major in the window) of cell pid_m * CELLS + j // PIX,
    # cells counted over (image, cell row, cell column): a tile may span cell rows, so no
    # tile is padded at a row's end.
    j = tl.arange(0, BLOCK_M)
    cell = pid_m * CELLS + j // PIX
    b = cell // (h * w)
    y = (cell // w) % h * WIN + (j % PIX) // WIN
    x = cell % w * WIN + j % WIN
    m_ok = (cell < n_cells) & (y < H) & (x < W)
    rows = (b * H + y).to(tl.int64) * W + x
    cols = tl.arange(0, 16)
    pixel_logits = tl.zeros((BLOCK_M, 16), dtype=tl.float32)
    if pid_n < N_TILES:
        offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
        n_ok = offs_n < N
        acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
        if MERGED and DECIDE:
            acc, pixel_logits = _rows_product_and_logits(
                acc, pixel_logits, x_ptr, rows, m_ok, w_ptr, offs_n, n_ok, mw_ptr, C,
                stride_wk, stride_wn, IEEE, MASKER_IEEE, BLOCK_K)
        else:
            acc = _rows_product(acc, x_ptr, rows, m_ok, w_ptr, offs_n, n_ok, C, stride_wk,
                                stride_wn, IEEE, BLOCK_K)
        acc += tl.load(bias_ptr + offs_n, mask=n_ok, other=0.0).to(tl.float32)[None, :]
        acc = tl.maximum(acc, 0.0)
        tl.store(mid_ptr + rows[:, None] * N + offs_n[None, :],
                 acc.to(mid_ptr.dtype.element_ty), mask=m_ok[:, None] & n_ok[None, :])
        if MERGED:
            _decide_and_append(pixel_logits, mb_ptr, pin_ptr, coarse_ptr, active_ptr,
                               counts_ptr, pid_m, H, W, h, w, n_cells, Ho, Wo, total_out, WIN,
                               S, DECIDE, PINNED, BLOCK_M)
    else:
        if DECIDE:
            pixel_logits = _rows_product(pixel_logits, x_ptr, rows, m_ok, mw_ptr, cols,
                                         cols < 16, C, 16, 1, MASKER_IEEE, BLOCK_K)
        _decide_and_append(pixel_logits, mb_ptr, pin_ptr, coarse_ptr, active_ptr, counts_ptr,
                           pid_m, H, W, h, w, n_cells, Ho, Wo, total_out, WIN, S, DECIDE,
                           PINNED, BLOCK_M)


@triton.jit
def _rows_product_and_logits(acc, logits, a_ptr, src, m_ok, w_ptr, offs_n, n_ok, mw_ptr, K,
                             stride_wk, stride_wn, IEEE: tl.constexpr,
                             MASKER_IEEE: tl.constexpr, BLOCK_K: tl.constexpr):
    """``_rows_product`` for conv1 and, from the same A tiles, the masker's 16 columns
    (``mw``: ``(K, 16)``, contiguous) into ``logits``."""
    cols = tl.arange(0, 16)
    for k0 in range(0, K, BLOCK_K):
        acc, a, offs_k, k_ok = _rows_step(acc, a_ptr, src, m_ok, w_ptr, offs_n, n_ok, K,
                                          stride_wk, stride_wn, k0, IEEE, BLOCK_K)
        logits = _dot(a, _weight_tile(mw_ptr, offs_k, k_ok, cols, cols < 16, 16, 1), logits,
                      MASKER_IEEE)
    return acc, logits


@triton.jit
def _decide_and_append(pixel_logits, mb_ptr, pin_ptr, coarse_ptr, active_ptr, counts_ptr,
                       pid_m, H, W, h, w, n_cells, Ho, Wo, total_out, WIN: tl.constexpr,
                       S: tl.constexpr, DECIDE: tl.constexpr, PINNED: tl.constexpr,
                       BLOCK_M: tl.constexpr):
    """The decisions of the M tile's cells from their pixels' logits (``BLOCK_M x 16``,
    columns 0 and 1), written to ``coarse``, and the cells' output rows appended to the
    row list."""
    PIX: tl.constexpr = WIN * WIN
    CELLS: tl.constexpr = BLOCK_M // PIX
    cells = pid_m * CELLS + tl.arange(0, CELLS)
    cell_ok = cells < n_cells
    cy = (cells // w) % h
    cx = cells % w
    if DECIDE:
        cols = tl.arange(0, 16)
        per_cell = tl.sum(tl.reshape(pixel_logits, (CELLS, PIX, 16)), axis=1)
        logit0 = tl.sum(tl.where(cols[None, :] == 0, per_cell, 0.0), axis=1)
        logit1 = tl.sum(tl.where(cols[None, :] == 1, per_cell, 0.0), axis=1)
        count = ((tl.minimum(cy * WIN + WIN, H) - cy * WIN)
                 * (tl.minimum(cx * WIN + WIN, W) - cx * WIN))
        logit0 = logit0 / count + tl.load(mb_ptr).to(tl.float32)
        logit1 = logit1 / count + tl.load(mb_ptr + 1).to(tl.float32)
        keep = logit0 >= logit1  # ties execute, as in the torch path
    if PINNED:
        keep = tl.load(pin_ptr + cells, mask=cell_ok, other=0.0) > 0
    tl.store(coarse_ptr + cells, keep.to(coarse_ptr.dtype.element_ty), mask=cell_ok)
    # The cells' output pixels (S x S each, clipped at the border), as flat rows, each
    # with its cell's decision read back: broadcasting ``keep`` to the rows in registers
    # (broadcast + reshape) miscounted rows on the H100 (Triton 3.6).
    tl.debug_barrier()  # the decisions stored above are read by other threads
    q = tl.arange(0, CELLS * S * S)
    q_cell = pid_m * CELLS + q // (S * S)
    q_b = q_cell // (h * w)
    oy = (q_cell // w) % h * S + (q % (S * S)) // S
    ox = q_cell % w * S + q % S
    valid = (q_cell < n_cells) & (oy < Ho) & (ox < Wo)
    run = tl.load(coarse_ptr + q_cell, mask=valid, other=0.0) > 0
    out_rows = (q_b * Ho + oy) * Wo + ox
    _append(active_ptr, counts_ptr, out_rows, valid & run)
    _append_back(active_ptr, counts_ptr + 1, out_rows, valid & (run == 0), total_out)


def masker_columns(weight, dtype):
    """The masker's 1x1 conv weight ``(2, C, 1, 1)`` as ``(C, 16)`` in ``dtype``, zero past
    column 2 (an MMA-sized B operand)."""
    c = weight.shape[1]
    out = torch.zeros(c, MASKER_COLUMNS, dtype=dtype, device=weight.device)
    out[:, :2] = weight.reshape(2, c).t()
    return out


def conv1_masker(x, w1, b1, mid, masker_w, masker_b, coarse, active, counts, window,
                 granularity, out_hw, pin=None, decide=True, ieee=None, tile=None):
    """``mid = relu(x @ w1 + b1)`` on every pixel, the masker's decision into ``coarse`` and
    the output rows into ``active`` (active first, ``counts[0]``; inactive from the back,
    ``counts[1]``), in one launch.

    Args:
        x (Tensor): Channels-last ``(B, C, H, W)`` block input.
        w1 (Tensor): ``(C, N)`` conv1 weight (any strides), ``b1``: ``(N, )``.
        mid (Tensor): ``(B*H*W, N)`` output.
        masker_w (Tensor): ``masker_columns(...)``, ``(C, 16)`` in x's dtype;
            ``masker_b``: the masker's ``(2, )`` bias.
        coarse (Tensor): ``(B, 1, h, w)`` decisions, written (1 execute / 0 skip).
        active (Tensor): int32, ``B * H_o * W_o`` rows; ``counts``: two zeroed int32.
        window (int): The masker's pooling window on x (stride x S), in
            ``FUSED_MASKER_WINDOWS``.
        granularity (int): S, the cell size in output pixels; ``out_hw``: ``(H_o, W_o)``.
        pin (Tensor | None): A ``(B, 1, h, w)`` mask that replaces the decision.
        decide (bool): Compute the logits (False only with ``pin``: the masker is skipped).
    """
    if window not in FUSED_MASKER_WINDOWS:
        raise ValueError(f'conv1_masker takes windows {FUSED_MASKER_WINDOWS}, got {window}')
    if pin is None and not decide:
        raise ValueError('decide=False needs a pinned mask')
    batch, c, height, width = x.shape
    _, _, h, w = coarse.shape
    k, n = w1.shape
    t = tile or tile_config('gemm', n, k, x.dtype, x.device, batch * height * width)
    block_m = max(t.block_m, window * window)  # whole cells a tile
    cells = block_m // (window * window)
    n_tiles = triton.cdiv(n, t.block_n)
    n_cells = batch * h * w
    m_tiles = triton.cdiv(n_cells, cells)
    merged = n_tiles == 1  # the one conv1 program of an M tile decides too
    pdl = use_pdl(x.device)
    conv1_masker_kernel[(m_tiles * (n_tiles if merged else n_tiles + 1), )](
        x, w1, b1, mid, masker_w, masker_b, coarse if pin is None else pin, coarse, active,
        counts, c, n, *w1.stride(), height, width, h, w, n_cells, *out_hw, active.numel(),
        WIN=window, S=granularity, N_TILES=n_tiles, DECIDE=decide, PINNED=pin is not None,
        MERGED=merged, IEEE=_ieee(x.dtype, ieee),
        # fp32 logits in full precision whatever conv1 uses, as the standalone masker's FMAs
        MASKER_IEEE=x.dtype == torch.float32, BLOCK_M=block_m, BLOCK_N=t.block_n,
        BLOCK_K=t.block_k, PDL=pdl, num_warps=t.num_warps, num_stages=t.num_stages,
        launch_pdl=pdl)
