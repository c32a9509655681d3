"""Files written through a temporary name get the permissions a plain open() would give."""
import json
import os
import stat

import numpy as np
import pytest

from lasnet_mmdet.visualization.atomic_write import save_image, save_json, save_npz


@pytest.fixture
def umask_027():
    saved = os.umask(0o027)
    yield
    os.umask(saved)


def mode(path):
    return stat.S_IMODE(os.stat(path).st_mode)


def test_new_files_follow_the_umask(tmp_path, umask_027):
    save_json(str(tmp_path / 'metrics.json'), {'a': 1})
    save_npz(str(tmp_path / 'masks.npz'), layer1=np.zeros((2, 2), np.float32))
    save_image(str(tmp_path / 'picture.png'), np.zeros((4, 4, 3), np.uint8))
    for name in ('metrics.json', 'masks.npz', 'picture.png'):
        assert mode(tmp_path / name) == 0o640, name  # 0o666 & ~0o027, not mkstemp's 0o600
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith('.')] == []


def test_a_replaced_file_keeps_its_mode(tmp_path, umask_027):
    path = tmp_path / 'metrics.json'
    path.write_text('{}')
    os.chmod(path, 0o604)
    save_json(str(path), {'a': 2})
    assert mode(path) == 0o604 and json.loads(path.read_text()) == {'a': 2}
