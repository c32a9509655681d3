"""Which masks to show: block and stage names of a LAS backbone, and the chosen masks of the
last forward as numpy arrays (one per panel: a block's own, or a stage's mean over its blocks).
"""
from collections import OrderedDict

import numpy as np


def las_block_names(backbone_cfg):
    """Block names (``'layer1.0'``, ...) of a LAS backbone config, without building it.

    Raises a ``ValueError`` naming the type when the config's backbone is not a LAS backbone.
    """
    from mmdet.registry import MODELS
    from ..models.backbones.las_resnet import LASResNet
    backbone_type = backbone_cfg.get('type') if backbone_cfg else None
    cls = MODELS.get(backbone_type) if isinstance(backbone_type, str) else backbone_type
    if not (isinstance(cls, type) and issubclass(cls, LASResNet)):
        raise ValueError(f'the config\'s backbone is {backbone_type!r}, not a LAS backbone '
                         f'(LASResNet): it has no masks to show')
    depth = backbone_cfg.get('depth')
    if depth not in cls.arch_settings:
        raise ValueError(f'LASResNet depth must be one of {sorted(cls.arch_settings)}, '
                         f'got {depth!r}')
    stage_blocks = backbone_cfg.get('stage_blocks') or cls.arch_settings[depth][1]
    num_stages = backbone_cfg.get('num_stages', 4)
    return [f'layer{stage + 1}.{i}' for stage in range(num_stages)
            for i in range(stage_blocks[stage])]


def choose_panels(block_names, stages=None, blocks=None):
    """``{panel name: [block names]}`` in forward order: each chosen block alone, each chosen
    stage as the mean of its blocks; every stage when nothing is chosen.

    Raises a ``ValueError`` naming an unknown stage or block and listing the known ones.
    """
    known_stages = list(OrderedDict.fromkeys(name.split('.')[0] for name in block_names))
    for stage in stages or ():
        if stage not in known_stages:
            raise ValueError(f'unknown stage {stage!r}; this backbone has {known_stages}')
    for block in blocks or ():
        if block not in block_names:
            raise ValueError(f'unknown block {block!r}; this backbone has blocks '
                             f'{block_names[0]} ... {block_names[-1]} '
                             f'({", ".join(known_stages)} with their indices)')
    if not stages and not blocks:
        stages = known_stages
    panels = OrderedDict()
    for stage in known_stages:
        if stage in (stages or ()):
            panels[stage] = [name for name in block_names if name.split('.')[0] == stage]
    for name in block_names:
        if name in (blocks or ()):
            panels[name] = [name]
    return panels


def stage_strides(backbone):
    """``{stage name: input pixels per output pixel}`` (the stem divides by 4)."""
    strides, stride = {}, 4
    for layer_name, layer_stride in zip(backbone.res_layers, backbone.strides):
        stride *= layer_stride
        strides[layer_name] = stride
    return strides


def panel_masks(backbone, panels):
    """``{panel: (masks (B, h, w) float32, stride)}`` from the backbone's last forward: the
    executed pixels of a block, or their mean over the blocks of a panel (one stage)."""
    masks = backbone.last_masks()
    strides = stage_strides(backbone)
    chosen = OrderedDict()
    for panel, names in panels.items():
        stacked = np.stack([masks[name].detach().float().cpu().numpy()[:, 0] for name in names])
        chosen[panel] = (stacked.mean(axis=0), strides[names[0].split('.')[0]])
    return chosen
