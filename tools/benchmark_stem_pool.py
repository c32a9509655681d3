"""The stem epilogue, ``ops/triton/stem_pool.py``, against PyTorch's passes (CUDA only).

    python tools/benchmark_stem_pool.py [--shape 800 1216] [--batch 1 8]

For ResNet's stem (7x7/2 conv, 64 channels, BN folded into a bias, channels-last) at each batch
and dtype: PyTorch's path (cuDNN conv with bias -> ReLU -> 3x3/2 max-pool), the bias-free conv
alone, the max-pool alone, ``stem_pool_kernel`` at several pixel tiles, and the conv followed
by ``stem_pool`` with its default tile; each the median of CUDA-graph replays
(``triton.testing.do_bench_cudagraph``), in us. Results: docs/sparse_ops.md.
"""
import argparse
import os.path as osp
import sys

import torch
import torch.nn.functional as F

sys.path.insert(0, osp.dirname(osp.dirname(osp.abspath(__file__))))  # lasnet_mmdet from a checkout


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    p.add_argument('--shape', type=int, nargs=2, default=[800, 1216], metavar=('H', 'W'))
    p.add_argument('--batch', type=int, nargs='+', default=[1, 8])
    args = p.parse_args(argv)
    if not torch.cuda.is_available():
        p.error('needs a CUDA device (torch.cuda.is_available() is False)')
    if min(args.batch) < 1 or min(args.shape) < 8:
        p.error(f'bad --batch {args.batch} or --shape {args.shape}')
    return args


def main(argv=None):
    import triton
    from triton.testing import do_bench_cudagraph

    from lasnet_mmdet.ops.triton.stem_pool import pool_out, stem_pool, stem_pool_kernel
    args = parse_args(argv)
    torch.backends.cudnn.benchmark = True

    def us(fn):
        return do_bench_cudagraph(fn, rep=50) * 1e3

    for batch in args.batch:
        for dtype in (torch.float16, torch.float32):
            x = torch.randn(batch, 3, *args.shape, device='cuda', dtype=dtype)
            w = (torch.randn(64, 3, 7, 7, device='cuda', dtype=dtype) / 10).contiguous(
                memory_format=torch.channels_last)
            bias = torch.randn(64, device='cuda', dtype=dtype)
            y = F.conv2d(x, w, None, 2, 3)
            out_h, out_w = (pool_out(s, 3, 2, 1) for s in y.shape[2:])
            total = batch * out_h * out_w
            row = [f'b{batch} {str(dtype)[6:]}: PyTorch conv+bias, ReLU, max-pool '
                   f'{us(lambda: F.max_pool2d(F.conv2d(x, w, bias, 2, 3).relu_(), 3, 2, 1)):.1f}',
                   f'conv alone {us(lambda: F.conv2d(x, w, None, 2, 3)):.1f}',
                   f'max-pool alone {us(lambda: F.max_pool2d(y, 3, 2, 1)):.1f}']
            out = torch.empty(batch, 64, out_h, out_w, device='cuda', dtype=dtype,
                              memory_format=torch.channels_last)
            for block_p in (16, 32, 64, 128):
                grid = (triton.cdiv(total, block_p), )
                row.append(f'kernel {block_p} px ' + format(us(lambda: stem_pool_kernel[grid](
                    y, bias, out, 64, *y.shape[2:], out_h, out_w, total, KERNEL=3, STRIDE=2,
                    PAD=1, BLOCK_P=block_p, BLOCK_C=64, PDL=False, num_warps=4)), '.1f'))
            row.append('conv + stem_pool '
                       f'{us(lambda: stem_pool(F.conv2d(x, w, None, 2, 3), bias)):.1f}')
            print(' | '.join(row), flush=True)


if __name__ == '__main__':
    main()
