"""tools/benchmark_latency.py refuses bad arguments while parsing them, before any model is
built or timed (the end-to-end run and the other argument checks: tests/tools)."""
import importlib.util
import os

import pytest

from conftest import REPO

TOOL = 'tools/benchmark_latency.py'
CONFIG = 'configs/lasnet_r101_fpn.py'


def parse(*args):
    """The tool's argument parsing, in this process."""
    spec = importlib.util.spec_from_file_location('benchmark_latency', os.path.join(REPO, TOOL))
    tool = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tool)
    cwd = os.getcwd()
    os.chdir(REPO)
    try:
        return tool.parse_args([CONFIG, '--device', 'cpu', *args])
    finally:
        os.chdir(cwd)


def parse_error(capsys, *args):
    with pytest.raises(SystemExit) as exit_info:
        parse(*args)
    assert exit_info.value.code == 2
    return capsys.readouterr().err


@pytest.mark.parametrize('args,message', [
    (['--rate', '1.5'], '--rate must be in [0, 1], got 1.5'),
    (['--rate', 'nan'], '--rate must be in [0, 1], got nan'),
    (['--rates', '0.2', '-1'], '--rates must be in [0, 1], got -1.0'),
    (['--stream-scale', 'inf'], '--stream-scale must be a finite number, got inf'),
    (['--stream-scale', 'nan'], '--stream-scale must be a finite number, got nan'),
    (['--granularity', '4', '4', '2'], '--granularity needs one S per stage (4), got [4, 4, 2]'),
    (['--granularity', '4', '4', '2', '1', '1'], 'got [4, 4, 2, 1, 1]'),
    (['--granularity', '4', '4', '2', '0'], '--granularity values must be >= 1'),
    (['--json', '/proc/x.json'], '--json /proc/x.json: cannot write in /proc'),
])
def test_bad_arguments_are_named(args, message, capsys):
    assert message in parse_error(capsys, *args)


def test_json_must_be_a_writable_file(tmp_path, capsys):
    assert f'--json {tmp_path}: is a directory' in parse_error(capsys, '--json', str(tmp_path))
    out = tmp_path / 'bench.json'
    assert parse('--json', str(out)).json == str(out)
    assert list(tmp_path.iterdir()) == []  # the check leaves nothing behind
    assert parse('--granularity', '4', '4', '7', '1').granularity == [4, 4, 7, 1]
