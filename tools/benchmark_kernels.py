"""The sparse GEMM kernels on every ResNet-101 layer shape: tile tuning and TFLOP/s vs cuDNN.

    python tools/benchmark_kernels.py [--shape 800 1216] [--batch 1 8] [--rate 0.5] \
        [--dtype fp16] [--granularity 4 4 2 1] [--convs conv1 conv2 conv3] [--stages 1 2 3 4] \
        [--tune] [--json OUT]

For each conv of a LAS-ResNet-101 bottleneck (conv1 / conv2 / conv3 of the first and of a
regular block of each stage) at the given input size, a random coarse mask at ``rate`` gives
the row lists (``compact_rows``, as in the sparse forward), then the Triton kernel is timed
with the tile ``tile_config`` picks, and the dense conv of the same layer on the whole map
with cuDNN (channels-last, BN folded into a bias, ``cudnn.benchmark``); both as the median of
CUDA-graph replays (``triton.testing.do_bench_cudagraph``: no launch gaps, as in the graphed
backbone). conv1 runs as the backbone runs it: where the masker's window (stride x S) fits,
the launch with the masker (``conv1_masker``: every pixel, the masker's decision and the row
list; each replay re-zeroes its two row counters, one small memset more than in the backbone),
else the gathered GEMM over the needed rows; a fused conv1 is also timed as a plain row GEMM
over every pixel with the same tile (``plain GEMM``: what the masker and the cell order add).
TFLOP/s = 2 x MACs done / time: the sparse kernel's MACs are its rows x K x N, the dense
conv's all pixels x K x N (conv3's launch also writes ReLU(residual) at the inactive rows, as
in the backbone: its time includes that memory work). Per stage: the stage's blocks (3, 4,
23, 3) summed.

``--tune`` also times every candidate tile (``CANDIDATES``, and for conv3x3 the split-K tiles
``SPLIT_CANDIDATES``) on every layer and every batch,
picks per (kernel, N, K) and batch the tile with the smallest geometric mean of time / best
time over the layers of that key, and prints the table to paste into
``lasnet_mmdet/ops/tiles.py`` (``HOPPER_16BIT`` / ``HOPPER_32BIT`` for sm_90; or point
``LASNET_TRITON_TILES`` at the ``--json`` file): where the smallest and the largest batch pick
different tiles, a ``Tiles`` entry switches between them at the geometric mean of their
largest row counts. CUDA only. (An earlier version also timed the nested-loop conv3x3 kernel
that the single K loop replaced; docs/sparse_ops.md keeps that comparison.)

Measured on an H100 (``--tune --batch 1 8 --rep 10``): docs/sparse_ops.md, raw results in
docs/sparse_ops_results/h100_tune_fp16.json.
"""
import argparse
import json
import math
import os.path as osp
import sys

import torch
import torch.nn.functional as F
import triton

sys.path.insert(0, osp.dirname(osp.dirname(osp.abspath(__file__))))  # lasnet_mmdet from a checkout

DTYPES = {'fp32': torch.float32, 'fp16': torch.float16, 'bf16': torch.bfloat16}
BLOCKS = (3, 4, 23, 3)  # ResNet-101

# (BLOCK_M, BLOCK_N, BLOCK_K, num_warps, num_stages); the first four are the old autotune set.
CANDIDATES = [
    (128, 128, 32, 8, 3), (128, 64, 32, 4, 4), (64, 128, 32, 4, 4), (64, 64, 64, 4, 3),
    (64, 64, 64, 4, 4), (128, 64, 64, 4, 4), (64, 128, 64, 4, 3), (128, 128, 64, 8, 3),
    (128, 128, 64, 4, 3), (64, 256, 64, 8, 3), (128, 256, 64, 8, 3),
    # half as many K steps, for the one-wave layers of batch 1 (latency-bound K loops)
    (64, 64, 128, 4, 3), (128, 64, 128, 4, 3), (64, 128, 128, 4, 3), (128, 128, 128, 8, 2),
]
# conv3x3 only: its K loop split over 2-4 programs per output tile (``Tile.split_k``), for the
# few-row layers whose tiles alone leave SMs idle (stage 3-4 at batch 1).
SPLIT_CANDIDATES = [
    (128, 64, 64, 4, 4, 2), (128, 64, 64, 4, 4, 3), (128, 64, 64, 4, 4, 4),
    (64, 64, 64, 4, 4, 2), (64, 64, 64, 4, 4, 3), (64, 128, 64, 4, 3, 2),
    (64, 128, 64, 4, 3, 3), (128, 128, 64, 8, 3, 3),
]


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    p.add_argument('--shape', type=int, nargs=2, default=[800, 1216], metavar=('H', 'W'))
    p.add_argument('--batch', type=int, nargs='+', default=[1])
    p.add_argument('--rate', type=float, default=0.5)
    p.add_argument('--dtype', choices=sorted(DTYPES), default='fp16')
    p.add_argument('--granularity', type=int, nargs=4, default=[4, 4, 2, 1])
    p.add_argument('--weight-layout', choices=('kn', 'nk'),
                   help="the GEMM weights' layout (default: the library's, "
                   "lasnet_mmdet.ops.weight_layout('triton', dtype))")
    p.add_argument('--convs', nargs='+', choices=('conv1', 'conv2', 'conv3'),
                   default=['conv1', 'conv2', 'conv3'],
                   help="only these convs of each block (e.g. --convs conv1 --tune: the table's "
                   "conv1 keys only; the others keep the built-in table)")
    p.add_argument('--stages', nargs='+', type=int, choices=(1, 2, 3, 4), default=[1, 2, 3, 4],
                   help='only the layers of these stages')
    p.add_argument('--tune', action='store_true', help='time every candidate tile, print table')
    p.add_argument('--rep', type=float, default=20, help='do_bench repetition time (ms)')
    p.add_argument('--json', help='write the results here')
    args = p.parse_args(argv)
    if not torch.cuda.is_available():
        p.error('needs a CUDA device (torch.cuda.is_available() is False)')
    if any(b < 1 for b in args.batch) or min(args.shape) < 32 or not 0 <= args.rate <= 1:
        p.error(f'bad --batch {args.batch}, --shape {args.shape} or --rate {args.rate}')
    if args.json and not osp.isdir(osp.dirname(osp.abspath(args.json))):
        p.error(f'--json {args.json}: directory does not exist')
    return args


def conv_out(size, stride):
    return (size - 1) // stride + 1


def layers(in_h, in_w):
    """Every distinct conv of a ResNet-101 LAS bottleneck at input ``in_h x in_w``:
    dicts of stage, name, kernel, K, N, stride, in/out size and how often it runs a stage."""
    h, w = conv_out(conv_out(in_h, 2), 2), conv_out(conv_out(in_w, 2), 2)  # stem + max-pool
    cin, out = 64, []
    for stage, n in enumerate(BLOCKS):
        mid, stride = 64 * 2 ** stage, 1 if stage == 0 else 2
        oh, ow = conv_out(h, stride), conv_out(w, stride)
        common = dict(stage=stage + 1, granularity_index=stage)
        out += [
            dict(common, name='conv1_first', kernel='gemm', K=cin, N=mid, stride=stride,
                 in_hw=(h, w), out_hw=(oh, ow), times=1),
            dict(common, name='conv2_first', kernel='conv3x3', K=9 * mid, N=mid, stride=stride,
                 in_hw=(h, w), out_hw=(oh, ow), times=1),
            dict(common, name='conv3', kernel='gemm', K=mid, N=4 * mid, stride=stride,
                 in_hw=(h, w), out_hw=(oh, ow), times=n),
            dict(common, name='conv1', kernel='gemm', K=4 * mid, N=mid, stride=1,
                 in_hw=(oh, ow), out_hw=(oh, ow), times=n - 1),
            dict(common, name='conv2', kernel='conv3x3', K=9 * mid, N=mid, stride=1,
                 in_hw=(oh, ow), out_hw=(oh, ow), times=n - 1),
        ]
        if stride == 1:  # stage 1: the first block's conv2 is a regular one
            out = [lay for lay in out if not (lay['stage'] == 1 and lay['name'] == 'conv2_first')]
            out[-1]['times'] = n
        cin, h, w = 4 * mid, oh, ow
    return out


class Layer:
    """Inputs of one layer's sparse kernel and of its dense conv, on the GPU."""

    def __init__(self, lay, batch, rate, granularity, dtype, weight_layout, seed=0,
                 device='cuda'):
        from lasnet_mmdet.ops import FUSED_MASKER_WINDOWS
        from lasnet_mmdet.ops.triton.compact import compact_rows
        g = torch.Generator(device=device).manual_seed(seed)
        self.lay, dev = lay, device
        (h, w), (oh, ow), stride = lay['in_hw'], lay['out_hw'], lay['stride']
        k, n = lay['K'], lay['N']
        cin = k // 9 if lay['kernel'] == 'conv3x3' else k

        # The block's mask: S x S cells of its output, exactly round(rate * cells) active;
        # its row lists as the sparse forward makes them.
        s = self.granularity = granularity[lay['granularity_index']]
        ch, cw = -(-oh // s), -(-ow // s)
        order = torch.rand(batch, ch * cw, generator=g, device=dev).argsort(dim=1).argsort(dim=1)
        coarse = (order < round(rate * ch * cw)).to(dtype).view(batch, 1, ch, cw)
        self.counts = torch.zeros(3, dtype=torch.int32, device=dev)
        self.needed = torch.empty(batch * h * w, dtype=torch.int32, device=dev)
        self.active = torch.empty(batch * oh * ow, dtype=torch.int32, device=dev)
        compact_rows(coarse, self.counts, self.needed, self.active, (h, w), (oh, ow), s, stride)
        n_needed, n_active, _ = self.counts.tolist()

        def randn(*shape):
            return torch.randn(*shape, generator=g, device=dev).to(dtype)
        self.window = stride * s
        self.fused = lay['name'].startswith('conv1') and self.window in FUSED_MASKER_WINDOWS
        if self.fused:  # every pixel, with the masker's decision and the row list
            self.x = randn(batch, k, h, w).contiguous(memory_format=torch.channels_last)
            self.out, self.max_rows = randn(batch * h * w, n), batch * h * w
            self.masker_w, self.masker_b = randn(k, 16), randn(2)
            self.coarse, self.out_hw = coarse.clone(), (oh, ow)
            self.rows_done, dense_in, dense_stride = batch * h * w, (h, w), 1
        elif lay['name'].startswith('conv1'):  # gather needed input rows, scatter to the map
            self.x, self.out, self.max_rows = randn(batch * h * w, k), randn(batch * h * w, n), \
                batch * h * w
            self.rows_done, dense_in, dense_stride = n_needed, (h, w), 1
        elif lay['kernel'] == 'conv3x3':  # taps from the conv1 map, compact output rows
            self.x, self.out, self.max_rows = randn(batch * h * w, cin), \
                randn(batch * oh * ow, n), batch * oh * ow
            self.rows_done, dense_in, dense_stride = n_active, (h, w), stride
        else:  # conv3: compact rows in, residual added, scattered; ReLU(residual) elsewhere
            self.x, self.out, self.max_rows = randn(batch * oh * ow, k), \
                randn(batch * oh * ow, n), batch * oh * ow
            self.res = randn(batch * oh * ow, n)
            self.rows_done, dense_in, dense_stride = n_active, (oh, ow), 1
        # A K x N view either way; 'nk' stores it N x K (K contiguous), as the backbone folds.
        self.w = (randn(k, n).float() / math.sqrt(k)).to(dtype)
        if weight_layout == 'nk':
            self.w = self.w.t().contiguous().t()
        self.b = randn(n)

        # Dense: the conv on the whole map, channels-last, bias = folded BN.
        ks = 3 if lay['kernel'] == 'conv3x3' else 1
        self.dense_x = randn(batch, cin, *dense_in).contiguous(memory_format=torch.channels_last)
        self.dense_w = (randn(n, cin, ks, ks).float() / math.sqrt(k)).to(dtype).contiguous(
            memory_format=torch.channels_last)
        self.dense_stride, self.dense_pad = dense_stride, ks // 2
        dh, dw = (conv_out(d, dense_stride) for d in dense_in)
        self.dense_macs = batch * dh * dw * k * n
        self.sparse_macs = self.rows_done * k * n

    def sparse(self, tile=None):
        from lasnet_mmdet.ops.triton.conv1_masker import conv1_masker
        from lasnet_mmdet.ops.triton.gemm import conv3x3_rows, rows_gemm
        lay = self.lay
        # fp32 as the backbone runs it by default: TF32 products, like cuDNN's convs here.
        ieee = not torch.backends.cudnn.allow_tf32
        if self.fused:
            def fused():
                self.counts.zero_()  # the launch appends its rows: a fresh list each replay
                conv1_masker(self.x, self.w, self.b, self.out, self.masker_w, self.masker_b,
                             self.coarse, self.active, self.counts[1:], self.window,
                             self.granularity, self.out_hw, ieee=ieee, tile=tile)
            return fused
        if lay['kernel'] == 'conv3x3':
            # split-K semaphores allocated once, as the backbone's come from its forward's
            # one memset (the launch leaves them at zero)
            sems = torch.zeros(triton.cdiv(self.max_rows, 64) * triton.cdiv(lay['N'], 64),
                               dtype=torch.int32, device=self.out.device)
            return lambda: conv3x3_rows(self.x, self.w, self.b, self.out, self.active,
                                        self.counts[1:], self.max_rows, lay['in_hw'],
                                        lay['out_hw'], lay['stride'], tile=tile, ieee=ieee,
                                        semaphores=sems)
        if lay['name'] == 'conv3':
            return lambda: rows_gemm(self.x, self.w, self.b, self.out, self.active,
                                     self.counts[1:], self.max_rows, gather_a=False,
                                     scatter_out=True, res=self.res, relu_rest=True,
                                     tile=tile, ieee=ieee)
        return lambda: rows_gemm(self.x, self.w, self.b, self.out, self.needed, self.counts[0:],
                                 self.max_rows, gather_a=True, scatter_out=True, tile=tile,
                                 ieee=ieee)

    def dense(self):
        return lambda: F.conv2d(self.dense_x, self.dense_w, self.b, self.dense_stride,
                                self.dense_pad)

    def plain(self, tile=None):
        """conv1 of a fused layer as a plain row GEMM over every pixel in raster order, the
        same tile, no masker: what the decision and the cell order add to the fused launch
        (into ``plain_out``, laid out as the fused launch's conv1 map)."""
        from lasnet_mmdet.ops.triton.gemm import rows_gemm
        if not self.fused:
            raise ValueError(f"{self.lay['name']}: plain() is for the fused conv1 layers")
        rows = torch.arange(self.max_rows, dtype=torch.int32, device=self.x.device)
        count = torch.tensor([self.max_rows], dtype=torch.int32, device=self.x.device)
        x_rows = self.x.permute(0, 2, 3, 1).reshape(self.max_rows, -1)  # a view: channels-last
        self.plain_out = torch.empty_like(self.out)
        ieee = not torch.backends.cudnn.allow_tf32
        return lambda: rows_gemm(x_rows, self.w, self.b, self.plain_out, rows, count,
                                 self.max_rows, gather_a=False, scatter_out=False, tile=tile,
                                 ieee=ieee)


def bench(fn, rep):
    """Median ms of ``fn`` replayed back to back in a CUDA graph (as the graphed backbone runs
    its kernels: no launch gaps; plain ``do_bench`` at batch 1 times the host's launches)."""
    import triton.testing
    return triton.testing.do_bench_cudagraph(fn, rep=rep, return_mode='median')


def run(args):
    from lasnet_mmdet.ops import weight_layout
    from lasnet_mmdet.ops.triton.gemm import Tile, tile_config
    torch.backends.cudnn.benchmark = True
    dtype = DTYPES[args.dtype]
    layout = args.weight_layout or weight_layout('triton', dtype)
    res = dict(device=torch.cuda.get_device_name(), capability=torch.cuda.get_device_capability(),
               torch=torch.__version__, triton=__import__('triton').__version__,
               dtype=args.dtype, shape=args.shape, rate=args.rate,
               granularity=args.granularity, weight_layout=layout, layers=[])
    tune = {}  # (kernel, N, K) -> batch -> {tile: [t / best per layer]}
    max_rows = {}  # (kernel, N, K) -> batch -> the largest row list of its layers
    for batch in args.batch:
        for lay in layers(*args.shape):
            if lay['name'][:5] not in args.convs or lay['stage'] not in args.stages:
                continue
            L = Layer(lay, batch, args.rate, args.granularity, dtype, layout)
            tile = tile_config(lay['kernel'], lay['N'], lay['K'], dtype, torch.device('cuda'),
                               L.max_rows)
            t_sparse, t_dense = bench(L.sparse(), args.rep), bench(L.dense(), args.rep)
            row = dict(stage=lay['stage'], name=lay['name'], kernel=lay['kernel'], K=lay['K'],
                       N=lay['N'], batch=batch, times=lay['times'], rows=L.rows_done,
                       max_rows=L.max_rows,
                       tile=list(tile), sparse_ms=t_sparse, dense_ms=t_dense,
                       sparse_tflops=2 * L.sparse_macs / t_sparse / 1e9,
                       dense_tflops=2 * L.dense_macs / t_dense / 1e9)
            if L.fused:  # the fused launch against the same GEMM without the masker
                row['plain_ms'] = bench(L.plain(), args.rep)
            if args.tune:
                cands = {}
                for cand in CANDIDATES + (SPLIT_CANDIDATES if lay['kernel'] == 'conv3x3'
                                          else []):
                    c = Tile(*cand)
                    if c.block_n > max(64, triton.next_power_of_2(lay['N'])):
                        continue
                    try:
                        cands[cand] = bench(L.sparse(c), args.rep)
                    except triton.runtime.errors.OutOfResources:
                        continue  # e.g. fp32 tiles too large for shared memory
                best = min(cands.values())
                row['candidates'] = {str(list(c)): t for c, t in cands.items()}
                row['best_tile'] = list(min(cands, key=cands.get))
                row['best_ms'] = best
                key = (lay['kernel'], lay['N'], lay['K'])
                for c, t in cands.items():
                    tune.setdefault(key, {}).setdefault(batch, {}).setdefault(c, []).append(
                        t / best)
                per_batch = max_rows.setdefault(key, {})
                per_batch[batch] = max(per_batch.get(batch, 0), L.max_rows)
            res['layers'].append(row)
            print(f"b{batch} stage {lay['stage']} {lay['name']:<12} K {lay['K']:>5} N "
                  f"{lay['N']:>5} rows {L.rows_done:>7}: sparse {t_sparse * 1e3:8.1f} us "
                  f"{row['sparse_tflops']:6.1f} TFLOP/s | cuDNN dense {t_dense * 1e3:8.1f} us "
                  f"{row['dense_tflops']:6.1f} TFLOP/s"
                  + (f" | plain GEMM {row['plain_ms'] * 1e3:.1f} us" if L.fused else '')
                  + (f" | best {row['best_tile']} {row['best_ms'] * 1e3:.1f} us"
                     if args.tune else ''), flush=True)
            del L
    res['stages'] = stage_summary(res['layers'])
    for s in res['stages']:
        print(f"b{s['batch']} stage {s['stage']}: sparse {s['sparse_ms']:.3f} ms "
              f"{s['sparse_tflops']:.1f} TFLOP/s, cuDNN dense {s['dense_ms']:.3f} ms "
              f"{s['dense_tflops']:.1f} TFLOP/s (per MAC: sparse/dense "
              f"{s['dense_tflops'] / s['sparse_tflops']:.2f}x the time)")
    if args.tune:
        res['table'] = tune_table(tune, max_rows)
        print('HOPPER_32BIT = {' if args.dtype == 'fp32' else 'HOPPER_16BIT = {')
        for r in res['table']:
            key = (r['kernel'], r['N'], r['K'])
            if 'tile' in r:
                print(f"    {key!r}: Tile{tuple(r['tile'])},")
            else:
                print(f"    {key!r}: Tiles(Tile{tuple(r['few_rows'])}, "
                      f"Tile{tuple(r['many_rows'])}, {r['split_rows']}),")
        print('}')
    return res


def tune_table(tune, max_rows):
    """Per (kernel, N, K): the tile of the smallest and of the largest batch (each the smallest
    geometric mean of time / best time over the key's layers), and where they differ the row
    count between them (geometric mean of the two batches' largest lists)."""
    table = []
    for key in sorted(tune):
        best = {}
        for batch, per_tile in tune[key].items():
            # Every candidate was timed on every layer of this key (same N, K => same filter).
            score = {c: math.exp(sum(map(math.log, v)) / len(v)) for c, v in per_tile.items()}
            best[batch] = min(score, key=score.get)
        few, many = min(best), max(best)
        row = dict(kernel=key[0], N=key[1], K=key[2])
        if best[few] == best[many]:
            row['tile'] = list(best[few])
        else:
            row.update(few_rows=list(best[few]), many_rows=list(best[many]),
                       split_rows=round(math.sqrt(max_rows[key][few] * max_rows[key][many])))
        table.append(row)
    return table


def stage_summary(rows):
    out = []
    for batch in sorted({r['batch'] for r in rows}):
        for stage in range(1, 5):
            rs = [r for r in rows if r['batch'] == batch and r['stage'] == stage]
            if not rs:  # left out (--stages)
                continue
            sp = sum(r['sparse_ms'] * r['times'] for r in rs)
            de = sum(r['dense_ms'] * r['times'] for r in rs)
            sp_flop = sum(r['sparse_tflops'] * r['sparse_ms'] * r['times'] for r in rs)
            de_flop = sum(r['dense_tflops'] * r['dense_ms'] * r['times'] for r in rs)
            out.append(dict(batch=batch, stage=stage, sparse_ms=sp, dense_ms=de,
                            sparse_tflops=sp_flop / sp, dense_tflops=de_flop / de))
    return out


def main(argv=None):
    args = parse_args(argv)
    res = run(args)
    if args.json:
        with open(args.json, 'w') as f:
            json.dump(res, f, indent=1)
    return res


if __name__ == '__main__':
    main()
