"""The dense ResNet baselines: mmdet's module as built, and what a deployer would run.

``dense_variants(resnet, x)`` returns callables of the same weights on the same input:

* ``nchw``: mmdet's ``ResNet`` as built (NCHW, BN as separate passes), eager;
* ``cl_folded``: every BN folded into the conv before it (``fold_resnet``), weights and input
  channels-last (cuDNN / oneDNN then run NHWC kernels with no layout conversions), eager;
* on CUDA also ``nchw_graph`` and ``cl_folded_graph``: the same replayed from CUDA graphs
  (``CUDAGraphCache``, outputs cloned as the LAS backbone's are), and with ``compile=True``
  ``compiled_graph``: ``torch.compile(cl_folded, mode='max-autotune-no-cudagraphs')``
  replayed from a CUDA graph (minutes of compilation for a ResNet-101).

The outputs of the channels-last variants stay channels-last (FPN's convs take them as they
are), which only favours the dense side.
"""
import copy

import torch
import torch.nn as nn
from torch.nn.modules.batchnorm import _BatchNorm

from ..ops.cuda_graph import CUDAGraphCache


@torch.no_grad()
def _fold_into(parent, conv_name, norm_name):
    conv, bn = getattr(parent, conv_name), getattr(parent, norm_name)
    if not isinstance(bn, _BatchNorm) or bn.running_var is None:
        return
    scale = bn.weight.float() / torch.sqrt(bn.running_var.float() + bn.eps)
    shift = bn.bias.float() - bn.running_mean.float() * scale
    if conv.bias is not None:
        shift = shift + conv.bias.float() * scale
    dtype = conv.weight.dtype
    conv.weight.copy_((conv.weight.float() * scale[:, None, None, None]).to(dtype))
    conv.bias = nn.Parameter(shift.to(dtype), requires_grad=False)
    setattr(parent, norm_name, nn.Identity())


def _fold_block(block):
    """Fold the BNs of an mmdet ``Bottleneck`` / ``BasicBlock`` (and its downsample) in place."""
    from mmdet.models.backbones.resnet import BasicBlock, Bottleneck
    if isinstance(block, (Bottleneck, BasicBlock)):
        n = 3 if isinstance(block, Bottleneck) else 2
        for i in range(1, n + 1):
            _fold_into(block, f'conv{i}', getattr(block, f'norm{i}_name'))
    ds = block.downsample
    if isinstance(ds, nn.Sequential):
        for i in range(len(ds) - 1):
            if isinstance(ds[i], nn.Conv2d) and isinstance(ds[i + 1], _BatchNorm):
                _fold_into(ds, str(i), str(i + 1))


def fold_block(block):
    """A channels-last copy of an mmdet bottleneck (eval) with its BatchNorms folded: one block
    of the deployed dense network (``fold_resnet``)."""
    block = copy.deepcopy(block).eval()
    _fold_block(block)
    return block.to(memory_format=torch.channels_last)


def fold_resnet(resnet):
    """A channels-last copy of mmdet ``ResNet`` ``resnet`` (eval) with every BatchNorm folded
    into the conv before it: stem, conv1..conv3 of each bottleneck, downsamples."""
    model = copy.deepcopy(resnet)
    model.eval()  # (mmdet's ResNet.train returns None: no chaining)
    if not model.deep_stem:
        _fold_into(model, 'conv1', model.norm1_name)
    for name in model.res_layers:
        for block in getattr(model, name):
            _fold_block(block)
    return model.to(memory_format=torch.channels_last)


def dense_variants(resnet, x, compile=False):
    """``{name: fn()}`` timing callables of the dense baselines on input ``x`` (see module
    doc); each returns the backbone's outputs. Call under ``torch.no_grad()``."""
    folded = fold_resnet(resnet)
    x_cl = x.contiguous(memory_format=torch.channels_last)
    variants = {'nchw': lambda: resnet(x), 'cl_folded': lambda: folded(x_cl)}
    if x.is_cuda:
        graphs = {}

        def graphed(name, model, inp):
            cache = graphs.setdefault(name, CUDAGraphCache(max_entries=2, name=name))
            return lambda: cache(model, inp)
        variants['nchw_graph'] = graphed('nchw_graph', resnet, x)
        variants['cl_folded_graph'] = graphed('cl_folded_graph', folded, x_cl)
        if compile:
            compiled = torch.compile(folded, mode='max-autotune-no-cudagraphs')
            compiled(x_cl)  # compile and autotune here, not inside a graph's warm-up
            variants['compiled_graph'] = graphed('compiled_graph', compiled, x_cl)
    return variants


# LASResNet arguments that mmdet's ResNet does not take.
LAS_ONLY_ARGS = ('type', 'granularity', 'tau', 'sparse_inference', 'masker_cfg', 'cuda_graph',
                 'cuda_graph_cache', 'init_cfg')


def dense_twin(las_cfg, las):
    """mmdet's ``ResNet`` with the arguments of LASResNet config ``las_cfg`` and the weights of
    ``las`` (its maskers left out), on ``las``'s device and dtype, in eval mode."""
    from mmdet.models.backbones import ResNet
    dense = ResNet(**{k: v for k, v in las_cfg.items() if k not in LAS_ONLY_ARGS})
    missing, unexpected = dense.load_state_dict(las.state_dict(), strict=False)
    if missing or not all('masker' in k for k in unexpected):
        raise RuntimeError(f'dense twin does not match: missing {missing[:3]}, unexpected '
                           f'{[k for k in unexpected if "masker" not in k][:3]}')
    param = next(las.parameters())
    dense.to(param.device, param.dtype)
    dense.eval()  # (mmdet's ResNet.train returns None: no chaining)
    return dense
