"""CUDAGraphCache: replayed graphs give eager's outputs, for new shapes, cache hits, after an
eviction and for inputs whose values change; it falls back to eager calls where it must.

The CUDA tests skip without a device; the module and its eager paths are tested on the CPU.
"""
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from lasnet_mmdet.ops.cuda_graph import CUDAGraphCache

CUDA = torch.cuda.is_available()
requires_cuda = pytest.mark.skipif(not CUDA, reason='needs a CUDA device')


class TwoOutputs(nn.Module):
    """A conv net returning two maps, whose work depends only on the input's shape."""

    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 3, padding=1)
        self.conv2 = nn.Conv2d(8, 16, 3, stride=2, padding=1)

    def forward(self, x):
        a = F.relu(self.conv1(x))
        return a, F.relu(self.conv2(a)).sum(dim=1, keepdim=True)


def test_constructor_validates():
    for bad in (0, -1, 1.5, True):
        with pytest.raises(ValueError, match='max_entries'):
            CUDAGraphCache(max_entries=bad)
    with pytest.raises(ValueError, match='warmup'):
        CUDAGraphCache(warmup=0)
    with pytest.raises(ValueError, match="copy_out must be callable or None, got 'clone'"):
        CUDAGraphCache(copy_out='clone')


def test_cpu_inputs_run_eagerly():
    model, cache = TwoOutputs().eval(), CUDAGraphCache()
    x = torch.randn(1, 3, 8, 8)
    with torch.no_grad():
        outs = cache(model, x)
        ref = model(x)
    assert all(torch.equal(o, r) for o, r in zip(outs, ref))
    assert len(cache) == 0 and cache.stats['eager'] == 1 and cache.stats['captures'] == 0


# --- CUDA (the no_tf32 fixture: tests/conftest.py) -------------------------------------------
def _assert_equal_outputs(outs, ref):
    assert len(outs) == len(ref)
    for o, r in zip(outs, ref):
        assert o.shape == r.shape and o.dtype == r.dtype
        torch.testing.assert_close(o, r, rtol=1e-5, atol=1e-5)


@requires_cuda
def test_shapes_hits_eviction_and_changing_values(no_tf32):
    torch.manual_seed(0)
    model = TwoOutputs().cuda().eval()
    cache = CUDAGraphCache(max_entries=2)
    shapes = [(1, 3, 32, 48), (2, 3, 40, 24), (1, 3, 32, 48), (1, 3, 64, 64), (2, 3, 40, 24)]
    # Two calls per shape (the second a hit). Captures A, B; A hits; C evicts B (A was used
    # more recently); B is captured again and evicts A. (captures, hits, evictions) after each:
    expected = [(1, 1, 0), (2, 2, 0), (2, 4, 0), (3, 5, 1), (4, 6, 2)]
    kept = []
    with torch.no_grad():
        for shape, stats in zip(shapes, expected):
            for _ in range(2):  # fresh values on the same shape: no stale static input
                x = torch.randn(shape, device='cuda')
                outs = cache(model, x)
                _assert_equal_outputs(outs, model(x))
                kept.append((outs, [o.clone() for o in outs]))
            assert (cache.stats['captures'], cache.stats['hits'],
                    cache.stats['evictions']) == stats, shape
            assert len(cache) <= 2
    assert cache.stats['eager'] == 0
    torch.cuda.synchronize()
    # What a call returned never changes afterwards (outputs are clones, not static buffers).
    for outs, snapshot in kept:
        assert all(torch.equal(o, s) for o, s in zip(outs, snapshot))


@requires_cuda
def test_single_tensor_extra_key_and_clear():
    lin = nn.Linear(16, 4).cuda().eval()
    cache = CUDAGraphCache()
    x = torch.randn(8, 16, device='cuda')
    with torch.no_grad():
        out = cache(lin, x, key=('a', ))
        assert isinstance(out, torch.Tensor)
        torch.testing.assert_close(out, lin(x))
        cache(lin, x, key=('b', ))  # another key: another graph
        assert cache.stats['captures'] == 2 and len(cache) == 2
        cache(lin, x, key=('a', ))
        assert cache.stats['hits'] == 1
        lin.weight.mul_(2)  # weights changed: the caller clears
        cache.clear()
        assert len(cache) == 0
        torch.testing.assert_close(cache(lin, x, key=('a', )), lin(x))


@requires_cuda
def test_copy_out_makes_the_returned_tensors():
    net = TwoOutputs().cuda().eval().to(memory_format=torch.channels_last)
    # e.g. a layout conversion: the returned tensors are copy_out's, fresh on every replay
    cache = CUDAGraphCache(copy_out=lambda t: t.contiguous().clone())
    x = torch.randn(2, 3, 16, 24, device='cuda').contiguous(memory_format=torch.channels_last)
    with torch.no_grad():
        ref = net(x)
        first = cache(net, x)  # capture, then the first replay
        second = cache(net, x)  # a hit
    for a, b, r in zip(first, second, ref):
        assert a.is_contiguous() and b.is_contiguous() and r.dim() == 4
        assert a.data_ptr() != b.data_ptr()
        torch.testing.assert_close(a, r)
        torch.testing.assert_close(b, r)
    assert ref[0].is_contiguous(memory_format=torch.channels_last)
    assert not ref[0].is_contiguous()  # so the conversion did happen
    assert cache.stats['hits'] == 1


@requires_cuda
def test_autocast_state_is_part_of_the_key():
    model = TwoOutputs().cuda().eval()
    cache = CUDAGraphCache()
    x = torch.randn(1, 3, 32, 32, device='cuda')
    with torch.no_grad():
        fp32 = cache(model, x)
        with torch.autocast('cuda', dtype=torch.float16):
            half = cache(model, x)
            ref = model(x)
            assert cache(model, x)[0].dtype == torch.float16  # a hit, still fp16
    assert fp32[0].dtype == torch.float32 and half[0].dtype == torch.float16
    _assert_equal_outputs(half, ref)
    assert cache.stats['captures'] == 2 and cache.stats['hits'] == 1


@requires_cuda
def test_eager_when_recording_autograd_or_capturing():
    model = TwoOutputs().cuda().eval()
    cache = CUDAGraphCache()
    x = torch.randn(1, 3, 16, 16, device='cuda')
    outs = cache(model, x)  # grad enabled: eager, differentiable
    assert outs[0].requires_grad and cache.stats['eager'] == 1
    with torch.no_grad():
        cache(model, x)  # warm everything outside the outer capture
        outer = torch.cuda.CUDAGraph()
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            model(x)
        torch.cuda.current_stream().wait_stream(side)
        with torch.cuda.graph(outer):
            captured = cache(model, x)  # recorded into the outer graph, eagerly
        assert cache.stats['eager'] == 2
        x.copy_(torch.randn_like(x))
        outer.replay()
        _assert_equal_outputs(captured, model(x))


@requires_cuda
def test_host_sync_is_detected_before_capturing():
    def syncs(x):  # a host synchronisation cannot be captured
        return (x * float(x.sum().item() != 12345.0), )

    cache = CUDAGraphCache(name='test-cache')
    with torch.no_grad():
        for shape in ((4, 4), (4, 4), (5, 5)):
            x = torch.randn(shape, device='cuda')
            torch.testing.assert_close(cache(syncs, x)[0], x)
    assert cache.stats['failures'] == 2 and cache.stats['captures'] == 0 and len(cache) == 0
    assert cache.stats['hits'] == 0
    torch.randn(3, device='cuda')  # the CUDA RNG is usable


@requires_cuda
def test_failed_capture_falls_back_and_leaves_torch_usable():
    def invalid_in_capture(x):  # querying a capturing stream invalidates the capture
        y = x * 2
        torch.cuda.current_stream().query()
        return (y, )

    model = TwoOutputs().cuda().eval()
    cache = CUDAGraphCache()
    with torch.no_grad():
        for _ in range(2):
            x = torch.randn(4, 4, device='cuda')
            torch.testing.assert_close(cache(invalid_in_capture, x)[0], x * 2)
        assert cache.stats['failures'] == 1 and len(cache) == 0
        # torch is left usable: random numbers on the device, and new captures.
        x = torch.randn(1, 3, 16, 16, device='cuda')
        _assert_equal_outputs(cache(model, x), model(x))
        x = torch.randn(1, 3, 16, 16, device='cuda')
        _assert_equal_outputs(cache(model, x), model(x))
    assert cache.stats['captures'] == 1 and cache.stats['hits'] == 1


@requires_cuda
def test_las_backbone_sparse_path_through_graphs():
    """The sparse LAS backbone (Triton) replayed per shape equals its eager forward, with
    masks decided by the maskers from the input values (they change between calls)."""
    pytest.importorskip('triton')
    from lasnet_mmdet.models.backbones.las_resnet import LASResNet
    torch.manual_seed(0)
    las = LASResNet(50, granularity=(4, 4, 2, 1), sparse_inference='auto').cuda().eval()
    for _, block in las.las_blocks():  # masks that depend on the input, about half active
        nn.init.zeros_(block.masker.conv2.bias)
    cache = CUDAGraphCache(max_entries=2)
    with torch.no_grad():
        for shape in ((1, 3, 96, 128), (2, 3, 64, 64), (1, 3, 96, 128), (1, 3, 128, 96),
                      (2, 3, 64, 64)):
            x = torch.randn(shape, device='cuda')
            outs = cache(las, x)
            ref = las(x)
            for o, r in zip(outs, ref):
                torch.testing.assert_close(o, r, rtol=1e-3, atol=1e-3)
    assert cache.stats['hits'] == 1 and cache.stats['evictions'] == 2


@requires_cuda
def test_las_backbone_same_outputs_with_and_without_pdl(monkeypatch):
    """Programmatic dependent launch (``ops.triton.pdl``, on from sm_90) changes when kernels
    start, never what they compute: eager and graphed outputs are bitwise those of the same
    forward with ``LASNET_TRITON_PDL=0``, masks decided by the maskers."""
    pytest.importorskip('triton')
    from lasnet_mmdet.models.backbones.las_resnet import LASResNet
    from lasnet_mmdet.ops.triton import pdl
    hopper = torch.cuda.get_device_capability()[0] >= 9
    assert pdl.use_pdl('cuda') == hopper
    torch.manual_seed(0)
    las = LASResNet(50, granularity=(4, 4, 2, 1), sparse_inference='auto').cuda().eval().half()
    for _, block in las.las_blocks():
        nn.init.zeros_(block.masker.conv2.bias)
    x = torch.randn(2, 3, 160, 224, device='cuda', dtype=torch.half)

    def run():
        with torch.no_grad():
            las.cuda_graph = False
            eager = las(x)
            las.cuda_graph = True
            graphed = las(x), las(x)  # capture, then a replay
        return [eager] + list(graphed)
    with_pdl = run()
    monkeypatch.setenv('LASNET_TRITON_PDL', '0')
    pdl._supported.cache_clear()
    try:
        assert not pdl.use_pdl('cuda')
        las.invalidate_cache()  # drop the graphs captured with PDL launches
        without = run()
    finally:
        monkeypatch.undo()
        pdl._supported.cache_clear()
    for outs, refs in zip(with_pdl, without):
        for o, r in zip(outs, refs):
            assert torch.equal(o, r)
