"""Test/val-time backbone latency, predicted and measured, per evaluated image: the latency
part of the LAS report (``LASReportHook`` derives from it), and on its own the report of a
dense detector, with the same timing and the same metric names, so that a dense model's
results file sits beside the LAS runs' (``tools/test.py --measure-latency`` /
``--latency-profile`` on a dense config)."""
import statistics
import time
from itertools import zip_longest

import torch
from mmengine import dist
from mmengine.hooks import Hook
from mmengine.logging import print_log
from mmdet.registry import HOOKS

from .utils import predictable_resnet_depth, unwrap

_MISSING = object()


def interleave_ranks(parts, dataset_size):
    """Per-rank record lists back in dataset order, the sampler's padding dropped.

    mmengine's DefaultSampler gives rank r the indices r, r + world, r + 2 world, ... of the
    dataset padded to a multiple of world (as mmengine's ``collect_results`` undoes it).
    """
    ordered = [record for group in zip_longest(*parts, fillvalue=_MISSING)
               for record in group if record is not _MISSING]
    return ordered[:dataset_size]


@HOOKS.register_module()
class BackboneLatencyHook(Hook):
    """Records the backbone latency of every evaluated image and reports its mean.

    For any detector's backbone; ``LASReportHook`` adds a LAS backbone's statistics. The
    metrics (``las/pred_latency_ms``, ``las/measured_latency_ms``, ...) have the LAS report's
    names, so ``tools/plot_tradeoff.py`` places a dense model beside the LAS ones. Under DDP
    the records of all ranks are gathered (in the sampler's order, its padding dropped).

    Args:
        profile (str | dict, optional): Hardware profile (preset name or calibrated JSON path)
            on which to report the predicted backbone latency of each image at batch 1
            (``las/pred_latency_ms``; ``las/pred_latency_ratio`` is 1). Here, for a dense
            backbone: the static backbone the LAS runs are compared to (BN folded,
            channels-last), for mmdet's ``ResNet`` as the predictor models it
            (``predictable_resnet_depth``).
        schedule (str, optional): Sparse schedule for a LAS prediction (default: the
            profile's).
        measure (bool): Also time every backbone forward (synchronised wall clock) and report
            the mean and the median per image (``las/measured_latency_ms``,
            ``las/measured_latency_median_ms``; the median is robust to other jobs on a
            shared machine), leaving out each rank's first batch (one-time warm-up:
            allocation, folding, kernel selection) when there are others; its records are
            marked ``"warmup": true``.
        per_image_out (str, optional): Write every image's record (``img_id``, ``img_path``
            and the latencies asked for) and the means to this JSON file.
    """

    priority = 'NORMAL'

    def __init__(self, profile=None, schedule=None, measure=False, per_image_out=None):
        self.measure = measure
        self.per_image_out = per_image_out
        if per_image_out is not None and not str(per_image_out).endswith('.json'):
            raise ValueError(f'per_image_out must be a .json file, got {per_image_out!r}')
        self._handles = []
        self._latency = None
        self._static_ms = {}
        if profile is not None:
            from ...latency import LatencyCost
            self._latency = LatencyCost(profile, schedule)  # fails early on a bad profile

    def _find_backbone(self, runner):
        detector = unwrap(runner.model)
        backbone = getattr(detector, 'backbone', None)
        if backbone is None:
            raise TypeError(f'{type(self).__name__} needs a detector with a backbone; '
                            f'{type(detector).__name__} has none')
        if self._latency is not None:
            self._depth = predictable_resnet_depth(backbone)
        return backbone

    def _reset(self, runner):
        self._backbone = self._find_backbone(runner)
        self._records = []
        self._batch_ms = 0.0
        self._first_batch = True
        if not self._handles:  # the input shape (and the time) of every backbone forward
            self._handles = [self._backbone.register_forward_pre_hook(self._before_backbone)]
            if self.measure:
                self._handles.append(self._backbone.register_forward_hook(self._after_backbone))

    @staticmethod
    def _now(tensor):
        if tensor.is_cuda:
            torch.cuda.synchronize(tensor.device)
        return time.perf_counter()

    def _before_backbone(self, module, args):
        self._input_shape = tuple(args[0].shape)
        if self.measure:
            self._started = self._now(args[0])

    def _after_backbone(self, module, args, output):
        self._batch_ms = (self._now(args[0]) - self._started) * 1e3

    def before_val_epoch(self, runner):
        self._reset(runner)

    def before_test_epoch(self, runner):
        self._reset(runner)

    def _batch_stats(self):
        """One dict per image of the batch the backbone has just seen: the predicted latency
        of the static backbone at the batch's input size."""
        batch, _, in_h, in_w = self._input_shape
        if self._latency is None:
            return [{} for _ in range(batch)]
        if (in_h, in_w) not in self._static_ms:
            from ...latency import predict_backbone
            cost = self._latency
            predicted = predict_backbone(cost.profile, in_h, in_w, depth=self._depth,
                                         dtype=cost.dtype, deployed=True)['total']
            self._static_ms[in_h, in_w] = predicted * 1e3
        return [dict(pred_latency_ms=self._static_ms[in_h, in_w]) for _ in range(batch)]

    def _accumulate(self, data_batch, outputs=None):
        """One record per image of the batch the backbone has just seen (its id and path
        from the predicted data samples, or the batch's own)."""
        stats = self._batch_stats()
        samples = outputs or data_batch.get('data_samples') or [None] * len(stats)
        for sample, image_stats in zip(samples, stats):
            meta = sample.metainfo if sample is not None else {}
            record = dict(img_id=meta.get('img_id'), img_path=meta.get('img_path'),
                          **image_stats)
            if self.measure:  # the batch's time, shared among its images
                record['measured_latency_ms'] = self._batch_ms / len(samples)
                record['warmup'] = self._first_batch
            self._records.append(record)
        self._first_batch = False

    def after_val_iter(self, runner, batch_idx, data_batch=None, outputs=None):
        self._accumulate(data_batch, outputs)

    def after_test_iter(self, runner, batch_idx, data_batch=None, outputs=None):
        self._accumulate(data_batch, outputs)

    def _gather(self, dataset_size):
        """The records of every rank, in the sampler's order, its padding dropped."""
        if dist.get_world_size() == 1:
            return self._records
        return interleave_ranks(dist.all_gather_object(self._records), dataset_size)

    def report(self, records=None):
        """``(lines, metrics)``: means over ``records`` (default: this epoch's)."""
        records = self._records if records is None else records
        lines = [f'backbone latency over {len(records)} images']
        metrics = {}
        if self._latency is not None:
            static = sum(r['pred_latency_ms'] for r in records) / max(len(records), 1)
            cost = self._latency
            lines.append(f'predicted backbone latency per image on {cost.profile.name} '
                         f'({cost.dtype}, batch 1): static {static:.2f} ms')
            metrics.update({'las/pred_latency_ms': static, 'las/pred_latency_ratio': 1.0})
        return lines + self._measured_lines(records, metrics), metrics

    def _measured_lines(self, records, metrics):
        """The measured latency's line; its metrics added to ``metrics``."""
        if not self.measure:
            return []
        timed = [r['measured_latency_ms']
                 for r in ([r for r in records if not r['warmup']] or records)]
        mean = sum(timed) / max(len(timed), 1)
        median = statistics.median(timed) if timed else 0.0
        metrics.update({'las/measured_latency_ms': mean,
                        'las/measured_latency_median_ms': median})
        return [f'measured backbone latency per image: mean {mean:.2f} ms / median '
                f'{median:.2f} ms (over {len(timed)} images after a warm-up batch, batch size '
                f'included)']

    def _finish(self, runner, mode, metrics):
        for handle in self._handles:
            handle.remove()
        self._handles = []
        loader = runner.test_dataloader if mode == 'test' else runner.val_dataloader
        records = self._gather(len(loader.dataset))
        lines, report_metrics = self.report(records)
        print_log('\n'.join(lines), logger='current')
        if self.per_image_out is not None and dist.is_main_process():
            from ...visualization.atomic_write import save_json
            save_json(self.per_image_out, dict(num_images=len(records), means=report_metrics,
                                               images=records))
            print_log(f'per-image statistics written to {self.per_image_out}',
                      logger='current')
        if metrics is not None:
            metrics.update(report_metrics)
        # RuntimeInfoHook has already copied the metrics into the message hub, which the
        # LoggerHook prints and dumps: add ours there too.
        for key, value in report_metrics.items():
            runner.message_hub.update_scalar(f'{mode}/{key}', value)

    def after_val_epoch(self, runner, metrics=None):
        self._finish(runner, 'val', metrics)

    def after_test_epoch(self, runner, metrics=None):
        self._finish(runner, 'test', metrics)
