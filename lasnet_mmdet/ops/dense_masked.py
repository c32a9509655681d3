"""The dense-masked computation of a LAS bottleneck: every conv dense, the mask on bn3's output.

The definition the sparse backends must reproduce, and the fallback of ``backend='auto'`` for
blocks they cannot run (plugins, DCN, caffe style, non-BatchNorm norms).
"""
from ..models.layers.masker import upsample_mask
from .patches import conv_out


def dense_masked_forward(block, x, coarse):
    mask = upsample_mask(coarse, block.granularity, conv_out(x.shape[-2], block.stride),
                         conv_out(x.shape[-1], block.stride))
    out = block.relu(block.norm1(block.conv1(x)))
    if block.with_plugins:
        out = block.forward_plugin(out, block.after_conv1_plugin_names)
    out = block.relu(block.norm2(block.conv2(out)))
    if block.with_plugins:
        out = block.forward_plugin(out, block.after_conv2_plugin_names)
    out = block.norm3(block.conv3(out))
    if block.with_plugins:
        out = block.forward_plugin(out, block.after_conv3_plugin_names)
    identity = x if block.downsample is None else block.downsample(x)
    return block.relu(out * mask + identity)
