from .las_resnet import LASBottleneck, LASResNet

__all__ = ['LASBottleneck', 'LASResNet']
