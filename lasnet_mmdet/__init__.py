"""lasnet_mmdet: LASNet backbones, sparse ops and latency tools for MMDetection 3.x.

Importing the package registers ``LASResNet`` (MODELS) and ``LatencyLossHook`` /
``LASReportHook`` (HOOKS) into mmdet's registries, and lets mmengine load its own
checkpoints under torch >= 2.6 and run DDP (gloo) on machines without CUDA.
"""
import mmdet
import mmengine
from mmengine.utils import digit_version

from .version import __version__

if not digit_version('3.0.0') <= digit_version(mmdet.__version__) < digit_version('4.0.0'):
    raise ImportError(f'lasnet_mmdet needs mmdet 3.x, found {mmdet.__version__}')
if digit_version(mmengine.__version__) < digit_version('0.10.0'):
    raise ImportError(f'lasnet_mmdet needs mmengine >= 0.10, found {mmengine.__version__}')

from .utils.checkpoint import register_checkpoint_loader  # noqa: E402
from .utils.cpu_distributed import enable_cpu_distributed  # noqa: E402

register_checkpoint_loader()
enable_cpu_distributed()

from . import engine, models  # noqa: E402,F401  (registers modules and hooks)

__all__ = ['__version__']
