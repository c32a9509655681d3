"""Loading the checkpoints mmengine writes, under torch >= 2.6.

torch 2.6 made ``torch.load(weights_only=True)`` the default; mmengine 0.10.7 calls
``torch.load`` without the argument, and its checkpoints hold more than tensors (message hub,
optimizer state, numpy scalars in meta), so ``--resume`` and ``load_from`` fail. We re-register
mmengine's loader for local paths with ``weights_only=False``: local checkpoints are the
user's own files, and this is what torch < 2.6 did for every file.
"""
import os.path as osp

import torch
from mmengine.runner.checkpoint import CheckpointLoader


def load_local_checkpoint(filename, map_location=None):
    """mmengine's ``load_from_local``, with ``weights_only=False``."""
    filename = osp.expanduser(filename)
    if not osp.isfile(filename):
        raise FileNotFoundError(f'{filename} can not be found.')
    return torch.load(filename, map_location=map_location, weights_only=False)


def register_checkpoint_loader():
    CheckpointLoader.register_scheme(prefixes='', force=True)(load_local_checkpoint)
