"""No code of the plugin or its tools patches a method onto an instance
(``types.MethodType``, ``obj.forward = ...``): behaviour lives in classes, where hooks,
``copy.deepcopy``, pickling and ``torch.compile`` see it."""
import os
import re

from conftest import REPO

PATTERNS = (re.compile(r'\bMethodType\b'), re.compile(r'\.forward\s*=(?!=)'),
            re.compile(r'''setattr\([^,]+,\s*['"]forward['"]'''))


def patching_lines(top):
    """``path:line: text`` of every line under ``top`` that patches a method on an instance."""
    found = []
    for root, _, files in os.walk(top):
        for name in sorted(files):
            if not name.endswith('.py'):
                continue
            path = os.path.join(root, name)
            with open(path, encoding='utf-8') as f:
                for number, line in enumerate(f, 1):
                    if any(pattern.search(line) for pattern in PATTERNS):
                        found.append(f'{os.path.relpath(path, REPO)}:{number}: {line.strip()}')
    return found


def test_no_method_patched_onto_an_instance():
    found = [line for top in ('lasnet_mmdet', 'tools')
             for line in patching_lines(os.path.join(REPO, top))]
    assert not found, '\n'.join(found)


def test_the_check_finds_patching(tmp_path):
    (tmp_path / 'bad.py').write_text(
        'import types\n'
        'model.forward = types.MethodType(fast_forward, model)\n'
        'block.forward=fn\n'
        "setattr(block, 'forward', fn)\n"
        'same = block.forward == other.forward\n'
        'out = block.forward(x)\n')
    assert [line.split(':')[1] for line in patching_lines(str(tmp_path))] == ['2', '3', '4']
