"""A small LAS Mask R-CNN checkpoint and one tools/test.py run on it, made once per session.

Shared by the visualization and tool tests (cached in pytest's session folder). The
checkpoint is one iteration of the demo config through tools/train.py on the generated sample
set; its maskers' biases are then set equal (execute = skip = 0), so the real eval-mode
decisions are mixed and differ from image to image (a few iterations from the execute-bias
init would execute everything, and a test of the masks could not fail).
"""
import os
import os.path as osp
import subprocess
import sys

import torch

from conftest import REPO, as_cli, resize_options, sample_data_options

DEMO = 'configs/demo/mask-rcnn_las-r50-4421_fpn_sample.py'
DENSE = 'configs/demo/mask-rcnn_r50_fpn_sample-256.py'  # mmdet's ResNet-50, 256 px


def run_tool(args, check=True):
    proc = subprocess.run([sys.executable, *args], cwd=REPO, capture_output=True, text=True,
                          env={**os.environ, 'PYTHONPATH': REPO})
    output = proc.stdout + proc.stderr
    if check:
        assert proc.returncode == 0, output[-5000:]
    return proc.returncode, output


def demo_cli_options(sample_coco):
    """``--cfg-options`` pointing the demo config at the sample set, one quick epoch."""
    options = sample_data_options(sample_coco)
    # One iteration (two images) of training, no validation: a Runner-written checkpoint;
    # three test images (each costs seconds on a shared 2-core machine).
    options.update({'train_cfg.max_epochs': 1, 'train_cfg.val_begin': 2,
                    'train_dataloader.dataset.indices': 2,
                    'test_dataloader.dataset.indices': 3, 'default_hooks.logger.interval': 1})
    return as_cli(options)


def mixed_mask_checkpoint(tmp_path_factory, sample_coco):
    folder = tmp_path_factory.getbasetemp() / 'las_mixed_masks'
    path = folder / 'mixed_masks.pth'
    if not path.exists():
        run_tool(['tools/train.py', DEMO, '--work-dir', str(folder),
                  '--cfg-options', *demo_cli_options(sample_coco)])
        checkpoint = torch.load(folder / 'epoch_1.pth', map_location='cpu', weights_only=False)
        for key, value in checkpoint['state_dict'].items():
            if key.endswith('masker.conv2.bias'):
                value.zero_()
        torch.save(checkpoint, folder / 'tmp.pth')
        os.replace(folder / 'tmp.pth', path)
    return str(path)


def las_test_run(tmp_path_factory, sample_coco):
    """``(folder, output)`` of tools/test.py with the LAS flags on that checkpoint: folder
    holds results.json (--las-results), per_image.json (--las-per-image) and the pictures
    (--show-dir shown --las-show-masks)."""
    checkpoint = mixed_mask_checkpoint(tmp_path_factory, sample_coco)
    folder = tmp_path_factory.getbasetemp() / 'las_test_run'
    output = _run_once(folder, [
        'tools/test.py', DEMO, checkpoint, '--work-dir', str(folder),
        '--las-results', str(folder / 'results.json'),
        '--las-per-image', str(folder / 'per_image.json'), '--las-per-block',
        '--latency-profile', 'v100', '--measure-latency',
        '--show-dir', 'shown', '--las-show-masks',
        '--cfg-options', *demo_cli_options(sample_coco)])
    return str(folder), output


def _run_once(folder, args):
    """The output of ``run_tool(args)``, run once per session (kept in ``folder``)."""
    log = folder / 'output.txt'
    if not log.exists():
        _, output = run_tool(args)
        log.write_text(output)
    return log.read_text()


def dense_test_run(tmp_path_factory, sample_coco):
    """``(results.json path, output)`` of tools/test.py --measure-latency --latency-profile
    on the dense demo detector, at the LAS run's 128 px, on its first two images. Its weights
    are the LAS checkpoint's: a LASResNet is a ResNet plus maskers, which the Runner's
    non-strict load leaves out."""
    from mmengine.config import Config
    checkpoint = mixed_mask_checkpoint(tmp_path_factory, sample_coco)
    folder = tmp_path_factory.getbasetemp() / 'dense_test_run'
    output = _run_once(folder, [
        'tools/test.py', DENSE, checkpoint, '--work-dir', str(folder),
        '--las-results', str(folder / 'results.json'),
        '--latency-profile', 'v100', '--measure-latency',
        '--cfg-options', *demo_cli_options(sample_coco),
        *as_cli(resize_options(Config.fromfile(osp.join(REPO, DENSE)), 128)),
        'test_dataloader.dataset.indices=2'])  # a warm-up and a timed image
    return str(folder / 'results.json'), output


def load_tool(name):
    """A tool of tools/ as a module (to call its functions in-process)."""
    import importlib.util
    spec = importlib.util.spec_from_file_location(f'tool_{name}',
                                                  osp.join(REPO, 'tools', f'{name}.py'))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
