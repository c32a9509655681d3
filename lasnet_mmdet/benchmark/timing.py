"""Host-clock timing, synchronised on CUDA: interleaved medians and single (cold) calls."""
import statistics
import time

import torch


def sync(device):
    if torch.device(device).type == 'cuda':
        torch.cuda.synchronize()


@torch.no_grad()
def time_call(fn, device):
    """Milliseconds of one call of ``fn`` (e.g. the first at a new size), synchronised."""
    sync(device)
    t0 = time.perf_counter()
    fn()
    sync(device)
    return (time.perf_counter() - t0) * 1e3


@torch.no_grad()
def time_interleaved(fns, device, warmup, repeats):
    """Median ms of each of ``fns`` (a dict of callables), called in turn ``repeats`` times
    after ``warmup`` rounds, so that machine noise hits every variant alike."""
    times = {k: [] for k in fns}
    for _ in range(warmup):
        for fn in fns.values():
            fn()
    sync(device)
    for _ in range(repeats):
        for k, fn in fns.items():
            times[k].append(time_call(fn, device))
    return {k: statistics.median(v) for k, v in times.items()}


def time_by_kind(fns, device, warmup, repeats):
    """``time_interleaved`` within each kind of variant: the CUDA-graph replays (names ending
    in ``_graph``) among themselves, then the eager calls. Host-bound eager calls timed in
    between slowed the replays after them (H100, fp16, batch 1, 800x1216, same process: LAS
    graphed 1.62 vs 1.43 ms, the NCHW dense graph 4.32 vs 3.98, the channels-last folded one
    2.82 vs 2.77), so a replay is compared with replays timed in the same conditions."""
    ms = {}
    for graphed in (True, False):
        group = {k: fn for k, fn in fns.items() if k.endswith('_graph') == graphed}
        if group:
            ms.update(time_interleaved(group, device, warmup, repeats))
    return {k: ms[k] for k in fns}


def kernel_table(fn, device, top=12):
    """Time of one call of ``fn`` by kernel name (CUDA) or operator (CPU, self time)."""
    from torch.profiler import ProfilerActivity, profile
    activity = ProfilerActivity.CUDA if torch.device(device).type == 'cuda' else \
        ProfilerActivity.CPU
    with torch.no_grad():
        fn()  # warm (compilation, caches) outside the profile
        sync(device)
        with profile(activities=[activity]) as prof:
            fn()
            sync(device)
    totals = {}
    if activity == ProfilerActivity.CUDA:
        for e in prof.events():
            if e.device_type == torch.autograd.DeviceType.CUDA:
                calls, us = totals.get(e.name, (0, 0.0))
                totals[e.name] = (calls + 1, us + e.device_time_total)
    else:
        for e in prof.key_averages():
            totals[e.key] = (e.count, e.self_cpu_time_total)
    rows = sorted(totals.items(), key=lambda kv: -kv[1][1])
    return dict(calls=sum(c for c, _ in totals.values()),
                total_ms=sum(us for _, us in totals.values()) / 1e3,
                top=[dict(name=name, calls=c, ms=us / 1e3) for name, (c, us) in rows[:top]])
