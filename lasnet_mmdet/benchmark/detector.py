"""A whole detector's ``predict()`` with the LAS backbone or its dense twin, as mmdet's test
loop runs it: eager, fp32 weights, lower precision only through ``torch.autocast`` (what
mmengine's ``TestLoop(fp16=True)`` does), never ``model.half()``."""
import copy

import torch

from .dense import dense_twin

AUTOCAST_DTYPES = {'fp32': None, 'fp16': torch.float16, 'bf16': torch.bfloat16}


class DetectorBench:
    """The detector of mmdet config ``cfg`` with LASResNet config ``backbone_cfg`` (random
    weights: latency does not depend on them), and the same detector (same neck and heads,
    same backbone weights) with mmdet's dense ResNet: ``predict_fn`` swaps backbones."""

    def __init__(self, cfg, backbone_cfg, device):
        from mmdet.registry import MODELS
        mcfg = copy.deepcopy(cfg.model)
        mcfg.backbone = copy.deepcopy(backbone_cfg)
        mcfg.pop('data_preprocessor', None)  # inputs are given already normalised and padded
        self.model = MODELS.build(mcfg).to(device)
        self.model.eval()
        self.backbone_cfg = copy.deepcopy(backbone_cfg)
        self.las = self.model.backbone
        self.dense = dense_twin(backbone_cfg, self.las)
        self._masked = None
        self.device = torch.device(device)

    @property
    def masked(self):
        """The LAS backbone on its dense-masked path (``sparse_inference='off'``: every conv
        dense, the masks applied after), built when first asked for."""
        if self._masked is None:
            self._masked = copy.deepcopy(self.las)
            self._masked.sparse_inference = 'off'
        return self._masked

    def backbone(self, name):
        """``'dense'`` (mmdet's ResNet), ``'las'`` or ``'las_masked'``."""
        if name == 'las_masked':
            return self.masked  # built on first use
        return {'dense': self.dense, 'las': self.las}[name]

    def load_checkpoint(self, filename):
        """The detector's weights from an mmdet checkpoint of this config (strict: every
        weight must match); the dense twin takes the new backbone weights."""
        from mmengine.runner import load_checkpoint
        self.model.backbone = self.las
        load_checkpoint(self.model, filename, map_location=self.device, strict=True,
                        logger='silent')
        self.dense = dense_twin(self.backbone_cfg, self.las)
        self._masked = None

    def samples(self, batch, h, w):
        from mmdet.structures import DetDataSample
        meta = dict(img_shape=(h, w), ori_shape=(h, w), pad_shape=(h, w),
                    scale_factor=(1.0, 1.0), batch_input_shape=(h, w))
        return [DetDataSample(metainfo=meta) for _ in range(batch)]

    def predict_fn(self, backbone, x, dtype='fp32'):
        """``fn()``: ``model.predict(x, samples)`` with ``backbone`` (see ``backbone()``),
        under autocast to ``dtype`` unless fp32."""
        samples = self.samples(x.shape[0], *x.shape[-2:])
        module = self.backbone(backbone)
        amp_dtype = AUTOCAST_DTYPES[dtype]

        def fn():
            self.model.backbone = module
            with torch.no_grad(), torch.autocast(self.device.type, dtype=amp_dtype,
                                                 enabled=amp_dtype is not None):
                return self.model.predict(x, copy.deepcopy(samples))
        return fn

    def images_fn(self, backbone, batches, dtype='fp32', backbone_only=False):
        """``fn()``: ``predict()`` (or, ``backbone_only``, the backbone alone) of every
        ``(inputs, data_samples)`` of ``batches`` in turn, with ``backbone`` (see
        ``backbone()``), under autocast to ``dtype`` unless fp32; returns the last results."""
        module = self.backbone(backbone)
        amp_dtype = AUTOCAST_DTYPES[dtype]

        def fn():
            self.model.backbone = module
            out = None
            with torch.no_grad(), torch.autocast(self.device.type, dtype=amp_dtype,
                                                 enabled=amp_dtype is not None):
                for inputs, samples in batches:
                    out = module(inputs) if backbone_only else \
                        self.model.predict(inputs, copy.deepcopy(samples))
            return out
        return fn
