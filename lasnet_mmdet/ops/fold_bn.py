"""Eval-mode BatchNorm folded into the convs of a LAS bottleneck, cached on the block.

Both backends run GEMMs of the form ``rows(K) @ W(K, N) + bias``, so the folded weights are
stored as K x N matrices, with the 3x3 conv's K ordered (dy, dx, c_in) to match the order in
which its nine taps are gathered. The cache is keyed on every parameter's and buffer's
``_version`` (bumped by any in-place update: optimiser steps, BN running stats in training,
``load_state_dict``) and ``data_ptr`` (``.to()``/``.cuda()``), so it never goes stale.
"""
import torch
import torch.nn.functional as F

_CACHE_ATTR = '_las_folded_cache'


def _bn_scale_shift(bn):
    scale = bn.weight / torch.sqrt(bn.running_var + bn.eps)
    return scale, bn.bias - bn.running_mean * scale


def _fold(conv, bn, dtype):
    scale, shift = _bn_scale_shift(bn)
    w = conv.weight * scale[:, None, None, None]  # (C_out, C_in, kh, kw)
    # K x N with K ordered (kh, kw, c_in): the gather order of the taps.
    w = w.permute(2, 3, 1, 0).reshape(-1, w.shape[0])
    return w.to(dtype).contiguous(), shift.to(dtype).contiguous()


def _key(block, dtype):
    tensors = [t for m in (block.conv1, block.norm1, block.conv2, block.norm2, block.conv3,
                           block.norm3) for t in (*m.parameters(), *m.buffers())]
    return (dtype, ) + tuple((t.data_ptr(), t._version) for t in tensors)


@torch.no_grad()
def folded_weights(block, dtype):
    """``dict(w1, b1, w2, b2, w3, b3)`` of ``block`` in ``dtype`` (K x N weights, N biases)."""
    key = _key(block, dtype)
    cached = getattr(block, _CACHE_ATTR, None)
    if cached is not None and cached[0] == key:
        return cached[1]
    folded = {}
    for i, (conv, bn) in enumerate(((block.conv1, block.norm1), (block.conv2, block.norm2),
                                    (block.conv3, block.norm3)), start=1):
        folded[f'w{i}'], folded[f'b{i}'] = _fold(conv, bn, dtype)
    # A plain attribute, not a buffer: never saved in checkpoints.
    object.__setattr__(block, _CACHE_ATTR, (key, folded))
    return folded


@torch.no_grad()
def folded_conv(conv, bn, dtype):
    """``(weight, bias)`` of ``conv`` followed by eval-mode ``bn``, the weight 4-D and
    channels-last (the layout oneDNN and cuDNN then pick for the output), cached on ``conv``."""
    key = (dtype, ) + tuple((t.data_ptr(), t._version)
                            for t in (*conv.parameters(), *bn.parameters(), *bn.buffers()))
    cached = getattr(conv, _CACHE_ATTR, None)
    if cached is not None and cached[0] == key:
        return cached[1]
    scale, shift = _bn_scale_shift(bn)
    weight = conv.weight * scale[:, None, None, None]
    if conv.bias is not None:
        shift = shift + conv.bias * scale
    folded = (weight.to(dtype).contiguous(memory_format=torch.channels_last), shift.to(dtype))
    object.__setattr__(conv, _CACHE_ATTR, (key, folded))
    return folded


def is_folded_downsample(ds):
    """Whether downsample ``ds`` is a 1x1 conv + eval BN that ``folded_conv`` can fold."""
    return (isinstance(ds, torch.nn.Sequential) and len(ds) == 2
            and isinstance(ds[0], torch.nn.Conv2d) and ds[0].kernel_size == (1, 1)
            and ds[0].padding == (0, 0) and ds[0].groups == 1
            and isinstance(ds[1], torch.nn.modules.batchnorm._BatchNorm)
            and ds[1].running_var is not None)


def downsample_residual(block, x):
    """The residual branch of ``block`` on channels-last ``x``: ``x`` itself (identity), else
    the downsample's output (fresh, channels-last), its conv and BN folded into one conv."""
    ds = block.downsample
    if ds is None:
        return x
    if is_folded_downsample(ds):
        weight, bias = folded_conv(ds[0], ds[1], x.dtype)
        out = F.conv2d(x, weight, bias, ds[0].stride)
    else:  # e.g. avg_down: run the module as built
        out = ds(x)
    return out.contiguous(memory_format=torch.channels_last)
