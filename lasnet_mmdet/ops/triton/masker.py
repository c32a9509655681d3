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
import torch
import triton
import triton.language as tl

DTYPES = (torch.float16, torch.bfloat16, torch.float32)
TILE = 2048


# Spatial sizes and strides are runtime values (no specialisation): a new image size compiles
# nothing. C and the channel/pixel strides stay specialised (contiguous channel loads).
@triton.jit(do_not_specialize=['H', 'W', 'h', 'w', 'stride_b', 'stride_h'])
def masker_decision_kernel(x_ptr, w_ptr, b_ptr, out_ptr, C, H, W, h, w, stride_b, stride_c,
                           stride_h, stride_w, stride_wo, WIN: tl.constexpr,
                           BLOCK_P: tl.constexpr, BLOCK_C: tl.constexpr):
    cell = tl.program_id(0)
    b = cell // (h * w)
    cy = (cell // w) % h
    cx = cell % w
    y0 = cy * WIN
    x0 = cx * WIN
    count = (tl.minimum(y0 + WIN, H) - y0) * (tl.minimum(x0 + WIN, W) - x0)
    base = x_ptr + b.to(tl.int64) * stride_b

    # Weighted sums stay per element until the end: one reduction a program (reducing the
    # tile over pixels in the loop went through shared memory with heavy bank conflicts).
    acc0 = tl.zeros((BLOCK_P, BLOCK_C), dtype=tl.float32)
    acc1 = tl.zeros((BLOCK_P, BLOCK_C), dtype=tl.float32)
    for c0 in range(0, C, BLOCK_C):
        offs_c = c0 + tl.arange(0, BLOCK_C)
        c_ok = offs_c < C
        w0 = tl.load(w_ptr + offs_c, mask=c_ok, other=0.0).to(tl.float32)[None, :]
        w1 = tl.load(w_ptr + stride_wo + offs_c, mask=c_ok, other=0.0).to(tl.float32)[None, :]
        for p0 in range(0, WIN * WIN, BLOCK_P):
            p = p0 + tl.arange(0, BLOCK_P)
            y = y0 + p // WIN
            x = x0 + p % WIN
            p_ok = (p < WIN * WIN) & (y < H) & (x < W)
            pix = y.to(tl.int64) * stride_h + x.to(tl.int64) * stride_w
            tile = tl.load(base + pix[:, None] + offs_c.to(tl.int64)[None, :] * stride_c,
                           mask=p_ok[:, None] & c_ok[None, :], other=0.0).to(tl.float32)
            acc0 += tile * w0
            acc1 += tile * w1
    logit0 = tl.sum(tl.sum(acc0, axis=1), axis=0)
    logit1 = tl.sum(tl.sum(acc1, axis=1), axis=0)

    logit0 = logit0 / count + tl.load(b_ptr).to(tl.float32)
    logit1 = logit1 / count + tl.load(b_ptr + 1).to(tl.float32)
    keep = tl.where(logit0 >= logit1, 1.0, 0.0)  # ties execute, as in the torch path
    tl.store(out_ptr + cell, keep.to(out_ptr.dtype.element_ty))


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


def masker_decision(x, weight, bias, window):
    """``(conv2(avg_pool2d(x, window, ceil_mode=True))[:, :1] >= [:, 1:])`` as x's dtype.

    Args:
        x (Tensor): ``(B, C, H, W)``, fp16 / bf16 / fp32, channels-last preferred.
        weight (Tensor): The 1x1 conv's ``(2, C, 1, 1)`` (or ``(2, C)``) weight.
        bias (Tensor): Its ``(2,)`` bias.
        window (int): Pooling window and stride (stride * granularity).
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

    # Measured on an H100 (fp16, channels-last, R101 shapes at 800x1216): small windows make
    # many small programs, best with 2 warps and 2K-element tiles (a small window takes more
    # channels a load); windows of 36+ pixels make few long programs (88 cells at S=7 in stage
    # 3), best with 8 warps on 64x128 tiles (14.2 -> 5.2 us there).
    if window * window >= 36:
        block_p, block_c, num_warps = 64, min(triton.next_power_of_2(c), 128), 8
    else:
        block_p = min(triton.next_power_of_2(window * window), 16)
        block_c = min(triton.next_power_of_2(c), max(TILE // block_p, 128))
        num_warps = 2
    masker_decision_kernel[(batch * h * w, )](
        x, weight, bias, out, c, height, width, h, w, *x.stride(), weight.stride(0),
        WIN=window, BLOCK_P=block_p, BLOCK_C=block_c, num_warps=num_warps)
    return out
