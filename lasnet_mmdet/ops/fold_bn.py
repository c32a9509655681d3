"""Eval-mode BatchNorm folded into the convs of a LAS bottleneck.

Both sparse backends run GEMMs of the form ``rows(K) @ W + bias``, so the folded weights of
conv1..conv3 are matrices, the 3x3 conv's K ordered (dy, dx, c_in) to match the order in which
its nine taps are gathered. Their layout is the one the backend's GEMM reads fastest
(``weight_layout``): N x K ('nk', a 1x1 conv's weight) for the PyTorch backend, whose CPU GEMMs
are oneDNN 1x1 convolutions, and for the Triton kernels in fp32; K x N ('kn') for the Triton
kernels in fp16 / bf16. The downsample (1x1 conv + BN) and the stem are folded into one 4-D
channels-last conv each. These are pure functions: the block that owns the modules caches
their results and drops the cache when its weights change.
"""
from collections import namedtuple

import torch
from torch.nn.modules.batchnorm import _BatchNorm

# What a sparse backend needs of a bottleneck: conv1..conv3 as GEMM weights in ``layout`` with
# their biases, and the downsample as a folded 1x1 conv (``ds_weight`` None for an identity
# block).
FoldedBottleneck = namedtuple('FoldedBottleneck',
                              'w1 b1 w2 b2 w3 b3 ds_weight ds_bias ds_stride layout')


def weight_layout(backend, dtype):
    """The GEMM weight layout sparse ``backend`` takes in ``dtype``: 'kn' or 'nk'.

    Hopper's TF32 tensor-core instruction reads its B operand K-contiguous only: from a K x N
    weight Triton copies it into shared memory 4 bytes at a time (transposing), from N x K 16
    bytes at a time. 16-bit products take either; their tiles were tuned on K x N."""
    if backend == 'triton' and dtype != torch.float32:
        return 'kn'
    return 'nk'


def _bn_scale_shift(bn):
    scale = bn.weight / torch.sqrt(bn.running_var + bn.eps)
    return scale, bn.bias - bn.running_mean * scale


@torch.no_grad()
def fold_gemm(conv, bn, dtype, layout='kn'):
    """``(weight, N bias)`` of a bias-free ``conv`` followed by eval-mode ``bn``; the weight
    K x N ('kn') or N x K ('nk'), K ordered (kh, kw, c_in)."""
    if layout not in ('kn', 'nk'):
        raise ValueError(f"layout must be 'kn' or 'nk', got {layout!r}")
    scale, shift = _bn_scale_shift(bn)
    w = conv.weight * scale[:, None, None, None]  # (C_out, C_in, kh, kw)
    w = w.permute(0, 2, 3, 1).reshape(w.shape[0], -1)  # (N, K), K ordered (kh, kw, c_in)
    if layout == 'kn':
        w = w.t()
    return w.to(dtype).contiguous(), shift.to(dtype).contiguous()


@torch.no_grad()
def fold_conv(conv, bn, dtype):
    """``(weight, bias)`` of ``conv`` followed by eval-mode ``bn``; the weight 4-D and
    channels-last (the layout oneDNN and cuDNN then pick for the output)."""
    scale, shift = _bn_scale_shift(bn)
    weight = conv.weight * scale[:, None, None, None]
    if conv.bias is not None:
        shift = shift + conv.bias * scale
    return weight.to(dtype).contiguous(memory_format=torch.channels_last), shift.to(dtype)


def is_foldable_downsample(ds):
    """Whether downsample ``ds`` is a 1x1 conv + eval BN that ``fold_conv`` can fold."""
    return (isinstance(ds, torch.nn.Sequential) and len(ds) == 2
            and isinstance(ds[0], torch.nn.Conv2d) and ds[0].kernel_size == (1, 1)
            and ds[0].padding == (0, 0) and ds[0].groups == 1
            and isinstance(ds[1], _BatchNorm) and ds[1].running_var is not None)


def fold_bottleneck(convs, norms, downsample, dtype, layout='kn'):
    """``FoldedBottleneck`` of conv1..conv3 with their BNs and a foldable downsample (or None),
    GEMM weights in ``layout`` (``weight_layout(backend, dtype)``)."""
    folded = []
    for conv, bn in zip(convs, norms):
        folded += fold_gemm(conv, bn, dtype, layout)
    if downsample is None:
        return FoldedBottleneck(*folded, None, None, 1, layout)
    ds_weight, ds_bias = fold_conv(downsample[0], downsample[1], dtype)
    return FoldedBottleneck(*folded, ds_weight, ds_bias, downsample[0].stride[0], layout)
