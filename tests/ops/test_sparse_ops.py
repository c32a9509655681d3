"""The sparse LAS bottleneck equals the dense-masked one (eval), on both backends.

The Triton cases run on CUDA when it is there, else in Triton's interpreter on CPU tensors,
with small shapes (interpreted kernels are slow). TRITON_INTERPRET must be set before the
kernels are decorated; ``lasnet_mmdet.ops.triton`` is imported lazily, on the first Triton
forward, so setting it here, at collection, is early enough.
"""
import os
import sys

import pytest
import torch

if not torch.cuda.is_available():
    os.environ.setdefault('TRITON_INTERPRET', '1')

from lasnet_mmdet.models.backbones.las_resnet import LASResNet
from lasnet_mmdet.ops.layout import to_nchw
from lasnet_mmdet.ops.workspace import Workspace, use_workspace

sys.path.insert(0, os.path.dirname(__file__))
from ops_helpers import (assert_close_to_scale, coarse_for, dense_masked_forward,  # noqa: E402
                         make_block, sparse_forward)

CUDA = torch.cuda.is_available()
requires_cuda = pytest.mark.skipif(not CUDA, reason='needs a CUDA device')
DEVICE = 'cuda' if CUDA else 'cpu'

# (inplanes, planes, S, stride, downsample, batch, H, W): S in 1, 2, 4, 7, 8, sizes that S
# does not divide, stride 1 and 2, identity and downsample blocks, batch > 1.
CASES = [
    (64, 16, 1, 1, False, 1, 6, 7),
    (64, 16, 2, 1, True, 2, 9, 11),
    (32, 16, 4, 2, True, 2, 13, 10),
    (64, 16, 4, 1, False, 1, 16, 12),
    (64, 16, 7, 1, False, 2, 15, 9),
    (32, 16, 7, 2, True, 1, 17, 16),
    (64, 16, 8, 1, False, 1, 10, 17),
    (32, 16, 3, 2, True, 2, 11, 7),
]
RATES = [0.0, 0.5, 1.0]


pytestmark = pytest.mark.usefixtures('no_tf32')  # tests/conftest.py


def _check(backend, case, rate, dtype=torch.float32, device='cpu', rtol=1e-4):
    inplanes, planes, s, stride, down, batch, h, w = case
    block = make_block(inplanes, planes, s, stride, down).to(device, dtype)
    x = torch.randn(batch, inplanes, h, w, device=device, dtype=dtype)
    coarse = coarse_for(block, x, rate)
    with torch.no_grad():
        ref = dense_masked_forward(block.float(), x.float(), coarse.float())
        block.to(dtype)
        out = sparse_forward(block, x, coarse, backend)
    assert out.dtype == dtype
    assert_close_to_scale(out, ref, rtol)


@pytest.mark.parametrize('rate', RATES)
@pytest.mark.parametrize('case', CASES, ids=str)
def test_torch_backend_matches_dense_masked(case, rate):
    _check('torch', case, rate)


@pytest.mark.parametrize('rate', [0.5, 1.0])
@pytest.mark.parametrize('case', CASES, ids=str)
def test_torch_backend_onednn_gemms_match_dense_masked(case, rate, monkeypatch):
    # The tiny cases have fewer rows than ONEDNN_MIN_ROWS: force the oneDNN 1x1-conv GEMMs
    from lasnet_mmdet.ops import torch_backend
    monkeypatch.setattr(torch_backend, 'ONEDNN_MIN_ROWS', 1)
    _check('torch', case, rate)


def test_torch_backend_gemm_paths_agree():
    from lasnet_mmdet.ops.torch_backend import ONEDNN_MIN_ROWS, gemm
    weight, bias = torch.randn(24, 40), torch.randn(24)
    for rows in (torch.randn(7, 40), torch.randn(ONEDNN_MIN_ROWS + 3, 40)):  # BLAS, oneDNN
        out = gemm(rows, weight, bias)
        assert out.shape == (rows.shape[0], 24)
        assert_close_to_scale(out, rows @ weight.t() + bias, 1e-5)


@pytest.mark.parametrize('stride', [1, 2])
@pytest.mark.parametrize('batch,h,w', [(1, 5, 7), (2, 6, 3), (2, 1, 1)])
def test_conv2_taps_read_the_zero_bordered_map(batch, h, w, stride):
    """Taps into the (B, H+2, W+2) map with a zero border = the 3x3 im2col of the padded map,
    for every output pixel (each image, the corners and edges included)."""
    from lasnet_mmdet.ops.geometry import conv_out
    from lasnet_mmdet.ops.patches import conv2_taps, padded_rows
    c = 3
    fmap = torch.randn(batch, h, w, c)
    padded = torch.nn.functional.pad(fmap, (0, 0, 1, 1, 1, 1))  # zero border in H and W
    rows = padded.reshape(-1, c)
    assert torch.equal(rows[padded_rows(torch.arange(batch * h * w), h, w)],
                       fmap.reshape(-1, c))
    out_h, out_w = conv_out(h, stride), conv_out(w, stride)
    taps = conv2_taps(torch.arange(batch * out_h * out_w), out_h, out_w, h, w, stride)
    cols = torch.nn.functional.unfold(padded.permute(0, 3, 1, 2), 3, stride=stride)
    ref = cols.view(batch, c, 9, out_h * out_w).permute(0, 3, 2, 1).reshape(-1, 9, c)
    assert torch.equal(rows[taps], ref)


@pytest.mark.parametrize('case,rate', [(c, r) for c in CASES for r in RATES
                                       if r == 0.5 or c[2] in (2, 7)], ids=str)
def test_triton_backend_matches_dense_masked(case, rate):
    _check('triton', case, rate, device=DEVICE)


@pytest.mark.parametrize('rate', [0.5, 1.0])
@pytest.mark.parametrize('case', [c for c in CASES if c[4]], ids=str)
def test_triton_downsample_conv_apart_matches_dense_masked(case, rate, monkeypatch):
    """The downsample conv as cuDNN's conv before conv3's launch, as for large GEMMs (the
    test shapes are small: the launch would run it)."""
    from lasnet_mmdet.ops.triton import launcher
    monkeypatch.setattr(launcher, 'triton_fuses_downsample', lambda *shape: False)
    _check('triton', case, rate, device=DEVICE)


def test_downsample_conv_runs_in_conv3_where_memory_bound_or_small():
    from lasnet_mmdet.ops import triton_fuses_downsample
    assert triton_fuses_downsample(8 * 200 * 304, 64, 256)  # R101 stage 1, batch 8: K = 64
    assert triton_fuses_downsample(50 * 76, 512, 1024)  # stage 3, batch 1: 2 G MACs
    assert not triton_fuses_downsample(8 * 50 * 76, 512, 1024)  # batch 8: 16 G MACs


@requires_cuda
@pytest.mark.parametrize('dtype', [torch.float16, torch.bfloat16])
@pytest.mark.parametrize('case', CASES, ids=str)
def test_triton_half_precision(case, dtype):
    _check('triton', case, 0.5, dtype=dtype, device='cuda', rtol=2e-2)


@requires_cuda
def test_triton_realistic_shape_and_no_sync_capture():
    """A ResNet stage-3 block at 50x76 (S=7 does not divide) and a CUDA-graph capture."""
    block = make_block(1024, 256, 7, 1, False).cuda().half()
    x = torch.randn(2, 1024, 50, 76, device='cuda', dtype=torch.half)
    coarse = coarse_for(block, x, 0.5)
    with torch.no_grad():
        ref = dense_masked_forward(block, x, coarse)
        out = sparse_forward(block, x, coarse, 'triton')
        assert_close_to_scale(out, ref, 2e-2)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            captured = sparse_forward(block, x, coarse, 'triton')
        coarse.copy_(coarse_for(block, x, 0.2, seed=5))  # new mask, same graph
        graph.replay()
        assert_close_to_scale(captured, dense_masked_forward(block, x, coarse), 2e-2)


def test_public_api_sparse_equals_off():
    torch.manual_seed(0)
    backbone = LASResNet(depth=50, granularity=(4, 4, 2, 1), sparse_inference='off').eval()
    from ops_helpers import randomise_bn
    randomise_bn(backbone)
    x = torch.randn(2, 3, 97, 130)
    with torch.no_grad():
        with backbone.pinned_masks(0.5, seed=3):
            ref = backbone(x)
        backbone.sparse_inference = 'torch'
        with backbone.pinned_masks(0.5, seed=3):
            out = backbone(x)
    for o, r in zip(out, ref):
        assert_close_to_scale(o, r, 1e-4)


def test_outputs_do_not_share_the_reused_workspace():
    # Block outputs live in two alternating workspace buffers kept between forwards: the
    # returned stage outputs must be fresh NCHW tensors that a later forward cannot overwrite.
    torch.manual_seed(0)
    backbone = LASResNet(depth=50, granularity=(4, 4, 2, 1), sparse_inference='torch',
                         out_indices=(0, 1, 3)).eval()
    x = torch.randn(1, 3, 64, 96)
    with torch.no_grad():
        with backbone.pinned_masks(0.5, seed=1):
            first = backbone(x)
        kept = [o.clone() for o in first]
        with backbone.pinned_masks(0.7, seed=2):
            backbone(torch.randn(1, 3, 64, 96))
        backbone.sparse_inference = 'off'
        with backbone.pinned_masks(0.5, seed=1):
            ref = backbone(x)
    for o, k, r in zip(first, kept, ref):
        assert o.is_contiguous() and torch.equal(o, k)
        assert_close_to_scale(o, r, 1e-4)


@pytest.mark.parametrize('hook_on', ['block', 'pre_block', 'stage', 'masker', 'pre_masker'])
def test_hooked_outputs_never_change_after_return(hook_on):
    """A forward hook holding a block's (or a stage's) output, or the input of any module
    inside a stage (a masker's is the previous block's output), sees the same values after
    the whole forward: with hooks registered, no output buffer is reused or updated in
    place."""
    torch.manual_seed(0)
    backbone = LASResNet(depth=50, granularity=(4, 4, 2, 1), sparse_inference='torch').eval()
    from ops_helpers import randomise_bn
    randomise_bn(backbone)
    with torch.no_grad():
        backbone(torch.randn(1, 3, 64, 96))  # hooks registered after a forward count too
    held = []
    if hook_on == 'block':
        handle = backbone.layer1[0].register_forward_hook(
            lambda m, a, out: held.append((out, out.clone())))
    elif hook_on == 'pre_block':
        handle = backbone.layer1[1].register_forward_pre_hook(
            lambda m, a: held.append((a[0], a[0].clone())))
    elif hook_on == 'stage':
        handle = backbone.layer1.register_forward_hook(
            lambda m, a, out: held.append((out, out.clone())))
    elif hook_on == 'masker':  # layer1[2] is an identity block: it writes into its input
        handle = backbone.layer1[2].masker.register_forward_hook(
            lambda m, a, out: held.append((a[0], a[0].clone())))
    else:
        handle = backbone.layer1[2].masker.register_forward_pre_hook(
            lambda m, a: held.append((a[0], a[0].clone())))
    x = torch.randn(1, 3, 64, 96)
    with torch.no_grad(), backbone.pinned_masks(0.5, seed=1):
        backbone(x)
        backbone(x)  # a second forward must not touch the first one's tensors either
    handle.remove()
    for out, copy in held:
        assert torch.equal(out, copy)
    # With the hook gone, the workspace is used again, and the results are the same.
    with torch.no_grad(), backbone.pinned_masks(0.5, seed=1):
        outs = backbone(x)
    assert backbone._workspace.nbytes > 0
    backbone.sparse_inference = 'off'
    with torch.no_grad(), backbone.pinned_masks(0.5, seed=1):
        ref = backbone(x)
    for o, r in zip(outs, ref):
        assert_close_to_scale(o, r, 1e-4)
    backbone.train()
    assert backbone._workspace.nbytes == 0


def test_identity_block_writes_in_place_only_into_workspace_outputs():
    block = make_block(64, 16, 2, 1, downsample=False)
    x = torch.randn(1, 64, 12, 14).contiguous(memory_format=torch.channels_last)
    coarse = coarse_for(block, x, 0.5)
    workspace = Workspace()
    with torch.no_grad(), use_workspace(workspace):
        # The caller's tensor (negative values included) is left alone.
        before = x.clone()
        out = sparse_forward(block, x, coarse, 'torch', reuse_output=True)
        assert torch.equal(x, before) and out.data_ptr() != x.data_ptr()
        assert_close_to_scale(out, dense_masked_forward(block, x, coarse), 1e-4)
        # A previous block's output (>= 0, held by the workspace) becomes this block's output.
        x_ws = workspace.output(tuple(x.shape), x.dtype, x.device).copy_(x.relu())
        ref = dense_masked_forward(block, x.relu(), coarse)
        kept = x_ws.clone()
        out = sparse_forward(block, x_ws, coarse, 'torch', reuse_output=False)
        assert out.data_ptr() != x_ws.data_ptr() and torch.equal(x_ws, kept)  # not asked
        out = sparse_forward(block, x_ws, coarse, 'torch', reuse_output=True)
        assert out.data_ptr() == x_ws.data_ptr()
        assert_close_to_scale(out, ref, 1e-4)


@pytest.mark.parametrize('rate', [0.0, 0.5, 1.0])
def test_triton_identity_block_updates_a_block_output_in_place(rate):
    """With ``reuse_output`` (the backbone's promise: x is the previous block's output, held by
    no one else) an identity block on the Triton backend returns x, written at its active
    rows only; without it x is left alone. Both equal the dense-masked output."""
    block = make_block(64, 16, 2, 1, downsample=False).to(DEVICE)
    x = torch.randn(1, 64, 12, 14).relu().to(DEVICE).contiguous(
        memory_format=torch.channels_last)
    coarse = coarse_for(block, x, rate)
    with torch.no_grad():
        ref = dense_masked_forward(block, x, coarse)
        kept = x.clone()
        out = sparse_forward(block, x, coarse, 'triton', reuse_output=False)
        assert out.data_ptr() != x.data_ptr() and torch.equal(x, kept)
        assert_close_to_scale(out, ref, 1e-4)
        out = sparse_forward(block, x, coarse, 'triton', reuse_output=True)
    assert out.data_ptr() == x.data_ptr()
    assert_close_to_scale(out, ref, 1e-4)


@pytest.mark.parametrize('shape', [(2, 5, 7, 9), (1, 300, 3, 100), (1, 8, 1, 1)])
def test_to_nchw_blocked_copy(shape):
    t = torch.randn(shape).contiguous(memory_format=torch.channels_last)
    out = to_nchw(t)
    assert out.is_contiguous() and torch.equal(out, t)
    fresh = to_nchw(out, fresh=True)
    assert torch.equal(fresh, t) and fresh.data_ptr() != out.data_ptr()


@pytest.mark.parametrize('dtype', [torch.float32, torch.float16])
def test_triton_cl_to_nchw(dtype):
    from lasnet_mmdet.ops.triton.layout import cl_to_nchw
    device = 'cuda' if torch.cuda.is_available() else 'cpu'  # CPU: in the interpreter
    t = torch.randn(2, 70, 9, 15, device=device).to(dtype)
    out = cl_to_nchw(t.contiguous(memory_format=torch.channels_last))
    assert out.is_contiguous() and torch.equal(out, t)
    with pytest.raises(ValueError, match='channels-last'):
        cl_to_nchw(torch.randn(1, 3, 4, 5, device=device))


def test_block_forward_dispatches_and_matches():
    block = make_block(64, 16, 4, 2, True)
    x = torch.randn(2, 64, 19, 23)
    coarse = coarse_for(block, x, 0.5)
    with torch.no_grad():
        ref = block.forward_coarse(x, coarse)  # sparse_inference 'off': dense-masked
        block.sparse_inference = 'torch'
        out = block.forward_coarse(x, coarse)
        assert block.sparse_backend(x) == 'torch'
    assert_close_to_scale(out, ref, 1e-4)


def test_folded_weights_cached_and_invalidated():
    block = make_block(64, 16, 2, 1, False)
    block.sparse_inference = 'torch'
    x = torch.randn(1, 64, 8, 8)
    coarse = coarse_for(block, x, 1.0)
    with torch.no_grad():
        block.forward_coarse(x, coarse)
        first = block.folded_weights(x.dtype, 'torch')
        block.forward_coarse(x, coarse)
        assert block.folded_weights(x.dtype, 'torch') is first  # no per-call re-derivation
        # load_state_dict, train()/eval() and .to() drop the cache
        state = {k: v.clone() for k, v in block.state_dict().items()}
        state['bn2.running_var'] *= 3.0
        state['conv3.weight'] += 0.1
        block.load_state_dict(state)
        out = block.forward_coarse(x, coarse)
        assert_close_to_scale(out, dense_masked_forward(block, x, coarse), 1e-4)
        for change in (lambda: block.train().eval(), lambda: block.to(torch.float32),
                       block.invalidate_cache):
            cached = block.folded_weights(x.dtype, 'torch')
            change()
            assert block.folded_weights(x.dtype, 'torch') is not cached


def test_unsupported_block_falls_back_or_fails_clearly():
    block = make_block(64, 16, 2, 2, True, style='caffe')  # stride on conv1
    x = torch.randn(1, 64, 8, 8)
    coarse = coarse_for(block, x, 0.5)
    with torch.no_grad():
        block.sparse_inference = 'auto'
        out = block.forward_coarse(x, coarse)
        assert block.sparse_backend(x) is None  # caffe style: dense-masked
        assert_close_to_scale(out, dense_masked_forward(block, x, coarse), 1e-6)
        block.sparse_inference = 'torch'
        with pytest.raises(ValueError, match='caffe'):
            block.forward_coarse(x, coarse)


def test_off_runs_no_triton(monkeypatch):
    """'off' and 'torch' never reach a Triton kernel, on any device (masker, NCHW copies)."""
    import lasnet_mmdet.ops.triton as triton_ops
    import lasnet_mmdet.ops.triton.layout as layout
    import lasnet_mmdet.ops.triton.masker as masker

    def boom(*args, **kwargs):
        raise AssertionError('a Triton kernel ran')
    for module, name in ((masker, 'masker_decision'), (layout, 'cl_to_nchw'),
                         (triton_ops, 'triton_forward')):
        monkeypatch.setattr(module, name, boom)
    backbone = LASResNet(depth=50, granularity=(4, 4, 2, 1)).eval().to(DEVICE)
    x = torch.randn(1, 3, 64, 64, device=DEVICE).contiguous(memory_format=torch.channels_last)
    with torch.no_grad():
        for mode in ('off', 'torch'):
            backbone.sparse_inference = mode
            backbone(x)


def test_off_after_triton_runs_no_triton(monkeypatch):
    """Once a forward resolved Triton, 'off' (through the backbone's setter, or a block's own
    attribute) runs no Triton kernel: the masker's fused decision follows the resolution."""
    import lasnet_mmdet.ops.triton.masker as masker

    def boom(*args, **kwargs):
        raise AssertionError('the Triton masker ran')
    # one stage: interpreted Triton kernels are slow
    backbone = LASResNet(depth=50, num_stages=1, strides=(1, ), dilations=(1, ),
                         out_indices=(0, ), granularity=4, sparse_inference='triton',
                         cuda_graph=False).eval().to(DEVICE)
    x = torch.randn(1, 3, 32, 32, device=DEVICE)
    blocks = [block for _, block in backbone.las_blocks()]
    with torch.no_grad():
        backbone(x)
        assert all(block.masker.use_triton for block in blocks)
        monkeypatch.setattr(masker, 'masker_decision', boom)
        assert isinstance(type(backbone).sparse_inference, property)
        backbone.sparse_inference = 'off'  # the setter: every block follows
        assert all(block.sparse_inference == 'off' for block in blocks)
        backbone(x)
        assert not any(block.masker.use_triton for block in blocks)
        # a block switched on its own (no cache invalidation): the early return resets it
        block = make_block(64, 16, 2, 1, False).to(DEVICE)
        block_x = torch.randn(1, 64, 8, 8, device=DEVICE)
        monkeypatch.undo()
        block.sparse_inference = 'triton'
        block(block_x)
        assert block.masker.use_triton
        monkeypatch.setattr(masker, 'masker_decision', boom)
        block.sparse_inference = 'off'
        block(block_x)
        assert not block.masker.use_triton
        # invalidation (weights or mode changed) forgets the flag with the backend
        block.sparse_inference = 'triton'
        monkeypatch.undo()
        block(block_x)
        block.invalidate_cache()
        assert not block.masker.use_triton


def test_bad_inputs_name_the_bad_value():
    block = make_block(64, 16, 2, 1, False)
    x = torch.randn(1, 64, 8, 8)
    coarse = coarse_for(block, x, 0.5)
    # sparse execution is inference-only: with autograd recording, explicit backends refuse
    # and 'auto' runs the dense-masked computation (which autograd can differentiate)
    block.sparse_inference = 'torch'
    with pytest.raises(ValueError, match='torch.no_grad'):
        block.forward_coarse(x, coarse)
    block.sparse_inference = 'auto'
    auto = block.forward_coarse(x, coarse)
    assert auto.requires_grad
    with torch.no_grad():
        assert_close_to_scale(auto.detach(), sparse_forward(block, x, coarse, 'torch'), 1e-4)
        _bad_inputs(block, x, coarse)


def _bad_inputs(block, x, coarse):
    from lasnet_mmdet.ops import resolve_backend
    with pytest.raises(ValueError, match="'cuda_fast'"):
        sparse_forward(block, x, coarse, 'cuda_fast')
    with pytest.raises(ValueError, match="'cuda_fast'"):
        resolve_backend('cuda_fast', 'cpu')
    with pytest.raises(ValueError, match=r'\(1, 1, 3, 3\)'):
        sparse_forward(block, x, coarse[:, :, :3, :3], 'torch')
    with pytest.raises(ValueError, match='torch.int64'):
        sparse_bottleneck_raw(block, x.long(), coarse)
    # weights folded for the other backend's GEMM layout are refused, not misread
    from lasnet_mmdet.ops import fold_bottleneck, sparse_bottleneck
    from lasnet_mmdet.ops.fold_bn import fold_gemm
    kn = fold_bottleneck((block.conv1, block.conv2, block.conv3),
                         (block.norm1, block.norm2, block.norm3), block.downsample, x.dtype, 'kn')
    with pytest.raises(ValueError, match="layout='nk', got 'kn'"):
        sparse_bottleneck(x, coarse, kn, block.granularity, block.stride, 'torch')
    with pytest.raises(ValueError, match="layout must be 'kn' or 'nk', got 'mn'"):
        fold_gemm(block.conv1, block.norm1, x.dtype, 'mn')
    if not CUDA:
        env = os.environ.pop('TRITON_INTERPRET', None)
        try:
            with pytest.raises(ValueError, match='CUDA tensors, got x on cpu'):
                resolve_backend('triton', 'cpu')
        finally:
            if env is not None:
                os.environ['TRITON_INTERPRET'] = env
    with pytest.raises(ValueError, match='torch.float64'):
        sparse_forward(block.to(DEVICE, torch.float64), x.to(DEVICE, torch.float64),
                       coarse.to(DEVICE, torch.float64), 'triton')


def sparse_bottleneck_raw(block, x, coarse):
    from lasnet_mmdet.ops import sparse_bottleneck
    return sparse_bottleneck(x, coarse, block.folded_weights(torch.float32, 'torch'),
                             block.granularity, block.stride, 'torch')


@pytest.mark.parametrize('onednn', [False, True])  # True: every row GEMM through oneDNN
@pytest.mark.parametrize('execute_bias', [0.0, 2.0])  # 2.0: some blocks above 80 % active
def test_nan_pixel_same_in_dense_masked_and_sparse(execute_bias, onednn, monkeypatch):
    """One NaN input pixel: the sparse path and the dense-masked path ('off') agree on every
    output (NaN where and only where both have it) and on the cost ratio; with most patches
    active the PyTorch backend runs its blocks densely (``DENSE_BLOCK_ABOVE``) and must agree
    too. (oneDNN's fused ReLU maps NaN to 0: the row GEMMs must not use it.)"""
    torch.manual_seed(0)
    backbone = LASResNet(depth=50, granularity=(4, 4, 2, 1), sparse_inference='off').eval()
    from ops_helpers import randomise_bn
    randomise_bn(backbone)
    for _, block in backbone.las_blocks():  # decide by the input, with some patches skipped
        block.masker.conv2.bias.data.copy_(torch.tensor([execute_bias, 0.0]))
    x = torch.randn(1, 3, 96, 96)
    x[0, :, 40, 50] = float('nan')
    from lasnet_mmdet.ops import torch_backend
    if onednn:
        monkeypatch.setattr(torch_backend, 'ONEDNN_MIN_ROWS', 1)
    dense_blocks = []  # blocks the PyTorch backend ran densely (DENSE_BLOCK_ABOVE)
    run_dense = torch_backend._dense_block
    monkeypatch.setattr(torch_backend, '_dense_block',
                        lambda *args: dense_blocks.append(1) or run_dense(*args))
    results = {}
    with torch.no_grad():
        for mode in ('off', 'torch'):
            backbone.sparse_inference = mode
            outs = backbone(x)
            stats = backbone.las_stats
            results[mode] = (outs, float(stats['macs_dynamic']) / stats['macs_dense'])
    (ref, ref_ratio), (out, ratio) = results['off'], results['torch']
    assert ratio == pytest.approx(ref_ratio)
    assert 0 < ratio < 1
    assert len(dense_blocks) > 0 if execute_bias else len(dense_blocks) < 16
    for o, r in zip(out, ref):
        assert torch.equal(o.isnan(), r.isnan())
        assert_close_to_scale(torch.nan_to_num(o), torch.nan_to_num(r), 1e-4)


def test_weight_layout_per_backend_and_dtype():
    """N x K for the torch backend and for fp32 Triton (Hopper's TF32 MMA reads B along K),
    K x N for 16-bit Triton; the Triton launcher takes either (through the strides)."""
    from lasnet_mmdet.ops import weight_layout
    assert weight_layout('torch', torch.float32) == weight_layout('torch', torch.float16) == 'nk'
    assert weight_layout('triton', torch.float32) == 'nk'
    assert weight_layout('triton', torch.float16) == weight_layout('triton', torch.bfloat16) \
        == 'kn'


def test_counters_come_from_one_zeroed_tensor_per_forward(monkeypatch):
    """Inside ``counters_for`` requests are consecutive zeroed slices of one tensor (fresh
    zeros outside it or past its end), and semaphore requests all get the one region after the
    counters (fresh when larger); a Triton backbone forward hands every block a slice of one
    tensor, and its output equals the dense-masked one."""
    from lasnet_mmdet.ops import counters
    assert counters.zeroed_counters(3, torch.device('cpu')).tolist() == [0, 0, 0]
    with counters.counters_for(6, torch.device('cpu')):
        a = counters.zeroed_counters(3, torch.device('cpu'))
        a += 7  # a kernel's atomics
        b = counters.zeroed_counters(3, torch.device('cpu'))
        c = counters.zeroed_counters(3, torch.device('cpu'))
        assert b.tolist() == [0, 0, 0] and b._base is a._base and b.data_ptr() != a.data_ptr()
        assert c._base is None and c.tolist() == [0, 0, 0]  # the pool ran out: fresh
    with counters.counters_for(3, torch.device('cpu'), semaphores=4):
        a = counters.zeroed_counters(3, torch.device('cpu'))
        s1 = counters.zeroed_semaphores(4, torch.device('cpu'))
        s2 = counters.zeroed_semaphores(2, torch.device('cpu'))
        big = counters.zeroed_semaphores(5, torch.device('cpu'))
        assert s1._base is a._base and s1.data_ptr() == s2.data_ptr() != a.data_ptr()
        assert s1.tolist() == [0] * 4
        assert counters.zeroed_counters(1, torch.device('cpu'))._base is None  # counters full
        assert big._base is None and big.tolist() == [0] * 5
    assert counters.zeroed_semaphores(2, torch.device('cpu'))._base is None
    with counters.counters_for(3, 'cpu'):  # a device given by name is the same device
        assert counters.zeroed_counters(3, 'cpu')._base is not None

    import lasnet_mmdet.ops.triton.launcher as launcher
    taken = []

    def recording(n, device):
        t = counters.zeroed_counters(n, device)
        taken.append(t)
        return t
    monkeypatch.setattr(launcher, 'zeroed_counters', recording)
    torch.manual_seed(0)
    backbone = LASResNet(depth=50, num_stages=2, out_indices=(1, ), strides=(1, 2),
                         dilations=(1, 1), granularity=(2, 2), sparse_inference='off',
                         cuda_graph=False).eval().to(DEVICE)
    x = torch.randn(1, 3, 33, 41, device=DEVICE)
    with torch.no_grad(), backbone.pinned_masks(0.5, seed=1):
        ref = backbone(x)[0]
        backbone.sparse_inference = 'triton'
        out = backbone(x)[0]
    assert len(taken) == 7  # 3 + 4 blocks
    assert all(t._base is taken[0]._base is not None for t in taken)
    assert len({t.data_ptr() for t in taken}) == 7
    assert_close_to_scale(out, ref, 1e-4)
