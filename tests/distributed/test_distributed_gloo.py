"""Two processes with the gloo backend (torchrun + mmengine DDP) on the sample data.

The cost loss and the logged activation rate / cost ratio must be the same whether a batch
of 4 images runs in one process or is split 2 + 2 over two ranks, and training must not
deadlock when no patch is active anywhere.
"""
import json
import os
import os.path as osp
import subprocess
import sys

import pytest

from conftest import REPO, as_cli, sample_data_options

HERE = osp.dirname(osp.abspath(__file__))
DEMO = osp.join(REPO, 'configs/demo/mask-rcnn_las-r50-4421_fpn_sample.py')


def write_config(tmp_path, masks, out_file):
    config = tmp_path / f'probe_{masks}.py'
    config.write_text(
        f"_base_ = '{DEMO}'\n"
        "custom_imports = dict(imports=['lasnet_mmdet', 'las_probe_hook'],\n"
        "                      allow_failed_imports=False)\n"
        "model = dict(backbone=dict(norm_eval=True))\n"
        "env_cfg = dict(dist_cfg=dict(backend='gloo'))\n"
        "custom_hooks = [dict(type='LatencyLossHook', target=0.5),\n"
        f"                dict(type='LASProbeHook', out_file='{out_file}', masks='{masks}')]\n")
    return str(config)


def train(tmp_path, sample_coco, masks, nproc, images_per_rank):
    out_file = str(tmp_path / f'{masks}_{nproc}.json')
    options = sample_data_options(sample_coco)
    options.update({'train_dataloader.batch_size': images_per_rank,
                    'train_dataloader.dataset.pipeline.2.scale': (128, 128),
                    'train_dataloader.dataset.pipeline.3.prob': 0.0,  # no random flip
                    'train_cfg.max_epochs': 1, 'train_cfg.val_interval': 10,
                    'train_dataloader.sampler.shuffle': False, 'randomness.seed': 0})
    args = [osp.join(REPO, 'tools/train.py'), write_config(tmp_path, masks, out_file),
            '--work-dir', str(tmp_path / f'work_{masks}_{nproc}'),
            '--cfg-options', *as_cli(options)]
    if nproc > 1:
        cmd = [sys.executable, '-m', 'torch.distributed.run', '--nproc_per_node', str(nproc),
               '--master_port', str(29500 + os.getpid() % 1000), *args, '--launcher', 'pytorch']
    else:
        cmd = [sys.executable, *args]
    env = {**os.environ, 'PYTHONPATH': os.pathsep.join([REPO, HERE]), 'OMP_NUM_THREADS': '1'}
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-5000:]
    with open(out_file) as f:
        return json.load(f)


def test_split_batch_gives_same_loss_and_logs(sample_coco, tmp_path):
    single = train(tmp_path, sample_coco, 'by_content', nproc=1, images_per_rank=4)
    split = train(tmp_path, sample_coco, 'by_content', nproc=2, images_per_rank=2)
    assert single['world_size'] == 1 and split['world_size'] == 2
    assert 0 < single['las_act_rate'] < 1  # masks really differ across patches
    for key in ('loss_latency', 'las_act_rate', 'las_cost_ratio'):
        assert split[key] == pytest.approx(single[key], rel=1e-5, abs=1e-7), key


def test_no_active_patch_does_not_deadlock(sample_coco, tmp_path):
    split = train(tmp_path, sample_coco, 'none', nproc=2, images_per_rank=2)
    assert split['las_act_rate'] == 0
    assert split['loss_latency'] == pytest.approx((split['las_cost_ratio'] - 0.5)**2)
