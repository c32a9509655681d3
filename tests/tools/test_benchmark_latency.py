"""tools/benchmark_latency.py end to end on the CPU at tiny sizes (timings are not checked),
and its argument checks, which must fail before any model is built."""
import json
import os
import subprocess
import sys

import pytest

from conftest import REPO, as_cli, sample_data_options

TOOL = 'tools/benchmark_latency.py'
CONFIG = 'configs/lasnet_r101_fpn.py'
DEMO = 'configs/demo/mask-rcnn_las-r50-4421_fpn_sample.py'


def run_tool(*args, config=CONFIG):
    return subprocess.run([sys.executable, TOOL, config, '--device', 'cpu', *args], cwd=REPO,
                          capture_output=True, text=True, env={**os.environ, 'PYTHONPATH': REPO})


def test_backbone_detector_and_stream(tmp_path):
    out = tmp_path / 'bench.json'
    proc = run_tool('--depth', '50', '--shape', '64', '96', '--rate', '0.5', '--granularity',
                    '4', '4', '7', '1', '--warmup', '0', '--repeats', '1', '--rates', '0.3',
                    '--detector', '--stream', '--stream-scale', '0.07', '--json', str(out),
                    # few proposals: the RoI head on 1000 random boxes takes seconds on a CPU
                    '--cfg-options', 'model.test_cfg.rpn.nms_pre=50',
                    'model.test_cfg.rpn.max_per_img=10')
    assert proc.returncode == 0, proc.stderr[-3000:]
    res = json.loads(out.read_text())
    assert res['granularity'] == [4, 4, 7, 1] and res['shape'] == [64, 96] and res['depth'] == 50
    (bb, ) = res['backbone']
    # Dense baselines on the CPU: mmdet's module and channels-last BN-folded; LAS sparse/masked.
    assert set(bb['ms']) == {'nchw', 'cl_folded', 'las_sparse', 'las_masked'}
    assert bb['best_dense'] in ('nchw', 'cl_folded') and bb['las'] == 'las_sparse'
    assert bb['ratio'] == bb['ms']['las_sparse'] / min(bb['ms']['nchw'], bb['ms']['cl_folded'])
    assert 0 < bb['macs_ratio'] < 1
    assert [c['rate'] for c in bb['curve']] == [0.3]
    assert bb['curve'][0]['macs_ratio'] < bb['macs_ratio']
    (det, ) = res['detector']
    assert det['dtype'] == 'fp32' and det['batch'] == 1 and set(det['ms']) == {'dense', 'las'}
    (stream, ) = res['stream']
    assert [s['size'] for s in stream['sizes']] == [[64, 96], [96, 64], [64, 64]]
    for s in stream['sizes']:
        assert set(s['cold_ms']) == set(s['warm_ms']) == {'dense', 'las'}
    assert stream['warm_ratio'] == stream['warm_total_ms']['las'] / stream['warm_total_ms']['dense']
    assert 'fastest dense' in proc.stdout and 'predict()' in proc.stdout
    assert 'warm total' in proc.stdout


def execute_everywhere_checkpoint(path):
    """A checkpoint of the demo detector whose maskers execute every patch."""
    import torch
    from mmengine.config import Config
    from mmengine.registry import init_default_scope
    from mmdet.registry import MODELS

    import lasnet_mmdet  # noqa: F401
    init_default_scope('mmdet')
    model = MODELS.build(Config.fromfile(os.path.join(REPO, DEMO)).model)
    with torch.no_grad():
        for _, block in model.backbone.las_blocks():
            block.masker.conv2.weight.zero_()
            block.masker.conv2.bias.copy_(torch.tensor([1e4, -1e4]))  # execute >= skip
    torch.save({'state_dict': model.state_dict(), 'meta': {}}, path)


def test_test_images_with_a_checkpoint(sample_coco, tmp_path):
    ckpt, out = tmp_path / 'all_active.pth', tmp_path / 'bench.json'
    execute_everywhere_checkpoint(ckpt)
    options = sample_data_options(sample_coco)
    options.update({'model.test_cfg.rpn.nms_pre': 50, 'model.test_cfg.rpn.max_per_img': 10})
    proc = run_tool('--no-backbone', '--test-images', '2', '--checkpoint', str(ckpt),
                    '--warmup', '0', '--repeats', '1', '--json', str(out),
                    '--cfg-options', *as_cli(options), config=DEMO)
    assert proc.returncode == 0, proc.stderr[-3000:]
    res = json.loads(out.read_text())
    (t, ) = res['test_images']
    assert res['checkpoint'] == str(ckpt) and t['images'] == 2 and t['batch'] == 1
    assert set(t['ms']) == set(t['backbone_ms']) == {'dense', 'las', 'las_masked'}
    assert t['ratio'] == t['ms']['las'] / t['ms']['dense']
    assert t['ratio_vs_masked'] == t['ms']['las'] / t['ms']['las_masked']
    assert t['free_backbone_ratio'] == pytest.approx(
        1 - t['backbone_ms']['dense'] / t['ms']['dense'])
    # The checkpoint's maskers decided (every patch executes), not random weights or pins.
    assert t['macs_ratio'] >= 1.0
    d = t['detections_per_image']
    assert 0 <= d['las'] <= 10 * 3  # 10 proposals x 3 classes
    assert d['las'] == d['las_masked']  # the sparse path computes the dense-masked outputs
    assert 'a free backbone would give' in proc.stdout


def test_test_images_beyond_the_test_set_are_refused(sample_coco):
    from mmengine.config import Config

    from lasnet_mmdet.benchmark import dataset_batches
    cfg = Config.fromfile(os.path.join(REPO, DEMO))
    cfg.merge_from_dict(sample_data_options(sample_coco))  # 4 val images
    assert len(dataset_batches(cfg, 1, 'cpu')) == 1
    with pytest.raises(ValueError, match='the test set has 4 images, fewer than the 5'):
        dataset_batches(cfg, 5, 'cpu')


def test_padded_test_sizes():
    from lasnet_mmdet.benchmark import padded_test_sizes
    sizes = padded_test_sizes()
    assert len(sizes) == 8 and (800, 1216) in sizes
    for h, w in sizes:
        assert h % 32 == 0 and w % 32 == 0 and min(h, w) <= 800 + 31 and max(h, w) <= 1333 + 31


def test_fold_resnet_equals_the_module():
    import torch
    from mmdet.models.backbones import ResNet

    from lasnet_mmdet.benchmark import fold_resnet
    torch.manual_seed(0)
    dense = ResNet(50)
    for m in dense.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 1.5)
    dense.eval()
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        ref, out = dense(x), fold_resnet(dense)(x.contiguous(memory_format=torch.channels_last))
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in fold_resnet(dense).modules())
    for o, r in zip(out, ref):
        torch.testing.assert_close(o, r, rtol=1e-4, atol=1e-4)


def parse(*args, config=CONFIG):
    """The tool's argument parsing, in this process (bad arguments exit before any work)."""
    import importlib.util
    spec = importlib.util.spec_from_file_location('benchmark_latency', os.path.join(REPO, TOOL))
    tool = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tool)
    cwd = os.getcwd()
    os.chdir(REPO)
    try:
        return tool.parse_args([config, '--device', 'cpu', *args])
    finally:
        os.chdir(cwd)


@pytest.mark.parametrize('args,message', [
    (['--batch', '0'], '--batch must be >= 1, got 0'),
    (['--batch', '1', '-2'], '--batch must be >= 1, got -2'),
    (['--repeats', '0'], '--repeats must be >= 1, got 0'),
    (['--json', 'missing_dir/x.json'], 'missing_dir'),
    (['--rate', '1.5'], '--rate must be in [0, 1], got 1.5'),
    (['--dtype', 'fp16'], '--dtype fp16 is not supported on --device cpu'),
    (['--detector', '--dtype', 'bf16'], 'use --dtype fp32 on the CPU'),
    (['--compile'], '--compile needs --device cuda'),
    (['--stream-scale', '0'], '--stream-scale must be > 0, got 0'),
    (['--rate', 'nan'], '--rate must be in [0, 1], got nan'),
    (['--rates', '0.2', '-1'], '--rates must be in [0, 1], got -1.0'),
    (['--stream-scale', 'inf'], '--stream-scale must be a finite number, got inf'),
    (['--stream-scale', 'nan'], '--stream-scale must be a finite number, got nan'),
    (['--granularity', '4', '4', '2'], '--granularity needs one S per stage (4), got [4, 4, 2]'),
    (['--granularity', '4', '4', '2', '1', '1'], 'got [4, 4, 2, 1, 1]'),
    (['--granularity', '4', '4', '2', '0'], '--granularity values must be >= 1'),
    (['--json', '/proc/x.json'], '--json /proc/x.json: cannot write in /proc'),
    (['--test-images', '0'], '--test-images must be >= 1, got 0'),
    (['--detector', '--checkpoint', 'nope.pth'], "--checkpoint 'nope.pth' does not exist"),
    (['--checkpoint', 'README.md'], '--checkpoint applies to --detector, --stream and '
     '--test-images'),
    (['--no-backbone'], '--no-backbone leaves nothing to do'),
])
def test_bad_arguments_fail_at_once(args, message, capsys):
    with pytest.raises(SystemExit) as exit_info:
        parse(*args)
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err


def test_missing_config_fails_at_once(capsys):
    with pytest.raises(SystemExit):
        parse(config='configs/nope.py')
    assert 'configs/nope.py' in capsys.readouterr().err
    assert parse('--batch', '1', '8', '--dtype', 'fp32', 'bf16').batch == [1, 8]


def test_json_must_be_a_writable_file(tmp_path, capsys):
    with pytest.raises(SystemExit):
        parse('--json', str(tmp_path))
    assert f'--json {tmp_path}: is a directory' in capsys.readouterr().err
    out = tmp_path / 'bench.json'
    assert parse('--json', str(out)).json == str(out)
    assert list(tmp_path.iterdir()) == []  # the check leaves nothing behind
    assert parse('--granularity', '4', '4', '7', '1').granularity == [4, 4, 7, 1]


def test_time_by_kind_keeps_graph_replays_among_themselves():
    """Graph replays are timed interleaved with each other only, never right after an eager
    call (those slowed them on the H100); every variant is timed and keeps its name."""
    from lasnet_mmdet.benchmark import time_by_kind
    calls = []
    fns = {name: (lambda name=name: calls.append(name))
           for name in ('nchw', 'nchw_graph', 'las_graph', 'las_eager')}
    ms = time_by_kind(fns, 'cpu', warmup=1, repeats=3)
    assert list(ms) == list(fns) and all(t >= 0 for t in ms.values())
    graph_calls = [i for i, name in enumerate(calls) if name.endswith('_graph')]
    assert graph_calls == list(range(len(graph_calls))) == list(range(8))
    assert sorted(calls[8:]) == sorted(['nchw', 'las_eager'] * 4)
