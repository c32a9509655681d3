"""Latency of a LAS-ResNet against the best dense ResNet of the same weights, and of whole detectors.

    python tools/benchmark_latency.py CONFIG [--device cuda] [--shape 800 1216] [--batch 1 8] \
        [--dtype fp16 fp32] [--rate 0.5] [--rates 0.1 0.3 ...] [--granularity 4 4 2 1] \
        [--compile] [--detector] [--stream] [--test-images N] [--checkpoint CKPT] \
        [--no-backbone] [--profile-kernels] [--json OUT]

CONFIG is an mmdet config whose ``model.backbone`` is a LASResNet (random weights: latency does
not depend on them). Every LAS mask is pinned at exactly ``--rate`` (seeded, kept on the
device; ``LASResNet.pinned_masks(run_masker=True)``: the maskers still run, so their cost is
timed). Times are medians of ``--repeats`` calls after ``--warmup`` rounds, all variants of a
table called in turn (interleaved; on CUDA the graph replays among themselves, then the eager
calls: eager calls in between slowed the replays), synchronised on CUDA. For each ``--dtype``
x ``--batch``:

* backbone (unless ``--no-backbone``; weights and input cast to the dtype): the dense
  baselines of ``lasnet_mmdet.benchmark.dense`` (mmdet NCHW; channels-last BN-folded; on CUDA
  both replayed from CUDA graphs, and ``--compile``: torch.compile max-autotune then graphed;
  cuDNN benchmark on) against the LAS backbone as the library runs it (on CUDA: sparse,
  captured per input shape by the backbone itself, ``cuda_graph=True``; also eager and
  dense-masked). ``ratio`` = LAS / the fastest dense baseline.
* ``--detector``: the whole ``predict()`` of the config's detector, eager as mmdet's test loop
  runs it, fp32 weights, fp16 / bf16 through ``torch.autocast`` only, dense ResNet vs LAS.
* ``--stream``: the detector at a fixed list of COCO-like padded sizes (keep-ratio 1333x800,
  pad 32; ``--stream-scale`` shrinks them), batch 1: the first (cold) call at each new size
  and the median of warm calls, dense vs LAS, after one call at another size warmed the process.
* ``--test-images N``: the detector on the first N images of the config's test set, through
  its pipeline and data preprocessor, one image a batch, as ``tools/test.py`` runs it, with the
  masks the maskers decide (not pinned): whole ``predict()`` and the backbone alone, dense vs
  LAS (and LAS dense-masked), the mean MACs ratio and detections per image. With
  ``--checkpoint`` (a trained detector of this config: its weights for the detector tables)
  this is a real test run's work; the backbone's share of the dense ``predict()`` bounds what
  any backbone can save.
"""
import argparse
import copy
import json
import math
import os
import os.path as osp
import platform
import sys
import tempfile
from contextlib import ExitStack

import torch
from mmengine.config import DictAction

sys.path.insert(0, osp.dirname(osp.dirname(osp.abspath(__file__))))  # lasnet_mmdet from a checkout

DTYPES = {'fp32': torch.float32, 'fp16': torch.float16, 'bf16': torch.bfloat16}
NUM_STAGES = 4  # LASResNet's stages in every config here: --granularity gives one S each


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    p.add_argument('config')
    p.add_argument('--device', choices=['cpu', 'cuda'], default='cuda')
    p.add_argument('--shape', type=int, nargs=2, default=[800, 1216], metavar=('H', 'W'))
    p.add_argument('--batch', type=int, nargs='+', default=[1])
    p.add_argument('--dtype', choices=sorted(DTYPES), nargs='+', default=['fp32'])
    p.add_argument('--rate', type=float, default=0.5)
    p.add_argument('--rates', type=float, nargs='+', help='also a curve of the backbone ratio')
    p.add_argument('--granularity', type=int, nargs='+',
                   help=f'S per stage, {NUM_STAGES} values (else the config)')
    p.add_argument('--depth', type=int, choices=[50, 101, 152],
                   help='backbone depth (else the config)')
    p.add_argument('--backend', default='auto', choices=['auto', 'torch', 'triton'])
    p.add_argument('--warmup', type=int, default=None, help='default: 10 cuda, 1 cpu')
    p.add_argument('--repeats', type=int, default=None, help='default: 50 cuda, 3 cpu')
    p.add_argument('--compile', action='store_true',
                   help='also the torch.compile(max-autotune-no-cudagraphs) dense baseline, '
                        'graphed (CUDA; minutes of compilation for a ResNet-101)')
    p.add_argument('--no-backbone', action='store_true', help='skip the backbone tables')
    p.add_argument('--detector', action='store_true', help='time the whole predict()')
    p.add_argument('--stream', action='store_true',
                   help='the detector over COCO-like padded sizes: cold and warm calls')
    p.add_argument('--test-images', type=int, metavar='N',
                   help='the detector on the first N images of the config\'s test set, '
                        'learned masks (batch 1)')
    p.add_argument('--checkpoint', help='the detector\'s weights (a checkpoint of this config) '
                   'for --detector, --stream and --test-images (else random weights)')
    p.add_argument('--stream-scale', type=float, default=1.0,
                   help='scale of the 1333x800 resize target of --stream (tests: 0.1)')
    p.add_argument('--profile-kernels', action='store_true',
                   help='also where one dense and one LAS forward spend their time '
                        '(torch.profiler: CUDA kernels on cuda, operators on cpu)')
    p.add_argument('--threads', type=int, help='torch CPU threads (default: torch default)')
    p.add_argument('--seed', type=int, default=0)
    p.add_argument('--json', help='write the results here')
    p.add_argument('--keep-going', action='store_true',
                   help='record an error of one table in the JSON and go on with the others')
    p.add_argument('--cfg-options', nargs='+', action=DictAction,
                   help='override config settings, as mmdet\'s tools (key=value)')
    args = p.parse_args(argv)
    # Every argument is checked here, before any model is built.
    if not osp.isfile(args.config):
        p.error(f'config {args.config!r} does not exist')
    if args.device == 'cuda' and not torch.cuda.is_available():
        p.error('--device cuda but torch.cuda.is_available() is False')
    if args.device == 'cpu' and 'fp16' in args.dtype:
        p.error('--dtype fp16 is not supported on --device cpu (use fp32, or bf16 for the '
                'backbone)')
    if args.device == 'cpu' and 'bf16' in args.dtype and (args.detector or args.stream):
        p.error('--dtype bf16 with --detector/--stream on --device cpu: mmcv\'s CPU ops '
                '(RoIAlign, NMS) take fp32 only; use --dtype fp32 on the CPU')
    for b in args.batch:
        if b < 1:
            p.error(f'--batch must be >= 1, got {b}')
    if min(args.shape) < 32:
        p.error(f'--shape must be at least 32 x 32, got {args.shape}')
    for name, rates in (('--rate', [args.rate]), ('--rates', args.rates or [])):
        for r in rates:
            if not 0 <= r <= 1:
                p.error(f'{name} must be in [0, 1], got {r}')
    if args.granularity is not None:
        if len(args.granularity) != NUM_STAGES:
            p.error(f'--granularity needs one S per stage ({NUM_STAGES}), got '
                    f'{args.granularity}')
        if any(s < 1 for s in args.granularity):
            p.error(f'--granularity values must be >= 1, got {args.granularity}')
    if args.warmup is not None and args.warmup < 0:
        p.error(f'--warmup must be >= 0, got {args.warmup}')
    if args.repeats is not None and args.repeats < 1:
        p.error(f'--repeats must be >= 1, got {args.repeats}')
    if args.threads is not None and args.threads < 1:
        p.error(f'--threads must be >= 1, got {args.threads}')
    if not math.isfinite(args.stream_scale):
        p.error(f'--stream-scale must be a finite number, got {args.stream_scale}')
    if not args.stream_scale > 0:
        p.error(f'--stream-scale must be > 0, got {args.stream_scale}')
    if args.compile and args.device != 'cuda':
        p.error('--compile needs --device cuda')
    if args.json:
        check_json_path(p, args.json)
    if args.test_images is not None and args.test_images < 1:
        p.error(f'--test-images must be >= 1, got {args.test_images}')
    detector_tables = args.detector or args.stream or args.test_images
    if args.checkpoint is not None:
        if not osp.isfile(args.checkpoint):
            p.error(f'--checkpoint {args.checkpoint!r} does not exist')
        if not detector_tables:
            p.error('--checkpoint applies to --detector, --stream and --test-images: add one')
    if args.no_backbone and not detector_tables:
        p.error('--no-backbone leaves nothing to do (add --detector, --stream or '
                '--test-images)')
    args.warmup = args.warmup if args.warmup is not None else (10 if args.device == 'cuda' else 1)
    args.repeats = args.repeats if args.repeats is not None else (
        50 if args.device == 'cuda' else 3)
    return args


def check_json_path(p, path):
    """``--json`` must name a file this process can write: found out now, not after the run."""
    if osp.isdir(path):
        p.error(f'--json {path}: is a directory (give a file name)')
    folder = osp.dirname(osp.abspath(path))
    if not osp.isdir(folder):
        p.error(f'--json {path}: directory {folder} does not exist')
    if osp.exists(path) and not os.access(path, os.W_OK):
        p.error(f'--json {path}: the file is not writable')
    # A file created and removed: os.access(folder, os.W_OK) alone says yes to root on
    # read-only file systems (/proc).
    try:
        with tempfile.NamedTemporaryFile(dir=folder, prefix='.benchmark_latency.'):
            pass
    except OSError as e:
        p.error(f'--json {path}: cannot write in {folder} ({e.strerror or e})')


def load_cfg(args):
    from mmengine.config import Config
    cfg = Config.fromfile(args.config)
    if args.cfg_options:
        cfg.merge_from_dict(args.cfg_options)
    bcfg = copy.deepcopy(cfg.model.backbone)
    if bcfg.get('type') != 'LASResNet':
        raise ValueError(f'{args.config}: model.backbone.type must be LASResNet, got '
                         f'{bcfg.get("type")!r}')
    bcfg.pop('init_cfg', None)  # random weights: latency does not depend on them
    bcfg['sparse_inference'] = args.backend
    if args.granularity:
        bcfg['granularity'] = tuple(args.granularity)
    if args.depth:
        bcfg['depth'] = args.depth
    return cfg, bcfg


def device_name(device):
    if device == 'cuda':
        return torch.cuda.get_device_name()
    return f'{platform.processor() or platform.machine()} ({torch.get_num_threads()} threads)'


# --- backbone ----------------------------------------------------------------------------------
def las_variants(las, las_masked, x, cuda):
    """LAS timing callables; the first is the library's default on this device."""
    def run(model, graph=None):
        def fn():
            if graph is not None:
                model.cuda_graph = graph
            return model(x)
        return fn
    if cuda:
        return {'las_graph': run(las, True), 'las_eager': run(las, False),
                'las_masked': run(las_masked)}
    return {'las_sparse': run(las), 'las_masked': run(las_masked)}


def macs_ratio(las):
    stats = las.las_stats
    return float(stats['macs_dynamic'] / stats['macs_dense'])


def bench_backbone(args, bcfg, dtype_name, batch):
    from lasnet_mmdet.benchmark import (dense_twin, dense_variants, kernel_table, time_by_kind,
                                        time_interleaved)
    from mmdet.registry import MODELS
    device, dtype, cuda = args.device, DTYPES[dtype_name], args.device == 'cuda'
    torch.manual_seed(args.seed)
    las = MODELS.build(copy.deepcopy(bcfg)).to(device, dtype)
    las.eval()
    las_masked = copy.deepcopy(las)
    las_masked.sparse_inference = 'off'
    dense = dense_twin(bcfg, las)
    x = torch.randn(batch, 3, *args.shape, device=device, dtype=dtype)
    res = dict(dtype=dtype_name, batch=batch)

    def pinned(rate):
        stack = ExitStack()
        for model in (las, las_masked):
            stack.enter_context(model.pinned_masks(rate, seed=args.seed, run_masker=True))
        return stack

    with torch.no_grad():
        dense_fns = dense_variants(dense, x, compile=args.compile)
        with pinned(args.rate):
            las_fns = las_variants(las, las_masked, x, cuda)
            ms = time_by_kind({**dense_fns, **las_fns}, device, args.warmup, args.repeats)
            las(x)
            res['macs_ratio'] = macs_ratio(las)
            if args.profile_kernels:
                res['kernels'] = {
                    'dense_nchw': kernel_table(dense_fns['nchw'], device),
                    'dense_cl_folded': kernel_table(dense_fns['cl_folded'], device),
                    'las_eager': kernel_table(
                        las_fns['las_eager' if cuda else 'las_sparse'], device)}
        best = min(dense_fns, key=ms.get)
        las_default = next(iter(las_fns))
        res.update(ms=ms, best_dense=best, best_dense_ms=ms[best], las=las_default,
                   las_ms=ms[las_default], ratio=ms[las_default] / ms[best],
                   ratio_vs_nchw=ms[las_default] / ms['nchw'])
        if args.rates:
            res['curve'] = []
            for rate in args.rates:
                with pinned(rate):
                    t = time_by_kind({best: dense_fns[best], las_default: las_fns[las_default]},
                                     device, args.warmup, args.repeats)
                    las(x)
                    res['curve'].append(dict(rate=rate, dense_ms=t[best], las_ms=t[las_default],
                                             ratio=t[las_default] / t[best],
                                             macs_ratio=macs_ratio(las)))
    return res


# --- detector ----------------------------------------------------------------------------------
def bench_detector(args, bench, dtype_name, batch):
    from lasnet_mmdet.benchmark import time_interleaved
    x = torch.randn(batch, 3, *args.shape, device=args.device)
    fns = {'dense': bench.predict_fn('dense', x, dtype_name)}
    las_fn = bench.predict_fn('las', x, dtype_name)
    if args.device == 'cuda':
        fns['las'] = lambda: (setattr(bench.las, 'cuda_graph', True), las_fn())
        fns['las_eager'] = lambda: (setattr(bench.las, 'cuda_graph', False), las_fn())
    else:
        fns['las'] = las_fn
    with bench.las.pinned_masks(args.rate, seed=args.seed, run_masker=True):
        ms = time_interleaved(fns, args.device, args.warmup, args.repeats)
    bench.las.cuda_graph = True
    res = dict(dtype=dtype_name, batch=batch, ms=ms, ratio=ms['las'] / ms['dense'])
    if 'las_eager' in ms:
        res['ratio_eager'] = ms['las_eager'] / ms['dense']
    return res


def bench_stream(args, bench, dtype_name):
    from lasnet_mmdet.benchmark import padded_test_sizes, time_call, time_interleaved
    sizes = padded_test_sizes(args.stream_scale)
    side = max(32, round(512 * args.stream_scale / 32) * 32)
    while (side, side) in sizes:
        side += 32
    device, repeats = args.device, max(1, min(args.repeats, 10))

    def fns(h, w):
        x = torch.randn(1, 3, h, w, device=device)
        return {name: bench.predict_fn(name, x, dtype_name) for name in ('dense', 'las')}
    res = dict(dtype=dtype_name, batch=1, warm_up_size=[side, side], sizes=[])
    with bench.las.pinned_masks(args.rate, seed=args.seed, run_masker=True):
        first = fns(side, side)  # the process's first calls (Triton and cuDNN start-up)
        res['first_call_ms'] = {name: time_call(fn, device) for name, fn in first.items()}
        for h, w in sizes:
            f = fns(h, w)
            cold = {name: time_call(fn, device) for name, fn in f.items()}
            warm = time_interleaved(f, device, 0, repeats)
            res['sizes'].append(dict(size=[h, w], cold_ms=cold, warm_ms=warm,
                                     cold_ratio=cold['las'] / cold['dense'],
                                     warm_ratio=warm['las'] / warm['dense']))
    total = {name: sum(s['warm_ms'][name] for s in res['sizes']) for name in ('dense', 'las')}
    res.update(warm_total_ms=total, warm_ratio=total['las'] / total['dense'],
               cold_ratio_max=max(s['cold_ratio'] for s in res['sizes']))
    return res


def bench_test_images(args, bench, batches, dtype_name):
    from lasnet_mmdet.benchmark import time_interleaved
    n = len(batches)
    names = ('dense', 'las', 'las_masked')
    fns = {}
    for name in names:
        fns[name] = bench.images_fn(name, batches, dtype_name)
        fns[f'{name}_backbone'] = bench.images_fn(name, batches, dtype_name, backbone_only=True)
    ms = {k: v / n for k, v in
          time_interleaved(fns, args.device, args.warmup, args.repeats).items()}
    # What the timed calls did, image by image: detections, and the LAS backbone's MACs.
    detections, macs_ratios = dict.fromkeys(names, 0), []
    for inputs, samples in batches:
        for name in names:
            results = bench.images_fn(name, [(inputs, samples)], dtype_name)()
            detections[name] += sum(len(r.pred_instances) for r in results)
            if name == 'las':
                stats = bench.las.las_stats
                macs_ratios.append(float(stats['macs_dynamic'] / stats['macs_dense']))
    share = ms['dense_backbone'] / ms['dense']
    return dict(dtype=dtype_name, batch=1, images=n,
                ms={k: ms[k] for k in names}, ratio=ms['las'] / ms['dense'],
                ratio_vs_masked=ms['las'] / ms['las_masked'],
                backbone_ms={k: ms[f'{k}_backbone'] for k in names},
                backbone_ratio=ms['las_backbone'] / ms['dense_backbone'],
                backbone_share=share, free_backbone_ratio=1 - share,
                macs_ratio=sum(macs_ratios) / n,
                detections_per_image={k: v / n for k, v in detections.items()})


# --- the run -----------------------------------------------------------------------------------
def run(args):
    if args.threads:
        torch.set_num_threads(args.threads)
    from lasnet_mmdet.utils import setup_env
    setup_env()
    cfg, bcfg = load_cfg(args)
    res = dict(config=args.config, depth=bcfg['depth'], device=device_name(args.device),
               torch=torch.__version__,
               threads=torch.get_num_threads(), shape=list(args.shape),
               granularity=list(bcfg.get('granularity')), rate=args.rate,
               backend=args.backend, warmup=args.warmup, repeats=args.repeats)

    def table(fn, *fn_args):
        if not args.keep_going:
            return fn(*fn_args)
        try:
            return fn(*fn_args)
        except Exception as e:  # noqa: BLE001  (--keep-going: reported, not hidden)
            print(f'ERROR in {fn.__name__}{fn_args[2:]}: {type(e).__name__}: {e}', flush=True)
            return dict(args=[str(a) for a in fn_args[2:]], error=f'{type(e).__name__}: {e}')

    if not args.no_backbone:
        saved = torch.backends.cudnn.benchmark
        torch.backends.cudnn.benchmark = True  # the dense baselines at their best
        try:
            res['backbone'] = [table(bench_backbone, args, bcfg, d, b)
                               for d in args.dtype for b in args.batch]
        finally:
            torch.backends.cudnn.benchmark = saved
    if args.detector or args.stream or args.test_images:
        from lasnet_mmdet.benchmark import DetectorBench
        torch.manual_seed(args.seed)
        bench = DetectorBench(cfg, bcfg, args.device)
        if args.checkpoint:
            bench.load_checkpoint(args.checkpoint)
            res['checkpoint'] = args.checkpoint
        # The stream first: its sizes must be new to both detectors (the --detector tables at
        # --shape would warm the dense one at that size; LAS graphs go with pinned_masks).
        if args.stream:
            res['stream'] = [table(bench_stream, args, bench, d) for d in args.dtype]
        if args.detector:
            res['detector'] = [table(bench_detector, args, bench, d, b)
                               for d in args.dtype for b in args.batch]
        if args.test_images:
            from lasnet_mmdet.benchmark import dataset_batches
            batches = dataset_batches(cfg, args.test_images, args.device)
            res['test_images'] = [table(bench_test_images, args, bench, batches, d)
                                  for d in args.dtype]
    return res


def print_tables(res):
    # --shape and --rate describe the tables on generated input (the test images have their
    # own sizes and learned masks).
    pinned = any(key in res for key in ('backbone', 'detector', 'stream'))
    print(f"{res['device']} | "
          + (f"{res['shape'][0]}x{res['shape'][1]} | rate {res['rate']} | " if pinned else '')
          + f"S {'-'.join(map(str, res['granularity']))} | {res['config']}")
    for r in res.get('backbone', []):
        if 'error' in r:
            continue
        print(f"backbone {r['dtype']} batch {r['batch']}: "
              + ', '.join(f'{k} {v:.2f}' for k, v in r['ms'].items()) + ' ms')
        print(f"  LAS ({r['las']}) / fastest dense ({r['best_dense']}): {r['ratio']:.3f}; "
              f"vs mmdet NCHW eager: {r['ratio_vs_nchw']:.3f}; MACs ratio "
              f"{r['macs_ratio']:.3f}")
        for c in r.get('curve', []):
            print(f"  rate {c['rate']:.2f}: dense {c['dense_ms']:.2f} ms, LAS {c['las_ms']:.2f} "
                  f"ms, ratio {c['ratio']:.3f}, MACs ratio {c['macs_ratio']:.3f}")
        for variant, table in r.get('kernels', {}).items():
            print(f"  {variant}: {table['calls']} kernels/ops, {table['total_ms']:.3f} ms")
            for row in table['top']:
                print(f"    {row['ms']:>9.3f} ms {row['calls']:>5}  {row['name'][:70]}")
    for r in res.get('detector', []):
        if 'error' in r:
            continue
        print(f"predict() {r['dtype']} batch {r['batch']}: "
              + ', '.join(f'{k} {v:.2f}' for k, v in r['ms'].items())
              + f" ms; LAS / dense {r['ratio']:.3f}"
              + (f" (LAS eager {r['ratio_eager']:.3f})" if 'ratio_eager' in r else ''))
    for r in res.get('test_images', []):
        if 'error' in r:
            continue
        m, b = r['ms'], r['backbone_ms']
        print(f"test images ({r['images']}, {res.get('checkpoint', 'random weights')}) "
              f"{r['dtype']} batch 1, per image: predict() dense {m['dense']:.2f} ms, LAS "
              f"{m['las']:.2f} ms, LAS dense-masked {m['las_masked']:.2f} ms; LAS / dense "
              f"{r['ratio']:.3f}, LAS / dense-masked {r['ratio_vs_masked']:.3f}")
        d = r['detections_per_image']
        print(f"  backbone dense {b['dense']:.2f} ms, LAS {b['las']:.2f} ms, dense-masked "
              f"{b['las_masked']:.2f} ms ({r['backbone_ratio']:.3f}; MACs ratio "
              f"{r['macs_ratio']:.3f}); the dense backbone is {r['backbone_share']:.1%} of "
              f"predict(): a free backbone would give {r['free_backbone_ratio']:.3f}; "
              f"detections per image dense {d['dense']:.1f}, LAS {d['las']:.1f}, dense-masked "
              f"{d['las_masked']:.1f}")
    for r in res.get('stream', []):
        if 'error' in r:
            continue
        print(f"stream {r['dtype']} batch 1 (first calls at {r['warm_up_size']}: "
              + ', '.join(f'{k} {v:.0f}' for k, v in r['first_call_ms'].items()) + ' ms)')
        print(f"  {'size':>10}{'cold dense':>12}{'cold LAS':>10}{'ratio':>7}"
              f"{'warm dense':>12}{'warm LAS':>10}{'ratio':>7}")
        for s in r['sizes']:
            c, w = s['cold_ms'], s['warm_ms']
            print(f"  {s['size'][0]:>4}x{s['size'][1]:<5}{c['dense']:>12.1f}{c['las']:>10.1f}"
                  f"{s['cold_ratio']:>7.2f}{w['dense']:>12.2f}{w['las']:>10.2f}"
                  f"{s['warm_ratio']:>7.2f}")
        t = r['warm_total_ms']
        print(f"  warm total: dense {t['dense']:.1f} ms, LAS {t['las']:.1f} ms, ratio "
              f"{r['warm_ratio']:.3f}; largest cold ratio {r['cold_ratio_max']:.2f}")


def main(argv=None):
    args = parse_args(argv)
    res = run(args)
    print_tables(res)
    if args.json:
        with open(args.json, 'w') as f:
            json.dump(res, f, indent=2)
    return res


if __name__ == '__main__':
    main()
