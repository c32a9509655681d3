"""The stem's bias, ReLU and max-pool in one pass: ``relu(max_pool(conv) + bias)``.

ResNet's stem is conv (BN folded into a bias) -> ReLU -> 3x3 / 2 max-pool, on the largest maps
of the network (64 x H/2 x W/2). cuDNN adds a conv's bias in a separate kernel, ReLU is another
pass and PyTorch's channels-last max-pool a third, slow one. A per-channel bias and ReLU are
monotone, so they commute with the max: ``max_pool(relu(y + b)) == relu(max_pool(y) + b)``,
and one launch reads the bias-free conv output once and writes the pooled map.

Input and output are channels-last: a program takes BLOCK_P output pixels x all channels, so
each tap is a [BLOCK_P, C] tile of contiguous channel rows. Out-of-image taps are -inf (the
max-pool's padding). Spatial sizes are runtime values (no specialisation).
"""
import torch
import triton
import triton.language as tl

from .pdl import grid_dependency, use_pdl


@triton.jit(do_not_specialize=['H', 'W', 'Ho', 'Wo', 'total'])
def stem_pool_kernel(y_ptr, bias_ptr, out_ptr, C, H, W, Ho, Wo, total, KERNEL: tl.constexpr,
                     STRIDE: tl.constexpr, PAD: tl.constexpr, BLOCK_P: tl.constexpr,
                     BLOCK_C: tl.constexpr, PDL: tl.constexpr):
    grid_dependency(PDL)
    offs_p = tl.program_id(0) * BLOCK_P + tl.arange(0, BLOCK_P)
    offs_c = tl.arange(0, BLOCK_C)
    p_ok = offs_p < total
    c_ok = offs_c < C
    b = offs_p // (Ho * Wo)
    oy = (offs_p // Wo) % Ho
    ox = offs_p % Wo
    best = tl.full((BLOCK_P, BLOCK_C), float('-inf'), tl.float32)
    for dy in tl.static_range(KERNEL):
        for dx in tl.static_range(KERNEL):
            iy = oy * STRIDE - PAD + dy
            ix = ox * STRIDE - PAD + dx
            ok = p_ok & (iy >= 0) & (iy < H) & (ix >= 0) & (ix < W)
            pix = ((b * H + iy) * W + ix).to(tl.int64)
            tap = tl.load(y_ptr + pix[:, None] * C + offs_c[None, :],
                          mask=ok[:, None] & c_ok[None, :], other=float('-inf'))
            best = tl.maximum(best, tap.to(tl.float32))
    bias = tl.load(bias_ptr + offs_c, mask=c_ok, other=0.0).to(tl.float32)
    out = tl.maximum(best + bias[None, :], 0.0)
    dst = offs_p.to(tl.int64)[:, None] * C + offs_c[None, :]
    tl.store(out_ptr + dst, out.to(out_ptr.dtype.element_ty), mask=p_ok[:, None] & c_ok[None, :])


def pool_out(size, kernel, stride, padding):
    return (size + 2 * padding - kernel) // stride + 1


def stem_pool(y, bias, kernel=3, stride=2, padding=1):
    """``relu(max_pool2d(y, kernel, stride, padding) + bias)`` as a channels-last tensor.

    Args:
        y (Tensor): ``(B, C, H, W)`` bias-free stem conv output, channels-last (other layouts
            are copied to it), fp16 / bf16 / fp32.
        bias (Tensor): ``(C, )``, the stem's folded BN.
    """
    if y.dim() != 4 or tuple(bias.shape) != (y.shape[1], ):
        raise ValueError(f'y must be (B, C, H, W) and bias (C, ), got {tuple(y.shape)} and '
                         f'{tuple(bias.shape)}')
    if padding > kernel // 2:
        raise ValueError(f'padding must be at most kernel // 2 (max_pool2d), got {padding} '
                         f'for kernel {kernel}')
    batch, c, height, width = y.shape
    out_h, out_w = (pool_out(s, kernel, stride, padding) for s in (height, width))
    if min(out_h, out_w) < 1:
        raise ValueError(f'input {height}x{width} is smaller than the pooling window {kernel}')
    y = y.contiguous(memory_format=torch.channels_last)
    out = torch.empty(batch, c, out_h, out_w, dtype=y.dtype, device=y.device,
                      memory_format=torch.channels_last)
    total = batch * out_h * out_w
    block_c = triton.next_power_of_2(c)
    # 4 KB tap tiles: on an H100 (64 channels, 800x1216 input) 32 px in fp16 and 16 px in
    # fp32 were the fastest of 16-128 px at batch 1 (11.7 us vs 13.1 at 64 px in fp16) and
    # within 1 % of it at batch 8.
    block_p = max(1, 4096 // (block_c * y.element_size()))
    pdl = use_pdl(y.device)
    stem_pool_kernel[(triton.cdiv(total, block_p), )](
        y, bias.contiguous(), out, c, height, width, out_h, out_w, total, KERNEL=kernel,
        STRIDE=stride, PAD=padding, BLOCK_P=block_p, BLOCK_C=block_c, PDL=pdl, num_warps=4,
        launch_pdl=pdl)
    return out
