"""From dense weights to a LAS detector, in small: the experiment behind docs/recipe.md.

    python tools/recipe_experiment.py [--work-dir work_dirs/recipe] [--size 256]
        [--dense-epochs 12] [--epochs 2] [--seeds 0 1 2] [--threads 2] [--masker-lr-mult X]
        [--las-cfg-options KEY=VALUE ...]

1. generates the sample set at ``--size`` px (``data/sample_coco_<size>``);
2. trains the dense Mask R-CNN R50 (``configs/demo/mask-rcnn_r50_fpn_sample-256.py``) from
   scratch, seed 0: the "dense weights" users have (reused if its checkpoint exists);
3. per seed, from those weights, for the same ``--epochs`` and schedule:
   (a) the dense model continued; (b) LAS-R50 with the from-dense recipe
   (``configs/demo/mask-rcnn_las-r50-4421_fpn_sample-256_from-dense.py``);
4. evaluates both (COCO bbox/segm AP on the val split, (b)'s backbone MACs ratio and
   per-block rates) and times ``predict()`` of both on one val batch on the CPU (eval, no
   grad, the two models alternating, median of ``--repeats`` calls);
5. writes ``seed<N>.json`` per seed (a re-run skips the seeds done), then ``results.json`` and
   ``results.md`` (the tables of docs/recipe.md) over every seed in the work dir.
"""
import argparse
import glob
import json
import os.path as osp
import statistics
import time
from collections import defaultdict

import torch
from mmengine.config import Config, DictAction
from mmengine.runner import Runner

import lasnet_mmdet  # registers LAS modules
from lasnet_mmdet.datasets import make_sample_coco

DENSE_CONFIG = 'configs/demo/mask-rcnn_r50_fpn_sample-256.py'
LAS_CONFIG = 'configs/demo/mask-rcnn_las-r50-4421_fpn_sample-256_from-dense.py'


def parse_args():
    parser = argparse.ArgumentParser(description='Dense weights -> LAS detector, on sample data')
    parser.add_argument('--work-dir', default='work_dirs/recipe')
    parser.add_argument('--size', type=int, default=256, help='sample image side in pixels')
    parser.add_argument('--train-images', type=int, default=48)
    parser.add_argument('--val-images', type=int, default=16)
    parser.add_argument('--dense-epochs', type=int, default=12,
                        help='epochs of the dense model trained from scratch')
    parser.add_argument('--epochs', type=int, default=2, help='M: epochs of (a) and (b)')
    parser.add_argument('--seeds', type=int, nargs='*', default=[0, 1, 2],
                        help='seeds of (a) and (b); none: only train/evaluate the dense model')
    parser.add_argument('--repeats', type=int, default=5, help='predict() calls timed per model')
    parser.add_argument('--masker-lr-mult', type=float, default=None,
                        help="(b)'s masker lr multiplier (default: the config's)")
    parser.add_argument('--threads', type=int, default=None, help='torch CPU threads')
    parser.add_argument(
        '--las-cfg-options', nargs='+', action=DictAction, default={},
        help="override settings of (b)'s config, as tools/train.py's --cfg-options, e.g. "
        'custom_hooks.0.bounds.relax=2.0')
    args = parser.parse_args()
    for name in ('size', 'train_images', 'val_images', 'dense_epochs', 'epochs', 'repeats'):
        if getattr(args, name) < 1:
            parser.error(f'--{name.replace("_", "-")} must be >= 1, got {getattr(args, name)}')
    if args.size < 64:
        parser.error(f'--size must be >= 64 px, got {args.size}')
    return args


def data_options(cfg, root, size):
    """Overrides pointing the config's loaders and evaluators at ``root``, resized to ``size``."""
    options = {}
    for loader in ('train_dataloader', 'val_dataloader', 'test_dataloader'):
        options[f'{loader}.dataset.data_root'] = root + '/'
        for i, step in enumerate(cfg[loader]['dataset']['pipeline']):
            if step['type'] == 'Resize':
                options[f'{loader}.dataset.pipeline.{i}.scale'] = (size, size)
    for evaluator in ('val_evaluator', 'test_evaluator'):
        options[f'{evaluator}.ann_file'] = root + '/annotations/instances_val.json'
    return options


def schedule_options(epochs, from_scratch=False):
    """lr 0.02 after a short warm-up, x0.1 at 2/3 and 11/12 of the run (the demo's 8 and 11
    of 12 epochs) from scratch; for (a) and (b), the same: x0.1 for the last epoch."""
    if from_scratch:
        milestones = sorted({round(epochs * 2 / 3), round(epochs * 11 / 12)})
    else:
        milestones = [epochs - 1]
    return {
        'train_cfg.max_epochs': epochs,
        'train_cfg.val_interval': epochs + 1,  # evaluated once, by runner.test()
        'default_hooks.checkpoint.interval': epochs,
        'default_hooks.checkpoint.max_keep_ckpts': 1,
        'param_scheduler': [
            dict(type='LinearLR', start_factor=0.001, by_epoch=False, begin=0, end=50),
            dict(type='MultiStepLR', begin=0, end=epochs, by_epoch=True,
                 milestones=[m for m in milestones if 0 < m < epochs] or [epochs], gamma=0.1),
        ],
    }


def build_runner(config, work_dir, name, seed, options):
    cfg = Config.fromfile(config)
    cfg.merge_from_dict(options)
    cfg.work_dir = osp.join(work_dir, name)
    cfg.experiment_name = name  # one logger per Runner, even within the same second
    cfg.randomness = dict(seed=seed)
    return Runner.from_cfg(cfg)


def train_and_test(config, work_dir, name, seed, options):
    """Train (or reuse the run's final checkpoint), then COCO-evaluate on the val split;
    returns (runner, metrics, training seconds or None if reused)."""
    final = osp.join(work_dir, name, f'epoch_{options["train_cfg.max_epochs"]}.pth')
    if osp.isfile(final):
        runner = build_runner(config, work_dir, name, seed, {**options, 'load_from': final})
        return runner, runner.test(), None
    runner = build_runner(config, work_dir, name, seed, options)
    start = time.perf_counter()
    runner.train()
    seconds = time.perf_counter() - start
    metrics = runner.test()
    return runner, metrics, seconds


@torch.no_grad()
def block_rates(runner):
    """Mean activation rate of every LAS block over the val images (eval mode)."""
    model = runner.model.eval()
    backbone = model.backbone
    sums, images = defaultdict(float), 0
    for data in runner.test_dataloader:
        model.test_step(data)
        n = len(data['inputs'])
        for name, stats in backbone.las_stats['blocks'].items():
            sums[name] += float(stats['rate']) * n
        images += n
    return {name: total / images for name, total in sums.items()}


@torch.no_grad()
def predict_times(models, data, repeats):
    """Median wall-clock ms of ``test_step`` (predict) per model, the models alternating."""
    times = defaultdict(list)
    for model in models.values():
        model.eval()
        model.test_step(data)  # warm-up: workspaces, folded weights, allocator
    for _ in range(repeats):
        for key, model in models.items():
            start = time.perf_counter()
            model.test_step(data)
            times[key].append((time.perf_counter() - start) * 1e3)
    return {key: statistics.median(values) for key, values in times.items()}


def summary(values):
    values = [v for v in values if v is not None]
    if not values:
        return dict(mean=None, std=None, min=None, max=None, n=0)
    return dict(mean=statistics.fmean(values),
                std=statistics.stdev(values) if len(values) > 1 else 0.0,
                min=min(values), max=max(values), n=len(values))


def fmt(s, digits=3):
    if s['mean'] is None:
        return '-'
    spread = f' ± {s["std"]:.{digits}f} ({s["min"]:.{digits}f}-{s["max"]:.{digits}f})' \
        if s['n'] > 1 else ''
    return f'{s["mean"]:.{digits}f}{spread}'


def markdown(results, args):
    runs = results['runs']
    lines = [f'Sample set: {args.train_images} train / {args.val_images} val images of '
             f'{args.size} px; dense Mask R-CNN R50 trained {args.dense_epochs} epochs '
             f'(bbox AP {results["dense"]["bbox_mAP"]:.3f}, segm AP '
             f'{results["dense"]["segm_mAP"]:.3f}); then {args.epochs} epochs each, seeds '
             f'{[r["seed"] for r in runs]}: mean ± std (min-max).', '',
             '| model | bbox AP | segm AP | backbone MACs ratio | predict() ms (CPU) |',
             '|---|---|---|---|---|']
    for key, title in (('dense', '(a) dense R50, continued'),
                       ('las', '(b) LAS-R50 4-4-2-1, from dense, recipe')):
        ratio = summary([r[key].get('macs_ratio') for r in runs])
        lines.append(f'| {title} | {fmt(summary([r[key]["bbox_mAP"] for r in runs]))} | '
                     f'{fmt(summary([r[key]["segm_mAP"] for r in runs]))} | '
                     f'{fmt(ratio) if ratio["n"] else "1"} | '
                     f'{fmt(summary([r[key]["predict_ms"] for r in runs]), 1)} |')
    lines += ['', '(b) per-block activation rates (val images, eval), mean over seeds:', '',
              '| block | rate | block | rate | block | rate | block | rate |',
              '|---|---|---|---|---|---|---|---|']
    names = list(runs[0]['las']['block_rates'])
    means = {n: statistics.fmean(r['las']['block_rates'][n] for r in runs) for n in names}
    cells = [f'{n} | {means[n]:.2f}' for n in names]
    for i in range(0, len(cells), 4):
        row = cells[i:i + 4] + [' | '] * (4 - len(cells[i:i + 4]))
        lines.append('| ' + ' | '.join(row) + ' |')
    stages = defaultdict(list)
    for n in names:
        stages[n.split('.')[0]].append(means[n])
    lines += ['', 'per stage: ' + ', '.join(f'{s} {statistics.fmean(v):.2f}'
                                           for s, v in stages.items()),
              f'blocks at rate < 0.05: {sum(v < 0.05 for v in means.values())} of {len(names)}']
    return '\n'.join(lines)


def main():
    args = parse_args()
    lasnet_mmdet.setup_env()  # safe loading of the Runner's checkpoints (load_from)
    if args.threads:
        torch.set_num_threads(args.threads)
    root = make_sample_coco(f'data/sample_coco_{args.size}', args.train_images,
                            args.val_images, args.size, seed=0)
    data = data_options(Config.fromfile(DENSE_CONFIG), root, args.size)
    started = time.perf_counter()

    # The dense weights: trained once, reused by every seed (and by a re-run).
    dense_dir = osp.join(args.work_dir, 'dense')
    dense_ckpt = osp.join(dense_dir, f'epoch_{args.dense_epochs}.pth')
    results = dict(args=vars(args), runs=[])
    trained = osp.isfile(dense_ckpt)
    dense_runner = build_runner(DENSE_CONFIG, args.work_dir, 'dense', 0,
                                {**data, **schedule_options(args.dense_epochs, True),
                                 'load_from': dense_ckpt if trained else None})
    if not trained:
        dense_runner.train()
    dense_metrics = dense_runner.test()  # loads load_from when it did not train
    results['dense'] = dict(bbox_mAP=dense_metrics['coco/bbox_mAP'],
                            segm_mAP=dense_metrics['coco/segm_mAP'], checkpoint=dense_ckpt)

    for seed in args.seeds:
        done = osp.join(args.work_dir, f'seed{seed}.json')
        if osp.isfile(done):
            print(f'seed {seed}: reusing {done}')
            continue
        options = {**data, **schedule_options(args.epochs), 'load_from': dense_ckpt}
        run = dict(seed=seed, epochs=args.epochs)
        runners = {}
        for key, config in (('dense', DENSE_CONFIG), ('las', LAS_CONFIG)):
            run_options = dict(options)
            if key == 'las' and args.masker_lr_mult is not None:
                run_options['optim_wrapper.paramwise_cfg.custom_keys'] = {
                    'masker.conv2': dict(lr_mult=args.masker_lr_mult, decay_mult=0.0)}
            if key == 'las':
                run_options.update(args.las_cfg_options)
            runner, metrics, seconds = train_and_test(
                config, args.work_dir, f'{key}_seed{seed}', seed, run_options)
            run[key] = dict(bbox_mAP=metrics['coco/bbox_mAP'],
                            segm_mAP=metrics['coco/segm_mAP'], train_s=seconds)
            if key == 'las':
                run[key]['macs_ratio'] = metrics['las/gmacs_dynamic'] / metrics['las/gmacs_dense']
                run[key]['block_rates'] = block_rates(runner)
            runners[key] = runner
        batch = next(iter(runners['dense'].test_dataloader))
        times = predict_times({k: r.model for k, r in runners.items()}, batch, args.repeats)
        for key, ms in times.items():
            run[key]['predict_ms'] = ms
        with open(done, 'w') as f:
            json.dump(run, f, indent=1)
        print(json.dumps(run, indent=1))

    # Every seed finished in this work dir (several processes may share it, one seed each).
    for path in sorted(glob.glob(osp.join(args.work_dir, 'seed*.json'))):
        with open(path) as f:
            run = json.load(f)
        if run.get('epochs') == args.epochs:
            results['runs'].append(run)
    results['minutes'] = (time.perf_counter() - started) / 60
    table = markdown(results, args) if results['runs'] else json.dumps(results['dense'])
    with open(osp.join(args.work_dir, 'results.json'), 'w') as f:
        json.dump(results, f, indent=1)
    with open(osp.join(args.work_dir, 'results.md'), 'w') as f:
        f.write(table + '\n')
    print(table)
    print(f'total {results["minutes"]:.1f} min; results in {args.work_dir}/results.{{json,md}}')


if __name__ == '__main__':
    main()
