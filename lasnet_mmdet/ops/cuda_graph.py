"""Run a callable through CUDA graphs, one graph per input shape, captured on first use.

``CUDAGraphCache`` removes the host's launch overhead from a callable ``fn(x)`` whose CUDA
work depends only on the input's shape (not its values): the first call with a new key
warms ``fn`` up on a side stream (Triton compilation, cuDNN/cuBLAS handles), calls it once
more with torch's sync debug mode set to 'error' (a host synchronisation cannot be
captured), captures one CUDA graph and replays it (three passes of ``fn`` for a new key);
later calls with the same key copy ``x`` into the graph's static input, replay, and return
copies of the static outputs (clones, or ``copy_out``'s fresh tensors, e.g. a layout
conversion that must copy anyway), so a returned tensor never changes afterwards. The key is
the input's shape, strides, dtype and device, the CUDA autocast state, the TF32 flags (they
change which kernels run) and whatever the caller adds (``key=``, e.g. the sparse-inference
mode).

    cache = CUDAGraphCache(max_entries=16)
    with torch.no_grad():
        outs = cache(model.forward, x)        # captures for x's shape, then replays
    cache.clear()                             # after the weights changed

Graphs are evicted least recently used first; all graphs of one cache share one memory
pool (``torch.cuda.graph_pool_handle()``), so intermediates of different shapes reuse the
same memory. That is safe because graphs are only ever replayed one at a time, on the
caller's stream, and every static output is cloned right after its own replay. Captures are
``thread_local`` (a pin-memory thread of a DataLoader may keep allocating host memory).

``fn`` runs eagerly instead (same result, no graph) when ``x`` is not a CUDA tensor, when
autograd records (graphs are for inference), inside another capture (the outer graph then
records ``fn``), while another thread captures, and for a key whose capture failed or whose
``fn`` synchronises with the host (logged once per cache with mmengine's ``print_log``).
The sync check sets torch's process-wide sync debug mode for one call. Importing this module
needs no CUDA.
"""
import threading
from collections import OrderedDict

import torch
from mmengine.logging import print_log

__all__ = ['CUDAGraphCache']

# One capture at a time in the process (CUDA and torch allow no more).
_CAPTURE_LOCK = threading.Lock()
_EAGER = object()  # cache entry of a key whose capture failed


class _Graph:
    """One captured graph: its static input, static outputs and the output structure."""

    def __init__(self, graph, static_x, static_out, single, copy_out):
        self.graph, self.static_x, self.static_out, self.single = graph, static_x, static_out, single
        self.copy_out = copy_out

    def __call__(self, x):
        self.static_x.copy_(x)
        self.graph.replay()
        outs = tuple(self.copy_out(t) for t in self.static_out)
        return outs[0] if self.single else outs


def _as_tuple(out):
    if isinstance(out, torch.Tensor):
        return (out, ), True
    if isinstance(out, (tuple, list)) and all(isinstance(t, torch.Tensor) for t in out):
        return tuple(out), False
    raise TypeError(f'CUDAGraphCache: fn must return a tensor or a tuple of tensors, got '
                    f'{type(out).__name__}')


def _autocast_state():
    enabled = torch.is_autocast_enabled('cuda')
    return (enabled, torch.get_autocast_dtype('cuda') if enabled else None)


class CUDAGraphCache:
    """LRU cache of CUDA graphs of ``fn(x)``, keyed on x's shape (and more, see module doc).

    Args:
        max_entries (int): Graphs kept at most; the least recently used goes first.
        warmup (int): Eager calls of ``fn`` on a side stream before each capture (plus the
            one that checks for host synchronisations).
        name (str): Names the cache in the log message of a failed capture.
        copy_out (callable | None): Makes the caller's tensor of each static output after a
            replay; it must return a tensor sharing no memory with its argument (default:
            ``torch.clone``).
    """

    def __init__(self, max_entries=16, warmup=1, name='CUDAGraphCache', copy_out=None):
        if isinstance(max_entries, bool) or int(max_entries) != max_entries or max_entries < 1:
            raise ValueError(f'max_entries must be an integer >= 1, got {max_entries!r}')
        if isinstance(warmup, bool) or int(warmup) != warmup or warmup < 1:
            raise ValueError(f'warmup must be an integer >= 1, got {warmup!r}')
        if copy_out is not None and not callable(copy_out):
            raise ValueError(f'copy_out must be callable or None, got {copy_out!r}')
        self.max_entries, self.warmup, self.name = int(max_entries), int(warmup), name
        self.copy_out = copy_out or torch.clone
        self._graphs = OrderedDict()
        self._pool = None
        self._warned = False
        self.stats = dict(hits=0, captures=0, evictions=0, eager=0, failures=0)

    def __len__(self):
        return sum(entry is not _EAGER for entry in self._graphs.values())

    def clear(self):
        """Drop every graph and the memory pool (call it when ``fn``'s weights change)."""
        self._graphs.clear()
        self._pool = None

    def key(self, x, key=()):
        """The cache key of a call on ``x`` with the caller's extra ``key``."""
        return (tuple(x.shape), x.stride(), x.dtype, x.device, _autocast_state(),
                torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32, key)

    def __call__(self, fn, x, key=()):
        """``fn(x)`` (a tensor or a tuple of tensors), replayed from a graph when possible."""
        if (not isinstance(x, torch.Tensor) or not x.is_cuda or torch.is_grad_enabled()
                or torch.cuda.is_current_stream_capturing()):
            return self._eager(fn, x)
        k = self.key(x, key)
        entry = self._graphs.get(k)
        if entry is _EAGER:
            return self._eager(fn, x)
        if entry is not None:
            self._graphs.move_to_end(k)
            self.stats['hits'] += 1
            return entry(x)
        if not _CAPTURE_LOCK.acquire(blocking=False):
            return self._eager(fn, x)  # another thread is capturing
        try:
            entry = self._capture(fn, x)
        except Exception as e:  # noqa: BLE001  (any failure: run eagerly from now on)
            self.stats['failures'] += 1
            if not self._warned:
                self._warned = True
                print_log(f'{self.name}: CUDA graph capture failed for input '
                          f'{tuple(x.shape)} {x.dtype} ({type(e).__name__}: {e}); running '
                          'eagerly for such inputs', logger='current', level=30)
            self._insert(k, _EAGER)
            return self._eager(fn, x)
        finally:
            _CAPTURE_LOCK.release()
        self.stats['captures'] += 1
        self._insert(k, entry)
        return entry(x)

    # --- internals ---------------------------------------------------------------------------
    def _eager(self, fn, x):
        self.stats['eager'] += 1
        return fn(x)

    def _insert(self, k, entry):
        self._graphs[k] = entry
        while len(self._graphs) > self.max_entries:
            self._graphs.popitem(last=False)
            self.stats['evictions'] += 1

    def _capture(self, fn, x):
        device = x.device
        with torch.cuda.device(device):
            if self._pool is None:
                self._pool = torch.cuda.graph_pool_handle()
            static_x = torch.empty_like(x)  # outside the pool: never reused by a graph
            static_x.copy_(x)
            autocast, dtype = _autocast_state()
            # The autocast cache would hand the graph casts owned by the caller's autocast
            # context (freed when it exits): casts are recorded into the graph instead.
            amp = torch.autocast('cuda', dtype=dtype or torch.float16, enabled=autocast,
                                 cache_enabled=False)
            side = torch.cuda.Stream(device)
            side.wait_stream(torch.cuda.current_stream(device))
            with torch.cuda.stream(side), amp:
                # Warm-up outside the capture (lazy initialisation, Triton compilation, cuDNN
                # algorithm search), then one call checking that fn does not synchronise with
                # the host, which a capture cannot record.
                for _ in range(self.warmup):
                    fn(static_x)
                if _host_sync(fn, static_x):
                    raise RuntimeError('fn synchronises with the host (a capture would fail)')
            torch.cuda.current_stream(device).wait_stream(side)
            torch.cuda.synchronize(device)
            graph = torch.cuda.CUDAGraph()
            try:
                with torch.cuda.stream(side), amp:
                    graph.capture_begin(pool=self._pool, capture_error_mode='thread_local')
                    try:
                        out = fn(static_x)
                    finally:
                        graph.capture_end()  # raises if the capture was invalidated
            except Exception:
                _recover_from_failed_capture(graph, device)
                self._pool = None  # the failed graph's pool stays registered: use a new one
                raise
            torch.cuda.current_stream(device).wait_stream(side)
            static_out, single = _as_tuple(out)
            return _Graph(graph, static_x, static_out, single, self.copy_out)


def _host_sync(fn, x):
    """Call ``fn(x)``; True if it made a synchronising CUDA call (it then stopped there)."""
    saved = torch.cuda.get_sync_debug_mode()
    torch.cuda.set_sync_debug_mode('error')
    try:
        fn(x)
    except RuntimeError as e:
        if 'synchronizing CUDA operation' in str(e):
            return True
        raise
    finally:
        torch.cuda.set_sync_debug_mode(saved)
    return False


# Graphs whose capture failed. torch ends such a capture half way: the caching allocator keeps
# a reference to the graph (so it must stay alive) and the CUDA RNG stays in capture mode
# (every later random op on the device then fails) until some capture ends properly.
_FAILED_CAPTURES = []


def _recover_from_failed_capture(graph, device):
    _FAILED_CAPTURES.append(graph)
    torch.cuda.synchronize(device)
    tiny = torch.cuda.CUDAGraph()
    with torch.cuda.stream(torch.cuda.Stream(device)):
        tiny.capture_begin()  # a pool of its own
        try:
            torch.zeros(1, device=device)
        finally:
            tiny.capture_end()
    torch.cuda.synchronize(device)
