"""Sparse execution of a LAS bottleneck on its active patches (inference only).

``las_bottleneck_forward(block, x, coarse, backend)`` returns exactly what the block's
dense-masked path returns in eval mode, computing conv1..conv3 only where the mask needs them:

* ``'torch'``: PyTorch GEMMs on gathered pixel rows (``torch_backend``); any device;
* ``'triton'``: fused Triton kernels (``triton/``), CUDA tensors (or CPU tensors under
  ``TRITON_INTERPRET=1``), fp16 / bf16 / fp32, no host synchronisation;
* ``'auto'``: Triton on CUDA tensors when Triton imports, PyTorch otherwise; blocks no sparse
  backend can run fall back to the dense-masked computation instead of failing.
"""
import importlib.util
import os

import torch
from torch.nn.modules.batchnorm import _BatchNorm

from .dense_masked import dense_masked_forward
from .fold_bn import folded_weights
from .patches import conv_out
from .torch_backend import torch_forward

BACKENDS = ('auto', 'torch', 'triton')
TRITON_DTYPES = (torch.float16, torch.bfloat16, torch.float32)

__all__ = ['BACKENDS', 'las_bottleneck_forward', 'dense_masked_forward', 'folded_weights',
           'sparse_unsupported_reason', 'triton_available']


def triton_available():
    return importlib.util.find_spec('triton') is not None


def _interpreting():
    return os.environ.get('TRITON_INTERPRET', '0') not in ('', '0')


def sparse_unsupported_reason(block):
    """Why ``block`` cannot run sparse (a sentence), or None when it can."""
    if block.training:
        return 'the block is in training mode (sparse execution is for inference)'
    if torch.is_grad_enabled() and any(p.requires_grad for p in block.parameters()):
        return 'autograd is recording (sparse execution is for inference: use torch.no_grad())'
    if block.with_plugins:
        return 'the block has plugins'
    if block.with_dcn:
        return 'the block uses DCN'
    if block.conv1_stride != 1:
        return f'style={block.style!r} puts the stride on conv1 (sparse needs style="pytorch")'
    for name in ('conv1', 'conv2', 'conv3'):
        conv = getattr(block, name)
        if conv.groups != 1 or conv.bias is not None or conv.dilation != (1, 1):
            return f'{name} has groups, bias or dilation'
    for name in ('norm1', 'norm2', 'norm3'):
        norm = getattr(block, name)
        if not isinstance(norm, _BatchNorm) or norm.running_var is None:
            return f'{name} is {type(norm).__name__}, not a BatchNorm with running statistics'
    return None


def _check_inputs(block, x, coarse):
    if x.dim() != 4 or not x.is_floating_point():
        raise ValueError(f'x must be a float (B, C, H, W) tensor, got {x.dtype} {tuple(x.shape)}')
    out_h, out_w = conv_out(x.shape[2], block.stride), conv_out(x.shape[3], block.stride)
    s = block.granularity
    grid = (x.shape[0], 1, -(-out_h // s), -(-out_w // s))
    if tuple(coarse.shape) != grid:
        raise ValueError(f'coarse mask must have shape {grid} for input {tuple(x.shape)} and '
                         f'S={s}, got {tuple(coarse.shape)}')
    if coarse.device != x.device:
        raise ValueError(f'coarse mask is on {coarse.device}, x on {x.device}')


def las_bottleneck_forward(block, x, coarse, backend='auto'):
    """Eval-mode output of LAS bottleneck ``block`` on ``x`` under coarse mask ``coarse``.

    Args:
        block (LASBottleneck): The block (eval mode).
        x (Tensor): Block input ``(B, C_in, H, W)``.
        coarse (Tensor): Coarse mask ``(B, 1, ceil(H_o/S), ceil(W_o/S))`` in {0, 1}.
        backend (str): 'auto', 'torch' or 'triton'.
    """
    if backend not in BACKENDS:
        raise ValueError(f'sparse backend must be one of {BACKENDS}, got {backend!r}')
    _check_inputs(block, x, coarse)
    reason = sparse_unsupported_reason(block)
    if reason is not None:
        if backend == 'auto':
            return dense_masked_forward(block, x, coarse)
        raise ValueError(f'sparse backend {backend!r} cannot run this block: {reason}')
    if backend == 'auto':
        backend = 'triton' if x.is_cuda and triton_available() else 'torch'
    if backend == 'torch':
        return torch_forward(block, x, coarse)
    if not triton_available():
        raise RuntimeError("sparse backend 'triton' needs the triton package")
    if not x.is_cuda and not _interpreting():
        raise ValueError(f"sparse backend 'triton' needs CUDA tensors, got x on {x.device} "
                         '(or set TRITON_INTERPRET=1 to run the kernels in the interpreter)')
    if x.dtype not in TRITON_DTYPES:
        raise ValueError(f"sparse backend 'triton' supports {TRITON_DTYPES}, got {x.dtype}")
    from .triton import triton_forward
    return triton_forward(block, x, coarse)
