"""Sparse execution of a LAS bottleneck on its active patches (inference only).

Kernels and backends take tensors: the block input, its coarse mask, the block's folded
weights (``fold_bn.FoldedBottleneck``) and its geometry (patch size S, stride). They never
import ``lasnet_mmdet.models``: the block decides which backend runs and when to fall back.

    out = sparse_bottleneck(x, coarse, weights, granularity=4, stride=1, backend='torch')

* ``'torch'``: PyTorch GEMMs on gathered pixel rows (``torch_backend``); any device;
* ``'triton'``: fused Triton kernels (``triton/``), CUDA tensors (or CPU tensors under
  ``TRITON_INTERPRET=1``), fp16 / bf16 / fp32, no host synchronisation.

``sparse_bottleneck_with_masker`` (Triton only) takes the block's masker instead of its mask:
the masker decides in the launch that runs conv1 (``triton/conv1_masker.py``), for pooling
windows (stride x S) in ``FUSED_MASKER_WINDOWS``.

``resolve_backend`` turns a user's choice ('auto', 'torch', 'triton') into one of those for a
device, once; ``triton_available`` says whether the Triton kernels can run at all.
"""
import importlib.util
import os

import torch

from .fold_bn import (FoldedBottleneck, fold_bottleneck, fold_conv, is_foldable_downsample,
                      weight_layout)
from .geometry import coarse_shape
from .torch_backend import torch_forward

BACKENDS = ('torch', 'triton')
TRITON_DTYPES = (torch.float16, torch.bfloat16, torch.float32)
# Launches of the Triton backend that turn a given coarse mask into row lists in a block
# (windows outside ``FUSED_MASKER_WINDOWS``; the others append them in conv1's launch):
# ``compact_rows`` (its counters come zeroed, one memset for all blocks: ``counters``); the
# latency predictor reads it. Kept here: importing it must not need triton.
TRITON_INDEX_OPS = 1
# Masker windows (stride x S pixels) that ``sparse_bottleneck_with_masker`` takes: whole
# windows tile a GEMM's rows (64 at most, powers of two).
FUSED_MASKER_WINDOWS = (1, 2, 4, 8)
# A downsample block's 1x1 downsample conv runs in conv3's launch where its K is at most this
# (memory-bound: its output's write and re-read are most of its cost) or its GEMM has at most
# this many MACs (a launch and the round trip saved outweigh cuDNN's better rate on large
# GEMMs). H100, fp16, ResNet-101's first blocks at 800x1216, r = 0.5 (docs/sparse_ops.md,
# twelfth session): in the launch 56-60 us vs 62-72 at batch 1 (every stage: 0.5-2 G MACs);
# at batch 8 stage 1 (K = 64) 388 vs 442 us, stages 2-4 (16 G MACs each) 413 / 277 / 230 us
# vs 394 / 270 / 222 with cuDNN's conv.
DOWNSAMPLE_IN_CONV3_MAX_K = 64
DOWNSAMPLE_IN_CONV3_MAX_MACS = 2**32

__all__ = ['BACKENDS', 'FUSED_MASKER_WINDOWS', 'TRITON_DTYPES', 'TRITON_INDEX_OPS',
           'FoldedBottleneck', 'fold_bottleneck', 'fold_conv', 'is_foldable_downsample',
           'resolve_backend', 'sparse_bottleneck', 'sparse_bottleneck_with_masker',
           'triton_available', 'triton_fuses_downsample', 'triton_interpreting',
           'weight_layout']


def triton_fuses_downsample(out_rows, in_channels, out_channels):
    """Whether the Triton backend runs a block's 1x1 downsample conv (``out_rows`` output
    pixels, ``in_channels`` -> ``out_channels``) inside conv3's launch, else as cuDNN's conv
    (``DOWNSAMPLE_IN_CONV3_MAX_K``, ``DOWNSAMPLE_IN_CONV3_MAX_MACS``). A function of the
    shape only, as the tiles are: the latency predictor reads it too."""
    return (in_channels <= DOWNSAMPLE_IN_CONV3_MAX_K
            or out_rows * in_channels * out_channels <= DOWNSAMPLE_IN_CONV3_MAX_MACS)


def triton_available():
    return importlib.util.find_spec('triton') is not None


def triton_interpreting():
    return os.environ.get('TRITON_INTERPRET', '0') not in ('', '0')


def resolve_backend(choice, device):
    """The backend that runs for ``choice`` ('auto', 'torch', 'triton') on ``device``."""
    device = torch.device(device)
    if choice == 'auto':
        return 'triton' if device.type == 'cuda' and triton_available() else 'torch'
    if choice == 'torch':
        return 'torch'
    if choice != 'triton':
        raise ValueError(f"sparse backend must be 'auto', 'torch' or 'triton', got {choice!r}")
    if not triton_available():
        raise RuntimeError("sparse backend 'triton' needs the triton package")
    if device.type != 'cuda' and not triton_interpreting():
        raise ValueError(f"sparse backend 'triton' needs CUDA tensors, got x on {device} "
                         '(or set TRITON_INTERPRET=1 to run the kernels in the interpreter)')
    return 'triton'


def _check_inputs(x, coarse, weights, granularity, stride, backend, mask_name='coarse mask'):
    """Refuse bad inputs by name; ``coarse``: the block's mask, or None where none is given
    (the fused masker decides it)."""
    if backend not in BACKENDS:
        raise ValueError(f'sparse backend must be one of {BACKENDS}, got {backend!r}')
    if x.dim() != 4 or not x.is_floating_point():
        raise ValueError(f'x must be a float (B, C, H, W) tensor, got {x.dtype} {tuple(x.shape)}')
    grid = coarse_shape(x.shape[0], x.shape[2], x.shape[3], stride, granularity)
    if coarse is not None and tuple(coarse.shape) != grid:
        raise ValueError(f'{mask_name} must have shape {grid} for input {tuple(x.shape)}, '
                         f'S={granularity} and stride {stride}, got {tuple(coarse.shape)}')
    if coarse is not None and coarse.device != x.device:
        raise ValueError(f'{mask_name} is on {coarse.device}, x on {x.device}')
    if weights.w1.dtype != x.dtype:
        raise ValueError(f'weights are {weights.w1.dtype}, x is {x.dtype}')
    layout = weight_layout(backend, x.dtype)
    if weights.layout != layout:
        raise ValueError(f"sparse backend {backend!r} takes {x.dtype} weights folded with "
                         f"layout={layout!r}, got {weights.layout!r}")
    in_c = weights.w1.shape[0 if weights.layout == 'kn' else 1]
    if in_c != x.shape[1]:
        raise ValueError(f'weights expect {in_c} input channels, x has {x.shape[1]}')
    if backend == 'triton' and x.dtype not in TRITON_DTYPES:
        raise ValueError(f"sparse backend 'triton' supports {TRITON_DTYPES}, got {x.dtype}")


def sparse_bottleneck(x, coarse, weights, granularity, stride, backend='torch',
                      reuse_output=False):
    """Eval-mode output of a LAS bottleneck on ``x`` under coarse mask ``coarse``.

    Args:
        x (Tensor): Block input ``(B, C_in, H, W)``.
        coarse (Tensor): Coarse mask ``(B, 1, ceil(H_o/S), ceil(W_o/S))`` in {0, 1}.
        weights (FoldedBottleneck): conv1..conv3 (and the downsample) with BN folded, in x's
            dtype and the backend's layout (``fold_bottleneck(..., weight_layout(backend,
            dtype))``).
        granularity (int): Patch size S.
        stride (int): The block's stride (on conv2, pytorch style).
        backend (str): 'torch' or 'triton' (``resolve_backend`` picks one for 'auto').
        reuse_output (bool): Only for a caller that knows nobody else holds these tensors
            (``LASResNet`` without hooks). 'torch': the output may be a buffer of the current
            ``workspace.Workspace`` (see there). 'triton': ``x`` is the previous LAS block's
            output (>= 0), and an identity block updates it in place, writing only its
            active rows.
    """
    _check_inputs(x, coarse, weights, granularity, stride, backend)
    if backend == 'torch':
        return torch_forward(x, coarse, weights, granularity, stride, reuse_output)
    from .triton import triton_forward
    ieee = x.dtype == torch.float32 and not torch.backends.cudnn.allow_tf32
    return triton_forward(x, coarse, weights, granularity, stride, ieee=ieee,
                          in_place=reuse_output)


def sparse_bottleneck_with_masker(x, masker_columns, masker_bias, weights, granularity, stride,
                                  reuse_output=False, pin=None, run_masker=True):
    """``(output, coarse mask)`` of a LAS bottleneck in eval: its masker's decision
    (``execute >= skip`` on the pooled input) and the block on the active patches, Triton
    backend, the masker and conv1 in one launch.

    Args:
        x (Tensor): Block input ``(B, C_in, H, W)``, fp16 / bf16 / fp32, CUDA (or CPU under
            ``TRITON_INTERPRET=1``).
        masker_columns (Tensor): The masker's 1x1 conv weight as ``(C_in, 16)`` in x's dtype,
            columns past 2 zero (``ops.triton.conv1_masker.masker_columns``; cache it).
        masker_bias (Tensor): Its ``(2, )`` bias.
        weights (FoldedBottleneck): As ``sparse_bottleneck`` (Triton layout).
        granularity (int), stride (int): S and the block's stride; ``stride * granularity``
            must be one of ``FUSED_MASKER_WINDOWS``.
        reuse_output (bool): As ``sparse_bottleneck``'s Triton case.
        pin (Tensor | None): A coarse mask that replaces the decision (benchmarks).
        run_masker (bool): With ``pin``, still compute the logits (their cost is real).
    """
    window = stride * granularity
    if window not in FUSED_MASKER_WINDOWS:
        raise ValueError(f'the fused masker takes windows (stride x S) {FUSED_MASKER_WINDOWS}, '
                         f'got {stride} x {granularity}')
    _check_inputs(x, pin, weights, granularity, stride, 'triton', mask_name='pinned mask')
    if tuple(masker_columns.shape) != (x.shape[1], 16) or masker_columns.dtype != x.dtype:
        raise ValueError(f'masker_columns must be ({x.shape[1]}, 16) {x.dtype}, got '
                         f'{tuple(masker_columns.shape)} {masker_columns.dtype}')
    from .triton import triton_forward_with_masker
    ieee = x.dtype == torch.float32 and not torch.backends.cudnn.allow_tf32
    return triton_forward_with_masker(x, masker_columns, masker_bias, weights, granularity,
                                      stride, ieee=ieee, in_place=reuse_output, pin=pin,
                                      decide=pin is None or run_masker)
