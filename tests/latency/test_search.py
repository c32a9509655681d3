import json
import os.path as osp
import subprocess
import sys

import pytest

from lasnet_mmdet.latency.search import search_granularity

REPO = osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__))))


def test_v100_pixel_masks_slower_than_static_coarse_faster():
    """LASNet's finding on a server GPU: S=1 loses to the static network, coarse S wins."""
    result = search_granularity('v100', 800, 1216, rate=0.5)
    static = result.totals['static']
    assert result.totals['S=1 (pixel masks)'] > static
    best = [v for k, v in result.totals.items() if k.startswith('best')][0]
    assert best < 0.8 * static
    for stage in range(4):
        assert result.stage_ms[4][stage] < result.static_ms[stage]
        assert min(result.best) > 1
    assert 'granularity=(' in result.config_snippet()
    # the best dense schedule (BN folded, channels-last, compiled) beats mmdet's eager one
    assert result.totals['deployed dense'] < static
    assert 'x deployed dense' in result.table()


def test_search_validates_arguments():
    with pytest.raises(ValueError, match='rate'):
        search_granularity('v100', 224, 224, rate=1.5)
    with pytest.raises(ValueError, match='candidates'):
        search_granularity('v100', 224, 224, candidates=(0, 2))
    with pytest.raises(ValueError, match='input size must be >= 1x1, got 0x0'):
        search_granularity('v100', 0, 0)


def test_tool_prints_table_and_snippet(tmp_path):
    out = tmp_path / 'search.json'
    proc = subprocess.run(
        [sys.executable, 'tools/search_granularity.py', '--preset', 'v100', '--shape', '800',
         '1216', '--rate', '0.5', '--json', str(out)],
        cwd=REPO, capture_output=True, text=True, check=True)
    assert 'layer3' in proc.stdout and 'model = dict(backbone=dict(granularity=(' in proc.stdout
    data = json.loads(out.read_text())
    assert len(data['best']) == 4 and data['totals']['static'] > 0


def test_tool_errors_are_clear(tmp_path):
    proc = subprocess.run([sys.executable, 'tools/search_granularity.py', '--preset', 'b200'],
                          cwd=REPO, capture_output=True, text=True)
    assert proc.returncode != 0 and 'unknown hardware preset' in proc.stderr
    bad = tmp_path / 'bad.json'
    bad.write_text('not json')
    proc = subprocess.run([sys.executable, 'tools/search_granularity.py', '--profile', str(bad)],
                          cwd=REPO, capture_output=True, text=True)
    assert proc.returncode != 0 and 'corrupt' in proc.stderr
    for args, message in ((['--shape', '0', '0'], '--shape must be two sizes >= 1, got 0 0'),
                          (['--batch', '0'], '--batch must be >= 1, got 0'),
                          (['--json', str(tmp_path / 'missing' / 'x.json')], 'does not exist')):
        proc = subprocess.run([sys.executable, 'tools/search_granularity.py', *args],
                              cwd=REPO, capture_output=True, text=True)
        assert proc.returncode != 0 and message in proc.stderr, (args, proc.stderr)
