"""Clean backbone checkpoints from LASNet ImageNet checkpoints or torchvision ResNets."""
import argparse
import os
import os.path as osp
import pickle
import re
import tempfile

import torch

from ..models.backbones.las_resnet import LASResNet

# Keys a converted checkpoint may lack; LASResNet initialises them itself.
MASKER_KEY = re.compile(r'^layer\d+\.\d+\.masker\.conv2\.(weight|bias)$')


def strip_prefix(state_dict, prefix):
    if all(key.startswith(prefix) for key in state_dict):
        return {key[len(prefix):]: value for key, value in state_dict.items()}
    return state_dict


def extract_state_dict(checkpoint):
    """The ``state_dict`` of a LASNet/mmengine checkpoint dict, or the dict itself."""
    if not isinstance(checkpoint, dict):
        raise TypeError(f'a checkpoint must be a dict, got {type(checkpoint).__name__}')
    state_dict = checkpoint.get('state_dict', checkpoint)
    state_dict = strip_prefix(state_dict, 'module.')
    return strip_prefix(state_dict, 'backbone.')


def convert_state_dict(state_dict, depth):
    """Backbone state dict for ``LASResNet(depth)``; raises naming the first bad key.

    ``fc.*`` (the ImageNet classifier) is dropped; masker weights may be missing (torchvision
    ResNets have none): they are reported, and LASResNet initialises them.

    Returns:
        tuple: (converted state dict, list of missing masker keys)
    """
    expected = LASResNet(depth=depth).state_dict()
    converted = {}
    for key, value in state_dict.items():
        if key.startswith('fc.'):
            continue
        if key not in expected:
            raise KeyError(f'unexpected key {key!r} for LASResNet depth {depth} '
                           f'(is the checkpoint of another depth or network?)')
        if tuple(value.shape) != tuple(expected[key].shape):
            raise ValueError(f'shape mismatch for {key!r}: checkpoint {tuple(value.shape)}, '
                             f'LASResNet depth {depth} expects {tuple(expected[key].shape)}')
        converted[key] = value.detach().clone()
    missing = [key for key in expected if key not in converted]
    masker_missing = [key for key in missing if MASKER_KEY.match(key)]
    others = [key for key in missing if not MASKER_KEY.match(key)
              and not key.endswith('num_batches_tracked')]
    if others:
        raise KeyError(f'checkpoint lacks {len(others)} backbone keys for depth {depth}, '
                       f'first {others[0]!r}')
    return converted, masker_missing


def load_source(src):
    """A LASNet / torchvision checkpoint, loaded with torch's safe loader (``weights_only``:
    tensors and plain containers; LASNet's ``args`` namespace allowed). Errors name ``src``."""
    if not osp.isfile(src):
        raise FileNotFoundError(f'checkpoint {src!r} does not exist or is not a file')
    if osp.getsize(src) == 0:
        raise ValueError(f'checkpoint {src!r} is empty')
    try:
        with torch.serialization.safe_globals([argparse.Namespace]):
            return torch.load(src, map_location='cpu', weights_only=True)
    except pickle.UnpicklingError as e:
        raise ValueError(f'{src!r} is not a checkpoint that torch can load safely (a torch.save '
                         f'file of tensors and plain containers): {e}') from e
    except Exception as e:  # noqa: BLE001  (text files end in KeyError, IndexError, ...)
        raise ValueError(f'{src!r} is not a readable torch checkpoint ({type(e).__name__}: '
                         f'{e})') from e


def _same_file(a, b):
    return osp.abspath(a) == osp.abspath(b) or (osp.exists(b) and osp.samefile(a, b))


def save_atomic(obj, dst):
    """``torch.save`` to a temporary file beside ``dst``, renamed into place when complete:
    ``dst`` is either the old file or the whole new one, never a partial write."""
    folder = osp.dirname(osp.abspath(dst))
    if not osp.isdir(folder):
        raise FileNotFoundError(f'output folder {folder!r} of {dst!r} does not exist')
    fd, tmp = tempfile.mkstemp(dir=folder, prefix='.' + osp.basename(dst) + '.', suffix='.tmp')
    try:
        with os.fdopen(fd, 'wb') as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, dst)
    except BaseException as e:
        if osp.exists(tmp):
            os.unlink(tmp)
        if isinstance(e, OSError):
            raise OSError(e.errno, f'could not write {dst!r}: {e.strerror or e}') from e
        raise


def convert_checkpoint(src, dst, depth):
    """Read ``src``, write a clean ``{'state_dict', 'meta'}`` backbone checkpoint to ``dst``
    (refuses ``dst == src``; nothing is written on any failure)."""
    if osp.exists(src) and _same_file(src, dst):
        raise ValueError(f'output {dst!r} is the source checkpoint: refusing to overwrite it')
    checkpoint = load_source(src)
    try:
        state_dict, masker_missing = convert_state_dict(extract_state_dict(checkpoint), depth)
    except (KeyError, ValueError, TypeError) as e:
        raise type(e)(f'{src!r}: {e.args[0] if e.args else e}') from e
    meta = dict(source=str(src), depth=depth, masker_initialised=not masker_missing)
    save_atomic(dict(state_dict=state_dict, meta=meta), dst)
    return state_dict, masker_missing
