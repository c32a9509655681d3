"""Finding the LAS backbone of whatever model the Runner holds."""
from mmengine.model import is_model_wrapper


def unwrap(model):
    """The detector inside a DDP/FSDP wrapper (or the model itself)."""
    return model.module if is_model_wrapper(model) else model


def las_backbone(model, hook_name):
    """The detector's LAS backbone; a clear error if it has none."""
    from ...models.backbones.las_resnet import LASResNet
    detector = unwrap(model)
    backbone = getattr(detector, 'backbone', None)
    if not isinstance(backbone, LASResNet):
        raise TypeError(f'{hook_name} needs a detector with a LAS backbone (LASResNet); '
                        f'{type(detector).__name__} has backbone '
                        f'{type(backbone).__name__ if backbone is not None else None}')
    return backbone


# The dense ResNet the latency predictor models (``latency.predictor.resnet_block_shapes``
# and ``stem_kernels``): mmdet's ResNet with these settings (its defaults, pytorch style).
PREDICTED_RESNET = dict(stem_channels=64, base_channels=64, num_stages=4, strides=(1, 2, 2, 2),
                        dilations=(1, 1, 1, 1), style='pytorch', deep_stem=False,
                        avg_down=False, dcn=None, plugins=None)


def predictable_resnet_depth(backbone):
    """The depth of a dense backbone (its config or the module) whose latency the predictor
    models: mmdet's ``ResNet`` of a bottleneck depth with ``PREDICTED_RESNET``'s settings.

    Raises a ``ValueError`` naming the type or the setting it does not model.
    """
    from mmdet.models.backbones import ResNet
    from mmdet.registry import MODELS
    from ...latency.predictor import ARCH
    if isinstance(backbone, dict):
        name = backbone.get('type')
        cls = MODELS.get(name) if isinstance(name, str) else name
        settings = {key: backbone.get(key, default) for key, default in PREDICTED_RESNET.items()}
        settings['stem_channels'] = backbone.get('stem_channels') or settings['base_channels']
        depth = backbone.get('depth')
    else:
        cls = name = type(backbone)
        settings = {key: getattr(backbone, key, None) for key in PREDICTED_RESNET}
        depth = getattr(backbone, 'depth', None)
    if cls is not ResNet:
        name = getattr(name, '__name__', name)
        raise ValueError(f'the latency predictor models mmdet\'s ResNet (or a LAS backbone), '
                         f'not {name!r}')
    if depth not in ARCH:
        raise ValueError(f'the latency predictor models ResNet depths {sorted(ARCH)}, got '
                         f'depth={depth!r}')
    for key, expected in PREDICTED_RESNET.items():
        value = tuple(settings[key]) if isinstance(settings[key], list) else settings[key]
        if value != expected:
            raise ValueError(f'the latency predictor models a ResNet with {key}={expected!r}, '
                             f'got {key}={value!r}')
    return depth
