"""Row lists of a sparse LAS bottleneck, compacted on the device (no host synchronisation).

One launch reads the coarse mask and writes two lists of flat channels-last rows with their
counts: the *needed* conv1 outputs (the 3x3, stride-s receptive field of the active output
pixels, i.e. the dilated mask, at conv1's resolution) and every output pixel, the active ones
first: active rows fill the output list from the front (``counts[1]`` of them), inactive ones
from the back (``counts[2]``), so ``list[counts[1]:]`` are exactly the inactive rows (conv3's
launch writes ReLU(residual) there). Each program flags a block of pixels, takes a local
prefix sum and reserves its slots with one atomic add, so the rows come out in no fixed
order; every row is computed independently, so the result does not depend on it. The counts
stay on the device: the GEMM kernels are launched over the largest possible list and their
surplus programs return at once, which keeps the backbone capturable in a CUDA graph.
"""
import triton
import triton.language as tl

from .pdl import grid_dependency, use_pdl


@triton.jit
def _flag_needed(coarse_ptr, offs, total, H, W, Ho, Wo, h, w, S: tl.constexpr,
                 STRIDE: tl.constexpr):
    # conv1 output (y, x) is read by output rows oy with |STRIDE*oy - y| <= 1, i.e.
    # ceil((y-1)/STRIDE) <= oy <= floor((y+1)/STRIDE); those cover at most 3 coarse cells.
    inside = offs < total
    b = offs // (H * W)
    y = (offs // W) % H
    x = offs % W
    cy_lo = tl.maximum((y - 2 + STRIDE) // STRIDE, 0) // S
    cy_hi = tl.minimum((y + 1) // STRIDE, Ho - 1) // S
    cx_lo = tl.maximum((x - 2 + STRIDE) // STRIDE, 0) // S
    cx_hi = tl.minimum((x + 1) // STRIDE, Wo - 1) // S
    flag = offs < 0
    for dy in tl.static_range(3):
        for dx in tl.static_range(3):
            ok = inside & (cy_lo + dy <= cy_hi) & (cx_lo + dx <= cx_hi)
            cell = (b * h + cy_lo + dy) * w + cx_lo + dx
            flag = flag | (tl.load(coarse_ptr + cell, mask=ok, other=0.0) > 0)
    return flag


@triton.jit
def _flag_active(coarse_ptr, offs, total, Ho, Wo, h, w, S: tl.constexpr):
    b = offs // (Ho * Wo)
    oy = (offs // Wo) % Ho
    ox = offs % Wo
    cell = (b * h + oy // S) * w + ox // S
    return tl.load(coarse_ptr + cell, mask=offs < total, other=0.0) > 0


@triton.jit
def _append(list_ptr, count_ptr, offs, flag):
    """Append ``offs[flag]`` to the list at ``count``: one relaxed atomic add reserves the
    slots (no fence: only the next launches read the list and the count, after this one has
    completed; the H100 backbone at batch 8 took 6.16 ms instead of 6.28 with the default
    acq_rel adds)."""
    f = flag.to(tl.int32)
    slot = tl.cumsum(f, 0) - 1
    base = tl.atomic_add(count_ptr, tl.sum(f, 0), sem='relaxed')
    tl.store(list_ptr + base + slot, offs, mask=flag)


@triton.jit
def _append_back(list_ptr, count_ptr, offs, flag, length):
    """Like ``_append``, filling ``list[length - 1], list[length - 2], ...``."""
    f = flag.to(tl.int32)
    slot = tl.cumsum(f, 0) - 1
    base = tl.atomic_add(count_ptr, tl.sum(f, 0), sem='relaxed')
    tl.store(list_ptr + (length - 1 - base - slot), offs, mask=flag)


# Sizes are runtime values (no specialisation): a new image size compiles nothing.
@triton.jit(do_not_specialize=['B', 'H', 'W', 'Ho', 'Wo', 'h', 'w', 'needed_programs'],
            do_not_specialize_on_alignment=['needed_ptr', 'active_ptr', 'counts_ptr'])
def compact_rows_kernel(coarse_ptr, needed_ptr, active_ptr, counts_ptr, B, H, W, Ho, Wo, h, w,
                        needed_programs, S: tl.constexpr, STRIDE: tl.constexpr,
                        BLOCK: tl.constexpr, PDL: tl.constexpr):
    pid = tl.program_id(0)
    grid_dependency(PDL)
    if pid < needed_programs:
        offs = pid * BLOCK + tl.arange(0, BLOCK)
        flag = _flag_needed(coarse_ptr, offs, B * H * W, H, W, Ho, Wo, h, w, S, STRIDE)
        _append(needed_ptr, counts_ptr, offs, flag)
    else:
        offs = (pid - needed_programs) * BLOCK + tl.arange(0, BLOCK)
        total = B * Ho * Wo
        flag = _flag_active(coarse_ptr, offs, total, Ho, Wo, h, w, S)
        _append(active_ptr, counts_ptr + 1, offs, flag)
        _append_back(active_ptr, counts_ptr + 2, offs, (offs < total) & (flag == 0), total)


def compact_rows(coarse, counts, needed, active, in_hw, out_hw, granularity, stride):
    """Fill ``needed`` and ``active`` (int32; ``active`` holds every output row, the active
    ones first) and ``counts[0:3]`` (zeroed int32: needed, active, inactive) from ``coarse``."""
    batch, _, h, w = coarse.shape
    block = 1024
    needed_programs = triton.cdiv(needed.numel(), block)
    grid = (needed_programs + triton.cdiv(active.numel(), block), )
    pdl = use_pdl(coarse.device)
    compact_rows_kernel[grid](coarse, needed, active, counts, batch, *in_hw, *out_hw, h, w,
                              needed_programs, S=granularity, STRIDE=stride, BLOCK=block,
                              PDL=pdl, launch_pdl=pdl)
