"""Clean backbone checkpoints from LASNet ImageNet checkpoints or torchvision ResNets."""
import re

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


def convert_checkpoint(src, dst, depth):
    """Read ``src``, write a clean ``{'state_dict', 'meta'}`` backbone checkpoint to ``dst``."""
    checkpoint = torch.load(src, map_location='cpu', weights_only=False)
    state_dict, masker_missing = convert_state_dict(extract_state_dict(checkpoint), depth)
    meta = dict(source=str(src), depth=depth, masker_initialised=not masker_missing)
    torch.save(dict(state_dict=state_dict, meta=meta), dst)
    return state_dict, masker_missing
