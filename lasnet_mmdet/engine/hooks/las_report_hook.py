"""Test/val-time LAS report: activation rate per stage (or block), backbone GMACs, predicted
and measured latency, as means over the evaluated images and their spread across images;
optionally every image's own numbers as JSON (``tools/test.py --las-per-image OUT.json``)."""
import statistics
import time
from collections import defaultdict
from itertools import zip_longest

import torch
from mmengine import dist
from mmengine.hooks import Hook
from mmengine.logging import print_log
from mmdet.registry import HOOKS

from .utils import las_backbone

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
class LASReportHook(Hook):
    """Records the backbone's ``las_stats`` of every evaluated image and reports them.

    The means are also added to the metrics (``las/act_rate``, ``las/gmacs_dynamic``,
    ``las/gmacs_dense``; the spread of the per-image rate as ``las/act_rate_min``,
    ``_median``, ``_max``) so they are logged and saved with the COCO metrics. Under DDP the
    records of all ranks are gathered (in the sampler's order, its padding dropped).

    Args:
        per_block (bool): Also print the rate of every block.
        profile (str | dict, optional): Hardware profile (preset name or calibrated JSON path)
            on which to report the predicted backbone latency of each evaluated image, beside
            the static backbone's (``las/pred_latency_ms``, ``las/pred_latency_ratio``).
        schedule (str, optional): Sparse schedule for the prediction (default: the profile's).
        measure (bool): Also time every backbone forward (synchronised wall clock) and report
            the mean per image (``las/measured_latency_ms``), leaving out each rank's first
            batch (one-time warm-up: allocation, folding, kernel selection) when there are
            others; its records are marked ``"warmup": true``.
        per_image_out (str, optional): Write every image's record (``img_id``, ``img_path``,
            ``act_rate``, ``block_rates``, ``gmacs_dynamic``, ``gmacs_dense``, ``macs_ratio``
            and the latencies asked for) and the means to this JSON file.
    """

    priority = 'NORMAL'

    def __init__(self, per_block=False, profile=None, schedule=None, measure=False,
                 per_image_out=None):
        self.per_block = per_block
        self.measure = measure
        self.per_image_out = per_image_out
        if per_image_out is not None and not str(per_image_out).endswith('.json'):
            raise ValueError(f'per_image_out must be a .json file, got {per_image_out!r}')
        self._timers = []
        self._latency = None
        if profile is not None:
            from ...latency import LatencyCost
            self._latency = LatencyCost(profile, schedule)  # fails early on a bad profile

    def _reset(self, runner):
        self._backbone = las_backbone(runner.model, type(self).__name__)
        self._records = []
        self._batch_ms = 0.0
        self._first_batch = True
        if self.measure and not self._timers:
            self._timers = [self._backbone.register_forward_pre_hook(self._start_timer),
                            self._backbone.register_forward_hook(self._stop_timer)]

    @staticmethod
    def _now(tensor):
        if tensor.is_cuda:
            torch.cuda.synchronize(tensor.device)
        return time.perf_counter()

    def _start_timer(self, module, args):
        self._started = self._now(args[0])

    def _stop_timer(self, module, args, output):
        self._batch_ms = (self._now(args[0]) - self._started) * 1e3

    def before_val_epoch(self, runner):
        self._reset(runner)

    def before_test_epoch(self, runner):
        self._reset(runner)

    def _predicted_latency_ms(self, block_rates):
        """Predicted (LAS, static) backbone latency of one image at batch 1, in ms."""
        from ...latency.cost import piecewise_linear
        (predicted, static), tables = self._latency.tables(self._backbone,
                                                           *self._backbone.input_size)
        for name, rates in block_rates.items():
            block_static, table = tables[name]
            predicted += float(piecewise_linear(torch.tensor(rates, dtype=torch.float64),
                                                table))
            static += block_static
        return predicted * 1e3, static * 1e3

    def _accumulate(self, data_batch, outputs=None):
        """One record per image of the batch the backbone has just seen (its id and path
        from the predicted data samples, or the batch's own)."""
        with torch.no_grad():
            stats = self._backbone.las_stats
            names = list(stats['blocks'])
            # One device-to-host copy per batch, not one per block.
            table = torch.stack([stats['blocks'][name]['rate_per_image'] for name in names]
                                + [stats['macs_dynamic_per_image']]).double().cpu().tolist()
            rates, dynamic = dict(zip(names, table[:-1])), table[-1]
        dense = float(stats['macs_dense'])
        samples = outputs or data_batch.get('data_samples') or [None] * len(dynamic)
        for i, sample in enumerate(samples):
            meta = sample.metainfo if sample is not None else {}
            block_rates = {name: values[i] for name, values in rates.items()}
            record = dict(img_id=meta.get('img_id'), img_path=meta.get('img_path'),
                          act_rate=sum(block_rates.values()) / max(len(block_rates), 1),
                          gmacs_dynamic=dynamic[i] / 1e9, gmacs_dense=dense / 1e9,
                          macs_ratio=dynamic[i] / max(dense, 1e-12), block_rates=block_rates)
            if self._latency is not None:
                record['pred_latency_ms'], record['static_latency_ms'] = \
                    self._predicted_latency_ms(block_rates)
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
        """``(lines, metrics)``: means and spread over ``records`` (default: this epoch's)."""
        records = self._records if records is None else records
        n = max(len(records), 1)
        block_rates = defaultdict(float)
        for record in records:
            for name, rate in record['block_rates'].items():
                block_rates[name] += rate
        # sum first, divide once: the mean of equal rates prints as that rate
        block_rates = {name: total / n for name, total in block_rates.items()}
        stages = defaultdict(list)
        for name, rate in block_rates.items():
            stages[name.split('.')[0]].append(rate)
        lines = ['LAS report over %d images' % len(records),
                 f'{"stage":<10}{"blocks":>7}{"act. rate":>11}']
        for stage, rates in stages.items():
            lines.append(f'{stage:<10}{len(rates):>7}{sum(rates) / len(rates):>11.3f}')
        if self.per_block:
            lines.append(f'{"block":<17}{"act. rate":>11}')
            lines += [f'{name:<17}{rate:>11.3f}' for name, rate in block_rates.items()]

        def mean(key):
            return sum(record[key] for record in records) / n

        mean_rate = sum(block_rates.values()) / max(len(block_rates), 1)
        dyn, dense = mean('gmacs_dynamic'), mean('gmacs_dense')
        lines.append(f'backbone GMACs per image: dynamic {dyn:.3f} / dense {dense:.3f} '
                     f'(ratio {dyn / max(dense, 1e-12):.3f}); mean act. rate {mean_rate:.3f}')
        metrics = {'las/act_rate': mean_rate, 'las/gmacs_dynamic': dyn,
                   'las/gmacs_dense': dense}
        if records:
            per_image = [record['act_rate'] for record in records]
            spread = (min(per_image), statistics.median(per_image), max(per_image))
            lines.append('act. rate across images: min {:.3f} / median {:.3f} / max {:.3f}'
                         .format(*spread))
            metrics.update(zip(('las/act_rate_min', 'las/act_rate_median', 'las/act_rate_max'),
                               spread))
        if self._latency is not None:
            pred, static = mean('pred_latency_ms'), mean('static_latency_ms')
            cost = self._latency
            lines.append(f'predicted backbone latency per image on {cost.profile.name} '
                         f'({cost.dtype}, batch 1): LAS {pred:.2f} ms / static {static:.2f} ms '
                         f'(ratio {pred / max(static, 1e-12):.3f})')
            metrics.update({'las/pred_latency_ms': pred,
                            'las/pred_latency_ratio': pred / max(static, 1e-12)})
        if self.measure:
            timed = [r for r in records if not r['warmup']] or records
            measured = sum(r['measured_latency_ms'] for r in timed) / max(len(timed), 1)
            lines.append(f'measured backbone latency per image: {measured:.2f} ms (mean over '
                         f'{len(timed)} images after a warm-up batch, batch size included)')
            metrics['las/measured_latency_ms'] = measured
        return lines, metrics

    def _finish(self, runner, mode, metrics):
        for timer in self._timers:
            timer.remove()
        self._timers = []
        loader = runner.test_dataloader if mode == 'test' else runner.val_dataloader
        records = self._gather(len(loader.dataset))
        lines, las_metrics = self.report(records)
        print_log('\n'.join(lines), logger='current')
        if self.per_image_out is not None and dist.is_main_process():
            from ...visualization.atomic_write import save_json
            save_json(self.per_image_out, dict(num_images=len(records), means=las_metrics,
                                               images=records))
            print_log(f'per-image LAS statistics written to {self.per_image_out}',
                      logger='current')
        if metrics is not None:
            metrics.update(las_metrics)
        # RuntimeInfoHook has already copied the metrics into the message hub, which the
        # LoggerHook prints and dumps: add ours there too.
        for key, value in las_metrics.items():
            runner.message_hub.update_scalar(f'{mode}/{key}', value)

    def after_val_epoch(self, runner, metrics=None):
        self._finish(runner, 'val', metrics)

    def after_test_epoch(self, runner, metrics=None):
        self._finish(runner, 'test', metrics)
