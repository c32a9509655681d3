import torch
import torch.nn as nn

from lasnet_mmdet.models.backbones.las_resnet import LASBottleneck
from lasnet_mmdet.models.layers.masker import random_coarse_mask
from lasnet_mmdet.ops import BACKENDS, sparse_bottleneck
from lasnet_mmdet.ops.geometry import conv_out, upsample_mask


def randomise_bn(module, seed=0):
    """Non-trivial BN statistics and affine parameters (so folding errors show)."""
    g = torch.Generator().manual_seed(seed)
    for m in module.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            n = m.num_features
            m.running_mean.copy_(torch.rand(n, generator=g) - 0.5)
            m.running_var.copy_(torch.rand(n, generator=g) * 1.5 + 0.5)
            m.weight.data.copy_(torch.rand(n, generator=g) + 0.5)
            m.bias.data.copy_(torch.rand(n, generator=g) - 0.5)
    return module


def make_block(inplanes, planes, granularity, stride=1, downsample=True, seed=0, **kwargs):
    torch.manual_seed(seed)
    down = None
    if downsample:
        down = nn.Sequential(
            nn.Conv2d(inplanes, planes * 4, 1, stride, bias=False), nn.BatchNorm2d(planes * 4))
    block = LASBottleneck(inplanes, planes, granularity=granularity, stride=stride,
                          downsample=down, **kwargs)
    return randomise_bn(block, seed).eval()


def coarse_for(block, x, rate, seed=1):
    s, g = block.stride, block.granularity
    out_h, out_w = (x.shape[2] - 1) // s + 1, (x.shape[3] - 1) // s + 1
    return random_coarse_mask(x.shape[0], -(-out_h // g), -(-out_w // g), rate,
                              torch.Generator().manual_seed(seed), x.device).to(x.dtype)


def assert_close_to_scale(out, ref, rtol):
    """Max abs error within ``rtol`` of the activation scale (max |ref|)."""
    assert out.shape == ref.shape
    scale = ref.abs().max().clamp_min(1e-6)
    err = (out.float() - ref.float()).abs().max()
    assert err <= rtol * scale, f'max error {err:.3g} > {rtol} x scale {scale:.3g}'


def dense_masked_forward(block, x, coarse):
    """The definition the sparse ops reproduce: the block's dense-masked computation."""
    mask = upsample_mask(coarse, block.granularity, conv_out(x.shape[2], block.stride),
                         conv_out(x.shape[3], block.stride))
    return block.dense_masked(x, mask)


def sparse_forward(block, x, coarse, backend, reuse_output=False):
    """The ops' tensor API on ``block``'s folded weights."""
    # (an unknown backend gets the torch layout: sparse_bottleneck must refuse it by name)
    layout_of = backend if backend in BACKENDS else 'torch'
    return sparse_bottleneck(x, coarse, block.folded_weights(x.dtype, layout_of),
                             block.granularity, block.stride, backend, reuse_output=reuse_output)
