"""The fused masker decision, ``ops/triton/masker.py``, on every LAS-ResNet-101 masker (CUDA).

    python tools/benchmark_masker.py [--shape 800 1216] [--batch 1 8] [--dtype fp16] \
        [--granularity 4 4 2 1] [--tune] [--json OUT]

A masker reads its block's whole input once (channels-last) and writes one decision per
cell, so it is bound by memory: each distinct masker of the network (input channels, size,
window = stride x S) is timed with the tile ``masker_tile`` picks, and its read bandwidth is
set beside a device-to-device copy of the same tensor (bytes read + written over time, the
ceiling). ``--tune`` also times candidate tiles (cells per program, pixels and channels a
step, warps) and prints the best per shape. Per network: the maskers' sum over the blocks
(3, 4, 23, 3). Each time is the median of CUDA-graph replays
(``triton.testing.do_bench_cudagraph``), in us. Results: docs/sparse_ops.md.
"""
import argparse
import os.path as osp
import sys

import torch

sys.path.insert(0, osp.dirname(osp.dirname(osp.abspath(__file__))))  # lasnet_mmdet from a checkout

DTYPES = {'fp32': torch.float32, 'fp16': torch.float16, 'bf16': torch.bfloat16}
BLOCKS = (3, 4, 23, 3)  # ResNet-101
CELLS = (1, 2, 4, 8, 16)
BLOCK_C = (64, 128, 256, 512)
WARPS = (2, 4, 8)


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    p.add_argument('--shape', type=int, nargs=2, default=[800, 1216], metavar=('H', 'W'))
    p.add_argument('--batch', type=int, nargs='+', default=[1, 8])
    p.add_argument('--dtype', choices=sorted(DTYPES), default='fp16')
    p.add_argument('--granularity', type=int, nargs=4, default=[4, 4, 2, 1])
    p.add_argument('--tune', action='store_true', help='time candidate tiles too')
    p.add_argument('--json', help='write the results here')
    args = p.parse_args(argv)
    if not torch.cuda.is_available():
        p.error('needs a CUDA device (torch.cuda.is_available() is False)')
    if min(args.batch) < 1 or min(args.shape) < 32 or min(args.granularity) < 1:
        p.error(f'bad --batch {args.batch}, --shape {args.shape} or --granularity '
                f'{args.granularity}')
    if args.json and not osp.isdir(osp.dirname(osp.abspath(args.json))):
        p.error(f'--json {args.json}: directory does not exist')
    return args


def maskers(in_h, in_w, granularity):
    """The distinct maskers of LAS-ResNet-101: dicts of stage, channels, input size, window
    and how many blocks of the stage have it."""
    h, w = (((s - 1) // 2 - 1) // 2 + 1 for s in (in_h, in_w))  # stem conv + max-pool
    out, cin = [], 64
    for stage, (blocks, s) in enumerate(zip(BLOCKS, granularity)):
        stride = 1 if stage == 0 else 2
        out.append(dict(stage=stage + 1, C=cin, hw=(h, w), window=stride * s, times=1))
        h, w = (h - 1) // stride + 1, (w - 1) // stride + 1
        cin = 64 * 2 ** stage * 4
        out.append(dict(stage=stage + 1, C=cin, hw=(h, w), window=s, times=blocks - 1))
    return out


def candidates(window, channels):
    """Tiles of 1K-8K elements, 8-64 of them a thread, that fit the window and C."""
    import triton

    from lasnet_mmdet.ops.triton.masker import MaskerTile
    block_p = min(triton.next_power_of_2(window * window), 16)
    for cells in CELLS:
        for block_c in BLOCK_C:
            elems = cells * block_p * block_c
            if block_c > max(64, triton.next_power_of_2(channels)) or not 1024 <= elems <= 8192:
                continue
            for warps in WARPS:
                if 8 <= elems // (32 * warps) <= 64:
                    yield MaskerTile(cells, block_p, block_c, warps)


def main(argv=None):
    from triton.testing import do_bench_cudagraph

    from lasnet_mmdet.ops.triton.masker import masker_decision, masker_tile
    args = parse_args(argv)
    dtype = DTYPES[args.dtype]

    def us(fn):
        return do_bench_cudagraph(fn, rep=20, return_mode='median') * 1e3

    res = dict(device=torch.cuda.get_device_name(), torch=torch.__version__,
               triton=__import__('triton').__version__, dtype=args.dtype, shape=args.shape,
               granularity=args.granularity, rows=[])
    for batch in args.batch:
        total = dict(default=0.0, best=0.0, copy=0.0)
        for m in maskers(*args.shape, args.granularity):
            x = torch.randn(batch, m['C'], *m['hw'], device='cuda', dtype=dtype).contiguous(
                memory_format=torch.channels_last)
            weight = torch.randn(2, m['C'], 1, 1, device='cuda', dtype=dtype)
            bias = torch.randn(2, device='cuda', dtype=dtype)
            copy = torch.empty_like(x)
            mb = x.numel() * x.element_size() / 1e6
            tile = masker_tile(m['window'], m['C'])
            row = dict(m, batch=batch, tile=list(tile), mb=mb,
                       us=us(lambda: masker_decision(x, weight, bias, m['window'])),
                       copy_us=us(lambda: copy.copy_(x)))
            if args.tune:
                cands = {t: us(lambda: masker_decision(x, weight, bias, m['window'], tile=t))
                         for t in candidates(m['window'], m['C'])}
                best = min(cands, key=cands.get)
                row.update(candidates={str(list(t)): v for t, v in cands.items()},
                           best_tile=list(best), best_us=cands[best])
            res['rows'].append(row)
            total['default'] += row['us'] * m['times']
            total['best'] += row.get('best_us', row['us']) * m['times']
            total['copy'] += row['copy_us'] / 2 * m['times']  # a read's share of the copy
            print(f"b{batch} stage {m['stage']} C {m['C']:>4} {m['hw'][0]}x{m['hw'][1]} window "
                  f"{m['window']} x{m['times']:<2}: {row['us']:7.1f} us {tuple(tile)} "
                  f"({mb / row['us']:5.2f} TB/s; copy {2 * mb / row['copy_us']:5.2f} TB/s)"
                  + (f" | best {tuple(best)} {row['best_us']:7.1f} us" if args.tune else ''),
                  flush=True)
        print(f"b{batch}: maskers of the network {total['default']:.1f} us (best tiles "
              f"{total['best']:.1f}); one read of each input at copy bandwidth "
              f"{total['copy']:.1f} us", flush=True)
        res[f'total_b{batch}'] = total
    if args.json:
        from lasnet_mmdet.visualization.atomic_write import save_json
        save_json(args.json, res)


if __name__ == '__main__':
    main()
