"""Calibration: measure a handful of our own ops on this device, fit the efficiencies.

The spec figures of a profile say what the device could do; the efficiencies say what our
kernels get out of it. Calibration times a few micro-benchmarks, each of which the predictor
lowers to the same kernels it uses for blocks:

* a tiny op (launch / dispatch overhead) and a large copy (streaming bandwidth);
* dense convolutions of ResNet shapes (1x1 and 3x3, narrow and wide) and dense bottlenecks,
  both as mmdet runs them (conv, BN, ReLU in eager mode, NCHW) and deployed (BN folded,
  channels-last: the static reference of ``cost='latency'``);
* the sparse LAS block from ``lasnet_mmdet.ops`` at a few (stage, S, r) (gather, scatter,
  index costs), when the ops are available.

and fits the efficiencies by minimising the squared log-ratio of predicted to measured times
(a derivative-free pattern search: a few parameters, a few dozen points, no SciPy needed).
Adding a benchmark is one entry in ``micro_benchmarks``: a callable and its kernels.
"""
import json
import math
import platform
import time
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F

from .hardware import (DTYPE_BYTES, EFFICIENCY_BOUNDS, HardwareProfile, get_preset,
                       load_profile)
from ..ops import resolve_backend
from . import measure
from .measure import (TORCH_DTYPES, make_block, measure_deployed_block, measure_las_block,
                      measure_static_block, stage_block_shape, time_fn)
from .predictor import (ARCH, BlockShape, Kernel, _conv, compiled_static_kernels,
                        get_schedule, kernels_time, las_kernels, static_kernels, stem_kernels)

FIT_KEYS = {'cpu': ('compute', 'memory', 'gather', 'small_dim', 'launch_us', 'layout', 'alloc',
                    'pool', 'blas'),
            'gpu': ('compute', 'memory', 'gather', 'small_dim', 'launch_us', 'layout', 'vendor',
                    'compiled', 'later_round')}
# Offsets so that parameters whose best value may be 0 live on a log scale too.
_LOG_OFFSET = dict(small_dim=1.0, launch_us=0.1)


@dataclass
class Benchmark:
    name: str
    kernels: list
    measured_s: float
    spec: dict = None  # what was measured, to rebuild ``kernels`` (see ``kernels_for``)


def kernels_for(spec, dtype, schedule, kind='cpu'):
    """The predictor's kernels of a benchmark ``spec`` (saved measurements can be refitted)
    on a device of ``kind``."""
    b = DTYPE_BYTES[dtype]
    op = spec['op']
    if op == 'tiny':
        return [Kernel('tiny', bytes=2 * b)]
    if op == 'copy':
        return [Kernel('copy', bytes=2 * spec['numel'] * b)]
    if op == 'conv':
        h, w, cin, cout, k = (spec[key] for key in ('h', 'w', 'cin', 'cout', 'k'))
        return [_conv(f'conv{k}x{k}', h * w, cout, cin * k * k, h * w * cin, h * w * cout, b)]
    if op == 'stem':
        return stem_kernels(spec['h'], spec['w'], 1, dtype)
    shape = BlockShape(**spec['shape'])
    if op == 'static_block':
        return static_kernels(shape, dtype)
    if op == 'deployed_block':
        if kind == 'gpu' and spec.get('compiled'):  # as predict_static_block(deployed=True)
            return compiled_static_kernels(shape, dtype)
        return static_kernels(shape, dtype, deployed=True)
    if op == 'las_block':
        if not spec.get('fused_masker', True):  # timed through the mask's row lists
            schedule = get_schedule(schedule).replace(masker_in_conv1=False)
        return las_kernels(shape, spec['S'], spec['r'], schedule, dtype)
    raise ValueError(f'unknown benchmark op {op!r}')


def save_measurements(path, benches, profile):
    """The raw measurements and the profile they were fitted into, as JSON."""
    with open(path, 'w') as f:
        json.dump(dict(profile=profile.to_dict(),
                       benchmarks=[dict(name=b.name, measured_s=b.measured_s, spec=b.spec)
                                   for b in benches]), f, indent=1)


def load_measurements(path, dtype, schedule):
    with open(path) as f:
        data = json.load(f)
    schedule = get_schedule(schedule).replace(with_masker=False)
    kind = data['profile']['kind']
    return [Benchmark(d['name'], kernels_for(d['spec'], dtype, schedule, kind), d['measured_s'],
                      d['spec']) for d in data['benchmarks']]


# --- device description -----------------------------------------------------------------------

def cpu_base_profile(name=None):
    """Spec figures of this CPU: threads torch uses, peak FLOP/s from clock and SIMD width;
    the memory bandwidth is measured (no data sheet to read it from)."""
    flags, mhz = '', []
    try:
        with open('/proc/cpuinfo') as f:
            for line in f:
                if line.startswith('flags') and not flags:
                    flags = line
                elif line.startswith('cpu MHz'):
                    mhz.append(float(line.split(':')[1]))
    except OSError:
        pass
    ghz = max(mhz) / 1e3 if mhz else 2.5
    # fp32 FLOP per cycle per core: 2 FMA units x SIMD lanes x 2.
    per_cycle = 64 if ' avx512f' in flags else 32 if ' fma' in flags else 16
    cores = torch.get_num_threads()
    # The listed clock is not the turbo clock: a large GEMM bounds the peak from below.
    a = torch.randn(2048, 2048)
    gemm_gflops = 2 * 2048**3 / time_fn(lambda: a @ a, 'cpu', 1, 3, stat='min') / 1e9
    core_gflops = max(ghz * per_cycle, gemm_gflops / cores / 0.9)
    src = torch.randn(32 * 2**20)  # 128 MiB: beyond the caches
    dst = torch.empty_like(src)
    copy_s = time_fn(lambda: dst.copy_(src), 'cpu', 1, 5, stat='min')
    gbps = 2 * src.numel() * 4 / copy_s / 1e9
    return HardwareProfile(
        name=name or f'cpu-{cores}t', kind='cpu', dtype='fp32', cores=cores,
        core_gflops=round(core_gflops, 1), dram_gbps=round(gbps / 0.9, 1),
        notes=f'{platform.processor() or platform.machine()}, {cores} threads, listed '
              f'{ghz:.2f} GHz x {per_cycle} FLOP/cycle, GEMM {gemm_gflops:.0f} GFLOP/s; '
              f'bandwidth from a 128 MiB copy')


def gpu_base_profile(device='cuda'):
    """The preset matching the GPU's name (the spec figures to start from)."""
    name = torch.cuda.get_device_name(device).lower()
    for key in ('h100', 'a100', 'v100', '3090'):
        if key in name:
            return get_preset(key)
    raise ValueError(f'no preset for GPU {name!r}: pass --preset with the closest one')


# --- micro-benchmarks -------------------------------------------------------------------------

def conv_benchmarks(shape_hw, device, dtype):
    """Dense convs of ResNet-101 shapes at network input ``shape_hw``."""
    b = torch.tensor([], dtype=TORCH_DTYPES[dtype]).element_size()
    out = []
    for stage, (cin, cout, k) in ((0, (256, 64, 1)), (0, (64, 64, 3)), (1, (128, 128, 3)),
                                  (2, (1024, 256, 1)), (2, (256, 256, 3)),
                                  (3, (512, 2048, 1)), (3, (2048, 512, 1))):
        shape = stage_block_shape(stage, *shape_hw)
        h, w = shape.in_h, shape.in_w
        x = torch.randn(1, cin, h, w, device=device, dtype=TORCH_DTYPES[dtype])
        weight = torch.randn(cout, cin, k, k, device=device, dtype=TORCH_DTYPES[dtype]) * 0.01
        seconds = time_fn(lambda: F.conv2d(x, weight, padding=k // 2), device, 2, 5, 0.05)
        spec = dict(op='conv', cin=cin, cout=cout, k=k, h=h, w=w)
        out.append(Benchmark(f'conv{k}x{k} {cin}->{cout} @{h}x{w}',
                             kernels_for(spec, dtype, None), seconds, spec))
    return out


def memory_benchmarks(device, dtype, numel=None):
    """A tiny op (fixed cost per launch) and a large copy (bandwidth)."""
    tdtype = TORCH_DTYPES[dtype]
    b = torch.tensor([], dtype=tdtype).element_size()
    numel = numel or 128 * 2**20 // b  # beyond the caches
    tiny = torch.zeros(1, device=device, dtype=tdtype)
    big = torch.randn(numel, device=device, dtype=tdtype)
    dst = torch.empty_like(big)
    tiny_spec, copy_spec = dict(op='tiny'), dict(op='copy', numel=numel)
    return [Benchmark('tiny op', kernels_for(tiny_spec, dtype, None),
                      time_fn(lambda: tiny.add_(1), device, 10, 50, 0.05), tiny_spec),
            Benchmark(f'copy {numel * big.element_size() / 2**20:.0f} MiB',
                      kernels_for(copy_spec, dtype, None),
                      time_fn(lambda: dst.copy_(big), device, 3, 10, 0.05), copy_spec)]


def block_benchmarks(shape_hw, device, dtype, schedule, backend='auto',
                     points=((1, 0.25, True), (4, 0.5, True), (2, 0.65, True), (8, 0.75, True),
                             (4, 0.9, True), (4, 0.5, False)),
                     stages=(0, 1, 2, 3), sparse=True):
    """The stem, dense bottlenecks (eager mmdet) and sparse LAS blocks at a few (S, r) per
    stage, each with the masker's launch fused into conv1's where the backend does that, and
    one without (the path of windows it does not fuse: row lists from the mask)."""
    import torch.nn as nn
    stem = nn.Sequential(nn.Conv2d(3, 64, 7, 2, 3, bias=False), nn.BatchNorm2d(64),
                         nn.ReLU(inplace=True), nn.MaxPool2d(3, 2, 1))
    stem = stem.eval().to(device=device, dtype=TORCH_DTYPES[dtype])
    kind = 'gpu' if torch.device(device).type == 'cuda' else 'cpu'
    x = torch.randn(1, 3, *shape_hw, device=device, dtype=TORCH_DTYPES[dtype])
    spec = dict(op='stem', h=shape_hw[0], w=shape_hw[1])
    out = [Benchmark('stem', kernels_for(spec, dtype, schedule),
                     time_fn(lambda: stem(x), device, 1, 3, 0.05), spec)]
    for stage in stages:
        shape = stage_block_shape(stage, *shape_hw)
        block = make_block(shape, 1, device, dtype)
        spec = dict(op='static_block', shape=asdict(shape))
        out.append(Benchmark(f'static block layer{stage + 1}', kernels_for(spec, dtype, schedule),
                             measure_static_block(shape, device, dtype, block, 1, 3, 0.05),
                             spec))
        spec = dict(op='deployed_block', shape=asdict(shape), compiled=measure.COMPILE_DEPLOYED)
        out.append(Benchmark(f'deployed block layer{stage + 1}',
                             kernels_for(spec, dtype, schedule, kind),
                             measure_deployed_block(shape, device, dtype, block, 1, 3, 0.05),
                             spec))
        if not sparse:
            continue
        for S, rate, fuse in points:
            if not fuse and resolve_backend(backend, device) != 'triton':
                continue  # only the Triton backend has the fused launch
            block = make_block(shape, S, device, dtype)
            seconds, fused = measure_las_block(shape, S, rate, device, dtype, backend, block, 1,
                                               3, 0.05, fuse_masker=fuse, with_path=True)
            spec = dict(op='las_block', shape=asdict(shape), S=S, r=rate, fused_masker=fused)
            name = f'LAS block layer{stage + 1} S={S} r={rate}' + ('' if fuse else ' row lists')
            out.append(Benchmark(name, kernels_for(spec, dtype, schedule), seconds, spec))
    return out


def sparse_ops_available():
    """Whether ``lasnet_mmdet.ops`` can run a LAS block yet (a tiny CPU trial)."""
    try:
        measure_las_block(stage_block_shape(3, 64, 64), 1, 0.5, 'cpu', 'fp32', 'torch',
                          warmup=0, repeats=1)
        return True
    except NotImplementedError:
        return False


def micro_benchmarks(device='cpu', dtype='fp32', shape_hw=(800, 1216), schedule=None,
                     backend='auto', sparse=None, log=print):
    """Run every micro-benchmark; ``sparse=None`` includes the LAS block if the ops exist."""
    if sparse is None:
        sparse = sparse_ops_available()
    t0 = time.perf_counter()
    benches = memory_benchmarks(device, dtype)
    benches += conv_benchmarks(shape_hw, device, dtype)
    benches += block_benchmarks(shape_hw, device, dtype, schedule, backend, sparse=sparse)
    log(f'{len(benches)} micro-benchmarks in {time.perf_counter() - t0:.1f} s'
        + ('' if sparse else ' (sparse ops unavailable: dense only)'))
    return benches


# --- the fit ----------------------------------------------------------------------------------

def log_errors(profile, benches, dtype=None):
    return [math.log(kernels_time(b.kernels, profile, dtype) / b.measured_s) for b in benches]


# On GPUs the single dense convs and the stem run cuDNN's kernels (NCHW transforms, special
# first-layer kernels) that the predictor's GEMM model does not describe: fitting them left
# the rest mispredicted (H100: rms log error 0.39, block MAPE 20 %). The deployed dense block
# is fitted only when it was measured as the deployed network runs it, compiled
# (``measure.COMPILE_DEPLOYED``): the model describes Inductor's kernels (library convs at the
# ``compiled`` efficiency, one fused pass per conv for its epilogue), which the eager folded
# block does not run. The others are still measured and printed, as a check.
CHECK_ONLY_OPS = {'cpu': (), 'gpu': ('conv', 'stem')}


def fit_benchmarks(profile, benches):
    """The benchmarks the efficiencies of ``profile``'s kind are fitted on."""
    skip = CHECK_ONLY_OPS[profile.kind]

    def fitted(spec):
        if spec.get('op') in skip:
            return False
        return not (profile.kind == 'gpu' and spec.get('op') == 'deployed_block'
                    and not spec.get('compiled'))
    return [b for b in benches if fitted(b.spec or {})]


# The compiled deployed blocks are fitted on their own, after everything else and with
# ``compiled`` alone: they no longer pull on the efficiencies of the project's kernels, and
# the one efficiency is weighted towards what the deployed reference sums, each stage's block
# counted as often as ResNet-101 (the benchmarked network) has blocks in that stage.
DEPLOYED_BLOCK_WEIGHTS = ARCH[101]


def _is_compiled_deployed(bench):
    spec = bench.spec or {}
    return spec.get('op') == 'deployed_block' and bool(spec.get('compiled'))


def _deployed_weight(bench):
    stage = int(math.log2(bench.spec['shape']['planes'] // 64))
    return DEPLOYED_BLOCK_WEIGHTS[stage]


def _pattern_search(profile, benches, keys, dtype=None, iters=400, weights=None):
    """``profile`` with ``keys`` minimising the (weighted) mean squared log error."""
    weights = weights or [1.0] * len(benches)
    lows = {k: max(EFFICIENCY_BOUNDS[k][0], 1e-4) for k in keys}
    highs = {k: EFFICIENCY_BOUNDS[k][1] for k in keys}

    def to_z(k, v):
        return math.log(v + _LOG_OFFSET.get(k, 0.0))

    def from_z(k, z):
        v = math.exp(z) - _LOG_OFFSET.get(k, 0.0)
        return min(max(v, lows[k] if k not in _LOG_OFFSET else 0.0), highs[k])

    def loss(z):
        p = profile.with_efficiency(**{k: from_z(k, v) for k, v in z.items()})
        errs = log_errors(p, benches, dtype)
        return sum(w * e * e for w, e in zip(weights, errs)) / sum(weights)

    z = {k: to_z(k, profile.efficiency[k]) for k in keys}
    best, step = loss(z), 1.0
    for _ in range(iters):
        improved = False
        for k in keys:
            for direction in (1, -1):
                trial = dict(z)
                trial[k] = to_z(k, from_z(k, z[k] + direction * step))
                value = loss(trial)
                if value < best - 1e-12:
                    z, best, improved = trial, value, True
                    break
        if not improved:
            step /= 2
            if step < 1e-3:
                break
    return profile.with_efficiency(**{k: round(from_z(k, v), 6) for k, v in z.items()})


def fit_efficiency(profile, benches, keys=None, dtype=None, iters=400):
    """Efficiencies minimising the mean squared log error over ``benches`` (pattern search),
    leaving out the ops ``CHECK_ONLY_OPS`` lists for the profile's kind; ``compiled`` on the
    compiled deployed blocks alone, afterwards (``DEPLOYED_BLOCK_WEIGHTS``). Returns the
    profile and the rms log error over all the fitted benchmarks."""
    benches = fit_benchmarks(profile, benches)
    keys = tuple(keys or FIT_KEYS[profile.kind])
    deployed = [b for b in benches if _is_compiled_deployed(b)] if 'compiled' in keys else []
    rest = [b for b in benches if b not in deployed]
    profile = _pattern_search(profile, rest, [k for k in keys if k != 'compiled'], dtype, iters)
    if deployed:
        profile = _pattern_search(profile, deployed, ['compiled'], dtype, iters,
                                  [_deployed_weight(b) for b in deployed])
    errs = log_errors(profile, benches, dtype)
    return profile, math.sqrt(sum(e * e for e in errs) / len(errs))


def calibrate(device='cpu', dtype=None, base=None, shape_hw=(800, 1216), backend='auto',
              sparse=None, name=None, schedule=None, log=print):
    """Measure this device and return ``(profile, benchmarks, rms_log_error)``."""
    device = torch.device(device)
    if base is not None:
        base = load_profile(base)
    elif device.type == 'cuda':
        base = gpu_base_profile(device)
    else:
        base = cpu_base_profile(name)
    dtype = dtype or ('fp16' if device.type == 'cuda' else 'fp32')
    from dataclasses import replace
    if schedule is None:
        schedule = 'rows' if device.type == 'cuda' and backend != 'torch' else 'torch'
    base = replace(base, dtype=dtype, name=name or base.name, schedule=schedule)
    schedule = get_schedule(schedule).replace(with_masker=False)  # masks are pinned
    benches = micro_benchmarks(str(device), dtype, shape_hw, schedule, backend, sparse, log)
    profile, rms = fit_efficiency(base, benches)
    when = time.strftime('%Y-%m-%d')
    device_name = (torch.cuda.get_device_name(device) if device.type == 'cuda' else
                   f'{platform.machine()} CPU, {torch.get_num_threads()} threads')
    profile = replace(profile, notes=f'{base.notes}; calibrated {when} on {device_name} '
                      f'({dtype}, {len(benches)} benchmarks at {shape_hw[0]}x{shape_hw[1]}'
                      f'{", CUDA graphs" if measure.CUDA_GRAPHS else ""}, '
                      f'rms log error {rms:.3f}, torch {torch.__version__})')
    return profile, benches, rms
