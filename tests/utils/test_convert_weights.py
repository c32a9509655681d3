"""tools/convert_lasnet_weights.py on checkpoints in LASNet's and torchvision's layouts."""
import argparse
import os
import subprocess
import sys

import pytest
import torch
from mmdet.models.backbones import ResNet

from lasnet_mmdet.models import LASResNet
from lasnet_mmdet.utils import convert_state_dict, extract_state_dict
from conftest import REPO


def lasnet_imagenet_checkpoint(depth, prefix='module.'):
    """What LASNet's ImageNet training saves: state_dict (+ fc) and training metadata."""
    state_dict = LASResNet(depth=depth).state_dict()
    state_dict['fc.weight'] = torch.randn(1000, 2048)
    state_dict['fc.bias'] = torch.randn(1000)
    return {'state_dict': {prefix + k: v for k, v in state_dict.items()}, 'epoch': 100,
            'best_acc1': 78.3, 'optimizer': {'state': {}, 'param_groups': []},
            'args': argparse.Namespace(arch=f'dyn_resnet{depth}', lr=0.1), 'temp': 0.1}


def convert_cli(src, dst, depth):
    return subprocess.run([sys.executable, 'tools/convert_lasnet_weights.py', str(src),
                           str(dst), '--depth', str(depth)], cwd=REPO, capture_output=True,
                          text=True, env={**os.environ, 'PYTHONPATH': REPO})


def test_lasnet_checkpoint_loads_cleanly(tmp_path):
    src, dst = tmp_path / 'lasnet.pth.tar', tmp_path / 'backbone.pth'
    checkpoint = lasnet_imagenet_checkpoint(50)
    torch.save(checkpoint, src)
    proc = convert_cli(src, dst, 50)
    assert proc.returncode == 0, proc.stderr
    converted = torch.load(dst)['state_dict']
    model = LASResNet(depth=50)
    model.load_state_dict(converted, strict=True)  # no missing, no unexpected key
    assert not any(k.startswith('fc.') for k in converted)
    source = checkpoint['state_dict']['module.layer2.1.masker.conv2.weight']
    assert torch.equal(model.layer2[1].masker.conv2.weight, source)


def test_pretrained_init_cfg_reads_converted_checkpoint(tmp_path):
    dst = tmp_path / 'backbone.pth'
    torch.save(lasnet_imagenet_checkpoint(50, prefix=''), tmp_path / 'src.pth')
    assert convert_cli(tmp_path / 'src.pth', dst, 50).returncode == 0
    model = LASResNet(depth=50, init_cfg=dict(type='Pretrained', checkpoint=str(dst)))
    model.init_weights()
    expected = torch.load(dst)['state_dict']
    for key, value in model.state_dict().items():
        assert torch.equal(value, expected[key]), key


def test_torchvision_resnet_only_maskers_missing(tmp_path):
    state_dict = ResNet(depth=101).state_dict()  # torchvision's key names
    state_dict['fc.weight'] = torch.randn(1000, 2048)
    state_dict['fc.bias'] = torch.randn(1000)
    src, dst = tmp_path / 'resnet101.pth', tmp_path / 'backbone.pth'
    torch.save(state_dict, src)
    proc = convert_cli(src, dst, 101)
    assert proc.returncode == 0, proc.stderr
    assert '66 masker tensors' in proc.stdout
    missing, unexpected = LASResNet(depth=101).load_state_dict(torch.load(dst)['state_dict'],
                                                              strict=False)
    assert not unexpected
    assert missing and all('.masker.conv2.' in key for key in missing)


def test_wrong_depth_names_the_key(tmp_path):
    torch.save(lasnet_imagenet_checkpoint(101), tmp_path / 'r101.pth')
    proc = convert_cli(tmp_path / 'r101.pth', tmp_path / 'out.pth', 50)
    assert proc.returncode != 0
    assert "unexpected key 'layer3.6." in proc.stderr
    assert not (tmp_path / 'out.pth').exists()


def test_shape_mismatch_names_the_key():
    state_dict = extract_state_dict(lasnet_imagenet_checkpoint(50))
    state_dict['layer1.0.conv2.weight'] = torch.zeros(64, 64, 1, 1)
    with pytest.raises(ValueError, match=r"layer1\.0\.conv2\.weight.*\(64, 64, 1, 1\)"):
        convert_state_dict(state_dict, 50)


def test_missing_backbone_key_is_named():
    state_dict = extract_state_dict(lasnet_imagenet_checkpoint(50))
    del state_dict['layer4.2.bn3.running_var']
    with pytest.raises(KeyError, match='layer4.2.bn3.running_var'):
        convert_state_dict(state_dict, 50)


def test_refuses_to_overwrite_the_source(tmp_path):
    src = tmp_path / 'lasnet.pth.tar'
    torch.save(lasnet_imagenet_checkpoint(50), src)
    before = src.read_bytes()
    for dst in (src, tmp_path / '.' / 'lasnet.pth.tar'):
        proc = convert_cli(src, dst, 50)
        assert proc.returncode != 0 and 'refusing to overwrite' in proc.stderr
    assert src.read_bytes() == before


@pytest.mark.parametrize('content', [b'', b'not a checkpoint\n', b'hello\n', b'abc\n',
                                     b'just some text\n'])
def test_unreadable_source_is_named(tmp_path, content):
    src = tmp_path / 'bad.pth'
    src.write_bytes(content)
    proc = convert_cli(src, tmp_path / 'out.pth', 50)
    assert proc.returncode != 0
    assert str(src) in proc.stderr and 'Traceback' not in proc.stderr
    assert not (tmp_path / 'out.pth').exists()


@pytest.mark.parametrize('content', [b'hello\n', b'abc\n', b'just some text\n'])
def test_unreadable_source_error_keeps_its_cause(tmp_path, content):
    from lasnet_mmdet.utils.convert import load_source
    src = tmp_path / 'in.txt'
    src.write_bytes(content)
    with pytest.raises(ValueError, match='in.txt') as error:
        load_source(str(src))
    assert error.value.__cause__ is not None


def test_interrupted_write_leaves_no_partial_file(tmp_path):
    """A write that fails midway (file size limit, as a full disk) leaves the old DST intact
    and no temporary file behind."""
    src, dst = tmp_path / 'lasnet.pth.tar', tmp_path / 'out.pth'
    torch.save(lasnet_imagenet_checkpoint(50), src)
    dst.write_bytes(b'previous output')
    cmd = (f'ulimit -f 1024; exec {sys.executable} tools/convert_lasnet_weights.py '
           f'{src} {dst} --depth 50')
    proc = subprocess.run(['bash', '-c', cmd], cwd=REPO, capture_output=True, text=True,
                          env={**os.environ, 'PYTHONPATH': REPO})
    assert proc.returncode != 0
    assert dst.read_bytes() == b'previous output'
    assert sorted(p.name for p in tmp_path.iterdir()) == ['lasnet.pth.tar', 'out.pth']
