"""tools/benchmark_latency.py end to end on the CPU, at a tiny input (timings are not checked)."""
import json
import os
import subprocess
import sys

from conftest import REPO

TOOL = 'tools/benchmark_latency.py'
CONFIG = 'configs/lasnet_r101_fpn.py'


def run_tool(*args):
    return subprocess.run([sys.executable, TOOL, CONFIG, '--device', 'cpu', *args], cwd=REPO,
                          capture_output=True, text=True, env={**os.environ, 'PYTHONPATH': REPO})


def test_benchmark_json_table_curve_and_kernels(tmp_path):
    out = tmp_path / 'bench.json'
    proc = run_tool('--shape', '64', '96', '--rate', '0.5', '--granularity', '4', '4', '7', '1',
                    '--warmup', '0', '--repeats', '1', '--rates', '0.3', '--profile-kernels',
                    '--json', str(out))
    assert proc.returncode == 0, proc.stderr[-3000:]
    res = json.loads(out.read_text())
    assert res['granularity'] == [4, 4, 7, 1] and res['shape'] == [64, 96]
    assert res['ratio'] == res['sparse_ms'] / res['dense_ms']
    assert 0 < res['macs_ratio'] < 1
    assert sorted(res['stages']) == ['layer1', 'layer2', 'layer3', 'layer4']
    assert [c['rate'] for c in res['curve']] == [0.3]
    assert res['curve'][0]['macs_ratio'] < res['macs_ratio']
    # The sparse forward runs row GEMMs; the dense one runs convolutions.
    sparse_ops = [row['name'] for row in res['kernels']['sparse']['top']]
    dense_ops = [row['name'] for row in res['kernels']['dense']['top']]
    assert 'aten::addmm' in sparse_ops and 'aten::addmm' not in dense_ops
    assert 'sparse/dense' in proc.stdout and 'sparse:' in proc.stdout


def test_benchmark_rejects_a_bad_rate():
    proc = run_tool('--rate', '1.5')
    assert proc.returncode != 0 and '1.5' in proc.stderr
