"""Test a detector: COCO metrics through mmdet's CocoMetric, and beside them a LAS report
(mean activation rate per stage, per block with --las-per-block, backbone GMACs dynamic vs
dense).

    python tools/test.py CONFIG CHECKPOINT [--work-dir DIR] [--out results.pkl]
        [--show-dir DIR] [--las-per-block] [--latency-profile PROFILE] [--measure-latency]
        [--cfg-options k=v ...] [--launcher pytorch]
"""
import argparse
import os
import os.path as osp

from mmengine.config import Config, DictAction
from mmengine.runner import Runner

import lasnet_mmdet  # noqa: F401  (registers LAS modules, fixes checkpoint loading)
from mmdet.engine.hooks.utils import trigger_visualization_hook
from mmdet.evaluation import DumpDetResults
from mmdet.registry import RUNNERS
from mmdet.utils import setup_cache_size_limit_of_dynamo


def parse_args():
    parser = argparse.ArgumentParser(description='MMDet test (and eval) a LAS model')
    parser.add_argument('config', help='test config file path')
    parser.add_argument('checkpoint', help='checkpoint file')
    parser.add_argument('--work-dir',
                        help='the directory to save the file containing evaluation metrics')
    parser.add_argument('--out', type=str,
                        help='dump predictions to a pickle file for offline evaluation')
    parser.add_argument('--show', action='store_true', help='show prediction results')
    parser.add_argument('--show-dir', help='directory where painted images will be saved')
    parser.add_argument('--wait-time', type=float, default=2, help='the interval of show (s)')
    parser.add_argument('--las-per-block', action='store_true',
                        help='print the mean activation rate of every LAS block too')
    parser.add_argument('--latency-profile',
                        help='report the predicted backbone latency on this hardware profile '
                        '(preset: v100, a100, h100, rtx3090, tx2; or a calibrated JSON)')
    parser.add_argument('--measure-latency', action='store_true',
                        help='also time the backbone forward of every test batch')
    parser.add_argument(
        '--cfg-options', nargs='+', action=DictAction,
        help='override some settings in the used config, the key-value pair in xxx=yyy '
        'format will be merged into config file.')
    parser.add_argument('--launcher', choices=['none', 'pytorch', 'slurm', 'mpi'],
                        default='none', help='job launcher')
    parser.add_argument('--local_rank', '--local-rank', type=int, default=0)
    args = parser.parse_args()
    if 'LOCAL_RANK' not in os.environ:
        os.environ['LOCAL_RANK'] = str(args.local_rank)
    return args


def add_las_report(cfg, per_block=False, profile=None, measure=False):
    """Make sure a LASReportHook runs when the backbone is a LAS backbone."""
    if cfg.model.get('backbone', {}).get('type') != 'LASResNet':
        return
    hooks = cfg.get('custom_hooks', None) or []
    reports = [hook for hook in hooks if hook.get('type') == 'LASReportHook']
    if not reports:
        hooks.append(dict(type='LASReportHook'))
        reports = hooks[-1:]
    for hook in reports:
        hook['per_block'] = hook.get('per_block', False) or per_block
        hook['measure'] = hook.get('measure', False) or measure
        if profile is not None:
            hook['profile'] = profile
    cfg.custom_hooks = hooks


def main():
    args = parse_args()
    setup_cache_size_limit_of_dynamo()

    cfg = Config.fromfile(args.config)
    cfg.launcher = args.launcher
    if args.cfg_options is not None:
        cfg.merge_from_dict(args.cfg_options)

    if args.work_dir is not None:
        cfg.work_dir = args.work_dir
    elif cfg.get('work_dir', None) is None:
        cfg.work_dir = osp.join('./work_dirs', osp.splitext(osp.basename(args.config))[0])

    cfg.load_from = args.checkpoint
    if args.show or args.show_dir:
        cfg = trigger_visualization_hook(cfg, args)
    add_las_report(cfg, args.las_per_block, args.latency_profile, args.measure_latency)

    runner = Runner.from_cfg(cfg) if 'runner_type' not in cfg else RUNNERS.build(cfg)
    if args.out is not None:
        if not args.out.endswith(('.pkl', '.pickle')):
            raise ValueError(f'--out must be a .pkl or .pickle file, got {args.out!r}')
        runner.test_evaluator.metrics.append(DumpDetResults(out_file_path=args.out))
    runner.test()


if __name__ == '__main__':
    main()
