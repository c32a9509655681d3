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
