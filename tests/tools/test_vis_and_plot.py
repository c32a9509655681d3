"""tools/vis_masks.py and tools/plot_tradeoff.py end to end, on a small trained checkpoint,
and the configs of the repository through the mask tools' checks."""
import glob
import json
import os
import os.path as osp
import shutil
import stat

import mmcv
import numpy as np
import pytest
import torch

from conftest import REPO
from visualization.las_test_checkpoint import (DEMO, dense_test_run, las_test_run, load_tool,
                                               mixed_mask_checkpoint, run_tool)

requires_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason='needs a CUDA device')
CONFIGS = sorted(osp.relpath(path, REPO)
                 for path in glob.glob(osp.join(REPO, 'configs', '**', '*.py'), recursive=True))


@pytest.fixture(scope='module')
def checkpoint(tmp_path_factory, sample_coco):
    return mixed_mask_checkpoint(tmp_path_factory, sample_coco)


def two_images(sample_coco, tmp_path):
    """Two of the sample images, in a folder of their own (each costs seconds on 2 cores)."""
    images = str(tmp_path / 'images')
    os.makedirs(images)
    for name in sorted(os.listdir(osp.join(sample_coco, 'val')))[:2]:
        shutil.copy(osp.join(sample_coco, 'val', name), images)
    return images


VIS_ARGS = ['--stages', 'layer1', 'layer2', '--blocks', 'layer3.0', 'layer4.2', '--save-masks']


def check_saved_masks(checkpoint, images, out_dir, device):
    """The pictures and arrays vis_masks.py wrote to ``out_dir`` (with ``VIS_ARGS``) are the
    backbone's own decisions: the same images through the same checkpoint on ``device``, in
    this process, give per-image rates equal to the arrays' means."""
    from mmdet.apis import inference_detector, init_detector
    from lasnet_mmdet.engine.hooks.utils import las_backbone
    from lasnet_mmdet.utils import setup_checkpoint_loading
    setup_checkpoint_loading()  # as the tools do: Runner-written checkpoints, safely
    paths = sorted(glob.glob(osp.join(images, '*.jpg')) + glob.glob(osp.join(images, '*.png')))
    assert len(paths) == 2
    model = init_detector(DEMO, checkpoint, device=device)
    backbone = las_backbone(model, 'test')
    seen = []
    for path in paths:
        stem = osp.join(str(out_dir), osp.splitext(osp.basename(path))[0])
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


def test_vis_masks_saves_the_backbones_own_masks(checkpoint, sample_coco, tmp_path):
    images = two_images(sample_coco, tmp_path)
    run_tool(['tools/vis_masks.py', DEMO, checkpoint, images, '--out-dir', str(tmp_path),
              '--device', 'cpu', *VIS_ARGS])
    check_saved_masks(checkpoint, images, tmp_path, 'cpu')


@requires_cuda
def test_vis_masks_on_cuda_saves_the_backbones_own_masks(checkpoint, sample_coco, tmp_path):
    """The sparse CUDA path end to end (its masks compared with the same path in this
    process: borderline decisions may differ from the CPU's)."""
    images = two_images(sample_coco, tmp_path)
    load_tool('vis_masks').main([DEMO, checkpoint, images, '--out-dir', str(tmp_path),
                                 '--device', 'cuda', *VIS_ARGS])
    check_saved_masks(checkpoint, images, tmp_path, 'cuda')


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
    dense_file, _ = dense_test_run(tmp_path_factory, sample_coco)  # its measured latency
    results = osp.join(folder, 'results.json')
    with open(results) as f:
        cheaper = json.load(f)
    # A second run at a lower cost (same file format), its mean time spoilt by other jobs.
    for key in ('las/gmacs_dynamic', 'las/pred_latency_ms', 'las/pred_latency_ratio',
                'las/measured_latency_median_ms'):
        cheaper['metrics'][key] *= 0.6
    cheaper['metrics']['las/measured_latency_ms'] *= 5
    with open(tmp_path / 'cheaper.json', 'w') as f:
        json.dump(cheaper, f)
    out = tmp_path / 'figure' / 'tradeoff.png'
    run_tool(['tools/plot_tradeoff.py', results, str(tmp_path / 'cheaper.json'),
              '--dense', dense_file, '--out', str(out)])
    picture = mmcv.imread(str(out))
    assert picture.shape[1] > 2 * picture.shape[0]  # three cost axes side by side
    assert picture.std() > 10
    umask = os.umask(0)
    os.umask(umask)
    assert stat.S_IMODE(os.stat(out).st_mode) == 0o666 & ~umask  # not mkstemp's 0o600

    # On the measured axis: the medians per image (not the means), and the dense model at
    # its own.
    plot_tradeoff = load_tool('plot_tradeoff')
    runs = [plot_tradeoff.load_results(path)[0] for path in (results, tmp_path / 'cheaper.json')]
    dense = plot_tradeoff.load_results(dense_file)[0]
    figure = plot_tradeoff.plot(runs, ['a', 'b'], str(tmp_path / 'again.png'), dense)
    axes = {ax.get_xlabel().split(' (')[0]: ax for ax in figure.axes}
    measured = axes['measured backbone latency, median per image']
    las_line, = [line for line in measured.lines if line.get_marker() == 'o'
                 and line.get_label() == 'LAS bbox AP']
    assert list(las_line.get_xdata()) == pytest.approx(
        sorted(m['las/measured_latency_median_ms'] for m in runs))
    squares = [(list(line.get_xdata()), list(line.get_ydata())) for line in measured.lines
               if line.get_marker() == 's']
    assert ([dense['las/measured_latency_median_ms']], [dense['coco/bbox_mAP']]) in squares
    # on the predicted axis the dense point is the LAS runs' static backbone, its own too
    predicted = axes['predicted backbone latency']
    static = [line.get_xdata()[0] for line in predicted.lines if line.get_marker() == 's']
    assert static and static[0] == pytest.approx(dense['las/pred_latency_ms'], rel=1e-6)


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


@pytest.mark.parametrize('config', CONFIGS)
def test_the_mask_tools_take_every_las_config_and_refuse_a_dense_one(config):
    """Every config of the repository, without a checkpoint: a LAS one (named *las*) passes
    the checks of tools/test.py --las-show-masks and tools/vis_masks.py, and the block names
    read from it are those of the backbone it builds; a dense one is refused, naming its
    backbone."""
    from mmengine.config import Config
    from mmdet.registry import MODELS
    from lasnet_mmdet.visualization import choose_panels, las_block_names
    test_tool = load_tool('test')
    cfg = Config.fromfile(osp.join(REPO, config))
    if 'las' not in osp.basename(config):
        backbone = cfg.model.backbone.type
        with pytest.raises(ValueError, match=f"{backbone!r}, not a LAS backbone"):
            test_tool.show_las_masks(cfg)
        return
    test_tool.show_las_masks(cfg)  # as tools/test.py --show-dir --las-show-masks
    assert cfg.default_hooks.visualization.type == 'LASDetVisualizationHook'
    panels = choose_panels(las_block_names(cfg.model.backbone))  # as tools/vis_masks.py
    with torch.device('meta'):  # no memory, no weights: only the module structure
        backbone = MODELS.build(cfg.model.backbone)
    assert [name for names in panels.values() for name in names] == \
        [name for name, _ in backbone.las_blocks()]
    assert list(panels) == backbone.res_layers
