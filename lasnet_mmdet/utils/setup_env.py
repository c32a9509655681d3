"""Explicit, documented environment setup: importing ``lasnet_mmdet`` changes nothing outside
its own classes; the tools (``tools/train.py``, ``tools/test.py``) call ``setup_env()``.

* ``setup_checkpoint_loading``: torch >= 2.6 loads checkpoints with ``weights_only=True``,
  which refuses the few non-tensor types that mmengine's Runner writes into its checkpoints
  (its ``HistoryBuffer`` of logged scalars, numpy arrays and scalars in ``meta``), so
  ``--resume`` and ``load_from`` fail. Through mmengine's own hook point
  (``CheckpointLoader.register_scheme``) local checkpoints are loaded with
  ``weights_only=True`` and exactly those types allow-listed, only for the duration of that
  load (``torch.serialization.safe_globals``): loading stays safe, a pickle that calls
  anything else is refused, and torch's global allow-list is left alone.
* ``setup_cpu_distributed``: mmengine DDP through torchrun on machines without CUDA (gloo),
  see ``cpu_distributed``.

``teardown_env`` is what the tools call once their work succeeded, after dropping their
Runner: it frees what still holds the process group and destroys it, which mmengine never
does. A DDP-wrapped model sits in reference cycles, so it outlives its Runner until the cyclic
garbage collector runs, possibly only at interpreter teardown; gloo's worker threads then free
work that holds tensors without an interpreter to free them in and abort a run that succeeded
("terminate called without an active exception", SIGABRT; pytorch/pytorch#179291), which fails
a torchrun job.
"""
import builtins
import gc
import os.path as osp

import numpy as np
import torch
from mmengine.logging.history_buffer import HistoryBuffer
from mmengine.runner.checkpoint import CheckpointLoader

from .cpu_distributed import enable_cpu_distributed

# numpy's array reconstruction and the dtypes mmengine's logs hold (float/int scalars).
_NUMPY_DTYPES = ('float64', 'float32', 'float16', 'int64', 'int32', 'int16', 'int8', 'uint8',
                 'bool')


def safe_checkpoint_globals():
    """The non-tensor types of the checkpoints mmengine's Runner and this plugin write.

    ``getattr``: a ``HistoryBuffer`` pickles its statistics methods as
    ``getattr(HistoryBuffer, 'mean')``. torch's safe unpickler calls only allow-listed
    callables, so what getattr returns can be stored but never called.

    Checkpoints written under numpy 1.x name ``numpy.core.multiarray._reconstruct`` and
    ``.scalar`` (numpy 2 moved the module to ``numpy._core``): those names are allowed too,
    mapped to the same functions.
    """
    multiarray = np._core.multiarray if hasattr(np, '_core') else np.core.multiarray
    numpy1_names = [(getattr(multiarray, name), f'numpy.core.multiarray.{name}')
                    for name in ('_reconstruct', 'scalar')]
    return [HistoryBuffer, builtins.getattr, np.ndarray, np.dtype, multiarray._reconstruct,
            multiarray.scalar, *numpy1_names,
            *(type(np.dtype(name)) for name in _NUMPY_DTYPES)]


def load_local_checkpoint(filename, map_location=None):
    """mmengine's ``load_from_local`` with torch's safe loader and our allow-list."""
    filename = osp.expanduser(filename)
    if not osp.isfile(filename):
        raise FileNotFoundError(f'{filename} can not be found.')
    with torch.serialization.safe_globals(safe_checkpoint_globals()):
        return torch.load(filename, map_location=map_location, weights_only=True)


def setup_checkpoint_loading():
    """Let torch's safe loader (``weights_only=True``) read Runner-written local checkpoints."""
    CheckpointLoader.register_scheme(prefixes='', force=True)(load_local_checkpoint)


def setup_cpu_distributed():
    """``--launcher pytorch`` without CUDA: gloo instead of nccl, DDP without device_ids."""
    enable_cpu_distributed()


def setup_env():
    """What ``tools/train.py`` and ``tools/test.py`` set up: both of the above."""
    setup_checkpoint_loading()
    setup_cpu_distributed()


def teardown_env():
    """Collect garbage, then destroy the default process group, if any (``torch.distributed``'s
    documented shutdown). Call it with no reference left to the Runner or its model: the
    collection frees a DDP model in reference cycles (and the group it holds) while Python is
    fully alive.

    Only after success: a rank that failed must not wait in a collective shutdown for ranks
    that may never reach it."""
    gc.collect()
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()
