"""Benchmarking a LAS-ResNet against the dense ResNets a practitioner would deploy.

``tools/benchmark_latency.py`` is a thin command line over these pieces:

* ``dense``: mmdet's ResNet as built (NCHW) and the best dense variants of the same weights:
  channels-last with every BN folded into its conv, CUDA graphs, ``torch.compile``;
* ``timing``: interleaved medians (CUDA-graph replays among themselves), first-call (cold)
  timing, a kernel/operator table;
* ``detector``: a whole detector's ``predict()`` with either backbone, under autocast;
* ``sizes``: the COCO-like padded test sizes of the stream benchmark;
* ``dataset_images``: real images of a config's test set, fed as ``tools/test.py`` feeds them.
"""
from .dataset_images import dataset_batches
from .dense import dense_twin, dense_variants, fold_block, fold_resnet
from .detector import DetectorBench
from .sizes import COCO_IMAGE_SIZES, padded_test_sizes
from .timing import kernel_table, sync, time_by_kind, time_call, time_interleaved

__all__ = ['COCO_IMAGE_SIZES', 'DetectorBench', 'dataset_batches', 'dense_twin',
           'dense_variants', 'fold_block', 'fold_resnet', 'kernel_table', 'padded_test_sizes',
           'sync', 'time_by_kind', 'time_call', 'time_interleaved']
