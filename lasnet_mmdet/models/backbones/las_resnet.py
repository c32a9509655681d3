"""LAS-ResNet: a ResNet whose bottlenecks compute only on the patches a learned mask selects.

Read top to bottom: ``LASBottleneck`` (mmdet's Bottleneck plus a masker; it decides how it
runs: dense-masked, or sparse through ``lasnet_mmdet.ops``), the per-block multiply-accumulate
(MAC) bookkeeping, then ``LASResNet`` (mmdet's ResNet with LAS blocks).

Training runs dense-masked: every conv runs densely and the upsampled mask multiplies the
bn3 output before the residual add, so gradients reach the masker through the straight-through
Gumbel mask. Eval runs the same function on the active patches only (``lasnet_mmdet.ops``).
Statistics of the last forward (activation rates, MACs) stay on the modules (``las_stats``),
so the backbone keeps mmdet's contract of returning the tuple of feature maps.

Inference state (the backend each block runs, BN folded into the convs, CUDA graphs per input
shape) is derived once and kept until it can be stale: ``train()``/``eval()``,
``load_state_dict``, ``.to()``/``.half()``, or a change of ``sparse_inference``. Weights edited
in place (or modules replaced) in eval mode need ``backbone.invalidate_cache()``.
"""
import math
import numbers
from contextlib import ExitStack, contextmanager, nullcontext

import torch
import torch.nn.functional as F
import torch.utils.checkpoint as cp
from torch.nn.modules.batchnorm import _BatchNorm
from torch.nn.modules.module import _global_forward_hooks, _global_forward_pre_hooks
from mmdet.models.backbones.resnet import Bottleneck, ResNet
from mmdet.registry import MODELS
from mmengine.logging import print_log

from ...ops import (FUSED_MASKER_WINDOWS, TRITON_DTYPES, fold_bottleneck, fold_conv,
                    is_foldable_downsample, resolve_backend, sparse_bottleneck,
                    sparse_bottleneck_with_masker, weight_layout)
from ...ops.counters import SPLIT_K_SEMAPHORES, counters_for
from ...ops.cuda_graph import CUDAGraphCache
from ...ops.geometry import coarse_shape, conv_out, dilate_mask, upsample_mask
from ...ops.layout import to_nchw
from ...ops.workspace import Workspace, use_workspace
from ..layers.masker import Masker, MaskPin

SPARSE_INFERENCE_MODES = ('auto', 'torch', 'triton', 'off')


def _check_number(name, value, low=None, low_open=False):
    """``value`` as a float; a ValueError naming ``name`` unless a finite number above ``low``."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or \
            not math.isfinite(value):
        raise ValueError(f'{name} must be a finite number, got {value!r}')
    if low is not None and (value <= low if low_open else value < low):
        raise ValueError(f'{name} must be {">" if low_open else ">="} {low}, got {value!r}')
    return float(value)


def sparse_unsupported_reason(block):
    """Why ``block`` cannot run sparse (a sentence), or None when it can (static structure)."""
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
    if block.downsample is not None and not is_foldable_downsample(block.downsample):
        return 'the downsample is not a 1x1 conv + BatchNorm (e.g. avg_down)'
    return None


class LASBottleneck(Bottleneck):
    """mmdet's Bottleneck with a LASNet masker gating conv1..conv3 (identity stays dense).

    Args:
        granularity (int): Patch size S of this block's mask, in output pixels.
        masker_cfg (dict, optional): ``execute_bias`` / ``skip_bias``: the masker's initial
            logit biases (default 5.0 / 0.0: every patch executes at the start of training).
        Other args as :class:`mmdet.models.backbones.resnet.Bottleneck`.
    """

    def __init__(self, inplanes, planes, granularity=1, masker_cfg=None, **kwargs):
        super().__init__(inplanes, planes, **kwargs)
        if self.dilation != 1:
            raise ValueError(f'LASBottleneck supports dilation 1 only, got {self.dilation}')
        self.masker = Masker(inplanes, granularity, stride=self.stride, **(masker_cfg or {}))
        self.tau = 1.0
        self.gumbel_noise = 1.0
        self.sparse_inference = 'off'
        # True only while the backbone knows nobody else can hold this block's input or
        # output (the PyTorch backend may then write the output into a reused workspace
        # buffer; an identity block on the Triton backend updates its input in place).
        self.reuse_output = False
        # (coarse mask, input size) of the last forward; after a CUDA-graph replay
        # (flat masks of all blocks, offset, shape, input size), sliced on first use.
        self._mask_record = None
        self._stats = None
        self.invalidate_cache()

    @property
    def granularity(self):
        return self.masker.granularity

    # --- inference state, derived once ------------------------------------------------------
    def invalidate_cache(self):
        """Forget the resolved backend and the folded weights (weights or mode changed)."""
        self._resolved_for = None
        self._backend = None
        self._folded = {}
        self.masker.use_triton = False

    def train(self, mode=True):
        self.invalidate_cache()
        return super().train(mode)

    def _apply(self, fn, *args, **kwargs):
        self.invalidate_cache()
        return super()._apply(fn, *args, **kwargs)

    def _load_from_state_dict(self, *args, **kwargs):
        self.invalidate_cache()
        return super()._load_from_state_dict(*args, **kwargs)

    def folded_weights(self, dtype, backend):
        """conv1..conv3 (and the downsample) with eval BN folded in, in ``dtype`` and the
        weight layout of sparse ``backend`` (cached)."""
        key = (dtype, backend)
        if key not in self._folded:
            self._folded[key] = fold_bottleneck(
                (self.conv1, self.conv2, self.conv3), (self.norm1, self.norm2, self.norm3),
                self.downsample, dtype, weight_layout(backend, dtype))
        return self._folded[key]

    def masker_columns(self, dtype):
        """The masker's weight as the fused Triton launch takes it (cached)."""
        key = ('masker', dtype)
        if key not in self._folded:
            from ...ops.triton import masker_columns
            self._folded[key] = masker_columns(self.masker.conv2.weight.detach(), dtype)
        return self._folded[key]

    def _fuses_masker(self):
        """Whether this Triton call runs the masker inside conv1's launch: its window fits
        and nothing can tell the masker module was not called (no hook, eval mode)."""
        masker = self.masker
        return (self.stride * self.granularity in FUSED_MASKER_WINDOWS and not masker.training
                and not (_global_forward_hooks or _global_forward_pre_hooks)
                and not any(m._forward_hooks or m._forward_pre_hooks
                            for m in (masker, masker.conv2)))

    def sparse_backend(self, x):
        """'torch' / 'triton' when this call runs sparse, None when it runs dense-masked; the
        masker's fused Triton decision is on exactly when this call runs Triton."""
        backend = self._call_backend(x)
        self.masker.use_triton = backend == 'triton'
        return backend

    def _call_backend(self, x):
        if self.training or self.sparse_inference == 'off':
            return None
        if torch.is_grad_enabled() and any(p.requires_grad for p in self.parameters()):
            if self.sparse_inference != 'auto':
                raise ValueError(f'sparse backend {self.sparse_inference!r}: autograd is '
                                 'recording (sparse execution is for inference: use '
                                 'torch.no_grad())')
            return None
        key = (self.sparse_inference, x.device, x.dtype)
        if self._resolved_for != key:
            self._backend = self._resolve(x.device, x.dtype)
            self._resolved_for = key
        return self._backend

    def _resolve(self, device, dtype):
        reason = sparse_unsupported_reason(self)
        if reason is not None:
            if self.sparse_inference == 'auto':
                return None
            raise ValueError(f'sparse backend {self.sparse_inference!r} cannot run this '
                             f'block: {reason}')
        backend = resolve_backend(self.sparse_inference, device)
        if backend == 'triton' and dtype not in TRITON_DTYPES:
            if self.sparse_inference == 'auto':
                return 'torch'
            raise ValueError(f"sparse backend 'triton' supports {TRITON_DTYPES}, got {dtype}")
        return backend

    # --- forward ----------------------------------------------------------------------------
    def forward(self, x):
        backend = self.sparse_backend(x)
        if backend == 'triton' and self._fuses_masker():
            out, coarse = self._run_fused(x)
            self._mask_record, self._stats = (coarse, tuple(x.shape[-2:])), None
            return out
        out_h, out_w = conv_out(x.shape[-2], self.stride), conv_out(x.shape[-1], self.stride)
        # Sampled once, outside the checkpointed function: recomputation must not redraw noise.
        coarse = self.masker(x, out_h, out_w, self.tau, self.gumbel_noise)
        self._mask_record, self._stats = (coarse, tuple(x.shape[-2:])), None
        return self._run(x, coarse, backend)

    def _run_fused(self, x):
        """``(output, coarse mask)``: the masker decides in conv1's Triton launch (or a pinned
        mask replaces its decision, as ``Masker.forward`` does)."""
        pin, run_masker = None, True
        if self.masker.pin is not None:
            shape = coarse_shape(x.shape[0], *x.shape[-2:], self.stride, self.granularity)
            pin = self.masker.pin(shape, x.device, x.dtype)
            run_masker = self.masker.pin.run_masker
        return sparse_bottleneck_with_masker(
            x, self.masker_columns(x.dtype), self.masker.conv2.bias.detach(),
            self.folded_weights(x.dtype, 'triton'), self.granularity, self.stride,
            reuse_output=self.reuse_output, pin=pin, run_masker=run_masker)

    def forward_coarse(self, x, coarse):
        """The block's output on ``x`` under a given coarse mask (the masker is not run)."""
        return self._run(x, coarse, self.sparse_backend(x))

    def _run(self, x, coarse, backend):
        if backend is not None:
            return sparse_bottleneck(x, coarse, self.folded_weights(x.dtype, backend),
                                     self.granularity, self.stride, backend,
                                     reuse_output=self.reuse_output)
        mask = upsample_mask(coarse, self.granularity, conv_out(x.shape[-2], self.stride),
                             conv_out(x.shape[-1], self.stride))
        if self.with_cp and x.requires_grad:
            return cp.checkpoint(self.dense_masked, x, mask, use_reentrant=False)
        return self.dense_masked(x, mask)

    def dense_masked(self, x, mask):
        """Every conv dense, ``mask`` (full resolution) on the bn3 output, then the residual.

        In training the mask multiplies (its straight-through gradient reaches the masker);
        in eval skipped pixels are replaced by 0, so a NaN/Inf in a skipped patch's masked
        branch never reaches the output, exactly as in the sparse path, which never computes
        it (0 * NaN would be NaN).
        """
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
        if self.training:
            out = out * mask
        else:
            out = torch.where(mask > 0, out, torch.zeros((), dtype=out.dtype,
                                                         device=out.device))
        return self.relu(out + identity)

    # --- bookkeeping ------------------------------------------------------------------------
    def dense_macs(self, in_h, in_w):
        """Per-image MACs of each part at this input size (the masker's as LASNet counts it)."""
        out_h, out_w = conv_out(in_h, self.stride), conv_out(in_w, self.stride)
        mid_h, mid_w = conv_out(in_h, self.conv1_stride), conv_out(in_w, self.conv1_stride)
        cin, mid, cout = self.inplanes, self.planes, self.planes * self.expansion
        cells = math.ceil(out_h / self.granularity) * math.ceil(out_w / self.granularity)
        return dict(
            masker=cin * cells + (2 * cin + cin) * cells,
            conv1=cin * mid * mid_h * mid_w,
            conv2=9 * mid * mid * out_h * out_w,
            conv3=mid * cout * out_h * out_w,
            downsample=cin * cout * out_h * out_w if self.downsample is not None else 0)

    def _recorded_mask(self):
        """``(coarse mask, input size)`` of the last forward, or None."""
        record = self._mask_record
        if record is not None and len(record) == 4:
            flat, offset, shape, in_hw = record
            record = (flat[offset:offset + math.prod(shape)].view(shape), in_hw)
            self._mask_record = record
        return record

    @property
    def last_coarse_mask(self):
        """The coarse mask ``(B, 1, h, w)`` of the last forward (one value per SxS patch)."""
        record = self._recorded_mask()
        return None if record is None else record[0]

    @property
    def last_mask(self):
        """Executed output pixels of the last forward, ``(B, 1, H_o, W_o)`` float in {0, 1}."""
        record = self._recorded_mask()
        if record is None:
            return None
        coarse, (in_h, in_w) = record
        return upsample_mask(coarse, self.granularity, conv_out(in_h, self.stride),
                             conv_out(in_w, self.stride))

    @property
    def stats(self):
        """Rate r (differentiable), dilated rate r_dil and per-image MACs of the last forward,
        as batch means and per image (``*_per_image``, shape (B,)); float32 whatever the
        model's dtype. Computed on first access: inference pays nothing for bookkeeping
        nobody reads."""
        record = self._recorded_mask()
        if self._stats is None and record is not None:
            coarse, (in_h, in_w) = record
            mid_h, mid_w = conv_out(in_h, self.conv1_stride), conv_out(in_w, self.conv1_stride)
            mask = self.last_mask.float()
            with torch.no_grad():
                rate_dil = dilate_mask(mask, self.conv2_stride, mid_h, mid_w).mean((1, 2, 3))
            rate = mask.mean((1, 2, 3))
            macs = self.dense_macs(in_h, in_w)
            dynamic = (macs['masker'] + macs['downsample'] + macs['conv1'] * rate_dil
                       + (macs['conv2'] + macs['conv3']) * rate)
            self._stats = dict(rate=rate.mean(), rate_per_image=rate,
                               rate_dil=rate_dil.mean(), rate_dil_per_image=rate_dil,
                               macs_dense=float(sum(macs.values())),
                               macs_dynamic=dynamic.mean(), macs_dynamic_per_image=dynamic)
        return self._stats


def _nchw_copy(t):
    """A fresh NCHW copy of a CUDA-graph output (``CUDAGraphCache(copy_out=...)``)."""
    return to_nchw(t, fresh=True, use_triton=True)


def _validate_granularity(granularity, num_stages):
    if isinstance(granularity, numbers.Real) and not isinstance(granularity, bool):
        granularity = (granularity, ) * num_stages
    if isinstance(granularity, (str, bytes)) or not hasattr(granularity, '__iter__'):
        raise ValueError(f'granularity must be an integer S or one S per stage, got '
                         f'{granularity!r}')
    granularity = tuple(granularity)
    if len(granularity) != num_stages:
        raise ValueError(f'granularity needs one S per stage ({num_stages} stages), '
                         f'got {granularity!r}')
    for s in granularity:
        if isinstance(s, bool) or not isinstance(s, numbers.Real) or int(s) != s or s < 1:
            raise ValueError(f'granularity values must be integers >= 1, got {granularity!r}')
    return tuple(int(s) for s in granularity)


def _validate_masker_cfg(masker_cfg):
    if masker_cfg is None:
        return None
    if not isinstance(masker_cfg, dict):
        raise ValueError(f'masker_cfg must be a dict, got {masker_cfg!r}')
    unknown = set(masker_cfg) - {'execute_bias', 'skip_bias'}
    if unknown:
        raise ValueError(f'masker_cfg takes execute_bias and skip_bias, got {sorted(unknown)}')
    return {k: _check_number(f'masker_cfg.{k}', v) for k, v in masker_cfg.items()}


@MODELS.register_module()
class LASResNet(ResNet):
    """Latency-aware spatial-wise dynamic ResNet (LASNet, NeurIPS 2022) as an mmdet backbone.

    All of mmdet's ``ResNet`` arguments keep their meaning (``frozen_stages`` also freezes and
    eval()s the maskers of the frozen stages, as in LASNet).

    Args:
        depth (int): 50, 101 or 152.
        granularity (int | Sequence[int]): Patch size S of the masks, one per stage.
        tau (float): Gumbel-softmax temperature (``LatencyLossHook`` schedules it).
        gumbel_noise (float): Scale of the Gumbel noise of the training masks, >= 0: 1 is
            LASNet's sampling, 0 trains on the eval decision (``LatencyLossHook`` can anneal it).
        sparse_inference (str): Eval-mode execution: 'auto' (Triton on CUDA, PyTorch on CPU),
            'torch', 'triton', or 'off' (dense convs times the mask, as in training; no
            Triton kernel runs at all).
        masker_cfg (dict, optional): The maskers' initial biases,
            ``dict(execute_bias=5.0, skip_bias=0.0)`` (applied by ``init_weights``).
        cuda_graph (bool): In eval with the Triton backend, capture the sparse backbone in a
            CUDA graph per input shape (and dtype / autocast state) and replay it: removes
            the host overhead of ~200 small launches. Up to ``cuda_graph_cache`` graphs are
            kept (least recently used evicted). Off while forward hooks are registered on
            any module of the stages (a replay would not call them).
        cuda_graph_cache (int): How many graphs to keep.
    """

    arch_settings = {
        50: (LASBottleneck, (3, 4, 6, 3)),
        101: (LASBottleneck, (3, 4, 23, 3)),
        152: (LASBottleneck, (3, 8, 36, 3)),
    }

    def __init__(self, depth, granularity=(4, 4, 2, 1), tau=1.0, gumbel_noise=1.0,
                 sparse_inference='auto', masker_cfg=None, cuda_graph=True, cuda_graph_cache=16,
                 **kwargs):
        if depth not in self.arch_settings:
            raise ValueError(f'LASResNet depth must be one of {sorted(self.arch_settings)}, '
                             f'got {depth!r}')
        if sparse_inference not in SPARSE_INFERENCE_MODES:
            raise ValueError(f'sparse_inference must be one of {SPARSE_INFERENCE_MODES}, '
                             f'got {sparse_inference!r}')
        if not isinstance(cuda_graph, bool):
            raise ValueError(f'cuda_graph must be True or False, got {cuda_graph!r}')
        if isinstance(cuda_graph_cache, bool) or not isinstance(cuda_graph_cache, int) or \
                cuda_graph_cache < 1:
            raise ValueError(f'cuda_graph_cache must be an integer >= 1, got '
                             f'{cuda_graph_cache!r}')
        num_stages = kwargs.get('num_stages', 4)
        self.granularity = _validate_granularity(granularity, num_stages)
        self.masker_cfg = _validate_masker_cfg(masker_cfg)
        super().__init__(depth, **kwargs)
        if self.style != 'pytorch' and sparse_inference in ('torch', 'triton'):
            raise ValueError(f'sparse inference needs style="pytorch", got {self.style!r}')
        self.sparse_inference = sparse_inference
        self.tau = tau
        self.gumbel_noise = gumbel_noise
        self.cuda_graph = cuda_graph
        self._warned_no_cost_loss = False
        self.cost_loss_attached = False  # set by LatencyLossHook
        self.input_size = None  # (H, W) of the last forward's input
        # Scratch buffers of the PyTorch sparse backend, kept between forwards (never saved).
        self._workspace = Workspace()
        # A replay's stage outputs (channels-last) leave the graph's memory through their NCHW
        # conversion: one copy, where an in-graph conversion and the cache's clone were two.
        self._graphs = CUDAGraphCache(max_entries=cuda_graph_cache, copy_out=_nchw_copy)
        self._pin_epoch = 0  # bumped whenever pinned masks change (graphs hold the masks)
        self._mask_layouts = {}
        self._hooked = None  # whether hooks saw the blocks at the last eval forward
        self._stage_hooks = None  # the hook dicts of every module of the stages (hook check)
        self.invalidate_cache()

    def make_res_layer(self, **kwargs):
        stage = int(math.log2(kwargs['planes'] // self.base_channels))
        kwargs['granularity'] = self.granularity[stage]
        kwargs['masker_cfg'] = self.masker_cfg
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

    def block_input_sizes(self, in_h, in_w):
        """``(name, block, (h, w))``: the input size of every LAS block for an image size."""
        # The stem (7x7 or deep, stride 2) and the max-pool (stride 2) each halve the size.
        h, w = conv_out(conv_out(in_h, 2), 2), conv_out(conv_out(in_w, 2), 2)
        sizes = []
        for name, block in self.las_blocks():
            sizes.append((name, block, (h, w)))
            h, w = conv_out(h, block.stride), conv_out(w, block.stride)
        return sizes

    @property
    def tau(self):
        return self._tau

    @tau.setter
    def tau(self, value):
        self._tau = _check_number('tau', value, low=0, low_open=True)
        for _, block in self.las_blocks():
            block.tau = self._tau

    @property
    def gumbel_noise(self):
        return self._gumbel_noise

    @gumbel_noise.setter
    def gumbel_noise(self, value):
        self._gumbel_noise = _check_number('gumbel_noise', value, low=0)
        for _, block in self.las_blocks():
            block.gumbel_noise = self._gumbel_noise

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
        if hasattr(self, '_graphs'):
            self.invalidate_cache()

    # --- inference state, derived once ------------------------------------------------------
    def invalidate_cache(self):
        """Forget everything derived from the weights for inference: folded BN, resolved
        backends, CUDA graphs, the hook check's module list. Automatic on
        ``train()``/``eval()``, ``load_state_dict``, ``.to()``; call it after editing weights
        in place (or replacing modules) in eval mode."""
        self._stem_folded = {}
        self._backends = {}
        self._graphs.clear()
        self._stage_hooks = None
        for _, block in self.las_blocks():
            block.invalidate_cache()

    def train(self, mode=True):
        if mode:
            self._workspace.release()
        if hasattr(self, '_graphs'):
            self._stem_folded = {}
            self._graphs.clear()
            self._stage_hooks = None
        super().train(mode)  # mmdet's ResNet.train returns None; nn.Module's returns self
        return self

    def _apply(self, fn, *args, **kwargs):
        if hasattr(self, '_graphs'):
            self._stem_folded = {}
            self._graphs.clear()
        return super()._apply(fn, *args, **kwargs)

    def _load_from_state_dict(self, *args, **kwargs):
        self._stem_folded = {}
        self._graphs.clear()
        return super()._load_from_state_dict(*args, **kwargs)

    def stem_macs(self, in_h, in_w):
        """Per-image MACs of the stem conv and max-pool (always dense)."""
        if self.deep_stem:
            raise NotImplementedError('MAC counting of the deep stem is not implemented')
        stem_h, stem_w = conv_out(in_h, 2), conv_out(in_w, 2)
        pool_h, pool_w = conv_out(stem_h, 2), conv_out(stem_w, 2)
        stem = self.conv1.in_channels * self.stem_channels * 49 * stem_h * stem_w
        return stem + self.stem_channels * pool_h * pool_w * 9

    # --- forward ----------------------------------------------------------------------------
    def forward(self, x):
        if self.training and not self.cost_loss_attached and not self._warned_no_cost_loss:
            print_log('LASResNet is training without LatencyLossHook: no cost loss is applied, '
                      'so nothing drives the masks towards a target rate.',
                      logger='current', level=30)
            self._warned_no_cost_loss = True
        self.input_size = tuple(x.shape[-2:])
        if self.training or self.sparse_inference == 'off' or self._records_grad():
            # (with autograd recording, the blocks run dense-masked, or refuse an explicit
            # sparse backend: sparse execution is for inference)
            outs = super().forward(x)
            # Necks and heads (mmcv's CPU RoIAlign reads raw NCHW memory) get NCHW, as from
            # mmdet's ResNet, whatever layout the input had.
            return tuple(to_nchw(out) for out in outs)
        hooked = self._hooks_see_blocks()
        if hooked != self._hooked:
            for _, block in self.las_blocks():
                # Workspace outputs only where no hook can hold a block's output or input.
                block.reuse_output = not hooked
            self._hooked = hooked
        if self._use_graphs(x, hooked):
            return self._graphed_forward(x)
        with use_workspace(self._workspace):
            return self._sparse_forward(x)

    def _hooks_see_blocks(self):
        """Whether a forward (pre-)hook can see a block's input or output: one on any module
        of the stages (a masker's input is the previous block's output). The modules' hook
        dicts (filled and emptied in place by ``register_forward_hook`` and the handles) are
        listed once until ``train()``/``eval()`` or ``invalidate_cache()`` and read on every
        call: one C-level pass over ~700 dicts (~5 us) instead of two attribute reads per module
        in Python (~30-45 us), on the host path before a graph replay."""
        if _global_forward_hooks or _global_forward_pre_hooks:
            return True
        if self._stage_hooks is None:
            self._stage_hooks = [hooks for name in self.res_layers
                                 for module in getattr(self, name).modules()
                                 for hooks in (module._forward_hooks, module._forward_pre_hooks)]
        return any(self._stage_hooks)

    def _records_grad(self):
        return torch.is_grad_enabled() and any(p.requires_grad for p in self.parameters())

    def _use_graphs(self, x, hooked):
        return (self.cuda_graph and x.is_cuda and not hooked
                and not torch.cuda.is_current_stream_capturing()
                and self._stem_backend(x) == 'triton')

    def _stem_backend(self, x):
        """The backend that runs this forward's sparse blocks ('torch' / 'triton'), by the
        same rule as the blocks (also decides the NCHW conversion); resolved once per mode,
        device and dtype."""
        key = (self.sparse_inference, x.device, self._cast_dtype(x))
        backend = self._backends.get(key)
        if backend is None:
            backend = resolve_backend(self.sparse_inference, x.device)
            if backend == 'triton' and key[2] not in TRITON_DTYPES:
                backend = 'torch'
            self._backends[key] = backend
        return backend

    def _fusable_maxpool(self):
        """``(kernel, stride, padding)`` of the stem's max-pool when ``stem_pool`` can take it
        (a square ``nn.MaxPool2d`` without dilation or ceil mode, as mmdet builds it), else
        None (it then runs on its own)."""
        pool = self.maxpool
        if not isinstance(pool, torch.nn.MaxPool2d) or pool.ceil_mode:
            return None
        args = []
        for value in (pool.kernel_size, pool.stride, pool.padding, pool.dilation):
            value = tuple(value) if isinstance(value, (tuple, list)) else (value, value)
            if len(value) != 2 or value[0] != value[1]:
                return None
            args.append(value[0])
        kernel, stride, padding, dilation = args
        return (kernel, stride, padding) if dilation == 1 and padding <= kernel // 2 else None

    @staticmethod
    def _cast_dtype(x):
        """The dtype the sparse path computes in: autocast's, when autocast is on."""
        device_type = x.device.type
        if torch.is_autocast_enabled(device_type):
            return torch.get_autocast_dtype(device_type)
        return x.dtype

    def _graphed_forward(self, x):
        device_type = x.device.type
        key = (self.sparse_inference, self._pin_epoch, torch.is_autocast_enabled(device_type),
               self._cast_dtype(x))
        *outs, masks = self._graphs(self._forward_and_masks, x, key=key)
        # The graph wrote this call's masks into ``masks``: the blocks' records point there
        # (sliced only when read: no per-block tensor work on the hot path). Plain attributes,
        # set past ``nn.Module.__setattr__`` (its parameter/buffer/module checks cost ~1.5 us
        # a call, 66 calls a ResNet-101 forward, on the host path beside the replay).
        for block, offset, shape, in_hw in self._mask_layout(x.shape[0], *x.shape[-2:]):
            state = block.__dict__
            state['_mask_record'], state['_stats'] = (masks, offset, shape, in_hw), None
        # Replayed outputs are NCHW already (``_nchw_copy``); the cache's eager fallback
        # returns the forward's own channels-last ones.
        return tuple(to_nchw(out, use_triton=True) for out in outs)

    def _mask_layout(self, batch, in_h, in_w):
        """``(block, offset, coarse mask shape, block input size)`` in forward order, the
        offsets into the concatenated masks of ``_forward_and_masks`` (cached per shape)."""
        key = (batch, in_h, in_w)
        if key not in self._mask_layouts:
            layout, offset = [], 0
            for _, block, (h, w) in self.block_input_sizes(in_h, in_w):
                shape = coarse_shape(batch, h, w, block.stride, block.granularity)
                layout.append((block, offset, shape, (h, w)))
                offset += math.prod(shape)
            self._mask_layouts[key] = layout
        return self._mask_layouts[key]

    def _forward_and_masks(self, x):
        outs = self._sparse_forward(x, nchw_outputs=False)
        masks = torch.cat([block.last_coarse_mask.reshape(-1) for _, block in self.las_blocks()])
        return (*outs, masks)

    def _sparse_forward(self, x, nchw_outputs=True):
        """mmdet's ResNet forward on the sparse blocks, in autocast's dtype when it is on, the
        stem's BN folded into its conv (the stem maps are the largest of the network: one pass
        over them fewer; with the Triton backend the conv runs without bias and one launch
        adds the bias, applies the ReLU and max-pools, ``ops.triton.stem_pool``). Each stage
        output is copied to a fresh NCHW tensor as soon as its stage ends, before the
        workspace reuses its buffer (``lasnet_mmdet.ops.workspace``); ``nchw_outputs=False``
        (the graphed Triton forward, no workspace: a stage's output is written by its own
        blocks only) returns the channels-last stage outputs themselves."""
        dtype = self._cast_dtype(x)
        use_triton = self._stem_backend(x) == 'triton'
        with torch.autocast(x.device.type, enabled=False):
            x = x.to(dtype)
            pool = self._fusable_maxpool() if use_triton else None
            if self.deep_stem or not isinstance(self.norm1, _BatchNorm):
                x = self.stem(x) if self.deep_stem else self.relu(self.norm1(self.conv1(x)))
                x = self.maxpool(x)
            else:
                if dtype not in self._stem_folded:
                    self._stem_folded[dtype] = fold_conv(self.conv1, self.norm1, dtype)
                weight, bias = self._stem_folded[dtype]
                if pool is None:
                    x = F.conv2d(x, weight, bias, self.conv1.stride, self.conv1.padding).relu_()
                    x = self.maxpool(x)
                else:
                    from ...ops.triton.stem_pool import stem_pool
                    x = stem_pool(F.conv2d(x, weight, None, self.conv1.stride,
                                           self.conv1.padding), bias, *pool)
            outs = []
            # The Triton blocks' row counters and split-K semaphores, zeroed by one memset for
            # the whole forward.
            blocks = sum(len(getattr(self, name)) for name in self.res_layers)
            with (counters_for(3 * blocks, x.device, semaphores=SPLIT_K_SEMAPHORES)
                  if use_triton else nullcontext()):
                for i, layer_name in enumerate(self.res_layers):
                    x = getattr(self, layer_name)(x)
                    if i in self.out_indices:
                        outs.append(to_nchw(x, fresh=True, use_triton=use_triton)
                                    if nchw_outputs else x)
        return tuple(outs)

    # --- what the last forward did ----------------------------------------------------------
    @property
    def las_stats(self):
        """Statistics of the last forward: per-block rates and per-image backbone MACs
        (float32; ``*_per_image`` entries have one value per image of the batch).

        ``macs_dynamic`` and each ``rate`` are tensors that carry gradient in training.
        """
        blocks = [(name, block.stats) for name, block in self.las_blocks()]
        if any(stats is None for _, stats in blocks):
            raise RuntimeError('las_stats is available only after a forward of the backbone')
        stem = float(self.stem_macs(*self.input_size))
        per_image = stem + sum(stats['macs_dynamic_per_image'] for _, stats in blocks)
        return dict(
            blocks={name: stats for name, stats in blocks},
            macs_dense=stem + sum(stats['macs_dense'] for _, stats in blocks),
            macs_dynamic=per_image.mean(),
            macs_dynamic_per_image=per_image)

    def last_masks(self):
        """``{block name: (B, 1, H_o, W_o) mask}``: the executed pixels of the last forward."""
        masks = {name: block.last_mask for name, block in self.las_blocks()}
        if any(mask is None for mask in masks.values()):
            raise RuntimeError('last_masks is available only after a forward of the backbone')
        return masks

    @contextmanager
    def pinned_masks(self, rate=None, seed=0, masks=None, run_masker=False):
        """Replace every masker's decision by fixed masks, for benchmarks and calibration.

        ``with backbone.pinned_masks(0.5): backbone(x)``: seeded random masks with exactly
        ``round(rate * cells)`` active cells per image, drawn once per input shape and kept
        on the device. ``masks={'layer1.0': coarse, ...}``: these coarse masks (blocks not
        named keep their own decision). ``run_masker``: the maskers still compute their own
        decision (so its cost is timed), which is then unused.
        """
        if (rate is None) == (masks is None):
            raise ValueError('pinned_masks needs exactly one of rate= and masks=')
        if rate is not None:
            rate = _check_number('rate', rate, low=0)
            if rate > 1:
                raise ValueError(f'rate must be in [0, 1], got {rate!r}')
        blocks = dict(self.las_blocks())
        if masks is not None:
            unknown = set(masks) - set(blocks)
            if unknown:
                raise ValueError(f'pinned masks name unknown blocks {sorted(unknown)}; blocks '
                                 f'are {list(blocks)[:3]} ...')
        generator = torch.Generator().manual_seed(seed)
        self._pin_epoch += 1
        try:
            with ExitStack() as stack:
                for name, block in blocks.items():
                    if masks is None:
                        pin = MaskPin(rate, generator, run_masker=run_masker)
                    elif name in masks:
                        pin = MaskPin(mask=masks[name], run_masker=run_masker)
                    else:
                        continue
                    stack.enter_context(block.masker.pinned(pin))
                yield self
        finally:
            self._pin_epoch += 1
            self._graphs.clear()  # graphs captured with these masks hold them
