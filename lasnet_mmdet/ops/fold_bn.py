"""Eval-mode BatchNorm folded into the convs of a LAS bottleneck, cached on the block.

Both backends run GEMMs of the form ``rows(K) @ W(K, N) + bias``, so the folded weights are
stored as K x N matrices, with the 3x3 conv's K ordered (dy, dx, c_in) to match the order in
which its nine taps are gathered. The cache is keyed on every parameter's and buffer's
``_version`` (bumped by any in-place update: optimiser steps, BN running stats in training,
``load_state_dict``) and ``data_ptr`` (``.to()``/``.cuda()``), so it never goes stale.
"""
import torch

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
def folded_downsample(block, dtype):
    """``(weight, bias, stride)`` of a ``Sequential(conv1x1, BN)`` downsample, else None."""
    ds = block.downsample
    if not (isinstance(ds, torch.nn.Sequential) and len(ds) == 2
            and isinstance(ds[0], torch.nn.Conv2d) and ds[0].bias is None
            and ds[0].kernel_size == (1, 1) and ds[0].groups == 1
            and isinstance(ds[1], torch.nn.modules.batchnorm._BatchNorm)
            and ds[1].running_var is not None):
        return None
    key = (dtype, ) + tuple((t.data_ptr(), t._version)
                            for t in (*ds.parameters(), *ds.buffers()))
    cached = getattr(block, _CACHE_ATTR + '_ds', None)
    if cached is not None and cached[0] == key:
        return cached[1]
    scale, shift = _bn_scale_shift(ds[1])
    weight = (ds[0].weight * scale[:, None, None, None]).to(dtype)
    folded = (weight.contiguous(memory_format=torch.channels_last), shift.to(dtype),
              ds[0].stride)
    object.__setattr__(block, _CACHE_ATTR + '_ds', (key, folded))
    return folded
