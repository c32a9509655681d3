"""tools/vis_masks.py and tools/plot_tradeoff.py end to end, on a small trained checkpoint."""
import glob
import json
import os
import os.path as osp
import shutil

import mmcv
import numpy as np
import pytest

from conftest import REPO
from visualization.las_test_checkpoint import (DEMO, las_test_run, load_tool,
                                               mixed_mask_checkpoint, run_tool)


@pytest.fixture(scope='module')
def checkpoint(tmp_path_factory, sample_coco):
    return mixed_mask_checkpoint(tmp_path_factory, sample_coco)


def test_vis_masks_saves_the_backbones_own_masks(checkpoint, sample_coco, tmp_path):
    from mmdet.apis import inference_detector, init_detector
    from lasnet_mmdet.engine.hooks.utils import las_backbone
    from lasnet_mmdet.utils import setup_checkpoint_loading
    setup_checkpoint_loading()  # as the tools do: Runner-written checkpoints, safely
    # Two of the sample images, in a folder of their own (each costs seconds on 2 cores).
    images = str(tmp_path / 'images')
    os.makedirs(images)
    for name in sorted(os.listdir(osp.join(sample_coco, 'val')))[:2]:
        shutil.copy(osp.join(sample_coco, 'val', name), images)
    run_tool(['tools/vis_masks.py', DEMO, checkpoint, images, '--out-dir', str(tmp_path),
              '--stages', 'layer1', 'layer2', '--blocks', 'layer3.0', 'layer4.2',
              '--device', 'cpu', '--save-masks'])
    paths = sorted(glob.glob(osp.join(images, '*.jpg')) + glob.glob(osp.join(images, '*.png')))
    assert len(paths) == 2

    # The same images through the same checkpoint, in this process: the saved arrays must
    # be the backbone's own decisions (their means its per-image rates).
    model = init_detector(DEMO, checkpoint, device='cpu')
    backbone = las_backbone(model, 'test')
    seen = []
    for path in paths:
        stem = osp.join(str(tmp_path), osp.splitext(osp.basename(path))[0])
        picture = mmcv.imread(stem + '.png')
        assert picture.shape[0] >= 256 and picture.shape[1] >= 5 * 256  # 5 panels
        inference_detector(model, path)
        blocks = backbone.las_stats['blocks']
        saved = np.load(stem + '.npz')
        assert sorted(saved.files) == ['layer1', 'layer2', 'layer3.0', 'layer4.2']
        for panel, names in (('layer1', ['layer1.0', 'layer1.1', 'layer1.2']),
                             ('layer2', ['layer2.0', 'layer2.1', 'layer2.2', 'layer2.3']),
                             ('layer3.0', ['layer3.0']), ('layer4.2', ['layer4.2'])):
            rate = np.mean([float(blocks[name]['rate_per_image'][0]) for name in names])
            assert float(saved[panel].mean()) == pytest.approx(rate, abs=1e-6), (path, panel)
        seen.append(tuple(float(saved[panel].mean()) for panel in sorted(saved.files)))
    # mixed decisions that differ between images: the comparison means something
    assert any(0 < rate < 1 for rates in seen for rate in rates) and seen[0] != seen[1], seen


def test_vis_masks_checks_arguments_before_any_work(checkpoint, sample_coco, tmp_path):
    vis_masks = load_tool('vis_masks')
    image = osp.join(sample_coco, 'val')
    out = str(tmp_path / 'out')
    cases = [([DEMO, checkpoint, image, '--blocks', 'layer3.9'], "unknown block 'layer3.9'"),
             ([DEMO, checkpoint, image, '--stages', 'stage1'], "unknown stage 'stage1'"),
             ([DEMO, checkpoint, str(tmp_path / 'nope.jpg')], 'nope.jpg'),
             ([DEMO, str(tmp_path / 'none.pth'), image], 'none.pth'),
             (['configs/demo/missing.py', checkpoint, image], 'missing.py'),
             ([DEMO, checkpoint, image, '--cfg-options', 'model.backbone.type=ResNet'],
              "'ResNet', not a LAS backbone")]
    for argv, message in cases:
        with pytest.raises(SystemExit, match=message):
            vis_masks.main([*argv, '--out-dir', out])
    assert not osp.exists(out)


def test_plot_tradeoff_from_test_results(tmp_path_factory, sample_coco, tmp_path):
    folder, _ = las_test_run(tmp_path_factory, sample_coco)
    with open(osp.join(folder, 'results.json')) as f:
        results = json.load(f)
    # A second run at a lower cost (same file format), and a dense reference.
    cheaper = json.loads(json.dumps(results))
    for key in ('las/gmacs_dynamic', 'las/pred_latency_ms', 'las/measured_latency_ms'):
        cheaper['metrics'][key] *= 0.6
    dense = {'config': 'dense.py', 'checkpoint': 'dense.pth',
             'metrics': {'coco/bbox_mAP': 0.1, 'coco/segm_mAP': 0.1}}
    for name, data in (('cheaper', cheaper), ('dense', dense)):
        with open(tmp_path / f'{name}.json', 'w') as f:
            json.dump(data, f)
    out = tmp_path / 'figure' / 'tradeoff.png'
    run_tool(['tools/plot_tradeoff.py', osp.join(folder, 'results.json'),
              str(tmp_path / 'cheaper.json'), '--dense', str(tmp_path / 'dense.json'),
              '--out', str(out)])
    picture = mmcv.imread(str(out))
    assert picture.shape[1] > 2 * picture.shape[0]  # three cost axes side by side
    assert picture.std() > 10


def test_plot_tradeoff_names_a_file_without_coco_metrics(tmp_path):
    per_image_like = tmp_path / 'per_image.json'
    per_image_like.write_text(json.dumps({'num_images': 4, 'means': {'las/act_rate': 0.5}}))
    good = tmp_path / 'good.json'
    good.write_text(json.dumps({'metrics': {'coco/bbox_mAP': 0.2, 'las/gmacs_dynamic': 3.0}}))
    code, output = run_tool(['tools/plot_tradeoff.py', str(good), str(per_image_like),
                             '--out', str(tmp_path / 'x.png')], check=False)
    assert code != 0 and f'{per_image_like} has no COCO AP' in output
    assert not osp.exists(tmp_path / 'x.png')
    assert REPO  # (run from the repository root)
