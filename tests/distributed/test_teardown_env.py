"""``teardown_env`` closes the default process group (the tools call it after success)."""
import torch.distributed as dist

from lasnet_mmdet import teardown_env


def test_teardown_env_destroys_the_process_group(tmp_path):
    store = dist.FileStore(str(tmp_path / 'store'), 1)
    dist.init_process_group('gloo', store=store, rank=0, world_size=1)
    try:
        assert dist.is_initialized()
        teardown_env()
        assert not dist.is_initialized()
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()


def test_teardown_env_without_a_process_group_does_nothing():
    assert not dist.is_initialized()
    teardown_env()
    assert not dist.is_initialized()
