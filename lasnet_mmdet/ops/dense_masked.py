"""The dense-masked computation of a LAS bottleneck, from its coarse mask.

The definition the sparse backends must reproduce (``LASBottleneck.dense_masked``), and the
fallback of ``backend='auto'`` for blocks they cannot run.
"""
from ..models.layers.masker import upsample_mask
from .patches import conv_out


def dense_masked_forward(block, x, coarse):
    mask = upsample_mask(coarse, block.granularity, conv_out(x.shape[-2], block.stride),
                         conv_out(x.shape[-1], block.stride))
    return block.dense_masked(x, mask)
