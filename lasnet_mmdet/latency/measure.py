"""Measured latencies the predictor is calibrated and checked against.

Times one op, one LAS block on its sparse path with a pinned mask, or a whole backbone, the
way ``tools/benchmark_latency.py`` does: warm-up, synchronised, median of repeats. The sparse
block goes through the ops' tensor entry point the backbone uses, on the block's folded
weights: ``sparse_bottleneck``, or with the Triton backend where the masker's window fits
``sparse_bottleneck_with_masker`` (the pinned mask handed to conv1's launch).
"""
import statistics
import time

import torch

from .predictor import resnet_block_shapes

TORCH_DTYPES = {'fp32': torch.float32, 'fp16': torch.float16, 'bf16': torch.bfloat16}


def _sync(device):
    if torch.device(device).type == 'cuda':
        torch.cuda.synchronize(device)


# 'median' as tools/benchmark_latency.py; 'min' is robust to other processes on a shared CPU.
STATISTIC = {'median': statistics.median, 'min': min}
DEFAULT_STAT = 'median'
# On CUDA, time replays of a captured CUDA graph: the GPU's time without the host's launch
# overhead, which at batch 1 in eager mode hides everything the kernels do.
CUDA_GRAPHS = False
# Time the deployed dense reference (blocks and backbone) as the benchmark's best dense
# network: the folded channels-last module through ``torch.compile(mode=COMPILE_MODE)``
# (minutes of compilation and autotuning on a GPU), instead of eager.
COMPILE_DEPLOYED = False
COMPILE_MODE = 'max-autotune-no-cudagraphs'


def deployed(fn):
    """``fn`` as the deployed dense network runs it (see ``COMPILE_DEPLOYED``). Compiled for
    static shapes: calibration compiles the same function for one block per stage, and
    Dynamo's automatic dynamic shapes would compile every block after the first with symbolic
    height and width, not as the deployed network's static compile runs it."""
    return torch.compile(fn, mode=COMPILE_MODE, dynamic=False) if COMPILE_DEPLOYED else fn


@torch.no_grad()
def time_graph(fn, device, warmup=3, repeats=5, replays=20, stat=None):
    """Seconds per replay of ``fn`` captured in a CUDA graph (``stat`` over ``repeats``
    batches of ``replays`` back-to-back replays, timed with CUDA events)."""
    side = torch.cuda.Stream(device)
    side.wait_stream(torch.cuda.current_stream(device))
    with torch.cuda.stream(side):  # warm-up (and Triton autotuning) outside the capture
        for _ in range(warmup):
            fn()
    torch.cuda.current_stream(device).wait_stream(side)
    torch.cuda.synchronize(device)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        fn()
    graph.replay()
    torch.cuda.synchronize(device)
    start, end = (torch.cuda.Event(enable_timing=True) for _ in range(2))
    times = []
    for _ in range(repeats):
        start.record()
        for _ in range(replays):
            graph.replay()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end) / 1e3 / replays)
    del graph
    return STATISTIC[stat or DEFAULT_STAT](times)


@torch.no_grad()
def time_fn(fn, device='cpu', warmup=2, repeats=5, min_seconds=0.0, stat=None):
    """Median (or ``stat``) seconds of ``fn()`` after ``warmup`` calls (at least ``repeats``
    timed calls, more until ``min_seconds`` of timing has passed, for very short ops).
    Under ``CUDA_GRAPHS`` on a CUDA device: ``time_graph``."""
    if CUDA_GRAPHS and torch.device(device).type == 'cuda':
        return time_graph(fn, device, max(warmup, 2), max(repeats, 5), stat=stat)
    for _ in range(warmup):
        fn()
    _sync(device)
    times = []
    start = time.perf_counter()
    while len(times) < repeats or (time.perf_counter() - start < min_seconds
                                   and len(times) < 1000):
        t0 = time.perf_counter()
        fn()
        _sync(device)
        times.append(time.perf_counter() - t0)
    return STATISTIC[stat or DEFAULT_STAT](times)


def make_block(shape, granularity, device='cpu', dtype='fp32'):
    """A LAS bottleneck of ``shape`` with random (but realistic) BN statistics, in eval."""
    import torch.nn as nn
    from mmcv.cnn import build_conv_layer, build_norm_layer

    from ..models.backbones.las_resnet import LASBottleneck
    downsample = None
    if shape.downsample:
        downsample = nn.Sequential(
            build_conv_layer(None, shape.in_channels, shape.out_channels, 1, stride=shape.stride,
                             bias=False),
            build_norm_layer(dict(type='BN'), shape.out_channels)[1])
    block = LASBottleneck(shape.in_channels, shape.planes, granularity=granularity,
                          stride=shape.stride, downsample=downsample)
    generator = torch.Generator().manual_seed(0)
    for m in block.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.normal_(0, 0.1, generator=generator)
            m.running_var.uniform_(0.5, 1.5, generator=generator)
    return block.eval().to(device=device, dtype=TORCH_DTYPES[dtype])


def coarse_mask(shape, granularity, rate, device='cpu', dtype='fp32', seed=0):
    """Exactly ``round(rate * cells)`` active cells per image, seeded."""
    from ..models.layers.masker import coarse_grid_size, random_coarse_mask
    out_h, out_w = shape.out_hw
    h, w = coarse_grid_size(out_h, out_w, granularity)
    generator = torch.Generator().manual_seed(seed)
    mask = random_coarse_mask(shape.batch, h, w, rate, generator, device)
    return mask.to(TORCH_DTYPES[dtype])


def measure_las_block(shape, granularity, rate, device='cpu', dtype='fp32', backend='auto',
                      block=None, warmup=2, repeats=5, min_seconds=0.0, fuse_masker=True,
                      with_path=False):
    """Median seconds of the sparse path of one LAS block at a pinned mask (masker excluded;
    a Triton block called on its own zeroes its row counters itself, a memset that a backbone
    forward makes once for all blocks). ``fuse_masker=False``: through the mask's row lists
    even where the Triton backend would hand the mask to conv1's launch. ``with_path``: also
    return whether it went through conv1's launch."""
    from ..ops import (FUSED_MASKER_WINDOWS, resolve_backend, sparse_bottleneck,
                       sparse_bottleneck_with_masker)
    from ..ops.workspace import Workspace, use_workspace
    block = block if block is not None else make_block(shape, granularity, device, dtype)
    block.sparse_inference = backend
    x = torch.randn(shape.batch, shape.in_channels, shape.in_h, shape.in_w, device=device,
                    dtype=TORCH_DTYPES[dtype])
    mask = coarse_mask(shape, granularity, rate, device, dtype)
    workspace = Workspace()  # reused call to call, as inside a LASResNet forward
    # As inside the backbone: the input is the previous block's output (channels-last, >= 0),
    # which an identity block finds in the workspace and updates in place.
    x = x.relu_().contiguous(memory_format=torch.channels_last)
    if not shape.downsample:
        x = workspace.output(tuple(x.shape), x.dtype, x.device).copy_(x)

    backend = resolve_backend(backend, x.device)
    weights = block.folded_weights(x.dtype, backend)

    fused = (fuse_masker and backend == 'triton'
             and block.stride * granularity in FUSED_MASKER_WINDOWS)
    if fused:
        # As the backbone runs it with pinned masks: conv1's launch takes the mask.
        columns, bias = block.masker_columns(x.dtype), block.masker.conv2.bias

        def forward():
            with torch.no_grad():
                return sparse_bottleneck_with_masker(
                    x, columns, bias, weights, granularity, block.stride, reuse_output=True,
                    pin=mask, run_masker=False)[0]
    else:
        def forward():
            with torch.no_grad(), use_workspace(workspace):
                return sparse_bottleneck(x, mask, weights, granularity, block.stride, backend,
                                         reuse_output=True)
    seconds = time_fn(forward, device, warmup, repeats, min_seconds)
    return (seconds, fused) if with_path else seconds


def measure_static_block(shape, device='cpu', dtype='fp32', block=None, warmup=2, repeats=5,
                         min_seconds=0.0):
    """Median seconds of the dense (mmdet ``Bottleneck``) forward of a block, eager."""
    from mmdet.models.backbones.resnet import Bottleneck
    block = block if block is not None else make_block(shape, 1, device, dtype)
    x = torch.randn(shape.batch, shape.in_channels, shape.in_h, shape.in_w, device=device,
                    dtype=TORCH_DTYPES[dtype])
    return time_fn(lambda: Bottleneck.forward(block, x), device, warmup, repeats, min_seconds)


def measure_deployed_block(shape, device='cpu', dtype='fp32', block=None, warmup=2, repeats=5,
                           min_seconds=0.0):
    """Median seconds of the block as the deployed dense network runs it: BN folded,
    channels-last weights and input (``benchmark.dense.fold_block``), compiled under
    ``COMPILE_DEPLOYED``."""
    from mmdet.models.backbones.resnet import Bottleneck

    from ..benchmark.dense import fold_block
    block = block if block is not None else make_block(shape, 1, device, dtype)
    folded = fold_block(block)
    x = torch.randn(shape.batch, shape.in_channels, shape.in_h, shape.in_w, device=device,
                    dtype=TORCH_DTYPES[dtype]).contiguous(memory_format=torch.channels_last)
    fn = deployed(lambda inp: Bottleneck.forward(folded, inp))
    return time_fn(lambda: fn(x), device, warmup, repeats, min_seconds)


def make_backbones(depth=101, granularity=(4, 4, 2, 1), device='cpu', dtype='fp32',
                   backend='auto'):
    """(dense mmdet ResNet, LASResNet with sparse inference), eval, random weights."""
    from mmdet.models.backbones import ResNet

    from ..models.backbones.las_resnet import LASResNet
    dense = ResNet(depth).to(device=device, dtype=TORCH_DTYPES[dtype])
    dense.eval()
    las = LASResNet(depth, granularity=granularity, sparse_inference=backend)
    las = las.to(device=device, dtype=TORCH_DTYPES[dtype])
    las.eval()
    return dense, las


@torch.no_grad()
def measure_backbone(model, in_h, in_w, rate=None, batch=1, device='cpu', dtype='fp32',
                     warmup=1, repeats=3, channels_last=False):
    """Median seconds of a backbone forward; a LASResNet runs at fixed masks of ``rate``.
    ``channels_last``: the input in that layout (a channels-last deployed dense network)."""
    x = torch.randn(batch, 3, in_h, in_w, device=device, dtype=TORCH_DTYPES[dtype])
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    if rate is None:
        return time_fn(lambda: model(x), device, warmup, repeats)
    with model.pinned_masks(rate):  # drawn once, kept on the device
        return time_fn(lambda: model(x), device, warmup, repeats)


def stage_block_shape(stage, in_h, in_w, batch=1, first=False, depth=101):
    """A block of a ResNet stage at a network input size: the stage's first block (stride,
    downsample) or a regular one."""
    for s, i, shape in resnet_block_shapes(in_h, in_w, depth, batch):
        if s == stage and i == (0 if first else 1):
            return shape
    raise ValueError(f'no stage {stage} in a ResNet-{depth}')
