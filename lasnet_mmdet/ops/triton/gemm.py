"""The two GEMM kernels of a sparse LAS bottleneck: 1x1 convs and the 3x3 conv on row lists.

Feature maps are channels-last, so a pixel is a contiguous row of channels and a conv is a
GEMM whose A rows are gathered pixels (implicit GEMM: the gather happens in the kernel's
loads, nothing is materialised). Rows come from a device-side list whose length is read by
each program (``count_ptr``); the grid covers the largest possible list and surplus programs
return at once. Accumulation is fp32; fp32 inputs use IEEE products (no TF32) so the sparse
path matches the dense one to 1e-4.

* ``rows_gemm_kernel``: ``out[dst] = relu(A[src] @ W + bias (+ res[dst]))``: conv1 (gather
  the needed input rows, scatter into the conv1 map) and conv3 (read the compact conv2 rows,
  scatter into the output, fused with the residual add and the ReLU).
* ``conv3x3_rows_kernel``: conv2 for the active output rows: the nine taps are gathered from
  the conv1 map inside the K loop (zero outside the image, exactly the dense zero padding),
  written compact.

Autotuning (CUDA only): four tiles (rows x channels x K, warps, stages): 128x128x32 8w 3s,
128x64x32 4w 4s, 64x128x32 4w 4s, 64x64x64 4w 3s, keyed on the GEMM's N, K and largest row count. Every kernel is
idempotent (the residual is read from a different buffer than the one written), so the
autotuner may rerun it freely. Under TRITON_INTERPRET=1 a single small tile is used.
"""
import os

import triton
import triton.language as tl


def _configs():
    if os.environ.get('TRITON_INTERPRET', '0') not in ('', '0'):
        return [triton.Config({'BLOCK_M': 16, 'BLOCK_N': 32, 'BLOCK_K': 32}, num_warps=1)]
    if os.environ.get('LASNET_TRITON_AUTOTUNE', '1') == '0':  # e.g. tests: compile once
        return [triton.Config({'BLOCK_M': 64, 'BLOCK_N': 64, 'BLOCK_K': 32}, num_warps=4,
                              num_stages=3)]
    return [
        triton.Config({'BLOCK_M': bm, 'BLOCK_N': bn, 'BLOCK_K': bk}, num_warps=wp,
                      num_stages=st)
        for bm, bn, bk, wp, st in [
            (128, 128, 32, 8, 3), (128, 64, 32, 4, 4), (64, 128, 32, 4, 4),
            (64, 64, 64, 4, 3)]
    ]


@triton.jit
def _dot(a, b, acc, IEEE: tl.constexpr):
    if IEEE:
        return tl.dot(a, b, acc, input_precision='ieee')
    return tl.dot(a, b, acc)


@triton.autotune(configs=_configs(), key=['N', 'K', 'max_rows'])
@triton.jit
def rows_gemm_kernel(a_ptr, w_ptr, bias_ptr, res_ptr, out_ptr, rows_ptr, count_ptr, N, K,
                     max_rows, GATHER_A: tl.constexpr, SCATTER_OUT: tl.constexpr,
                     HAS_RES: tl.constexpr, IEEE: tl.constexpr, BLOCK_M: tl.constexpr,
                     BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr):
    pid_m = tl.program_id(0)
    pid_n = tl.program_id(1)
    count = tl.load(count_ptr)
    if pid_m * BLOCK_M >= count:
        return  # beyond this forward's list: an inactive part of the grid
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    m_ok = offs_m < count
    rows = tl.load(rows_ptr + offs_m, mask=m_ok, other=0).to(tl.int64)
    src = rows if GATHER_A else offs_m.to(tl.int64)
    dst = rows if SCATTER_OUT else offs_m.to(tl.int64)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    n_ok = offs_n < N

    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for k0 in range(0, K, BLOCK_K):
        offs_k = k0 + tl.arange(0, BLOCK_K)
        k_ok = offs_k < K
        a = tl.load(a_ptr + src[:, None] * K + offs_k[None, :], mask=m_ok[:, None] & k_ok[None, :],
                    other=0.0)
        b = tl.load(w_ptr + offs_k[:, None] * N + offs_n[None, :],
                    mask=k_ok[:, None] & n_ok[None, :], other=0.0)
        acc = _dot(a, b, acc, IEEE)

    acc += tl.load(bias_ptr + offs_n, mask=n_ok, other=0.0).to(tl.float32)[None, :]
    out_offs = dst[:, None] * N + offs_n[None, :]
    mask = m_ok[:, None] & n_ok[None, :]
    if HAS_RES:
        acc += tl.load(res_ptr + out_offs, mask=mask, other=0.0).to(tl.float32)
    acc = tl.maximum(acc, 0.0)
    tl.store(out_ptr + out_offs, acc.to(out_ptr.dtype.element_ty), mask=mask)


@triton.autotune(configs=_configs(), key=['N', 'C', 'max_rows'])
@triton.jit
def conv3x3_rows_kernel(x_ptr, w_ptr, bias_ptr, out_ptr, rows_ptr, count_ptr, C, N, H, W, Ho,
                        Wo, max_rows, STRIDE: tl.constexpr, IEEE: tl.constexpr,
                        BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr):
    pid_m = tl.program_id(0)
    pid_n = tl.program_id(1)
    count = tl.load(count_ptr)
    if pid_m * BLOCK_M >= count:
        return
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    m_ok = offs_m < count
    rows = tl.load(rows_ptr + offs_m, mask=m_ok, other=0)
    b = rows // (Ho * Wo)
    oy = (rows // Wo) % Ho
    ox = rows % Wo
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    n_ok = offs_n < N

    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for tap in tl.static_range(9):
        iy = oy * STRIDE - 1 + tap // 3
        ix = ox * STRIDE - 1 + tap % 3
        ok = m_ok & (iy >= 0) & (iy < H) & (ix >= 0) & (ix < W)
        src = ((b * H + iy) * W + ix).to(tl.int64)
        for k0 in range(0, C, BLOCK_K):
            offs_k = k0 + tl.arange(0, BLOCK_K)
            k_ok = offs_k < C
            a = tl.load(x_ptr + src[:, None] * C + offs_k[None, :], mask=ok[:, None] & k_ok[None, :],
                        other=0.0)
            wb = tl.load(w_ptr + (tap * C + offs_k)[:, None] * N + offs_n[None, :],
                         mask=k_ok[:, None] & n_ok[None, :], other=0.0)
            acc = _dot(a, wb, acc, IEEE)

    acc += tl.load(bias_ptr + offs_n, mask=n_ok, other=0.0).to(tl.float32)[None, :]
    acc = tl.maximum(acc, 0.0)
    out_offs = offs_m.to(tl.int64)[:, None] * N + offs_n[None, :]
    tl.store(out_ptr + out_offs, acc.to(out_ptr.dtype.element_ty),
             mask=m_ok[:, None] & n_ok[None, :])


def _grid(max_rows, n):
    return lambda meta: (triton.cdiv(max_rows, meta['BLOCK_M']), triton.cdiv(n, meta['BLOCK_N']))


def rows_gemm(a, w, bias, out, rows, count, max_rows, gather_a, scatter_out, res=None):
    """``out[dst] = relu(a[src] @ w + bias (+ res[dst]))`` for the first ``count`` list rows."""
    k, n = w.shape
    rows_gemm_kernel[_grid(max_rows, n)](
        a, w, bias, out if res is None else res, out, rows, count, n, k, max_rows,
        GATHER_A=gather_a, SCATTER_OUT=scatter_out, HAS_RES=res is not None,
        IEEE=a.dtype.itemsize == 4)


def conv3x3_rows(x, w, bias, out, rows, count, max_rows, in_hw, out_hw, stride):
    """``out[m] = relu(conv3x3(x)[rows[m]] + bias)`` (x: channels-last rows of the conv1 map)."""
    c, n = w.shape[0] // 9, w.shape[1]
    conv3x3_rows_kernel[_grid(max_rows, n)](
        x, w, bias, out, rows, count, c, n, *in_hw, *out_hw, max_rows, STRIDE=stride,
        IEEE=x.dtype.itemsize == 4)
