from .backbones import LASBottleneck, LASResNet
from .layers import Masker

__all__ = ['LASBottleneck', 'LASResNet', 'Masker']
