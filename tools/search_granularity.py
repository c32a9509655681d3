"""Choose the mask granularity S per stage that minimises predicted backbone latency.

    python tools/search_granularity.py --preset v100 --shape 800 1216 --rate 0.5
    python tools/search_granularity.py --profile lasnet_mmdet/latency/profiles/h100.json

Prints the per-stage table (static vs each S) and a config snippet to paste.
"""
import argparse
import json
import os
import sys

from lasnet_mmdet.latency.hardware import ProfileError, load_profile, preset_names
from lasnet_mmdet.latency.predictor import SCHEDULES
from lasnet_mmdet.latency.search import DEFAULT_CANDIDATES, search_granularity


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[1])
    src = parser.add_mutually_exclusive_group()
    src.add_argument('--preset', help=f'hardware preset: {", ".join(preset_names())}')
    src.add_argument('--profile', help='hardware profile JSON (from tools/calibrate_latency.py)')
    parser.add_argument('--shape', nargs=2, type=int, default=(800, 1216), metavar=('H', 'W'))
    parser.add_argument('--rate', type=float, default=0.5, help='target activation rate r')
    parser.add_argument('--batch', type=int, default=1)
    parser.add_argument('--depth', type=int, default=101)
    parser.add_argument('--dtype', choices=('fp32', 'fp16', 'bf16'),
                        help='default: the profile\'s dtype')
    parser.add_argument('--schedule', choices=sorted(SCHEDULES),
                        help="default: the profile's (fused on GPU, torch on CPU)")
    parser.add_argument('--candidates', nargs='+', type=int, default=DEFAULT_CANDIDATES)
    parser.add_argument('--json', help='also write the result here')
    args = parser.parse_args(argv)
    if min(args.shape) < 1:
        parser.error(f'--shape must be two sizes >= 1, got {args.shape[0]} {args.shape[1]}')
    if not 0 <= args.rate <= 1:
        parser.error(f'--rate must be in [0, 1], got {args.rate}')
    if args.batch < 1:
        parser.error(f'--batch must be >= 1, got {args.batch}')
    if args.depth not in (50, 101, 152):
        parser.error(f'--depth must be 50, 101 or 152, got {args.depth}')
    if any(s < 1 for s in args.candidates):
        parser.error(f'--candidates must be integers >= 1, got {args.candidates}')
    if args.json and not os.path.isdir(os.path.dirname(os.path.abspath(args.json))):
        parser.error(f'--json: the folder of {args.json!r} does not exist')
    return args


def main(argv=None):
    args = parse_args(argv)
    try:
        profile = load_profile(args.profile or args.preset or 'v100')
    except ProfileError as e:
        sys.exit(f'error: {e}')
    result = search_granularity(profile, *args.shape, rate=args.rate,
                                candidates=args.candidates, depth=args.depth,
                                batch=args.batch, schedule=args.schedule, dtype=args.dtype)
    print(result.table())
    print('\nconfig snippet:\n' + result.config_snippet())
    if args.json:
        with open(args.json, 'w') as f:
            json.dump(result.to_dict(), f, indent=2)
    return result


if __name__ == '__main__':
    main()
