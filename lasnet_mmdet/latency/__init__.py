"""Latency model of LAS backbones: hardware profiles, predictor, calibration, search, cost.

    from lasnet_mmdet.latency import load_profile, predict_backbone, search_granularity
    profile = load_profile('v100')                     # a preset, or a calibrated JSON
    predict_backbone(profile, 800, 1216, (4, 4, 2, 1), rate=0.5)['total']
"""
from .cost import LatencyCost
from .hardware import (PRESETS, HardwareProfile, ProfileError, get_preset, load_profile,
                       preset_names)
from .predictor import (SCHEDULES, BlockShape, Schedule, get_schedule, predict_backbone,
                        predict_las_block, predict_static_block, resnet_block_shapes)
from .search import search_granularity

__all__ = [
    'PRESETS', 'HardwareProfile', 'ProfileError', 'get_preset', 'load_profile',
    'preset_names', 'SCHEDULES', 'BlockShape', 'Schedule', 'get_schedule', 'predict_backbone',
    'predict_las_block', 'predict_static_block', 'resnet_block_shapes', 'search_granularity',
    'LatencyCost'
]
