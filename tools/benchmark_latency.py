"""Latency of a LAS-ResNet backbone: dense ResNet vs LAS dense-masked vs LAS sparse.

    python tools/benchmark_latency.py CONFIG --device cuda --shape 800 1216 --batch 1 \
        --dtype fp16 --rate 0.5 [--granularity 4 4 2 1] [--rates 0.1 0.2 ...] \
        [--cuda-graph] [--detector] [--profile-kernels] [--json OUT]

CONFIG is an mmdet config whose ``model.backbone`` is a LASResNet. The dense baseline is
mmdet's ``ResNet`` of the same depth and arguments holding the same weights (random weights:
latency does not depend on them). Masks are pinned to seeded random patterns at exactly
``rate`` (``LASResNet.pinned_masks``), materialised on the device once: the maskers still run
(their cost is timed) but return the pinned masks. Times are medians over ``--repeats`` calls
after ``--warmup`` calls, synchronised on CUDA; the three variants are measured interleaved so
that machine noise hits them alike. Per stage, each res_layer is timed on its real input.
``macs_ratio`` is the ideal speed-up from ``backbone.las_stats`` (sparse / dense MACs).
"""
import argparse
import copy
import json
import platform
import statistics
import time
import os.path as osp
import sys
import types

import torch

sys.path.insert(0, osp.dirname(osp.dirname(osp.abspath(__file__))))  # lasnet_mmdet from a checkout

DTYPES = {'fp32': torch.float32, 'fp16': torch.float16, 'bf16': torch.bfloat16}


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    p.add_argument('config')
    p.add_argument('--device', choices=['cpu', 'cuda'], default='cuda')
    p.add_argument('--shape', type=int, nargs=2, default=[800, 1216], metavar=('H', 'W'))
    p.add_argument('--batch', type=int, default=1)
    p.add_argument('--dtype', choices=sorted(DTYPES), default='fp32')
    p.add_argument('--rate', type=float, default=0.5)
    p.add_argument('--rates', type=float, nargs='+', help='also a curve of the sparse ratio')
    p.add_argument('--granularity', type=int, nargs='+', help='S per stage (else the config)')
    p.add_argument('--backend', default='auto', choices=['auto', 'torch', 'triton'])
    p.add_argument('--warmup', type=int, default=None, help='default: 10 cuda, 1 cpu')
    p.add_argument('--repeats', type=int, default=None, help='default: 50 cuda, 3 cpu')
    p.add_argument('--no-stages', action='store_true', help='skip the per-stage timings')
    p.add_argument('--cuda-graph', action='store_true',
                   help='also time dense and sparse captured in CUDA graphs')
    p.add_argument('--detector', action='store_true', help='also time the whole predict()')
    p.add_argument('--profile-kernels', action='store_true',
                   help='also list where one dense and one sparse forward spend their time '
                        '(torch.profiler: CUDA kernels on cuda, operators on cpu)')
    p.add_argument('--threads', type=int, help='torch CPU threads (default: torch default)')
    p.add_argument('--seed', type=int, default=0)
    p.add_argument('--json', help='write the results here')
    args = p.parse_args(argv)
    if args.device == 'cuda' and not torch.cuda.is_available():
        p.error('--device cuda but torch.cuda.is_available() is False')
    if args.device == 'cpu' and args.dtype == 'fp16':
        p.error('--dtype fp16 is not supported on --device cpu (use fp32 or bf16)')
    for r in [args.rate] + (args.rates or []):
        if not 0 <= r <= 1:
            p.error(f'rates must be in [0, 1], got {r}')
    args.warmup = args.warmup if args.warmup is not None else (10 if args.device == 'cuda' else 1)
    args.repeats = args.repeats if args.repeats is not None else (
        50 if args.device == 'cuda' else 3)
    return args


# --- models ------------------------------------------------------------------------------------
def backbone_cfg(config, granularity):
    from mmengine.config import Config
    cfg = Config.fromfile(config)
    bcfg = copy.deepcopy(cfg.model.backbone)
    if bcfg.get('type') != 'LASResNet':
        raise ValueError(f'{config}: model.backbone.type must be LASResNet, got {bcfg.get("type")!r}')
    bcfg.pop('init_cfg', None)  # random weights: latency does not depend on them
    if granularity:
        bcfg['granularity'] = tuple(granularity)
    return cfg, bcfg


def build_backbones(bcfg, device, dtype):
    import lasnet_mmdet  # noqa: F401  (registers LASResNet)
    from mmdet.models.backbones import ResNet
    from mmdet.registry import MODELS
    las = MODELS.build(copy.deepcopy(bcfg))
    dense_kwargs = {k: v for k, v in bcfg.items()
                    if k not in ('type', 'granularity', 'tau', 'sparse_inference')}
    dense = ResNet(**dense_kwargs)
    missing, unexpected = dense.load_state_dict(las.state_dict(), strict=False)
    assert not missing and all('masker' in k for k in unexpected), (missing, unexpected)
    for model in (dense, las):
        model.to(device, dtype).eval()  # (mmdet's ResNet.train returns None: no chaining)
    return dense, las


def freeze_masks(las, x, rate, seed):
    """Pin seeded random masks at ``rate``, kept on the device; the maskers still compute."""
    from lasnet_mmdet.models.layers.masker import Masker
    recorded = {}
    for name, block in las.las_blocks():
        block.masker.forward = types.MethodType(Masker_forward_recorded(recorded, name),
                                                block.masker)
    with torch.no_grad(), las.pinned_masks(rate, seed):
        las(x)
    for name, block in las.las_blocks():
        mask = recorded[name]

        def forward(self, x, out_h, out_w, tau=1.0, _mask=mask):
            # The masker's real work (its eval decision), result unused: the mask is pinned.
            Masker.forward(self, x, out_h, out_w, tau)
            return _mask
        block.masker.forward = types.MethodType(forward, block.masker)


def Masker_forward_recorded(recorded, name):
    from lasnet_mmdet.models.layers.masker import Masker

    def forward(self, x, out_h, out_w, tau=1.0):
        recorded[name] = Masker.forward(self, x, out_h, out_w, tau)
        return recorded[name]
    return forward


def unfreeze_masks(las):
    for _, block in las.las_blocks():
        block.masker.__dict__.pop('forward', None)


# --- timing ------------------------------------------------------------------------------------
def sync(device):
    if device == 'cuda':
        torch.cuda.synchronize()


def time_interleaved(fns, device, warmup, repeats):
    """Median ms of each of ``fns`` (a dict), called in turn ``repeats`` times."""
    times = {k: [] for k in fns}
    with torch.no_grad():
        for _ in range(warmup):
            for fn in fns.values():
                fn()
        sync(device)
        for _ in range(repeats):
            for k, fn in fns.items():
                sync(device)
                t0 = time.perf_counter()
                fn()
                sync(device)
                times[k].append((time.perf_counter() - t0) * 1e3)
    return {k: statistics.median(v) for k, v in times.items()}


def stage_inputs(model, x):
    """The real input of each res_layer of ``model`` on ``x``."""
    inputs, hooks = {}, []
    for name in model.res_layers:
        hooks.append(getattr(model, name).register_forward_pre_hook(
            # A copy: inside the LAS forward it is a workspace buffer that later blocks reuse.
            lambda m, a, name=name: inputs.__setitem__(name, a[0].clone())))
    with torch.no_grad():
        model(x)
    for h in hooks:
        h.remove()
    return inputs


def graphed(fn, device):
    """``fn`` captured in a CUDA graph (after a warm-up on a side stream): a replay callable."""
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream), torch.no_grad():
        for _ in range(3):
            fn()
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.no_grad(), torch.cuda.graph(graph):
        fn()
    return graph.replay


def macs_ratio(las, x):
    """Ideal sparse/dense MACs of the last forward, in float64 (fp16 stats overflow)."""
    sizes, hooks = {}, []
    for name, block in las.las_blocks():
        hooks.append(block.register_forward_pre_hook(
            lambda m, a, name=name: sizes.__setitem__(name, a[0].shape[-2:])))
    with torch.no_grad():
        las(x)
    for h in hooks:
        h.remove()
    stats = las.las_stats
    dynamic = stem = las.stem_macs(*x.shape[-2:])
    for name, block in las.las_blocks():
        macs, st = block.dense_macs(*sizes[name]), stats['blocks'][name]
        dynamic += (macs['masker'] + macs['downsample'] + macs['conv1'] * float(st['rate_dil'])
                    + (macs['conv2'] + macs['conv3']) * float(st['rate']))
    return dynamic / float(stats['macs_dense'])


# --- the benchmark -----------------------------------------------------------------------------
def run(args):
    if args.threads:
        torch.set_num_threads(args.threads)
    from lasnet_mmdet.ops.workspace import use_workspace
    dtype, device = DTYPES[args.dtype], args.device
    cfg, bcfg = backbone_cfg(args.config, args.granularity)
    torch.manual_seed(args.seed)
    dense, las = build_backbones(bcfg, device, dtype)
    x = torch.randn(args.batch, 3, *args.shape, device=device, dtype=dtype)

    def las_fn(mode):
        def fn():
            las.sparse_inference = mode
            return las(x)
        return fn

    freeze_masks(las, x, args.rate, args.seed)
    fns = {'dense': lambda: dense(x), 'masked': las_fn('off'), 'sparse': las_fn(args.backend)}
    whole = time_interleaved(fns, device, args.warmup, args.repeats)
    las.sparse_inference = args.backend
    res = dict(
        config=args.config, device=device_name(device), shape=list(args.shape),
        batch=args.batch, dtype=args.dtype, granularity=list(las.granularity),
        rate=args.rate, backend=args.backend, threads=torch.get_num_threads(),
        torch=torch.__version__, dense_ms=whole['dense'], masked_ms=whole['masked'],
        sparse_ms=whole['sparse'], ratio=whole['sparse'] / whole['dense'],
        masked_ratio=whole['masked'] / whole['dense'], macs_ratio=macs_ratio(las, x))

    if not args.no_stages:
        d_in, l_in = stage_inputs(dense, x), stage_inputs(las, x)
        res['stages'] = {}
        for name in las.res_layers:
            dl, ll = getattr(dense, name), getattr(las, name)

            def las_stage(mode, ll=ll, inp=l_in[name]):
                def fn():  # with the backbone's workspace, as inside its forward
                    las.sparse_inference = mode
                    with use_workspace(las._workspace):
                        return ll(inp)
                return fn
            t = time_interleaved({'dense': lambda dl=dl, inp=d_in[name]: dl(inp),
                                  'masked': las_stage('off'), 'sparse': las_stage(args.backend)},
                                 device, args.warmup, args.repeats)
            res['stages'][name] = dict(dense_ms=t['dense'], masked_ms=t['masked'],
                                       sparse_ms=t['sparse'], ratio=t['sparse'] / t['dense'])

    if args.cuda_graph:
        if device != 'cuda':
            raise ValueError('--cuda-graph needs --device cuda')
        las.sparse_inference = args.backend
        g = time_interleaved({'dense': graphed(lambda: dense(x), device),
                              'sparse': graphed(lambda: las(x), device)},
                             device, args.warmup, args.repeats)
        res['cuda_graph'] = dict(dense_ms=g['dense'], sparse_ms=g['sparse'],
                                 ratio=g['sparse'] / g['dense'])

    if args.rates:
        res['curve'] = []
        for rate in args.rates:
            unfreeze_masks(las)
            freeze_masks(las, x, rate, args.seed)
            fns = {'dense': lambda: dense(x), 'sparse': las_fn(args.backend)}
            if args.cuda_graph:  # batch 1 on a GPU is launch-bound: the curve in graphs
                las.sparse_inference = args.backend
                fns = {k: graphed(fn, device) for k, fn in fns.items()}
            t = time_interleaved(fns, device, args.warmup, args.repeats)
            res['curve'].append(dict(rate=rate, dense_ms=t['dense'], sparse_ms=t['sparse'],
                                     ratio=t['sparse'] / t['dense'], macs_ratio=macs_ratio(las, x)))

    if args.detector:
        res['detector'] = time_detector(cfg, bcfg, dense, las, x, args)
    if args.profile_kernels:
        unfreeze_masks(las)
        freeze_masks(las, x, args.rate, args.seed)
        las.sparse_inference = args.backend
        res['kernels'] = {'dense': kernel_table(lambda: dense(x), device),
                          'sparse': kernel_table(lambda: las(x), device)}
    return res


def kernel_table(fn, device, top=12):
    """Time of one call of ``fn`` by kernel name (CUDA) or operator (CPU, self time)."""
    from torch.profiler import ProfilerActivity, profile
    activity = ProfilerActivity.CUDA if device == 'cuda' else ProfilerActivity.CPU
    with torch.no_grad():
        fn()  # warm (autotuning, caches) outside the profile
        sync(device)
        with profile(activities=[activity]) as prof:
            fn()
            sync(device)
    totals = {}
    if device == 'cuda':
        for e in prof.events():
            if e.device_type == torch.autograd.DeviceType.CUDA:
                calls, us = totals.get(e.name, (0, 0.0))
                totals[e.name] = (calls + 1, us + e.device_time_total)
    else:
        for e in prof.key_averages():
            totals[e.key] = (e.count, e.self_cpu_time_total)
    rows = sorted(totals.items(), key=lambda kv: -kv[1][1])
    return dict(calls=sum(c for c, _ in totals.values()),
                total_ms=sum(us for _, us in totals.values()) / 1e3,
                top=[dict(name=name, calls=c, ms=us / 1e3) for name, (c, us) in rows[:top]])


def time_detector(cfg, bcfg, dense, las, x, args):
    """Whole ``predict()`` with the dense ResNet, the LAS backbone masked and sparse."""
    from mmdet.registry import MODELS
    from mmdet.structures import DetDataSample
    mcfg = copy.deepcopy(cfg.model)
    mcfg.backbone = bcfg
    mcfg.pop('data_preprocessor', None)
    model = MODELS.build(mcfg)
    model.to(args.device, DTYPES[args.dtype])
    model.eval()
    h, w = args.shape
    samples = [DetDataSample(metainfo=dict(img_shape=(h, w), ori_shape=(h, w), pad_shape=(h, w),
                                           scale_factor=(1.0, 1.0), batch_input_shape=(h, w)))
               for _ in range(args.batch)]
    las_backbone = model.backbone
    freeze_masks(las_backbone, x, args.rate, args.seed)

    def with_backbone(backbone, mode=None):
        def fn():
            model.backbone = backbone
            if mode:
                backbone.sparse_inference = mode
            return model.predict(x, copy.deepcopy(samples))
        return fn
    t = time_interleaved({'dense': with_backbone(dense), 'masked': with_backbone(las_backbone, 'off'),
                          'sparse': with_backbone(las_backbone, args.backend)},
                         args.device, args.warmup, args.repeats)
    model.backbone = las_backbone
    return dict(dense_ms=t['dense'], masked_ms=t['masked'], sparse_ms=t['sparse'],
                ratio=t['sparse'] / t['dense'])


def device_name(device):
    if device == 'cuda':
        return torch.cuda.get_device_name()
    return f'{platform.processor() or platform.machine()} ({torch.get_num_threads()} threads)'


def print_table(res):
    print(f"{res['device']} | {res['dtype']} | batch {res['batch']} | {res['shape'][0]}x"
          f"{res['shape'][1]} | S {'-'.join(map(str, res['granularity']))} | rate "
          f"{res['rate']} | backend {res['backend']}")
    print(f"{'part':<10}{'dense ms':>10}{'masked ms':>11}{'sparse ms':>11}{'sparse/dense':>14}")
    rows = [('backbone', res)] + list(res.get('stages', {}).items())
    for name, r in rows:
        print(f"{name:<10}{r['dense_ms']:>10.2f}{r['masked_ms']:>11.2f}{r['sparse_ms']:>11.2f}"
              f"{r['ratio']:>14.3f}")
    print(f"MACs ratio (ideal): {res['macs_ratio']:.3f}")
    if 'cuda_graph' in res:
        g = res['cuda_graph']
        print(f"CUDA graph: dense {g['dense_ms']:.2f} ms, sparse {g['sparse_ms']:.2f} ms, "
              f"ratio {g['ratio']:.3f}")
    if 'detector' in res:
        d = res['detector']
        print(f"predict(): dense {d['dense_ms']:.2f} ms, masked {d['masked_ms']:.2f} ms, "
              f"sparse {d['sparse_ms']:.2f} ms, ratio {d['ratio']:.3f}")
    for variant, table in res.get('kernels', {}).items():
        print(f"{variant}: {table['calls']} kernels/ops, {table['total_ms']:.3f} ms")
        for row in table['top']:
            print(f"  {row['ms']:>9.3f} ms {row['calls']:>5}  {row['name'][:70]}")
    if 'curve' in res:
        print(f"{'rate':>6}{'dense ms':>10}{'sparse ms':>11}{'ratio':>8}{'MACs ratio':>12}")
        for c in res['curve']:
            print(f"{c['rate']:>6.2f}{c['dense_ms']:>10.2f}{c['sparse_ms']:>11.2f}"
                  f"{c['ratio']:>8.3f}{c['macs_ratio']:>12.3f}")


def main(argv=None):
    args = parse_args(argv)
    res = run(args)
    print_table(res)
    if args.json:
        with open(args.json, 'w') as f:
            json.dump(res, f, indent=2)
    return res


if __name__ == '__main__':
    main()
