"""Test/val-time LAS report: activation rate per stage (or block), backbone GMACs, predicted
and measured latency, as means over the evaluated images and their spread across images;
optionally every image's own numbers as JSON (``tools/test.py --las-per-image OUT.json``)."""
import statistics
from collections import defaultdict

import torch
from mmdet.registry import HOOKS

from .backbone_latency_hook import BackboneLatencyHook, interleave_ranks  # noqa: F401
from .utils import las_backbone


@HOOKS.register_module()
class LASReportHook(BackboneLatencyHook):
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
        measure (bool): As :class:`BackboneLatencyHook`: the measured mean and median per
            image (``las/measured_latency_ms``, ``las/measured_latency_median_ms``).
        per_image_out (str, optional): Write every image's record (``img_id``, ``img_path``,
            ``act_rate``, ``block_rates``, ``gmacs_dynamic``, ``gmacs_dense``, ``macs_ratio``
            and the latencies asked for) and the means to this JSON file.
    """

    def __init__(self, per_block=False, profile=None, schedule=None, measure=False,
                 per_image_out=None):
        super().__init__(profile, schedule, measure, per_image_out)
        self.per_block = per_block

    def _find_backbone(self, runner):
        return las_backbone(runner.model, type(self).__name__)

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

    def _batch_stats(self):
        """One dict per image of the batch the backbone has just seen: its rates, MACs and
        predicted latencies."""
        with torch.no_grad():
            stats = self._backbone.las_stats
            names = list(stats['blocks'])
            # One device-to-host copy per batch, not one per block.
            table = torch.stack([stats['blocks'][name]['rate_per_image'] for name in names]
                                + [stats['macs_dynamic_per_image']]).double().cpu().tolist()
            rates, dynamic = dict(zip(names, table[:-1])), table[-1]
        dense = float(stats['macs_dense'])
        images = []
        for i in range(len(dynamic)):
            block_rates = {name: values[i] for name, values in rates.items()}
            image = dict(act_rate=sum(block_rates.values()) / max(len(block_rates), 1),
                         gmacs_dynamic=dynamic[i] / 1e9, gmacs_dense=dense / 1e9,
                         macs_ratio=dynamic[i] / max(dense, 1e-12), block_rates=block_rates)
            if self._latency is not None:
                image['pred_latency_ms'], image['static_latency_ms'] = \
                    self._predicted_latency_ms(block_rates)
            images.append(image)
        return images

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
        return lines + self._measured_lines(records, metrics), metrics
