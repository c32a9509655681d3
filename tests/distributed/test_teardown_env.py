"""``teardown_env`` closes the default process group (the tools call it after success), and
first frees a DDP model that only reference cycles keep alive, with the group it holds."""
import gc
import weakref

import torch.distributed as dist
import torch.nn as nn
from torch.nn.parallel import DistributedDataParallel

from lasnet_mmdet import teardown_env


def init_gloo(tmp_path):
    store = dist.FileStore(str(tmp_path / 'store'), 1)
    dist.init_process_group('gloo', store=store, rank=0, world_size=1)


def test_teardown_env_destroys_the_process_group(tmp_path):
    init_gloo(tmp_path)
    try:
        assert dist.is_initialized()
        teardown_env()
        assert not dist.is_initialized()
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()


def test_teardown_env_frees_a_ddp_model_in_a_reference_cycle(tmp_path):
    """As a Runner's DDP model after ``del runner``: alive until the cyclic collector runs,
    which must not be left to interpreter teardown."""
    init_gloo(tmp_path)
    gc.disable()  # no automatic collection between the ``del`` and the teardown
    try:
        holder = {'model': DistributedDataParallel(nn.Linear(2, 2))}
        holder['self'] = holder  # a reference cycle, as a Runner and its hooks make
        model = weakref.ref(holder['model'])
        del holder
        assert model() is not None
        teardown_env()
        assert model() is None and not dist.is_initialized()
    finally:
        gc.enable()
        if dist.is_initialized():
            dist.destroy_process_group()


def test_teardown_env_without_a_process_group_does_nothing():
    assert not dist.is_initialized()
    teardown_env()
    assert not dist.is_initialized()
