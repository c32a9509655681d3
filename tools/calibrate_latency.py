"""Calibrate the latency predictor on this machine and write a hardware profile JSON.

    python tools/calibrate_latency.py --device cpu --out lasnet_mmdet/latency/profiles/cpu.json
    python tools/calibrate_latency.py --device cuda --dtype fp16 --preset h100 \
        --out lasnet_mmdet/latency/profiles/h100.json

Times a handful of micro-benchmarks of our own ops (dense convs, dense bottlenecks, the sparse
LAS block of lasnet_mmdet.ops, a copy and a tiny op), fits the efficiency parameters of the
profile and prints predicted vs measured for each benchmark.
"""
import argparse
import json
import os.path as osp
import sys
from dataclasses import replace

import torch

# lasnet_mmdet from a checkout (e.g. on a GPU machine where it is not installed)
sys.path.insert(0, osp.dirname(osp.dirname(osp.abspath(__file__))))

from lasnet_mmdet.latency import measure  # noqa: E402
from lasnet_mmdet.latency.calibrate import (  # noqa: E402
    calibrate, fit_benchmarks, fit_efficiency, load_measurements, save_measurements)
from lasnet_mmdet.latency.hardware import ProfileError, load_profile  # noqa: E402
from lasnet_mmdet.latency.predictor import SCHEDULES, kernels_time  # noqa: E402


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[1])
    parser.add_argument('--device', default='cuda' if torch.cuda.is_available() else 'cpu')
    parser.add_argument('--dtype', choices=('fp32', 'fp16', 'bf16'),
                        help='default: fp16 on CUDA, fp32 on CPU')
    parser.add_argument('--preset', help='spec figures to start from (GPU; default: by name)')
    parser.add_argument('--name', help='profile name (default: the preset\'s / cpu-<threads>t)')
    parser.add_argument('--shape', nargs=2, type=int, default=(800, 1216), metavar=('H', 'W'))
    parser.add_argument('--backend', default='auto', choices=('auto', 'torch', 'triton'))
    parser.add_argument('--stat', choices=('median', 'min'), default='median',
                        help="'min' is robust to other processes on a shared CPU")
    parser.add_argument('--cuda-graphs', action='store_true',
                        help='time CUDA graph replays (GPU time, no host launch overhead)')
    parser.add_argument('--schedule', choices=sorted(SCHEDULES),
                        help='schedule the sparse backend runs (default: rows, i.e. the '
                        'Triton kernels, on CUDA; torch otherwise)')
    parser.add_argument('--compile-deployed', action='store_true',
                        help='time the deployed dense blocks through torch.compile (the '
                        "benchmark's best dense; GPU: minutes) and fit them (vendor efficiency)")
    parser.add_argument('--dense-only', action='store_true',
                        help='skip the sparse LAS block benchmarks')
    parser.add_argument('--out', required=True, help='profile JSON to write')
    parser.add_argument('--save-measurements', help='also write the raw measurements here')
    parser.add_argument('--from-measurements',
                        help='refit from saved measurements instead of measuring')
    args = parser.parse_args(argv)
    if args.compile_deployed and args.from_measurements:
        parser.error('--compile-deployed times the deployed network; --from-measurements measures '
                     'nothing (the saved measurements say how they were timed)')
    return args


def main(argv=None):
    args = parse_args(argv)
    measure.CUDA_GRAPHS = args.cuda_graphs
    measure.COMPILE_DEPLOYED = args.compile_deployed
    measure.DEFAULT_STAT = args.stat
    base = None
    if args.preset:
        try:
            base = load_profile(args.preset)
        except ProfileError as e:
            sys.exit(f'error: {e}')
    schedule = args.schedule
    if schedule is None:
        cuda_triton = (torch.device(args.device).type == 'cuda' and args.backend != 'torch')
        schedule = 'rows' if cuda_triton else 'torch'
    if args.from_measurements:
        with open(args.from_measurements) as f:
            saved = load_profile(json.load(f)['profile'])
        base = replace(base or saved, schedule=schedule if args.schedule else saved.schedule,
                       dtype=args.dtype or saved.dtype, name=args.name or saved.name)
        benches = load_measurements(args.from_measurements, base.dtype, base.schedule)
        profile, rms = fit_efficiency(base, benches)
        profile = replace(profile, notes=saved.notes.split('; calibrated')[0]
                          + f'; refitted from {args.from_measurements} (rms log error {rms:.3f})')
    else:
        profile, benches, rms = calibrate(args.device, args.dtype, base, tuple(args.shape),
                                          args.backend, False if args.dense_only else None,
                                          args.name, schedule=schedule)
        if args.save_measurements:
            save_measurements(args.save_measurements, benches, profile)
    print(f'{"benchmark":<44}{"measured ms":>12}{"predicted":>11}{"error":>8}')
    fit_set = fit_benchmarks(profile, benches)
    for bench in benches:
        pred = kernels_time(bench.kernels, profile)
        print(f'{bench.name:<44}{bench.measured_s * 1e3:>12.3f}{pred * 1e3:>11.3f}'
              f'{100 * (pred / bench.measured_s - 1):>7.1f}%'
              + ('' if bench in fit_set else '  (check only, not fitted)'))
    print(f'fitted efficiencies: {profile.efficiency} (rms log error {rms:.3f} over the '
          f'{len(fit_set)} fitted benchmarks)')
    profile.save(args.out)
    print(f'profile written to {args.out}')
    return profile


if __name__ == '__main__':
    main()
