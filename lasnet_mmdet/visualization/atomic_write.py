"""Output files written whole or not at all: to a temporary name in the same folder, then
renamed into place (an interrupted run leaves no half-written picture, array or JSON)."""
import json
import os
import os.path as osp
import stat
import tempfile
from contextlib import contextmanager


def file_mode(path):
    """The permissions ``path`` gets: those of the file it replaces, else what ``open(path,
    'w')`` gives a new file (``0o666`` less the umask; ``mkstemp`` would leave ``0o600``)."""
    try:
        return stat.S_IMODE(os.stat(path).st_mode)
    except FileNotFoundError:
        umask = os.umask(0)  # the only portable way to read it
        os.umask(umask)
        return 0o666 & ~umask


@contextmanager
def temporary_path(path, suffix):
    folder = osp.dirname(osp.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f'.{osp.basename(path)}.', suffix=suffix, dir=folder)
    os.close(fd)
    try:
        yield tmp
        os.chmod(tmp, file_mode(path))
        os.replace(tmp, path)
    finally:
        if osp.exists(tmp):
            os.remove(tmp)


def save_image(path, rgb):
    """An RGB uint8 array to ``path`` (format from its extension, e.g. .png)."""
    import mmcv
    with temporary_path(path, osp.splitext(path)[1]) as tmp:
        if not mmcv.imwrite(rgb[..., ::-1], tmp, auto_mkdir=False):
            raise OSError(f'could not write the picture {path}')


def save_npz(path, **arrays):
    """Named arrays to a compressed ``.npz`` file."""
    import numpy as np
    with temporary_path(path, '.npz') as tmp:
        np.savez_compressed(tmp, **arrays)


def save_json(path, obj):
    """``obj`` as indented JSON."""
    with temporary_path(path, '.json') as tmp:
        with open(tmp, 'w') as f:
            json.dump(obj, f, indent=1)
            f.write('\n')
