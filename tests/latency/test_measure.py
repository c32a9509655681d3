"""Calibration times a LAS block through the path the backbone takes (Triton: the fused
masker + conv1 launch where the window fits), or through row lists when asked.

Without CUDA the Triton kernels run in Triton's interpreter on tiny CPU tensors (set before
the kernels are decorated: ``lasnet_mmdet.ops.triton`` is imported lazily).
"""
import os

import pytest
import torch

if not torch.cuda.is_available():
    os.environ.setdefault('TRITON_INTERPRET', '1')

from lasnet_mmdet.latency.measure import measure_las_block  # noqa: E402
from lasnet_mmdet.latency.predictor import BlockShape  # noqa: E402

pytest.importorskip('triton')
DEVICE = 'cuda' if torch.cuda.is_available() else 'cpu'


@pytest.mark.parametrize('granularity,fuse,expect_fused', [
    (2, True, True), (2, False, False), (3, True, False)])
def test_las_block_path(granularity, fuse, expect_fused, monkeypatch):
    import lasnet_mmdet.ops.triton.launcher as launcher
    calls = []
    for name in ('conv1_masker', 'compact_rows'):
        launch = getattr(launcher, name)
        monkeypatch.setattr(launcher, name,
                            lambda *a, _f=launch, _n=name, **k: (calls.append(_n), _f(*a, **k)))
    shape = BlockShape(64, 16, 8, 8)
    seconds, fused = measure_las_block(shape, granularity, 0.5, DEVICE, 'fp32', 'triton',
                                       warmup=0, repeats=1, fuse_masker=fuse, with_path=True)
    assert seconds > 0 and fused == expect_fused
    assert set(calls) == {'conv1_masker' if expect_fused else 'compact_rows'}
