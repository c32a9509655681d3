"""Test/val-time LAS report: mean activation rate per stage (or block) and backbone GMACs."""
import time
from collections import defaultdict

import torch
from mmengine import dist
from mmengine.hooks import Hook
from mmengine.logging import print_log
from mmdet.registry import HOOKS

from .utils import las_backbone


@HOOKS.register_module()
class LASReportHook(Hook):
    """Averages the backbone's ``las_stats`` over the evaluated images and reports them.

    The means are also added to the metrics (``las/act_rate``, ``las/gmacs_dynamic``,
    ``las/gmacs_dense``) so they are logged and saved with the COCO metrics.

    Args:
        per_block (bool): Also print the rate of every block.
        profile (str | dict, optional): Hardware profile (preset name or calibrated JSON path)
            on which to report the predicted backbone latency of each evaluated image, beside
            the static backbone's (``las/pred_latency_ms``, ``las/pred_latency_ratio``).
        schedule (str, optional): Sparse schedule for the prediction (default: the profile's).
        measure (bool): Also time every backbone forward (synchronised wall clock) and report
            the mean per image (``las/measured_latency_ms``).
    """

    priority = 'NORMAL'

    def __init__(self, per_block=False, profile=None, schedule=None, measure=False):
        self.per_block = per_block
        self.measure = measure
        self._timers = []
        self._latency = None
        if profile is not None:
            from ...latency import LatencyCost
            self._latency = LatencyCost(profile, schedule)  # fails early on a bad profile

    def _reset(self, runner):
        self._backbone = las_backbone(runner.model, type(self).__name__)
        self._rate_sums = defaultdict(float)
        self._macs_dynamic = 0.0
        self._macs_dense = 0.0
        self._latency_ms = [0.0, 0.0, 0.0]  # predicted LAS, static, measured: sums over images
        self._images = 0
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
        self._latency_ms[2] += (self._now(args[0]) - self._started) * 1e3

    def before_val_epoch(self, runner):
        self._reset(runner)

    def before_test_epoch(self, runner):
        self._reset(runner)

    def _accumulate(self, data_batch):
        images = len(data_batch['inputs'])
        stats = self._backbone.las_stats
        for name, block in stats['blocks'].items():
            self._rate_sums[name] += float(block['rate']) * images
        self._macs_dynamic += float(stats['macs_dynamic']) * images
        self._macs_dense += stats['macs_dense'] * images
        if self._latency is not None:
            with torch.no_grad():
                predicted, static = self._latency(self._backbone)
            self._latency_ms[0] += float(predicted) * 1e3 * images
            self._latency_ms[1] += static * 1e3 * images
        self._images += images

    def after_val_iter(self, runner, batch_idx, data_batch=None, outputs=None):
        self._accumulate(data_batch)

    def after_test_iter(self, runner, batch_idx, data_batch=None, outputs=None):
        self._accumulate(data_batch)

    def _sum_over_ranks(self):
        names = list(self._rate_sums)
        totals = torch.tensor([self._images, self._macs_dynamic, self._macs_dense,
                               *self._latency_ms]
                              + [self._rate_sums[name] for name in names], dtype=torch.float64)
        dist.all_reduce(totals, op='sum')  # no-op when not distributed
        self._images, self._macs_dynamic, self._macs_dense = int(totals[0]), *totals[1:3].tolist()
        self._latency_ms = totals[3:6].tolist()
        self._rate_sums = dict(zip(names, totals[6:].tolist()))

    def report(self):
        """``(lines, metrics)`` of the means since the epoch began (over all ranks)."""
        self._sum_over_ranks()
        n = max(self._images, 1)
        block_rates = {name: total / n for name, total in self._rate_sums.items()}
        stages = defaultdict(list)
        for name, rate in block_rates.items():
            stages[name.split('.')[0]].append(rate)
        lines = ['LAS report over %d images' % self._images,
                 f'{"stage":<10}{"blocks":>7}{"act. rate":>11}']
        for stage, rates in stages.items():
            lines.append(f'{stage:<10}{len(rates):>7}{sum(rates) / len(rates):>11.3f}')
        if self.per_block:
            lines.append(f'{"block":<17}{"act. rate":>11}')
            lines += [f'{name:<17}{rate:>11.3f}' for name, rate in block_rates.items()]
        mean_rate = sum(block_rates.values()) / max(len(block_rates), 1)
        dyn, dense = self._macs_dynamic / n / 1e9, self._macs_dense / n / 1e9
        lines.append(f'backbone GMACs per image: dynamic {dyn:.3f} / dense {dense:.3f} '
                     f'(ratio {dyn / max(dense, 1e-12):.3f}); mean act. rate {mean_rate:.3f}')
        metrics = {'las/act_rate': mean_rate, 'las/gmacs_dynamic': dyn,
                   'las/gmacs_dense': dense}
        if self._latency is not None:
            pred, static = (ms / n for ms in self._latency_ms[:2])
            cost = self._latency
            lines.append(f'predicted backbone latency per image on {cost.profile.name} '
                         f'({cost.dtype}, batch 1): LAS {pred:.2f} ms / static {static:.2f} ms '
                         f'(ratio {pred / max(static, 1e-12):.3f})')
            metrics.update({'las/pred_latency_ms': pred,
                            'las/pred_latency_ratio': pred / max(static, 1e-12)})
        if self.measure:
            measured = self._latency_ms[2] / n
            lines.append(f'measured backbone latency per image: {measured:.2f} ms '
                         f'(mean over the batches of this run, batch size included)')
            metrics['las/measured_latency_ms'] = measured
        return lines, metrics

    def _finish(self, runner, mode, metrics):
        for timer in self._timers:
            timer.remove()
        self._timers = []
        lines, las_metrics = self.report()
        print_log('\n'.join(lines), logger='current')
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
