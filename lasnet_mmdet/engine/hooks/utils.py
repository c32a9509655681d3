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
