"""Eval-mode BatchNorm folded into the convs of a LAS bottleneck.

Both sparse backends run GEMMs of the form ``rows(K) @ W(K, N) + bias``, so the folded weights
of conv1..conv3 are K x N matrices, the 3x3 conv's K ordered (dy, dx, c_in) to match the order
in which its nine taps are gathered. The downsample (1x1 conv + BN) and the stem are folded
into one 4-D channels-last conv each. These are pure functions: the block that owns the
modules caches their results and drops the cache when its weights change.
"""
from collections import namedtuple

import torch
from torch.nn.modules.batchnorm import _BatchNorm

# What a sparse backend needs of a bottleneck: conv1..conv3 as K x N GEMM weights with their
# biases, and the downsample as a folded 1x1 conv (``ds_weight`` None for an identity block).
FoldedBottleneck = namedtuple('FoldedBottleneck',
                              'w1 b1 w2 b2 w3 b3 ds_weight ds_bias ds_stride')


def _bn_scale_shift(bn):
    scale = bn.weight / torch.sqrt(bn.running_var + bn.eps)
    return scale, bn.bias - bn.running_mean * scale


@torch.no_grad()
def fold_gemm(conv, bn, dtype):
    """``(K x N weight, N bias)`` of a bias-free ``conv`` followed by eval-mode ``bn``."""
    scale, shift = _bn_scale_shift(bn)
    w = conv.weight * scale[:, None, None, None]  # (C_out, C_in, kh, kw)
    w = w.permute(2, 3, 1, 0).reshape(-1, w.shape[0])  # K ordered (kh, kw, c_in)
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


def fold_bottleneck(convs, norms, downsample, dtype):
    """``FoldedBottleneck`` of conv1..conv3 with their BNs and a foldable downsample (or None)."""
    folded = []
    for conv, bn in zip(convs, norms):
        folded += fold_gemm(conv, bn, dtype)
    if downsample is None:
        return FoldedBottleneck(*folded, None, None, 1)
    ds_weight, ds_bias = fold_conv(downsample[0], downsample[1], dtype)
    return FoldedBottleneck(*folded, ds_weight, ds_bias, downsample[0].stride[0])
