"""Test a detector: COCO metrics through mmdet's CocoMetric, and beside them a LAS report
(mean activation rate per stage, per block with --las-per-block, backbone GMACs dynamic vs
dense, the spread of the rate across images).

    python tools/test.py CONFIG CHECKPOINT [--work-dir DIR] [--out results.pkl]
        [--show-dir DIR [--las-show-masks [--las-show-stages layer1 ...]
        [--las-show-blocks layer3.0 ...]]] [--las-per-block] [--las-per-image OUT.json]
        [--las-results OUT.json] [--latency-profile PROFILE] [--measure-latency] [--fp16]
        [--cfg-options k=v ...] [--launcher pytorch]

--las-results writes one JSON per run that tools/plot_tradeoff.py reads:
``{"config", "checkpoint", "cfg_options", "latency_profile",
"metrics": {"coco/bbox_mAP": ..., "las/...": ...}}``
(every metric the test loop returned: COCO's and the LAS report's).

On a dense detector (mmdet's ResNet), --measure-latency and --latency-profile add a
BackboneLatencyHook: the backbone timed as a LAS backbone is, and the static ResNet's predicted
latency, under the same metric names (``las/measured_latency_ms``, ``las/pred_latency_ms``),
for the dense reference of tools/plot_tradeoff.py.
"""
import argparse
import os
import os.path as osp
import re

import torch
from mmengine.config import Config, DictAction
from mmengine.runner import Runner

import lasnet_mmdet  # noqa: F401  (registers LAS modules and hooks)
from mmdet.engine.hooks.utils import trigger_visualization_hook
from mmdet.evaluation import DumpDetResults
from mmdet.registry import RUNNERS
from mmdet.utils import setup_cache_size_limit_of_dynamo

# A checkpoint mmengine fetches (http://, https://, s3://, open-mmlab://, ...): not checked here.
REMOTE = re.compile(r'^[A-Za-z][A-Za-z0-9+.-]*://')


def parse_args(argv=None):
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
    parser.add_argument('--fp16', action='store_true',
                        help='run the test loop under autocast (test_cfg.fp16=True)')
    parser.add_argument('--las-per-block', action='store_true',
                        help='print the mean activation rate of every LAS block too')
    parser.add_argument('--las-per-image', metavar='OUT.json',
                        help='write every image\'s activation rates, MACs and latencies here')
    parser.add_argument('--las-results', metavar='OUT.json',
                        help='write the metrics (COCO and LAS) with the config and checkpoint '
                        'names here, for tools/plot_tradeoff.py')
    parser.add_argument('--las-show-masks', action='store_true',
                        help='with --show-dir/--show: add the LAS mask overlays beside each '
                        'picture')
    parser.add_argument('--las-show-stages', nargs='+', default=None,
                        help='stages to overlay (mean of their blocks; default: all)')
    parser.add_argument('--las-show-blocks', nargs='+', default=None,
                        help='blocks to overlay on their own (e.g. layer3.0)')
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
    args = parser.parse_args(argv)
    # Checked here, before the Runner creates its work dir and builds the model.
    if args.out is not None and not args.out.endswith(('.pkl', '.pickle')):
        parser.error(f'--out must be a .pkl or .pickle file, got {args.out!r}')
    for flag in ('las_per_image', 'las_results'):
        path = getattr(args, flag)
        if path is not None and not path.endswith('.json'):
            parser.error(f'--{flag.replace("_", "-")} must be a .json file, got {path!r}')
    if not osp.isfile(args.checkpoint) and not REMOTE.match(args.checkpoint):
        parser.error(f'no such checkpoint file: {args.checkpoint!r}')
    if args.out is not None and not osp.isdir(osp.dirname(args.out) or '.'):
        parser.error(f'--out {args.out!r}: no such folder {osp.dirname(args.out)!r}')
    if args.las_show_masks and not (args.show or args.show_dir):
        parser.error('--las-show-masks needs --show-dir DIR (or --show)')
    if (args.las_show_stages or args.las_show_blocks) and not args.las_show_masks:
        parser.error('--las-show-stages/--las-show-blocks need --las-show-masks')
    if 'LOCAL_RANK' not in os.environ:
        os.environ['LOCAL_RANK'] = str(args.local_rank)
    return args


def add_las_report(cfg, per_block=False, profile=None, measure=False, per_image_out=None):
    """Make sure a LASReportHook runs when the backbone is a LAS backbone; for a dense one, a
    BackboneLatencyHook when a latency is asked for (same timing, same metric names)."""
    backbone = cfg.model.get('backbone') or {}
    las = backbone.get('type') == 'LASResNet'
    if not las:
        if per_image_out is not None:
            raise ValueError(f'--las-per-image needs a LAS backbone; {cfg.filename} has '
                             f'{backbone.get("type")!r}')
        if profile is not None:
            from lasnet_mmdet.engine.hooks.utils import predictable_resnet_depth
            try:
                predictable_resnet_depth(backbone)
            except ValueError as error:
                raise ValueError(f'--latency-profile {profile}: {error}')
        if profile is None and not measure:
            return
    hook_type = 'LASReportHook' if las else 'BackboneLatencyHook'
    hooks = cfg.get('custom_hooks', None) or []
    reports = [hook for hook in hooks if hook.get('type') == hook_type]
    if not reports:
        hooks.append(dict(type=hook_type))
        reports = hooks[-1:]
    for hook in reports:
        if las:
            hook['per_block'] = hook.get('per_block', False) or per_block
        hook['measure'] = hook.get('measure', False) or measure
        if profile is not None:
            hook['profile'] = profile
        if per_image_out is not None:
            hook['per_image_out'] = per_image_out
    cfg.custom_hooks = hooks


def show_las_masks(cfg, stages=None, blocks=None):
    """Swap mmdet's visualization hook for the one that adds the LAS mask overlays."""
    from lasnet_mmdet.visualization import choose_panels, las_block_names
    # Unknown names or a backbone without masks fail here, before any work.
    choose_panels(las_block_names(cfg.model.get('backbone')), stages, blocks)
    cfg.default_hooks.visualization.update(type='LASDetVisualizationHook', stages=stages,
                                           blocks=blocks)


def build_config(args):
    """The test config that the command line asks for."""
    cfg = Config.fromfile(args.config)
    cfg.launcher = args.launcher
    if args.cfg_options is not None:
        cfg.merge_from_dict(args.cfg_options)

    if args.work_dir is not None:
        cfg.work_dir = args.work_dir
    elif cfg.get('work_dir', None) is None:
        cfg.work_dir = osp.join('./work_dirs', osp.splitext(osp.basename(args.config))[0])

    cfg.load_from = args.checkpoint
    if args.fp16:
        cfg.test_cfg = cfg.get('test_cfg') or dict(type='TestLoop')
        cfg.test_cfg.fp16 = True  # mmengine's TestLoop runs the model under autocast
    if args.show or args.show_dir:
        cfg = trigger_visualization_hook(cfg, args)
        if args.las_show_masks:
            show_las_masks(cfg, args.las_show_stages, args.las_show_blocks)
    add_las_report(cfg, args.las_per_block, args.latency_profile, args.measure_latency,
                   args.las_per_image)
    return cfg


def save_results(path, args, metrics):
    """The run's metrics with what produced them, for tools/plot_tradeoff.py."""
    from mmengine.dist import is_main_process
    from mmengine.logging import print_log
    from lasnet_mmdet.visualization.atomic_write import save_json
    if not is_main_process():
        return
    save_json(path, dict(config=args.config, checkpoint=args.checkpoint,
                         cfg_options=args.cfg_options and dict(args.cfg_options),
                         latency_profile=args.latency_profile,
                         metrics={key: value if isinstance(value, str) else float(value)
                                  for key, value in metrics.items()}))
    print_log(f'metrics written to {path}', logger='current')


def plugin_env():
    """The plugin's explicit environment setup (checkpoint loading, CPU DDP) and its teardown
    (the process group closed after success), where the plugin is present."""
    try:
        from lasnet_mmdet.utils import setup_env, teardown_env
    except ImportError:
        return (lambda: None), (lambda: None)
    return setup_env, teardown_env


def main(argv=None):
    args = parse_args(argv)
    if args.fp16 and not torch.cuda.is_available():
        # mmengine autocasts to bfloat16 on CPU, which mmcv 2.1's CPU NMS rejects ("expected
        # scalar type Float but found BFloat16" in the RPN head): say so before any work.
        raise SystemExit('test.py: error: --fp16 needs CUDA (on CPU, mmengine autocasts to '
                         'bfloat16, which mmcv\'s CPU NMS does not support)')
    setup_env, teardown_env = plugin_env()
    setup_env()
    setup_cache_size_limit_of_dynamo()

    try:
        cfg = build_config(args)
    except (ValueError, FileNotFoundError) as error:
        raise SystemExit(f'test.py: error: {error}')

    runner = Runner.from_cfg(cfg) if 'runner_type' not in cfg else RUNNERS.build(cfg)
    if args.out is not None:
        runner.test_evaluator.metrics.append(DumpDetResults(out_file_path=args.out))
    metrics = runner.test()
    if args.las_results is not None:
        save_results(args.las_results, args, metrics)
    del runner  # its DDP model holds the process group: freed by teardown_env's collection
    teardown_env()


if __name__ == '__main__':
    main()
