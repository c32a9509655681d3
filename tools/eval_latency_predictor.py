"""How well the latency predictor matches measured latency on this device.

    python tools/eval_latency_predictor.py --profile lasnet_mmdet/latency/profiles/cpu.json \
        --device cpu --json work_dirs/latency_eval_cpu.json

Per block: one regular block of each ResNet-101 stage at the given input size, its sparse path
(``lasnet_mmdet.ops``) timed at pinned masks over S x r; whole backbone: mmdet's dense ResNet,
the deployed dense ResNet (channels-last, BN folded: the static reference of
``LatencyLossHook(cost='latency')``) and LASResNet (sparse inference, pinned masks). Prints a
table and writes JSON with ``mape`` (mean absolute percentage error over blocks), ``spearman``
(rank correlation of predicted and measured block latencies), ``backbone_error`` (relative
error on the whole LAS backbone), ``static_backbone_error`` (mmdet's dense ResNet) and
``deployed_backbone_error`` (the deployed dense one).
"""
import argparse
import json
import os.path as osp
import sys
import time

import torch

# lasnet_mmdet from a checkout (e.g. on a GPU machine where it is not installed)
sys.path.insert(0, osp.dirname(osp.dirname(osp.abspath(__file__))))

from lasnet_mmdet.benchmark.dense import fold_resnet  # noqa: E402
from lasnet_mmdet.latency import measure  # noqa: E402
from lasnet_mmdet.latency.hardware import ProfileError, load_profile  # noqa: E402
from lasnet_mmdet.latency.measure import (  # noqa: E402
    make_backbones, make_block, measure_backbone, measure_las_block, stage_block_shape)
from lasnet_mmdet.latency.predictor import (  # noqa: E402
    SCHEDULES, get_schedule, predict_backbone, predict_las_block)


def spearman(a, b):
    """Spearman rank correlation (average ranks for ties)."""
    def ranks(v):
        order = sorted(range(len(v)), key=v.__getitem__)
        r = [0.0] * len(v)
        i = 0
        while i < len(order):
            j = i
            while j + 1 < len(order) and v[order[j + 1]] == v[order[i]]:
                j += 1
            for k in range(i, j + 1):
                r[order[k]] = (i + j) / 2
            i = j + 1
        return r
    ra, rb = ranks(a), ranks(b)
    ma, mb = sum(ra) / len(ra), sum(rb) / len(rb)
    cov = sum((x - ma) * (y - mb) for x, y in zip(ra, rb))
    var = (sum((x - ma)**2 for x in ra) * sum((y - mb)**2 for y in rb))**0.5
    return cov / var if var else float('nan')


def compare_benchmark(path, profile, schedule, dtype):
    """Predicted vs ``tools/benchmark_latency.py`` whole-backbone times (maskers computed,
    masks pinned), at its rate and along its rate curve; CUDA-graph times when the profile was
    calibrated under graphs and the benchmark has them."""
    with open(path) as f:
        bench = json.load(f)
    shape, g = bench['shape'], tuple(bench['granularity'])
    graphs = 'CUDA graphs' in profile.notes and 'cuda_graph' in bench
    times = bench['cuda_graph'] if graphs else bench
    sched = schedule.replace(with_masker=True)
    kw = dict(batch=bench.get('batch', 1), dtype=dtype)

    def predict(rate):
        return 1e3 * predict_backbone(profile, *shape, g, rate, schedule=sched,
                                      **kw)['total']
    static = 1e3 * predict_backbone(profile, *shape, None, **kw)['total']
    out = dict(path=path, cuda_graphs=graphs, granularity=list(g), rate=bench['rate'],
               dense_ms=times['dense_ms'], dense_predicted_ms=static,
               sparse_ms=times['sparse_ms'], sparse_predicted_ms=predict(bench['rate']))
    out['sparse_error'] = abs(out['sparse_predicted_ms'] / out['sparse_ms'] - 1)
    out['dense_error'] = abs(static / out['dense_ms'] - 1)
    if bench.get('curve') and not graphs:
        out['curve'] = [dict(rate=c['rate'], sparse_ms=c['sparse_ms'],
                             sparse_predicted_ms=predict(c['rate'])) for c in bench['curve']]
    print(f'{path}: dense {out["dense_ms"]:.2f} ms (predicted {static:.2f}), sparse '
          f'{"-".join(map(str, g))} r={bench["rate"]} {out["sparse_ms"]:.2f} ms (predicted '
          f'{out["sparse_predicted_ms"]:.2f}){" [CUDA graphs]" if graphs else ""}')
    return out


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[1])
    src = parser.add_mutually_exclusive_group(required=True)
    src.add_argument('--profile', help='calibrated profile JSON')
    src.add_argument('--preset', help='hardware preset (uncalibrated)')
    parser.add_argument('--device', default='cuda' if torch.cuda.is_available() else 'cpu')
    parser.add_argument('--dtype', choices=('fp32', 'fp16', 'bf16'),
                        help="default: the profile's")
    parser.add_argument('--backend', default='auto', choices=('auto', 'torch', 'triton'))
    parser.add_argument('--cuda-graphs', action='store_true',
                        help='time CUDA graph replays (GPU time, no host launch overhead)')
    parser.add_argument('--compile-deployed', action='store_true',
                        help="time the deployed dense backbone through torch.compile (the "
                        "benchmark's best dense; GPU: minutes)")
    parser.add_argument('--schedule', choices=sorted(SCHEDULES), help="default: the profile's")
    parser.add_argument('--shape', nargs=2, type=int, default=(800, 1216), metavar=('H', 'W'))
    parser.add_argument('--granularities', nargs='+', type=int, default=(1, 2, 4, 7, 8))
    parser.add_argument('--rates', nargs='+', type=float,
                        default=tuple(round(0.1 * i, 1) for i in range(1, 10)))
    parser.add_argument('--stages', nargs='+', type=int, default=(0, 1, 2, 3))
    parser.add_argument('--backbone-granularity', nargs=4, type=int, default=(4, 4, 2, 1))
    parser.add_argument('--backbone-rate', type=float, default=0.5)
    parser.add_argument('--no-backbone', action='store_true')
    parser.add_argument('--repeats', type=int, default=5)
    parser.add_argument('--stat', choices=sorted(measure.STATISTIC), default='median',
                        help="'min' is robust to other processes on a shared CPU")
    parser.add_argument('--json', help='write the results here')
    parser.add_argument('--benchmark-json', nargs='+', default=(),
                        help='JSON of tools/benchmark_latency.py: also compare the predicted '
                        'whole backbone (maskers included) with its dense/sparse times')
    parser.add_argument('--measured', help='reuse the measurements of an earlier --json '
                        '(predict only: e.g. a refitted profile against the same runs)')
    args = parser.parse_args(argv)
    if args.compile_deployed and args.measured:
        parser.error('--compile-deployed times the deployed network; --measured measures '
                     'nothing (the saved measurements say how they were timed)')
    return args


def main(argv=None):
    args = parse_args(argv)
    try:
        profile = load_profile(args.profile or args.preset)
    except ProfileError as e:
        sys.exit(f'error: {e}')
    measure.DEFAULT_STAT = args.stat
    measure.CUDA_GRAPHS = args.cuda_graphs
    measure.COMPILE_DEPLOYED = args.compile_deployed
    dtype = args.dtype or profile.dtype
    schedule = get_schedule(args.schedule, profile).replace(with_masker=False)  # pinned masks
    device = args.device
    t0 = time.perf_counter()
    rows = []
    saved = None
    if args.measured:
        with open(args.measured) as f:
            saved = json.load(f)
        args.shape = saved['shape']
        args.no_backbone = args.no_backbone or 'backbone' not in saved
        measured = {(b['stage'] - 1, b['S'], b['r']): b['measured_ms'] / 1e3
                    for b in saved['blocks']}
        args.stages = sorted({k[0] for k in measured})
        args.granularities = sorted({k[1] for k in measured})
        args.rates = sorted({k[2] for k in measured})
    print(f'{"stage":<7}{"S":>3}{"r":>5}{"measured ms":>13}{"predicted":>11}{"error":>8}')
    for stage in args.stages:
        shape = stage_block_shape(stage, *args.shape)
        for S in args.granularities:
            block = None if saved else make_block(shape, S, device, dtype)
            for r in args.rates:
                if saved:
                    meas = measured[(stage, S, r)]
                else:
                    meas = measure_las_block(shape, S, r, device, dtype, args.backend, block,
                                             warmup=1, repeats=args.repeats, min_seconds=0.02)
                pred = predict_las_block(shape, S, r, profile, schedule, dtype)
                rows.append(dict(stage=stage + 1, S=S, r=r, measured_ms=meas * 1e3,
                                 predicted_ms=pred * 1e3))
                print(f'layer{stage + 1:<2}{S:>3}{r:>5.1f}{meas * 1e3:>13.3f}'
                      f'{pred * 1e3:>11.3f}{100 * (pred / meas - 1):>7.1f}%', flush=True)
            del block
    meas = [row['measured_ms'] for row in rows]
    pred = [row['predicted_ms'] for row in rows]
    result = dict(device=saved['device'] if saved else (
                      torch.cuda.get_device_name(device) if 'cuda' in str(device) else
                      f'cpu ({torch.get_num_threads()} threads)'),
                  profile=profile.name, dtype=dtype, backend=args.backend,
                  shape=list(args.shape), stat=saved.get('stat') if saved else args.stat,
                  cuda_graphs=saved.get('cuda_graphs', False) if saved else args.cuda_graphs,
                  compiled_deployed=(saved.get('compiled_deployed', False) if saved
                                     else args.compile_deployed),
                  measured_in=args.measured,
                  blocks=rows,
                  mape=sum(abs(p / m - 1) for p, m in zip(pred, meas)) / len(rows),
                  spearman=spearman(pred, meas))
    if not args.no_backbone:
        g, r = tuple(args.backbone_granularity), args.backbone_rate
        if saved:
            b = saved['backbone']
            g, r = tuple(b['granularity']), b['rate']
            m_static, m_las = b['static_measured_ms'] / 1e3, b['measured_ms'] / 1e3
            m_deployed = b.get('deployed_measured_ms', 0) / 1e3  # 0: older files lack it
        else:
            dense, las = make_backbones(101, g, device, dtype, args.backend)
            m_static = measure_backbone(dense, *args.shape, None, 1, device, dtype)
            m_deployed = measure_backbone(measure.deployed(fold_resnet(dense)), *args.shape,
                                          None, 1, device, dtype, channels_last=True)
            del dense
            m_las = measure_backbone(las, *args.shape, r, 1, device, dtype)
        p_static = predict_backbone(profile, *args.shape, None, dtype=dtype)['total']
        p_deployed = predict_backbone(profile, *args.shape, None, dtype=dtype,
                                      deployed=True)['total']
        p_las = predict_backbone(profile, *args.shape, g, r, schedule=schedule,
                                 dtype=dtype)['total']
        result.update(backbone=dict(granularity=list(g), rate=r,
                                    measured_ms=m_las * 1e3, predicted_ms=p_las * 1e3,
                                    static_measured_ms=m_static * 1e3,
                                    static_predicted_ms=p_static * 1e3),
                      backbone_error=abs(p_las / m_las - 1),
                      static_backbone_error=abs(p_static / m_static - 1))
        checks = [('static (mmdet)', m_static, p_static)]
        if m_deployed:
            result['backbone'].update(deployed_measured_ms=m_deployed * 1e3,
                                      deployed_predicted_ms=p_deployed * 1e3)
            result['deployed_backbone_error'] = abs(p_deployed / m_deployed - 1)
            checks.append(('deployed dense', m_deployed, p_deployed))
        for name, m, p in checks:
            print(f'backbone {name}: measured {m * 1e3:.2f} ms, predicted '
                  f'{p * 1e3:.2f} ms ({100 * (p / m - 1):+.1f}%)')
        print(f'backbone LAS {"-".join(map(str, g))} r={r}: measured {m_las * 1e3:.2f} ms, '
              f'predicted {p_las * 1e3:.2f} ms ({100 * (p_las / m_las - 1):+.1f}%)')
    if args.benchmark_json:
        result['benchmarks'] = [compare_benchmark(path, profile, schedule, dtype)
                                for path in args.benchmark_json]
    result['seconds'] = time.perf_counter() - t0
    summary = {k: result[k] for k in ('mape', 'spearman', 'backbone_error',
                                      'static_backbone_error', 'deployed_backbone_error')
               if k in result}
    print(json.dumps(summary, indent=1))
    if args.json:
        with open(args.json, 'w') as f:
            json.dump(result, f, indent=2)
    return result


if __name__ == '__main__':
    main()
