"""tools/train.py, --resume, tools/test.py and mmdet's own unmodified train.py, end to end."""
import glob
import os
import os.path as osp
import pickle
import subprocess
import sys

import mmdet
import pytest
import torch

from conftest import REPO, as_cli, sample_data_options, small_las_options

DEMO = 'configs/demo/mask-rcnn_las-r50-4421_fpn_sample.py'


def run(args, cwd=REPO):
    proc = subprocess.run([sys.executable, *args], cwd=cwd, capture_output=True, text=True,
                          env={**os.environ, 'PYTHONPATH': REPO})
    output = proc.stdout + proc.stderr
    assert proc.returncode == 0, output[-5000:]
    return output


def demo_options(sample_coco, max_epochs):
    options = sample_data_options(sample_coco)
    options.update({'train_cfg.max_epochs': max_epochs,
                    'train_cfg.val_interval': max_epochs,
                    'default_hooks.checkpoint.interval': 1,
                    'default_hooks.logger.interval': 1})
    for loader in ('train_dataloader', 'val_dataloader', 'test_dataloader'):
        step = 2 if loader == 'train_dataloader' else 1  # the Resize step of each pipeline
        options[f'{loader}.dataset.pipeline.{step}.scale'] = (128, 128)
    return options


@pytest.fixture(scope='module')
def trained(sample_coco, tmp_path_factory):
    """One epoch of the demo config, then --resume to a second one."""
    work_dir = str(tmp_path_factory.mktemp('demo'))
    first = run(['tools/train.py', DEMO, '--work-dir', work_dir, '--cfg-options',
                 *as_cli(demo_options(sample_coco, max_epochs=1))])
    resumed = run(['tools/train.py', DEMO, '--work-dir', work_dir, '--resume', '--cfg-options',
                   *as_cli(demo_options(sample_coco, max_epochs=2))])
    return work_dir, first, resumed


def test_train_logs_las_values_and_evaluates(trained):
    work_dir, first, _ = trained
    assert osp.isfile(osp.join(work_dir, 'epoch_1.pth'))
    for key in ('loss_latency', 'las_act_rate', 'las_cost_ratio', 'coco/bbox_mAP',
                'coco/segm_mAP', 'LAS report'):
        assert key in first, key


def test_resume_continues_from_checkpoint(trained):
    work_dir, _, resumed = trained
    assert 'resumed epoch: 1' in resumed
    assert osp.isfile(osp.join(work_dir, 'epoch_2.pth'))
    checkpoint = torch.load(osp.join(work_dir, 'epoch_2.pth'), weights_only=False)
    assert checkpoint['meta']['epoch'] == 2


def test_test_tool_reports_coco_and_las(trained, sample_coco, tmp_path):
    work_dir, _, _ = trained
    out = str(tmp_path / 'results.pkl')
    output = run(['tools/test.py', DEMO, osp.join(work_dir, 'epoch_2.pth'), '--work-dir',
                  str(tmp_path), '--out', out, '--show-dir', 'shown', '--las-per-block',
                  '--latency-profile', 'v100', '--measure-latency',
                  '--cfg-options', *as_cli(demo_options(sample_coco, max_epochs=2))])
    for key in ('coco/bbox_mAP', 'coco/segm_mAP', 'LAS report over 4 images', 'layer1',
                'layer4', 'layer3.5', 'backbone GMACs per image', 'las/act_rate',
                'predicted backbone latency per image on', 'las/pred_latency_ms',
                'measured backbone latency per image', 'las/measured_latency_ms'):
        assert key in output, key
    assert osp.isfile(out)
    assert glob.glob(f'{tmp_path}/*/shown/*.png')


def test_sparse_inference_gives_the_dense_masked_predictions(trained, sample_coco, tmp_path):
    """The whole detector run with the sparse ops ('auto') and dense-masked ('off')."""
    work_dir, _, _ = trained
    predictions = {}
    for mode in ('off', 'auto'):
        out = str(tmp_path / f'{mode}.pkl')
        run(['tools/test.py', DEMO, osp.join(work_dir, 'epoch_2.pth'), '--work-dir',
             str(tmp_path / mode), '--out', out, '--cfg-options',
             *as_cli(demo_options(sample_coco, max_epochs=2)),
             'model.test_cfg.rcnn.score_thr=0.0',  # keep every box of the young model
             f'model.backbone.sparse_inference={mode}'])
        with open(out, 'rb') as f:
            predictions[mode] = pickle.load(f)
    assert sum(len(p['pred_instances']['scores']) for p in predictions['off']) > 0
    for dense, sparse in zip(predictions['off'], predictions['auto']):
        dense, sparse = dense['pred_instances'], sparse['pred_instances']
        # Near-equal scores may swap order (and the top-100 cut) under other summation
        # orders (Triton vs cuDNN), so each of the 10 best sparse detections must be found
        # among the dense ones, not at the same index.
        for i in sparse['scores'].argsort(descending=True)[:10]:
            same = ((dense['labels'] == sparse['labels'][i])
                    & ((dense['bboxes'] - sparse['bboxes'][i]).abs().amax(dim=1) < 0.5)
                    & ((dense['scores'] - sparse['scores'][i]).abs() < 1e-2))
            assert same.any(), (sparse['bboxes'][i], sparse['scores'][i])


def test_test_tool_rejects_bad_out(trained, sample_coco):
    work_dir, _, _ = trained
    proc = subprocess.run([sys.executable, 'tools/test.py', DEMO,
                           osp.join(work_dir, 'epoch_2.pth'), '--out', 'results.json',
                           '--cfg-options', *as_cli(demo_options(sample_coco, 2))],
                          cwd=REPO, capture_output=True, text=True)
    assert proc.returncode != 0 and 'results.json' in proc.stderr


def test_mmdet_own_train_tool_with_custom_imports(sample_coco, tmp_path):
    """A single-stage detector config of the user's, mmdet's unmodified tools/train.py."""
    config = tmp_path / 'retinanet_las.py'
    config.write_text(
        "_base_ = 'mmdet::retinanet/retinanet_r50_fpn_1x_coco.py'\n"
        "custom_imports = dict(imports=['lasnet_mmdet'], allow_failed_imports=False)\n"
        "model = dict(backbone=dict(_delete_=True, type='LASResNet', depth=50,\n"
        "                           granularity=(4, 4, 7, 1), init_cfg=None))\n"
        "custom_hooks = [dict(type='LatencyLossHook', target=0.5, cost='latency',\n"
        "                     profile='v100')]\n")
    options = sample_data_options(sample_coco, with_mask=False)
    options.update(small_las_options(detector='single_stage'))
    options.update({'train_dataloader.dataset.pipeline.2.scale': (128, 128),
                    'test_dataloader.dataset.pipeline.1.scale': (128, 128),
                    'val_dataloader.dataset.pipeline.1.scale': (128, 128),
                    'default_hooks.logger.interval': 1})
    mmdet_train = osp.join(osp.dirname(mmdet.__file__), '.mim', 'tools', 'train.py')
    output = run([mmdet_train, str(config), '--work-dir', str(tmp_path / 'work'),
                  '--cfg-options', *as_cli(options)], cwd=str(tmp_path))
    # (an untrained RetinaNet may predict nothing, so COCO AP is not asserted here)
    assert 'loss_latency' in output and 'las_act_rate' in output and 'Epoch(val)' in output
    assert 'las_latency_ms' in output  # the predicted-latency cost, not MACs
