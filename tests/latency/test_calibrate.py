import json
import os.path as osp
import subprocess
import sys
from dataclasses import asdict

import pytest

from lasnet_mmdet.latency.calibrate import (Benchmark, calibrate, fit_benchmarks,
                                            fit_efficiency, kernels_for, load_measurements,
                                            save_measurements)
from lasnet_mmdet.latency.hardware import PRESETS, load_profile
from lasnet_mmdet.latency.predictor import (BlockShape, Kernel, kernels_time, las_kernels,
                                            predict_static_block, static_kernels)

REPO = osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__))))


def test_fit_recovers_known_efficiencies():
    # vendor: the dense (cuDNN) convs of the static blocks run at their own efficiency
    truth = PRESETS['h100'].with_efficiency(compute=0.3, memory=0.6, gather=0.2, launch_us=7.0,
                                            vendor=0.4)
    shapes = [BlockShape(256, 64, 200, 304), BlockShape(1024, 256, 50, 76),
              BlockShape(2048, 512, 25, 38)]
    kernel_sets = [[Kernel('tiny', bytes=8)], [Kernel('copy', bytes=2**28)]]
    for shape in shapes:
        kernel_sets.append(static_kernels(shape, 'fp16'))
        kernel_sets += [las_kernels(shape, S, r, 'fused', 'fp16') for S in (1, 4, 8)
                        for r in (0.2, 0.7)]
    benches = [Benchmark(str(i), ks, kernels_time(ks, truth)) for i, ks in enumerate(kernel_sets)]
    fitted, rms = fit_efficiency(PRESETS['h100'], benches)
    assert rms < 0.02
    for key in ('compute', 'memory', 'launch_us', 'vendor'):
        assert fitted.efficiency[key] == pytest.approx(truth.efficiency[key], rel=0.1)


def test_compile_deployed_times_the_compiled_block(monkeypatch):
    # --compile-deployed: the deployed block runs through torch.compile in the benchmark's
    # mode (a tiny CPU block: seconds of Inductor C++ compilation)
    import torch
    from lasnet_mmdet.latency import measure
    calls, real = [], torch.compile

    def spy(fn, **kwargs):
        calls.append(kwargs.get('mode'))
        return real(fn, **kwargs)
    monkeypatch.setattr(torch, 'compile', spy)
    monkeypatch.setattr(measure, 'COMPILE_DEPLOYED', True)
    try:
        shape = measure.stage_block_shape(3, 64, 64)
        assert measure.measure_deployed_block(shape, 'cpu', 'fp32', warmup=1, repeats=2) > 0
    finally:
        torch._dynamo.reset()
    assert calls == ['max-autotune-no-cudagraphs']


def test_gpu_fits_the_deployed_block_only_when_compiled():
    # The model's deployed block fuses its epilogues as torch.compile does; the eager folded
    # block (separate ReLU / add kernels) is only a check on GPUs.
    shape = BlockShape(1024, 256, 50, 76)
    kernels = static_kernels(shape, 'fp16', deployed=True)
    eager = Benchmark('eager', kernels, 1e-4, {'op': 'deployed_block'})
    compiled = Benchmark('compiled', kernels, 1e-4, {'op': 'deployed_block', 'compiled': True})
    assert fit_benchmarks(PRESETS['h100'], [eager, compiled]) == [compiled]
    assert fit_benchmarks(load_profile('cpu-2t'), [eager, compiled]) == [eager, compiled]


def test_deployed_blocks_compile_for_static_shapes(monkeypatch):
    # One block per stage goes through the same compiled function: each must be compiled for
    # its own shape, as the deployed network is, not with the symbolic height and width that
    # Dynamo's automatic dynamic shapes give every recompile after the first.
    import torch
    from lasnet_mmdet.latency import measure
    symbolic, real = [], torch.compile

    def record(gm, example_inputs):
        symbolic.append(any(isinstance(x, torch.SymInt) for x in example_inputs))
        return gm.forward

    def spy(fn, mode=None, **kwargs):  # the deployed compile's arguments, a recording backend
        return real(fn, backend=record, **kwargs)
    monkeypatch.setattr(torch, 'compile', spy)
    monkeypatch.setattr(measure, 'COMPILE_DEPLOYED', True)
    try:
        for stage in (2, 3):
            measure.measure_deployed_block(measure.stage_block_shape(stage, 64, 64), 'cpu',
                                           'fp32', warmup=1, repeats=1)
    finally:
        torch._dynamo.reset()
    assert symbolic == [False, False]


def test_compiled_deployed_benchmark_has_the_predictors_kernels(tmp_path):
    # Calibration times the deployed block compiled on a GPU: its kernels are those the
    # predictor sums for the deployed reference there, also when refitted from saved
    # measurements; on a CPU (eager deployed network) the eager folded block's.
    shape = BlockShape(1024, 256, 50, 76)
    spec = {'op': 'deployed_block', 'shape': asdict(shape), 'compiled': True}
    h100 = PRESETS['h100']
    gpu = kernels_for(spec, 'fp16', None, 'gpu')
    assert kernels_time(gpu, h100) == pytest.approx(predict_static_block(shape, h100,
                                                                         deployed=True))
    assert kernels_for(spec, 'fp32', None, 'cpu') == static_kernels(shape, 'fp32', deployed=True)
    path = tmp_path / 'measurements.json'
    save_measurements(path, [Benchmark('deployed', gpu, 1e-4, spec)], h100)
    assert load_measurements(path, 'fp16', 'rows')[0].kernels == gpu


def test_compiled_deployed_blocks_are_fitted_on_their_own():
    # The compiled blocks set ``compiled`` alone, weighted as ResNet-101 counts its blocks: a
    # stage-1 block the model cannot describe (2x slower) leaves the other efficiencies as
    # they are without the deployed blocks, and stage 3 (23 blocks) fitted closely.
    truth = PRESETS['h100'].with_efficiency(compute=0.3, memory=0.6, gather=0.2, launch_us=7.0,
                                            vendor=0.4, compiled=0.5)
    shapes = [BlockShape(256, 64, 200, 304), BlockShape(512, 128, 100, 152),
              BlockShape(1024, 256, 50, 76), BlockShape(2048, 512, 25, 38)]
    kernel_sets = [[Kernel('tiny', bytes=8)], [Kernel('copy', bytes=2**28)]]
    for shape in shapes:
        kernel_sets.append(static_kernels(shape, 'fp16'))
        kernel_sets += [las_kernels(shape, S, r, 'fused', 'fp16') for S in (1, 8)
                        for r in (0.2, 0.7)]
    rest = [Benchmark(str(i), ks, kernels_time(ks, truth)) for i, ks in enumerate(kernel_sets)]
    deployed = []
    for stage, shape in enumerate(shapes):
        spec = {'op': 'deployed_block', 'shape': asdict(shape), 'compiled': True}
        kernels = kernels_for(spec, 'fp16', None, 'gpu')
        slower = 2.0 if stage == 0 else 1.0
        deployed.append(Benchmark(f'deployed {stage}', kernels,
                                  slower * kernels_time(kernels, truth), spec))
    alone, _ = fit_efficiency(PRESETS['h100'], rest)
    fitted, _ = fit_efficiency(PRESETS['h100'], rest + deployed)
    assert {k: v for k, v in fitted.efficiency.items() if k != 'compiled'} == {
        k: v for k, v in alone.efficiency.items() if k != 'compiled'}
    stage3 = deployed[2]
    assert kernels_time(stage3.kernels, fitted) == pytest.approx(stage3.measured_s, rel=0.05)


@pytest.mark.parametrize('tool, reuse', [('calibrate_latency.py', '--from-measurements'),
                                         ('eval_latency_predictor.py', '--measured')])
def test_compile_deployed_refused_without_measuring(tool, reuse):
    args = ['--profile', 'cpu-2t'] if tool.startswith('eval') else ['--out', 'unused.json']
    proc = subprocess.run([sys.executable, f'tools/{tool}', *args, '--compile-deployed', reuse,
                           'saved.json'], cwd=REPO, capture_output=True, text=True)
    assert proc.returncode == 2
    assert f'--compile-deployed times the deployed network; {reuse} measures nothing' in (
        proc.stderr)
    assert not osp.exists(osp.join(REPO, 'unused.json'))


def test_calibrate_on_cpu_tiny_shapes(tmp_path):
    profile, benches, rms = calibrate('cpu', shape_hw=(64, 64), sparse=True)
    assert profile.kind == 'cpu' and profile.schedule == 'torch'
    assert any(b.name.startswith('LAS block') for b in benches)
    assert all(b.measured_s > 0 for b in benches) and rms >= 0
    path = tmp_path / 'cpu.json'
    profile.save(path)
    assert load_profile(str(path)) == profile


def test_calibrate_and_eval_tools(tmp_path):
    out = tmp_path / 'cpu.json'
    subprocess.run([sys.executable, 'tools/calibrate_latency.py', '--device', 'cpu', '--shape',
                    '64', '64', '--dense-only', '--out', str(out)], cwd=REPO, check=True,
                   capture_output=True)
    assert json.loads(out.read_text())['kind'] == 'cpu'
    res = tmp_path / 'eval.json'
    proc = subprocess.run(
        [sys.executable, 'tools/eval_latency_predictor.py', '--profile', str(out), '--device',
         'cpu', '--shape', '64', '64', '--granularities', '1', '4', '--rates', '0.3', '0.7',
         '--stages', '2', '3', '--repeats', '1', '--json', str(res)],
        cwd=REPO, check=True, capture_output=True, text=True)
    data = json.loads(res.read_text())
    assert len(data['blocks']) == 8
    for key in ('mape', 'spearman', 'backbone_error', 'deployed_backbone_error'):
        assert key in data and key in proc.stdout
    assert data['backbone']['deployed_measured_ms'] > 0


def test_eval_tool_reuses_measurements_and_compares_benchmarks(tmp_path):
    blocks = [dict(stage=st, S=S, r=r, measured_ms=0.1 + 0.01 * st + 0.05 * r)
              for st in (1, 4) for S in (1, 8) for r in (0.2, 0.8)]
    saved = dict(device='x', shape=[256, 256], blocks=blocks,
                 backbone=dict(granularity=[4, 4, 2, 1], rate=0.5, measured_ms=2.0,
                               static_measured_ms=3.0))
    bench = dict(shape=[256, 256], granularity=[4, 4, 2, 1], rate=0.5, batch=1, dense_ms=3.0,
                 sparse_ms=2.0, curve=[dict(rate=0.3, sparse_ms=1.5)])
    (tmp_path / 'saved.json').write_text(json.dumps(saved))
    (tmp_path / 'bench.json').write_text(json.dumps(bench))
    out = tmp_path / 'out.json'
    subprocess.run([sys.executable, 'tools/eval_latency_predictor.py', '--preset', 'h100',
                    '--measured', str(tmp_path / 'saved.json'), '--benchmark-json',
                    str(tmp_path / 'bench.json'), '--json', str(out)],
                   cwd=REPO, check=True, capture_output=True)
    data = json.loads(out.read_text())
    assert len(data['blocks']) == 8 and -1 <= data['spearman'] <= 1
    assert data['backbone']['measured_ms'] == 2.0
    b = data['benchmarks'][0]
    assert b['sparse_predicted_ms'] > 0 and len(b['curve']) == 1


def test_gpu_fit_leaves_out_library_convs():
    # cuDNN's own convs and stem are printed as a check, not fitted, on GPUs: one that the
    # model mispredicts 10x must not pull the fitted efficiencies; on CPUs it is fitted.
    truth = PRESETS['h100'].with_efficiency(compute=0.3, memory=0.6, gather=0.2, launch_us=7.0)
    shape = BlockShape(1024, 256, 50, 76)
    kernel_sets = [[Kernel('tiny', bytes=8)], [Kernel('copy', bytes=2**28)],
                   static_kernels(shape, 'fp16')]
    kernel_sets += [las_kernels(shape, S, r, 'fused', 'fp16') for S in (1, 4, 8)
                    for r in (0.2, 0.7)]
    benches = [Benchmark(str(i), ks, kernels_time(ks, truth)) for i, ks in enumerate(kernel_sets)]
    conv = static_kernels(shape, 'fp16')[:1]
    benches.append(Benchmark('cudnn conv', conv, 10 * kernels_time(conv, truth), {'op': 'conv'}))
    assert [b.name for b in fit_benchmarks(truth, benches)] == [b.name for b in benches[:-1]]
    fitted, rms = fit_efficiency(PRESETS['h100'], benches)
    assert rms < 0.02
    assert fitted.efficiency['compute'] == pytest.approx(0.3, rel=0.1)
    assert len(fit_benchmarks(load_profile('cpu-2t'), benches)) == len(benches)


def test_las_block_benchmark_follows_the_path_it_was_timed_on():
    """A LAS block timed through row lists (``fused_masker=False``: the mask given to a
    compaction launch and a gathered conv1) gets those kernels; one timed through the fused
    masker + conv1 launch (the default) gets the fused conv1 on every pixel."""
    from lasnet_mmdet.latency.predictor import SCHEDULES
    shape = BlockShape(1024, 256, 50, 76)
    schedule = SCHEDULES['rows'].replace(with_masker=False)
    spec = {'op': 'las_block', 'shape': asdict(shape), 'S': 4, 'r': 0.5}
    fused = kernels_for(dict(spec, fused_masker=True), 'fp16', schedule, 'gpu')
    rows = kernels_for(dict(spec, fused_masker=False), 'fp16', schedule, 'gpu')
    assert fused == kernels_for(spec, 'fp16', schedule, 'gpu')
    assert fused == las_kernels(shape, 4, 0.5, schedule, 'fp16')
    conv1 = {k.name: k for k in fused}['conv1'], {k.name: k for k in rows}['conv1']
    assert conv1[0].gathered_bytes == 0 and conv1[1].gathered_bytes > 0
    assert conv1[0].M > conv1[1].M  # every pixel vs the needed rows
