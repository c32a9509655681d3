"""mmengine DDP through torchrun on machines without CUDA (gloo backend).

mmengine 0.10.7's ``--launcher pytorch`` path assumes CUDA twice: ``_init_dist_pytorch``
calls ``torch.cuda.set_device`` and ``Runner.wrap_model`` passes ``device_ids=[LOCAL_RANK]``,
which torch's DDP rejects for CPU modules. Both are patched here, and only take another path
when CUDA is unavailable; NCCL (mmdet's default) becomes gloo there, with a warning.
"""
import torch
import torch.distributed as torch_dist
from mmengine.dist import utils as dist_utils
from mmengine.logging import print_log
from mmengine.model import MMDistributedDataParallel

_init_dist_pytorch = dist_utils._init_dist_pytorch
_ddp_init = MMDistributedDataParallel.__init__


def init_dist_pytorch_cpu(backend='nccl', init_backend='torch', **kwargs):
    if torch.cuda.is_available() or init_backend != 'torch':
        return _init_dist_pytorch(backend, init_backend=init_backend, **kwargs)
    if backend == 'nccl':
        print_log('CUDA is not available: using the gloo backend instead of nccl',
                  logger='current', level=30)
        backend = 'gloo'
    torch_dist.init_process_group(backend=backend, **kwargs)


def ddp_init_cpu(self, module, detect_anomalous_params=False, **kwargs):
    if not torch.cuda.is_available():
        kwargs.pop('device_ids', None)  # CPU modules take no device_ids
        kwargs.pop('output_device', None)
    _ddp_init(self, module, detect_anomalous_params=detect_anomalous_params, **kwargs)


def enable_cpu_distributed():
    dist_utils._init_dist_pytorch = init_dist_pytorch_cpu
    MMDistributedDataParallel.__init__ = ddp_init_cpu
