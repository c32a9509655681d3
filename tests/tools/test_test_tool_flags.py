"""tools/test.py's LAS flags: --las-per-image, --las-results, --las-show-masks, --fp16, the
latency of a dense detector, and its argument checks, on a small trained checkpoint."""
import glob
import json
import os.path as osp
import re

import mmcv
import pytest
import torch

from visualization.las_test_checkpoint import (DEMO, DENSE, dense_test_run, las_test_run,
                                               load_tool)


@pytest.fixture(scope='module')
def test_run(tmp_path_factory, sample_coco):
    return las_test_run(tmp_path_factory, sample_coco)


@pytest.fixture
def fake_checkpoint(tmp_path):
    """An existing checkpoint path, for the checks made before the Runner loads it."""
    path = tmp_path / 'x.pth'
    path.write_bytes(b'')
    return str(path)


def test_per_image_records_average_to_the_report(test_run):
    folder, output = test_run
    with open(osp.join(folder, 'per_image.json')) as f:
        per_image = json.load(f)
    with open(osp.join(folder, 'results.json')) as f:
        metrics = json.load(f)['metrics']
    images = per_image['images']
    assert per_image['num_images'] == len(images) == 3
    assert len({image['img_id'] for image in images}) == 3
    assert all(osp.isfile(image['img_path']) for image in images)

    def mean(key):
        return sum(image[key] for image in images) / len(images)

    for key, metric in (('act_rate', 'las/act_rate'), ('gmacs_dynamic', 'las/gmacs_dynamic'),
                        ('gmacs_dense', 'las/gmacs_dense'),
                        ('pred_latency_ms', 'las/pred_latency_ms')):
        assert mean(key) == pytest.approx(metrics[metric], rel=1e-6), key
    # the measured mean leaves the warm-up batch (the first, batch size 1) out
    assert [image['warmup'] for image in images] == [True, False, False]
    timed = [image['measured_latency_ms'] for image in images[1:]]
    assert sum(timed) / 2 == pytest.approx(metrics['las/measured_latency_ms'], rel=1e-6)
    assert metrics['las/measured_latency_median_ms'] == pytest.approx(sum(timed) / 2, rel=1e-6)
    rates = sorted(image['act_rate'] for image in images)
    assert metrics['las/act_rate_min'] == pytest.approx(rates[0])
    assert metrics['las/act_rate_max'] == pytest.approx(rates[-1])
    assert metrics['las/act_rate_median'] == pytest.approx(rates[1])
    assert rates[0] < rates[-1]  # the images differ: a spread to report
    # each block's printed mean is the mean of its per-image rates
    block = sum(image['block_rates']['layer3.5'] for image in images) / 3
    printed = re.search(r'^layer3\.5\s+([0-9.]+)$', output, re.M)
    assert printed, 'no per-block line for layer3.5 in the report'
    # printed with 3 decimals: equal up to the rounding of the last one
    assert abs(float(printed.group(1)) - block) <= 5e-4 + 1e-9
    assert 'act. rate across images: min' in output
    assert 'coco/bbox_mAP' in metrics and 'coco/segm_mAP' in metrics
    # The ratio is the predicted over the static latency; whether it is below 1 depends on
    # this one-iteration checkpoint's rates (0.5-0.66 here, near v100's break-even at 128 px).
    ratio = mean('pred_latency_ms') / mean('static_latency_ms')
    assert metrics['las/pred_latency_ratio'] == pytest.approx(ratio, rel=1e-6)
    assert all(0 < image['pred_latency_ms'] < 2 * image['static_latency_ms'] for image in images)


def test_show_dir_with_masks_adds_the_overlays(test_run):
    folder, _ = test_run
    pictures = glob.glob(osp.join(folder, '*', 'shown', '*.png'))
    assert len(pictures) == 3
    # mmdet's ground truth | prediction picture (2 x 128 px wide) plus 4 stage panels
    picture = mmcv.imread(pictures[0])
    assert picture.shape[0] >= 256 and picture.shape[1] >= 6 * 256


def test_fp16_and_show_masks_go_into_the_config(tmp_path, fake_checkpoint):
    test_tool = load_tool('test')
    cfg = test_tool.build_config(test_tool.parse_args(
        [DEMO, fake_checkpoint, '--fp16', '--show-dir', 'shown', '--las-show-masks',
         '--las-show-blocks', 'layer3.0', '--las-per-image', str(tmp_path / 'p.json')]))
    assert cfg.test_cfg.fp16 is True
    assert cfg.default_hooks.visualization.type == 'LASDetVisualizationHook'
    assert cfg.default_hooks.visualization.blocks == ['layer3.0']
    reports = [hook for hook in cfg.custom_hooks if hook['type'] == 'LASReportHook']
    assert reports and reports[0]['per_image_out'] == str(tmp_path / 'p.json')
    plain = test_tool.build_config(test_tool.parse_args([DEMO, fake_checkpoint]))
    assert not plain.test_cfg.get('fp16', False)


@pytest.mark.parametrize('argv, message', [
    (['--out', 'results.json'], "'results.json'"),
    (['--las-per-image', 'rates.txt'], "'rates.txt'"),
    (['--las-results', 'metrics.pkl'], "'metrics.pkl'"),
    (['--las-show-masks'], '--show-dir'),
    (['--out', 'no_such_dir/r.pkl'], "no such folder 'no_such_dir'"),
])
def test_bad_arguments_fail_before_the_runner(argv, message, tmp_path, capsys,
                                              fake_checkpoint):
    test_tool = load_tool('test')
    work_dir = tmp_path / 'work'
    with pytest.raises(SystemExit):
        test_tool.main([DEMO, fake_checkpoint, '--work-dir', str(work_dir), *argv])
    assert message in capsys.readouterr().err
    assert not work_dir.exists()  # nothing created


def test_missing_checkpoint_fails_before_the_runner(tmp_path, capsys):
    test_tool = load_tool('test')
    missing = str(tmp_path / 'missing.pth')
    with pytest.raises(SystemExit):
        test_tool.main([DEMO, missing, '--work-dir', str(tmp_path / 'work')])
    assert f'no such checkpoint file: {missing!r}' in capsys.readouterr().err
    assert not (tmp_path / 'work').exists()
    # a URL is mmengine's to fetch: not checked here
    args = test_tool.parse_args([DEMO, 'https://example.com/x.pth', '--out', 'r.pkl'])
    assert args.checkpoint == 'https://example.com/x.pth'


def test_unknown_mask_block_fails_before_the_runner(tmp_path, fake_checkpoint):
    test_tool = load_tool('test')
    with pytest.raises(SystemExit, match="unknown block 'layer3.99'"):
        test_tool.main([DEMO, fake_checkpoint, '--work-dir', str(tmp_path / 'work'), '--show-dir',
                        'shown', '--las-show-masks', '--las-show-blocks', 'layer3.99'])
    assert not (tmp_path / 'work').exists()


def test_records_of_several_ranks_come_back_in_dataset_order():
    from lasnet_mmdet.engine.hooks.las_report_hook import interleave_ranks
    # 5 images over 2 ranks: DefaultSampler pads to 6 (image 0 again) and deals them out.
    assert interleave_ranks([[0, 2, 4], [1, 3, 0]], 5) == [0, 1, 2, 3, 4]
    assert interleave_ranks([[0, 1, 2]], 3) == [0, 1, 2]
    assert interleave_ranks([[0, 3], [1], [2]], 4) == [0, 1, 2, 3]  # uneven, unpadded


@pytest.mark.skipif(torch.cuda.is_available(), reason='the CPU refusal')
def test_fp16_on_cpu_is_refused_clearly(tmp_path, fake_checkpoint):
    test_tool = load_tool('test')
    with pytest.raises(SystemExit, match='--fp16 needs CUDA'):
        test_tool.main([DEMO, fake_checkpoint, '--work-dir', str(tmp_path / 'work'), '--fp16'])
    assert not (tmp_path / 'work').exists()


def test_a_dense_detector_is_timed_and_predicted_like_a_las_one(test_run, tmp_path_factory,
                                                                sample_coco):
    results, output = dense_test_run(tmp_path_factory, sample_coco)
    with open(results) as f:
        dense = json.load(f)
    with open(osp.join(test_run[0], 'results.json')) as f:
        las = json.load(f)['metrics']
    metrics = dense['metrics']
    assert dense['latency_profile'] == 'v100' and 'coco/bbox_mAP' in metrics
    assert 'LAS report' not in output and 'backbone latency over 2 images' in output
    assert 'measured backbone latency per image: mean' in output
    # timed as the LAS backbone is: the warm-up batch left out of the mean, and the median
    assert metrics['las/measured_latency_ms'] > 0
    assert metrics['las/measured_latency_median_ms'] > 0
    # the predicted static ResNet-50 is the LAS run's static reference on the same images
    static = las['las/pred_latency_ms'] / las['las/pred_latency_ratio']
    assert metrics['las/pred_latency_ms'] == pytest.approx(static, rel=1e-6)
    assert metrics['las/pred_latency_ratio'] == 1.0
    assert not any(key.startswith('las/act_rate') or key.startswith('las/gmacs')
                   for key in metrics)


@pytest.mark.parametrize('options, message', [
    (['model.backbone.depth=18'], 'ResNet depths [50, 101, 152], got depth=18'),
    (['model.backbone.deep_stem=True'], 'deep_stem=False, got deep_stem=True'),
    (['model.backbone.type=ResNeXt'], "not 'ResNeXt'"),
])
def test_a_dense_backbone_the_predictor_does_not_model_is_refused(options, message, tmp_path,
                                                                  fake_checkpoint):
    test_tool = load_tool('test')
    with pytest.raises(SystemExit, match=re.escape(message)):
        test_tool.main([DENSE, fake_checkpoint, '--work-dir', str(tmp_path / 'work'),
                        '--latency-profile', 'v100', '--las-results', str(tmp_path / 'r.json'),
                        '--cfg-options', *options])
    assert not (tmp_path / 'work').exists() and not (tmp_path / 'r.json').exists()
    # measuring alone needs no model of the backbone
    cfg = test_tool.build_config(test_tool.parse_args(
        [DENSE, fake_checkpoint, '--measure-latency', '--cfg-options', *options]))
    assert [hook for hook in cfg.custom_hooks if hook['type'] == 'BackboneLatencyHook'] == \
        [dict(type='BackboneLatencyHook', measure=True)]
