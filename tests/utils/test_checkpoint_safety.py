"""Checkpoints load through torch's safe loader: Runner-written ones work (tested through
tools/train.py --resume and tools/test.py in tests/tools), a malicious pickle does not run."""
import os
import subprocess
import sys

import numpy as np
import torch
from mmengine.logging.history_buffer import HistoryBuffer

from conftest import REPO


class Payload:
    """Unpickling this runs ``touch <marker>``: what a hostile checkpoint would do."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f'touch {self.marker}', )


def load_in_subprocess(path, setup=True):
    """mmengine's own loader (as load_from / --resume use it) after lasnet_mmdet.setup_env."""
    code = ('import lasnet_mmdet; ' + ('lasnet_mmdet.setup_env(); ' if setup else '')
            + 'from mmengine.runner.checkpoint import CheckpointLoader; '
            f'ckpt = CheckpointLoader.load_checkpoint({str(path)!r}, map_location="cpu"); '
            'print(sorted(ckpt))')
    return subprocess.run([sys.executable, '-c', code], capture_output=True, text=True,
                          cwd=REPO, env={**os.environ, 'PYTHONPATH': REPO})


def test_malicious_checkpoint_does_not_execute(tmp_path):
    marker = tmp_path / 'pwned'
    path = tmp_path / 'evil.pth'
    torch.save({'state_dict': {'w': torch.zeros(1)}, 'meta': Payload(marker)}, path)
    proc = load_in_subprocess(path)
    assert proc.returncode != 0
    assert 'Weights only load failed' in proc.stderr or 'Unsupported global' in proc.stderr
    assert not marker.exists()


def test_runner_style_checkpoint_loads_safely(tmp_path):
    """The non-tensor types mmengine's Runner writes (message hub, numpy meta) load."""
    buffer = HistoryBuffer()
    buffer.update(np.float64(0.5))
    path = tmp_path / 'epoch_1.pth'
    torch.save({'meta': {'epoch': 1, 'seed': np.int64(3), 'loss': np.float32(0.25),
                         'hist': np.arange(3.0)},
                'state_dict': {'w': torch.ones(2)},
                'message_hub': {'log_scalars': {'train/loss': buffer}}}, path)
    proc = load_in_subprocess(path)
    assert proc.returncode == 0, proc.stderr
    assert "'message_hub', 'meta', 'state_dict'" in proc.stdout
    # Without setup_env, torch's safe loader refuses it (what the setup is for).
    proc = load_in_subprocess(path, setup=False)
    assert proc.returncode != 0 and 'Weights only load failed' in proc.stderr


def test_numpy1_runner_checkpoint_loads_under_numpy2(tmp_path):
    """Checkpoints written under numpy 1.x name ``numpy.core.multiarray.*`` (numpy 2 moved it
    to ``numpy._core``): the safe loader accepts those names too."""
    import zipfile

    from lasnet_mmdet.utils import load_local_checkpoint
    new, old = tmp_path / 'numpy2.pth', tmp_path / 'numpy1.pth'
    torch.save({'meta': {'seed': np.int64(3), 'hist': np.arange(3.0)},
                'state_dict': {'w': torch.ones(2)}}, new)
    with zipfile.ZipFile(new) as src, zipfile.ZipFile(old, 'w') as dst:
        for info in src.infolist():
            data = src.read(info.filename)
            if info.filename.endswith('data.pkl'):  # the names a numpy 1.x pickle holds
                data = data.replace(b'numpy._core.multiarray', b'numpy.core.multiarray')
                assert b'numpy.core.multiarray\nscalar' in data
                assert b'numpy.core.multiarray\n_reconstruct' in data
            dst.writestr(info, data)
    ckpt = load_local_checkpoint(str(old))
    assert ckpt['meta']['seed'] == 3 and ckpt['meta']['seed'].dtype == np.int64
    assert np.array_equal(ckpt['meta']['hist'], np.arange(3.0))
    assert torch.equal(ckpt['state_dict']['w'], torch.ones(2))
