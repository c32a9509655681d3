"""LAS-ResNet: a ResNet whose bottlenecks compute only on the patches a learned mask selects.

Read top to bottom: ``LASBottleneck`` (mmdet's Bottleneck plus a masker), the per-block
multiply-accumulate (MAC) bookkeeping, then ``LASResNet`` (mmdet's ResNet with LAS blocks).

Training runs dense-masked: every conv runs densely and the upsampled mask multiplies the
bn3 output before the residual add, so gradients reach the masker through the straight-through
Gumbel mask. Eval runs the same function on the active patches only (``lasnet_mmdet.ops``).
Statistics of the last forward (activation rates, MACs) stay on the modules (``las_stats``),
so the backbone keeps mmdet's contract of returning the tuple of feature maps.
"""
import math
from contextlib import ExitStack, contextmanager

import torch
import torch.nn.functional as F
import torch.utils.checkpoint as cp
from torch.nn.modules.batchnorm import _BatchNorm
from mmdet.models.backbones.resnet import Bottleneck, ResNet
from mmdet.registry import MODELS
from mmengine.logging import print_log

from ...ops.fold_bn import folded_conv
from ...ops.layout import to_nchw
from ...ops.workspace import Workspace, use_workspace
from ..layers.masker import Masker, dilate_mask, upsample_mask

SPARSE_INFERENCE_MODES = ('auto', 'torch', 'triton', 'off')


class LASBottleneck(Bottleneck):
    """mmdet's Bottleneck with a LASNet masker gating conv1..conv3 (identity stays dense).

    Args:
        granularity (int): Patch size S of this block's mask, in output pixels.
        Other args as :class:`mmdet.models.backbones.resnet.Bottleneck`.
    """

    def __init__(self, inplanes, planes, granularity=1, **kwargs):
        super().__init__(inplanes, planes, **kwargs)
        if self.dilation != 1:
            raise ValueError(f'LASBottleneck supports dilation 1 only, got {self.dilation}')
        self.masker = Masker(inplanes, granularity, stride=self.stride)
        self.tau = 1.0
        self.sparse_inference = 'off'
        self._last_mask = None  # (coarse mask, input size) of the last forward
        self._stats = None

    @property
    def granularity(self):
        return self.masker.granularity

    def forward(self, x):
        out_h, out_w = _conv_out(x.shape[-2], self.stride), _conv_out(x.shape[-1], self.stride)
        # Sampled once, outside the checkpointed function: recomputation must not redraw noise.
        coarse = self.masker(x, out_h, out_w, self.tau)
        self._last_mask, self._stats = (coarse, tuple(x.shape[-2:])), None

        if not self.training and self.sparse_inference != 'off':
            from ...ops import las_bottleneck_forward
            return las_bottleneck_forward(self, x, coarse, backend=self.sparse_inference)

        mask = upsample_mask(coarse, self.granularity, out_h, out_w)
        if self.with_cp and x.requires_grad:
            return cp.checkpoint(self.dense_masked, x, mask, use_reentrant=False)
        return self.dense_masked(x, mask)

    def dense_masked(self, x, mask):
        """Every conv dense, ``mask`` (full resolution) on the bn3 output, then the residual."""
        identity = x
        out = self.relu(self.norm1(self.conv1(x)))
        if self.with_plugins:
            out = self.forward_plugin(out, self.after_conv1_plugin_names)
        out = self.relu(self.norm2(self.conv2(out)))
        if self.with_plugins:
            out = self.forward_plugin(out, self.after_conv2_plugin_names)
        out = self.norm3(self.conv3(out))
        if self.with_plugins:
            out = self.forward_plugin(out, self.after_conv3_plugin_names)
        if self.downsample is not None:
            identity = self.downsample(x)
        return self.relu(out * mask + identity)

    # --- bookkeeping ------------------------------------------------------------------------
    def dense_macs(self, in_h, in_w):
        """Per-image MACs of each part at this input size (the masker's as LASNet counts it)."""
        out_h, out_w = _conv_out(in_h, self.stride), _conv_out(in_w, self.stride)
        mid_h, mid_w = _conv_out(in_h, self.conv1_stride), _conv_out(in_w, self.conv1_stride)
        cin, mid, cout = self.inplanes, self.planes, self.planes * self.expansion
        cells = math.ceil(out_h / self.granularity) * math.ceil(out_w / self.granularity)
        return dict(
            masker=cin * cells + (2 * cin + cin) * cells,
            conv1=cin * mid * mid_h * mid_w,
            conv2=9 * mid * mid * out_h * out_w,
            conv3=mid * cout * out_h * out_w,
            downsample=cin * cout * out_h * out_w if self.downsample is not None else 0)

    @property
    def stats(self):
        """Rate r (differentiable), dilated rate r_dil and per-image MACs of the last forward.

        Computed on first access, so inference pays nothing for bookkeeping nobody reads.
        """
        if self._stats is None and self._last_mask is not None:
            coarse, (in_h, in_w) = self._last_mask
            out_h, out_w = _conv_out(in_h, self.stride), _conv_out(in_w, self.stride)
            mid_h, mid_w = _conv_out(in_h, self.conv1_stride), _conv_out(in_w, self.conv1_stride)
            mask = upsample_mask(coarse, self.granularity, out_h, out_w)
            with torch.no_grad():
                rate_dil = dilate_mask(mask, self.conv2_stride, mid_h, mid_w).mean()
            rate = mask.mean()
            macs = self.dense_macs(in_h, in_w)
            dynamic = (macs['masker'] + macs['downsample'] + macs['conv1'] * rate_dil
                       + (macs['conv2'] + macs['conv3']) * rate)
            self._stats = dict(rate=rate, rate_dil=rate_dil, macs_dense=float(sum(macs.values())),
                               macs_dynamic=dynamic)
        return self._stats


def _conv_out(size, stride):
    """Output size of the block's 3x3 (padding 1) or 1x1 conv at ``stride``."""
    return (size - 1) // stride + 1


def _validate_granularity(granularity, num_stages):
    if isinstance(granularity, int):
        granularity = (granularity, ) * num_stages
    granularity = tuple(granularity)
    if len(granularity) != num_stages:
        raise ValueError(f'granularity needs one S per stage ({num_stages} stages), '
                         f'got {granularity!r}')
    for s in granularity:
        if isinstance(s, bool) or int(s) != s or s < 1:
            raise ValueError(f'granularity values must be integers >= 1, got {granularity!r}')
    return tuple(int(s) for s in granularity)


@MODELS.register_module()
class LASResNet(ResNet):
    """Latency-aware spatial-wise dynamic ResNet (LASNet, NeurIPS 2022) as an mmdet backbone.

    All of mmdet's ``ResNet`` arguments keep their meaning (``frozen_stages`` also freezes and
    eval()s the maskers of the frozen stages, as in LASNet).

    Args:
        depth (int): 50, 101 or 152.
        granularity (int | Sequence[int]): Patch size S of the masks, one per stage.
        tau (float): Gumbel-softmax temperature (``LatencyLossHook`` schedules it).
        sparse_inference (str): Eval-mode execution: 'auto' (Triton on CUDA, PyTorch on CPU),
            'torch', 'triton', or 'off' (dense convs times the mask, as in training).
    """

    arch_settings = {
        50: (LASBottleneck, (3, 4, 6, 3)),
        101: (LASBottleneck, (3, 4, 23, 3)),
        152: (LASBottleneck, (3, 8, 36, 3)),
    }

    def __init__(self, depth, granularity=(4, 4, 2, 1), tau=1.0, sparse_inference='auto',
                 **kwargs):
        if depth not in self.arch_settings:
            raise ValueError(f'LASResNet depth must be one of {sorted(self.arch_settings)}, '
                             f'got {depth!r}')
        if sparse_inference not in SPARSE_INFERENCE_MODES:
            raise ValueError(f'sparse_inference must be one of {SPARSE_INFERENCE_MODES}, '
                             f'got {sparse_inference!r}')
        num_stages = kwargs.get('num_stages', 4)
        self.granularity = _validate_granularity(granularity, num_stages)
        super().__init__(depth, **kwargs)
        if self.style != 'pytorch' and sparse_inference in ('torch', 'triton'):
            raise ValueError(f'sparse inference needs style="pytorch", got {self.style!r}')
        self.sparse_inference = sparse_inference
        self.tau = tau
        self._warned_no_cost_loss = False
        self.cost_loss_attached = False  # set by LatencyLossHook
        # Scratch buffers of the PyTorch sparse backend, kept between forwards (never saved).
        self._workspace = Workspace()

    def make_res_layer(self, **kwargs):
        stage = int(math.log2(kwargs['planes'] // self.base_channels))
        kwargs['granularity'] = self.granularity[stage]
        if kwargs.get('init_cfg') is None and self.zero_init_residual and self._kaiming_init:
            kwargs['init_cfg'] = dict(type='Constant', val=0, override=dict(name='norm3'))
        return super().make_res_layer(**kwargs)

    @property
    def _kaiming_init(self):
        # mmdet's ResNet zero-inits the last BN only when it sets its own Kaiming init_cfg.
        return isinstance(self.init_cfg, list) and self.init_cfg[0].get('type') == 'Kaiming'

    def las_blocks(self):
        """``(name, block)`` for every LAS bottleneck, in forward order."""
        for layer_name in self.res_layers:
            for i, block in enumerate(getattr(self, layer_name)):
                yield f'{layer_name}.{i}', block

    @property
    def tau(self):
        return self._tau

    @tau.setter
    def tau(self, value):
        if not value > 0:
            raise ValueError(f'tau must be > 0, got {value!r}')
        self._tau = float(value)
        for _, block in self.las_blocks():
            block.tau = self._tau

    @property
    def sparse_inference(self):
        return self._sparse_inference

    @sparse_inference.setter
    def sparse_inference(self, mode):
        if mode not in SPARSE_INFERENCE_MODES:
            raise ValueError(f'sparse_inference must be one of {SPARSE_INFERENCE_MODES}, '
                             f'got {mode!r}')
        self._sparse_inference = mode
        for _, block in self.las_blocks():
            block.sparse_inference = mode

    def train(self, mode=True):
        if mode:
            self._workspace.release()
        super().train(mode)  # mmdet's ResNet.train returns None; nn.Module's returns self
        return self

    def stem_macs(self, in_h, in_w):
        """Per-image MACs of the stem conv and max-pool (always dense)."""
        if self.deep_stem:
            raise NotImplementedError('MAC counting of the deep stem is not implemented')
        stem_h, stem_w = (in_h - 1) // 2 + 1, (in_w - 1) // 2 + 1
        pool_h, pool_w = (stem_h - 1) // 2 + 1, (stem_w - 1) // 2 + 1
        stem = self.conv1.in_channels * self.stem_channels * 49 * stem_h * stem_w
        return stem + self.stem_channels * pool_h * pool_w * 9

    def forward(self, x):
        if self.training and not self.cost_loss_attached and not self._warned_no_cost_loss:
            print_log('LASResNet is training without LatencyLossHook: no cost loss is applied, '
                      'so nothing drives the masks towards a target rate.',
                      logger='current', level=30)
            self._warned_no_cost_loss = True
        self._input_size = tuple(x.shape[-2:])
        if self.training or self.sparse_inference == 'off':
            outs = super().forward(x)
            # Necks and heads (mmcv's CPU RoIAlign reads raw NCHW memory) get NCHW, as from
            # mmdet's ResNet, whatever layout the input had.
            return tuple(to_nchw(out) for out in outs)
        with use_workspace(self._workspace):
            return self._sparse_forward(x)

    def _sparse_forward(self, x):
        """mmdet's ResNet forward, the stem's BN folded into its conv when nothing records
        gradients (the stem maps are the largest of the network: one pass over them fewer).
        Each stage output is copied to a fresh NCHW tensor as soon as its stage ends, before
        the workspace reuses its buffer (``lasnet_mmdet.ops.workspace``)."""
        stem = (self.conv1, self.norm1)
        if self.deep_stem or not isinstance(self.norm1, _BatchNorm) or (
                torch.is_grad_enabled() and any(p.requires_grad for m in stem
                                                for p in m.parameters())):
            x = self.stem(x) if self.deep_stem else self.relu(self.norm1(self.conv1(x)))
        else:
            weight, bias = folded_conv(self.conv1, self.norm1, x.dtype)
            x = F.conv2d(x, weight, bias, self.conv1.stride, self.conv1.padding).relu_()
        x = self.maxpool(x)
        outs = []
        for i, layer_name in enumerate(self.res_layers):
            x = getattr(self, layer_name)(x)
            if i in self.out_indices:
                outs.append(to_nchw(x, fresh=True))
        return tuple(outs)

    @property
    def las_stats(self):
        """Statistics of the last forward: per-block rates and per-image backbone MACs.

        ``macs_dynamic`` and each ``rate`` are tensors that carry gradient in training.
        """
        blocks = [(name, block.stats) for name, block in self.las_blocks()]
        if any(stats is None for _, stats in blocks):
            raise RuntimeError('las_stats is available only after a forward of the backbone')
        stem = float(self.stem_macs(*self._input_size))
        return dict(
            blocks={name: stats for name, stats in blocks},
            macs_dense=stem + sum(stats['macs_dense'] for _, stats in blocks),
            macs_dynamic=stem + sum(stats['macs_dynamic'] for _, stats in blocks))

    @contextmanager
    def pinned_masks(self, rate, seed=0):
        """Seeded random masks with exactly ``round(rate * cells)`` active cells per image.

        For benchmarking and calibration: ``with backbone.pinned_masks(0.5): backbone(x)``.
        """
        if not 0 <= rate <= 1:
            raise ValueError(f'rate must be in [0, 1], got {rate!r}')
        generator = torch.Generator().manual_seed(seed)
        with ExitStack() as stack:
            for _, block in self.las_blocks():
                stack.enter_context(block.masker.pin(rate, generator))
            yield self
