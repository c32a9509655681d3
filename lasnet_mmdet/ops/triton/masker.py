"""The masker's eval-mode decision in one launch: pool, 1x1 conv to two logits, compare.

``Masker`` in eval computes ``conv2(avg_pool2d(x, window, window, ceil_mode=True))`` and
keeps ``execute >= skip``. In PyTorch that is a pooling kernel over the whole (large) input,
a GEMM and elementwise kernels; here one program per coarse cell reads its window once and
writes the decision. By linearity the logits are ``(w . sum of window pixels) / count + bias``
with ``count`` the in-bounds pixels of the window (avg_pool2d with ``ceil_mode`` and no
padding divides a clipped border window by its in-bounds size).

Pixels are read as [BLOCK_P pixels x BLOCK_C channels] tiles: with channels-last input a
pixel is a contiguous row of channels, so loads are coalesced along channels; any other
layout (e.g. NCHW) works through the strides, only slower. Sums are fp32; the output is
1.0 (execute) / 0.0 (skip) in x's dtype, shape ``(B, 1, ceil(H/window), ceil(W/window))``.
"""
from typing import NamedTuple

import torch
import triton
import triton.language as tl

from .pdl import grid_dependency, use_pdl

DTYPES = (torch.float16, torch.bfloat16, torch.float32)
TILE = 2048


# Spatial sizes and strides are runtime values (no specialisation): a new image size compiles
# nothing. C and the channel/pixel strides stay specialised (contiguous channel loads).
@triton.jit(do_not_specialize=['H', 'W', 'h', 'w', 'stride_b', 'stride_h'])
def masker_decision_kernel(x_ptr, w_ptr, b_ptr, out_ptr, C, H, W, h, w, stride_b, stride_c,
                           stride_h, stride_w, stride_wo, WIN: tl.constexpr,
                           CELLS: tl.constexpr, BLOCK_P: tl.constexpr, BLOCK_C: tl.constexpr,
                           PDL: tl.constexpr):
    # CELLS neighbouring cells of one cell row per program, BLOCK_P pixels of each a step:
    # small windows (4 pixels at S = 2) would otherwise make programs too small to keep
    # enough loads in flight.
    pid = tl.program_id(0)
    grid_dependency(PDL)
    w_programs = tl.cdiv(w, CELLS)
    b = pid // (h * w_programs)
    cy = (pid // w_programs) % h
    cx0 = (pid % w_programs) * CELLS
    cx = cx0 + tl.arange(0, CELLS)
    y0 = cy * WIN
    count = (tl.minimum(y0 + WIN, H) - y0) * (tl.minimum(cx * WIN + WIN, W) - cx * WIN)
    count = tl.maximum(count, 1)  # cells past the row's end (not stored) would divide by <= 0
    base = x_ptr + b.to(tl.int64) * stride_b
    # Tile row j: pixel j % BLOCK_P of this step in cell j // BLOCK_P.
    j = tl.arange(0, CELLS * BLOCK_P)
    cx_j = cx0 + j // BLOCK_P

    # Weighted sums stay per element until the end: one reduction a program (reducing the
    # tile over pixels in the loop went through shared memory with heavy bank conflicts).
    acc0 = tl.zeros((CELLS * BLOCK_P, BLOCK_C), dtype=tl.float32)
    acc1 = tl.zeros((CELLS * BLOCK_P, BLOCK_C), dtype=tl.float32)
    for c0 in range(0, C, BLOCK_C):
        offs_c = c0 + tl.arange(0, BLOCK_C)
        c_ok = offs_c < C
        w0 = tl.load(w_ptr + offs_c, mask=c_ok, other=0.0).to(tl.float32)[None, :]
        w1 = tl.load(w_ptr + stride_wo + offs_c, mask=c_ok, other=0.0).to(tl.float32)[None, :]
        for p0 in range(0, WIN * WIN, BLOCK_P):
            p = p0 + j % BLOCK_P
            y = y0 + p // WIN
            x = cx_j * WIN + p % WIN
            p_ok = (cx_j < w) & (p < WIN * WIN) & (y < H) & (x < W)
            pix = y.to(tl.int64) * stride_h + x.to(tl.int64) * stride_w
            tile = tl.load(base + pix[:, None] + offs_c.to(tl.int64)[None, :] * stride_c,
                           mask=p_ok[:, None] & c_ok[None, :], other=0.0).to(tl.float32)
            acc0 += tile * w0
            acc1 += tile * w1
    logit0 = tl.sum(tl.reshape(tl.sum(acc0, axis=1), (CELLS, BLOCK_P)), axis=1)
    logit1 = tl.sum(tl.reshape(tl.sum(acc1, axis=1), (CELLS, BLOCK_P)), axis=1)

    logit0 = logit0 / count + tl.load(b_ptr).to(tl.float32)
    logit1 = logit1 / count + tl.load(b_ptr + 1).to(tl.float32)
    keep = tl.where(logit0 >= logit1, 1.0, 0.0)  # ties execute, as in the torch path
    tl.store(out_ptr + (b * h + cy) * w + cx, keep.to(out_ptr.dtype.element_ty), mask=cx < w)


def _check(x, weight, bias, window):
    if not isinstance(x, torch.Tensor) or x.dim() != 4:
        shape = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
        raise ValueError(f'x must be a (B, C, H, W) tensor, got {shape}')
    if x.dtype not in DTYPES:
        raise ValueError(f'x must be one of {DTYPES}, got {x.dtype}')
    if min(x.shape) < 1:
        raise ValueError(f'x must not be empty, got shape {tuple(x.shape)}')
    c = x.shape[1]
    if tuple(weight.shape) not in ((2, c, 1, 1), (2, c)):
        raise ValueError(f'weight must have shape (2, {c}, 1, 1) or (2, {c}) for x with {c} '
                         f'channels, got {tuple(weight.shape)}')
    if tuple(bias.shape) != (2, ):
        raise ValueError(f'bias must have shape (2,), got {tuple(bias.shape)}')
    for name, t in (('weight', weight), ('bias', bias)):
        if t.dtype not in DTYPES:
            raise ValueError(f'{name} must be one of {DTYPES}, got {t.dtype}')
        if t.device != x.device:
            raise ValueError(f'{name} is on {t.device}, x on {x.device}')
    if isinstance(window, bool) or int(window) != window or window < 1:
        raise ValueError(f'window must be an integer >= 1, got {window!r}')


class MaskerTile(NamedTuple):
    cells: int  # cells a program (of one cell row)
    block_p: int  # pixels of each cell a step
    block_c: int  # channels a step
    num_warps: int


def masker_tile(window, channels):
    """The ``MaskerTile`` for a ``window`` x ``window`` window over ``channels`` channels: from
    the layer alone, so a new image size compiles nothing."""
    # Measured on an H200 (fp16, channels-last, every R101 masker at 800x1216, batch 1 and 8;
    # tools/benchmark_masker.py --tune, docs/sparse_ops_results/h200_s5_run1_masker_fp16.json).
    # Cells of 32K+ elements (S = 7 in stage 3: 49 pixels x 1024 channels, 88 cells at batch
    # 1) make few long programs: 8 warps on 64 x 128 tiles (14.2 -> 5.2 us there). Otherwise
    # 2-4 warps on 1K-2K-element tiles: 16 pixels x 64 channels from 16-pixel windows up (S =
    # 4: 10.9 -> 8.0 us at 512 channels; stage 2's first window, 8 x 8 pixels x 256 channels,
    # took 35.6 us as 64 x 128 tiles, 12.8 as 16 x 64), four cells a program at one pixel a
    # cell (batch 8: 19.2 -> 11.5 us).
    pixels = window * window
    if pixels >= 36 and pixels * channels >= 32768:
        return MaskerTile(1, 64, min(triton.next_power_of_2(channels), 128), 8)
    if pixels >= 16:
        return MaskerTile(1, 16, 64, 2 if pixels == 16 else 4)
    if pixels == 1:
        return MaskerTile(4, 1, min(triton.next_power_of_2(channels), 512), 2)
    block_p = triton.next_power_of_2(pixels)
    return MaskerTile(1, block_p, min(triton.next_power_of_2(channels), TILE // block_p), 2)


def masker_decision(x, weight, bias, window, tile=None):
    """``(conv2(avg_pool2d(x, window, ceil_mode=True))[:, :1] >= [:, 1:])`` as x's dtype.

    Args:
        x (Tensor): ``(B, C, H, W)``, fp16 / bf16 / fp32, channels-last preferred.
        weight (Tensor): The 1x1 conv's ``(2, C, 1, 1)`` (or ``(2, C)``) weight.
        bias (Tensor): Its ``(2,)`` bias.
        window (int): Pooling window and stride (stride * granularity).
        tile (MaskerTile | None): Override of ``masker_tile`` (benchmarks).
    """
    _check(x, weight, bias, window)
    window = int(window)
    batch, c, height, width = x.shape
    h, w = triton.cdiv(height, window), triton.cdiv(width, window)
    weight = weight.reshape(2, c)  # a view of a conv weight: no copy, no extra launch
    if weight.stride(1) != 1:
        weight = weight.contiguous()
    bias = bias.contiguous()
    out = torch.empty(batch, 1, h, w, dtype=x.dtype, device=x.device)
    t = tile or masker_tile(window, c)
    pdl = use_pdl(x.device)
    masker_decision_kernel[(batch * h * triton.cdiv(w, t.cells), )](
        x, weight, bias, out, c, height, width, h, w, *x.stride(), weight.stride(0),
        WIN=window, CELLS=t.cells, BLOCK_P=t.block_p, BLOCK_C=t.block_c,
        PDL=pdl, num_warps=t.num_warps, launch_pdl=pdl)
    return out
