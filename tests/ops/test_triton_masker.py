"""The fused Triton masker decision equals the PyTorch one (``Masker.logits`` + threshold).

Without CUDA the kernel runs in Triton's interpreter on small CPU tensors. TRITON_INTERPRET
must be set before the kernel is decorated; ``lasnet_mmdet.ops.triton`` is imported lazily
(inside the tests), so setting it here, at collection, is early enough.
"""
import os

import pytest
import torch

if not torch.cuda.is_available():
    os.environ.setdefault('TRITON_INTERPRET', '1')

from lasnet_mmdet.models.layers.masker import Masker  # noqa: E402

pytest.importorskip('triton')

CUDA = torch.cuda.is_available()
requires_cuda = pytest.mark.skipif(not CUDA, reason='needs a CUDA device')
DEVICE = 'cuda' if CUDA else 'cpu'


def _masker(channels, granularity, stride, seed=0):
    torch.manual_seed(seed)
    masker = Masker(channels, granularity, stride=stride).eval()
    # Zero-mean biases: about half the cells execute (the init +5 bias would make all execute).
    masker.conv2.bias.data.normal_()
    return masker


def _reference(masker, x):
    """Torch decision and the margins ``execute - skip`` (fp32, from ``Masker.logits``)."""
    with torch.no_grad():
        logits = masker.float().logits(x.float())
    return (logits[:, :1] >= logits[:, 1:]).to(x.dtype), logits[:, :1] - logits[:, 1:]


def _assert_same_decision(mask, ref, margin, tie=1e-3):
    assert mask.shape == ref.shape and mask.dtype == ref.dtype
    clear = margin.abs() > tie  # near-ties may round either way
    assert clear.float().mean() > 0.9
    assert torch.equal(mask[clear], ref[clear])
    assert set(mask.unique().tolist()) <= {0.0, 1.0}


# (C, granularity, stride, batch, H, W): windows 1, 2, 4 and 8 (=2*4), sizes the window does
# not divide, C a multiple of the channel block and not, batch 2.
CASES = [
    (64, 1, 1, 2, 5, 6),
    (96, 2, 1, 1, 7, 9),
    (64, 4, 1, 2, 11, 13),
    (96, 2, 2, 1, 11, 13),
    (64, 4, 2, 2, 19, 17),
]


@pytest.mark.parametrize('channels_last', [True, False], ids=['nhwc', 'nchw'])
@pytest.mark.parametrize('case', CASES, ids=str)
def test_decision_matches_torch(case, channels_last):
    from lasnet_mmdet.ops.triton import masker_decision
    c, s, stride, batch, h, w = case
    masker = _masker(c, s, stride).to(DEVICE)
    x = torch.randn(batch, c, h, w, device=DEVICE)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    ref, margin = _reference(masker, x)
    mask = masker_decision(x, masker.conv2.weight, masker.conv2.bias, stride * s)
    window = stride * s
    assert mask.shape == (batch, 1, -(-h // window), -(-w // window))
    _assert_same_decision(mask, ref, margin)


@pytest.mark.parametrize('tile', [(4, 2, 32, 2), (2, 16, 64, 4), (8, 1, 128, 1)], ids=str)
@pytest.mark.parametrize('case', CASES, ids=str)
def test_several_cells_per_program(case, tile):
    # Cells per program that do not divide the cell row, pixel steps smaller than the window
    # (and larger), channel blocks smaller than C: the same decision.
    from lasnet_mmdet.ops.triton.masker import MaskerTile, masker_decision
    c, s, stride, batch, h, w = case
    masker = _masker(c, s, stride, seed=1).to(DEVICE)
    x = torch.randn(batch, c, h, w, device=DEVICE).contiguous(memory_format=torch.channels_last)
    ref, margin = _reference(masker, x)
    mask = masker_decision(x, masker.conv2.weight, masker.conv2.bias, stride * s,
                           tile=MaskerTile(*tile))
    _assert_same_decision(mask, ref, margin)


def test_clipped_window_divides_by_inbound_pixels():
    # 4x5 input, window 4: the second cell holds one clipped column of 4 in-bounds pixels,
    # all -1 on channel 0. Execute iff mean + 0.5 >= 0: the in-bounds mean (-1) skips, a
    # division by the full 4x4 window (-0.25) would execute.
    from lasnet_mmdet.ops.triton import masker_decision
    x = torch.zeros(1, 64, 4, 5, device=DEVICE)
    x[:, 0, :, 4] = -1.0
    weight = torch.zeros(2, 64, 1, 1, device=DEVICE)
    weight[0, 0] = 1.0
    bias = torch.tensor([0.5, 0.0], device=DEVICE)
    mask = masker_decision(x, weight, bias, 4)
    assert mask.flatten().tolist() == [1.0, 0.0]
    masker = Masker(64, 4).eval().to(DEVICE)
    masker.conv2.weight.data.copy_(weight)
    masker.conv2.bias.data.copy_(bias)
    assert torch.equal(mask, _reference(masker, x)[0])  # avg_pool2d divides the same way


@pytest.mark.parametrize('dtype', [torch.float16, torch.bfloat16])
def test_half_input_fp32_weights(dtype):
    from lasnet_mmdet.ops.triton import masker_decision
    masker = _masker(64, 2, 2).to(DEVICE)
    x = torch.randn(1, 64, 9, 7, device=DEVICE, dtype=dtype)
    x = x.contiguous(memory_format=torch.channels_last)
    ref, margin = _reference(masker, x)
    mask = masker_decision(x, masker.conv2.weight.to(dtype), masker.conv2.bias.to(dtype), 4)
    # Half weights change the logits by their rounding: compare clear margins only.
    _assert_same_decision(mask, ref, margin, tie=0.05)


def test_bad_inputs_name_the_value():
    from lasnet_mmdet.ops.triton import masker_decision
    x = torch.randn(1, 8, 4, 4, device=DEVICE)
    w, b = torch.randn(2, 8, device=DEVICE), torch.randn(2, device=DEVICE)
    with pytest.raises(ValueError, match=r'\(8, 4, 4\)'):
        masker_decision(x[0], w, b, 2)
    with pytest.raises(ValueError, match='float64'):
        masker_decision(x.double(), w, b, 2)
    with pytest.raises(ValueError, match=r'\(3, 8\)'):
        masker_decision(x, torch.randn(3, 8, device=DEVICE), b, 2)
    with pytest.raises(ValueError, match=r'\(3,\)'):
        masker_decision(x, w, torch.randn(3, device=DEVICE), 2)
    with pytest.raises(ValueError, match='window.*0'):
        masker_decision(x, w, b, 0)


@requires_cuda
@pytest.mark.parametrize('granularity,stride', [(1, 1), (4, 1), (2, 2), (8, 2)])
def test_masker_eval_cuda_fused_matches_torch(granularity, stride, monkeypatch):
    masker = _masker(256, granularity, stride).cuda().half()
    masker.use_triton = True  # as a block on the Triton backend sets it
    x = torch.randn(2, 256, 50, 75, device='cuda', dtype=torch.float16)
    x = x.contiguous(memory_format=torch.channels_last)
    with torch.no_grad():
        mask = masker(x, -(-50 // stride), -(-75 // stride))
        logits = masker.logits(x).float()  # the torch path, in fp16 as the module runs it
    ref = (logits[:, :1] >= logits[:, 1:]).half()
    # fp16 pooling and GEMM round the logits: compare where the margin is clear of that.
    _assert_same_decision(mask, ref, logits[:, :1] - logits[:, 1:], tie=0.02)
    # Training never takes the fused kernel (Gumbel noise, gradients).
    import lasnet_mmdet.ops.triton.masker as fused

    def fail(*args, **kwargs):
        raise AssertionError('the fused eval kernel ran in training')
    monkeypatch.setattr(fused, 'masker_decision', fail)
    masker.train()(x, -(-50 // stride), -(-75 // stride))


def _benchmark_tool():
    import importlib.util
    from pathlib import Path
    path = Path(__file__).parents[2] / 'tools' / 'benchmark_masker.py'
    spec = importlib.util.spec_from_file_location('benchmark_masker', path)
    tool = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tool)
    return tool


def test_benchmark_tool_covers_every_masker_and_fitting_tiles():
    """The tool's maskers are ResNet-101's 33 (8 distinct at 4-4-2-1, 800x1216), its candidate
    tiles fit the window, and the library's tile follows the window and channels as measured
    (64 x 128 tiles on 8 warps only for S = 7's large cells)."""
    from lasnet_mmdet.ops.triton.masker import masker_tile
    tool = _benchmark_tool()
    maskers = tool.maskers(800, 1216, [4, 4, 2, 1])
    assert sum(m['times'] for m in maskers) == 33
    assert [(m['C'], m['hw'], m['window']) for m in maskers[:3]] == [
        (64, (200, 304), 4), (256, (200, 304), 4), (256, (200, 304), 8)]
    assert maskers[-1] == dict(stage=4, C=2048, hw=(25, 38), window=1, times=2)
    for m in maskers:
        tiles = list(tool.candidates(m['window'], m['C']))
        assert tiles and all(t.block_p <= max(16, m['window'] ** 2) for t in tiles)
    assert masker_tile(7, 1024).num_warps == 8 and masker_tile(14, 512).num_warps == 8
    assert masker_tile(8, 256).block_p == 16 and masker_tile(1, 2048).cells == 4


@pytest.mark.skipif(CUDA, reason='checks the refusal without a CUDA device')
def test_benchmark_tool_refuses_to_run_without_cuda(capsys):
    with pytest.raises(SystemExit) as exit_info:
        _benchmark_tool().main(['--batch', '1'])
    assert exit_info.value.code == 2
    assert 'needs a CUDA device' in capsys.readouterr().err
