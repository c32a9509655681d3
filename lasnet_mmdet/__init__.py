"""lasnet_mmdet: LASNet backbones, sparse ops and latency tools for MMDetection 3.x.

Importing the package registers ``LASResNet`` (MODELS) and the hooks (HOOKS) into mmdet's
registries and changes nothing else. ``lasnet_mmdet.setup_env()`` (called by the tools) lets
torch's safe loader read mmengine's own checkpoints under torch >= 2.6 and runs DDP (gloo) on
machines without CUDA; ``teardown_env()`` closes the process group after a run that
succeeded: see ``lasnet_mmdet/utils/setup_env.py``.
"""
import mmdet
import mmengine
from mmengine.utils import digit_version

from .version import __version__

if not digit_version('3.0.0') <= digit_version(mmdet.__version__) < digit_version('4.0.0'):
    raise ImportError(f'lasnet_mmdet needs mmdet 3.x, found {mmdet.__version__}')
if digit_version(mmengine.__version__) < digit_version('0.10.0'):
    raise ImportError(f'lasnet_mmdet needs mmengine >= 0.10, found {mmengine.__version__}')

from . import engine, models  # noqa: E402,F401  (registers modules and hooks)
from .utils.setup_env import setup_env, teardown_env  # noqa: E402

__all__ = ['__version__', 'setup_env', 'teardown_env']
