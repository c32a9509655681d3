"""Analytical latency of static and LAS bottlenecks: algorithm x schedule x hardware.

A block is lowered to the kernels it launches (GEMM-like convs and memory-bound ops), each
kernel is timed by a roofline over the profile's figures, and the block's latency is the sum.

* GEMM (conv as implicit GEMM, M = output pixels, N = out channels, K = in channels x k^2).
  GPU: the output is cut into ``tm x tn`` tiles that run in waves over the SMs, so a kernel
  with 133 tiles on 132 SMs takes two waves (tile and wave quantisation); the best of a few
  tile shapes is kept, as an autotuner would. CPU: FLOPs over cores x per-core peak. Both scale
  by the calibrated ``compute`` efficiency and a ``small_dim`` penalty for narrow GEMMs, and
  take the max with the DRAM (and, on GPU, L2) traffic time.
* Memory-bound ops (BN, ReLU, add, gather, scatter): bytes over DRAM bandwidth; indexed
  (row-gathered) traffic at the lower ``gather`` efficiency.
* Every kernel (eager op) pays ``launch_us``.

The LAS block follows ``lasnet_mmdet.ops``: feature maps are channels-last (pixels x C)
matrices; conv1 runs on the rows conv2 needs (the dilated mask: each halo pixel once), conv2
(3x3, stride) as a GEMM over the nine taps of each active output row, conv3 on the active rows,
then the rows are added into the dense residual (identity or downsample) and ReLU'd. S enters
through the dilation (fine masks need almost every conv1 row) and the index work. A
``Schedule`` says which steps are fused (LASNet section 3.4 / LAUDNet simulator):

* ``gather_in_conv``: the convs read their rows through indices (implicit GEMM), no copies;
* ``fused_scatter``: scatter + residual add + ReLU are one pass over the output;
* ``masker_fused``: the masker's pooling rides on a kernel that reads x anyway;
* ``bn_folded``: BN folded into the convs and ReLU applied in their epilogue.
"""
import math
from dataclasses import dataclass, replace

from ..ops.geometry import coarse_grid_size, conv_out
from ..ops.torch_backend import DENSE_BLOCK_ABOVE, DENSE_CONV1_ABOVE, INDEX_OPS, ONEDNN_MIN_ROWS
from ..ops import FUSED_MASKER_WINDOWS, TRITON_INDEX_OPS, triton_fuses_downsample
from ..ops.tiles import table_tile
from .hardware import DTYPE_BYTES, load_profile

# Cost of each GPU wave of tiles after the first, relative to the first (H100, Triton GEMMs
# at batch 1: latency rises smoothly, not in steps, where the tile count crosses the SM count).
LATER_WAVE_COST = 0.5
# Shared memory the GPU reserves per resident program, and threads an SM holds (sm_70+).
SMEM_RESERVED_PER_PROGRAM = 1024
MAX_THREADS_PER_SM = 2048
# Rows of the fused masker + conv1 launch's M tile taken by the model (the kernels' tables
# pick 64 or 128 per layer).
FUSED_TILE_ROWS = 64
ARCH = {50: (3, 4, 6, 3), 101: (3, 4, 23, 3), 152: (3, 8, 36, 3)}


@dataclass(frozen=True)
class Schedule:
    patch_tiles: bool = True       # kernels work patch by patch (conv1 on haloed windows)
    gather_in_conv: bool = True
    fused_scatter: bool = True
    masker_fused: bool = True
    bn_folded: bool = True
    epilogue_fused: bool = True    # bias + ReLU inside the GEMM (else a pass of their own)
    dense_conv1_above: float = 1.0  # run conv1 densely above this needed-row fraction
    index_ops: int = TRITON_INDEX_OPS  # launches that turn the coarse mask into row lists
    with_masker: bool = True       # False when masks are given (pinned), as in benchmarks
    blas_below_rows: int = 0       # CPU: GEMMs of fewer rows run BLAS (efficiency ``blas``)
    dense_block_above: float = 1.0  # run the whole block densely above this active fraction
    relu_rest_in_conv3: bool = False  # conv3's launch also writes ReLU(residual) off the mask
    stem_pool_fused: bool = False  # the stem's ReLU and max-pool in one pass (ops.triton.stem_pool)
    # The masker decides in conv1's launch, which runs on every pixel and appends the row
    # list (ops.triton.conv1_masker), for windows (stride x S) in ``FUSED_MASKER_WINDOWS``.
    masker_in_conv1: bool = False
    # Stage outputs go to NCHW through a tiled transpose that streams at DRAM speed
    # (ops.triton.layout); else through PyTorch's strided copy (the ``layout`` efficiency).
    streamed_nchw_outputs: bool = False
    # A downsample block's 1x1 downsample conv runs in conv3's launch (ops.triton.gemm's
    # ``downsample``) where ``ops.triton_fuses_downsample`` says so: its GEMM at every output
    # row, its output never written.
    downsample_in_conv3: bool = False

    def replace(self, **kwargs):
        return replace(self, **kwargs)


SCHEDULES = {
    # LASNet's schedule (LAUDNet simulator): per-patch kernels, conv1 on each patch's haloed
    # window, gather in the conv, scatter + add + ReLU fused, masker fused, BN folded.
    'fused': Schedule(),
    # lasnet_mmdet.ops Triton backend: the same fusions on pixel rows (implicit GEMMs over
    # row lists compacted on the device, no halo recompute; residual add + ReLU in conv3,
    # whose launch also writes ReLU(residual) at the inactive rows; the stem's bias, ReLU and
    # max-pool in one pass; the masker and the row list inside conv1's launch, where the
    # window fits; the downsample conv inside conv3's launch).
    'rows': Schedule(patch_tiles=False, relu_rest_in_conv3=True, stem_pool_fused=True,
                     masker_in_conv1=True, streamed_nchw_outputs=True,
                     downsample_in_conv3=True),
    # lasnet_mmdet.ops torch backend: row GEMMs (oneDNN, BLAS below ONEDNN_MIN_ROWS rows;
    # fresh outputs), explicit gathers into reused workspace buffers, index_add, ReLU passes,
    # small ops to build the row lists, BN folded everywhere, the masker as avg-pool + 1x1
    # conv. Constants read from the ops.
    'torch': Schedule(patch_tiles=False, gather_in_conv=False, fused_scatter=False,
                      masker_fused=False, epilogue_fused=False,
                      dense_conv1_above=DENSE_CONV1_ABOVE, index_ops=INDEX_OPS,
                      blas_below_rows=ONEDNN_MIN_ROWS, dense_block_above=DENSE_BLOCK_ABOVE),
}


def get_schedule(schedule=None, profile=None):
    """A ``Schedule`` from an instance or a name; by default the profile's backend."""
    if isinstance(schedule, Schedule):
        return schedule
    if schedule is None:
        if profile is not None and profile.schedule:
            schedule = profile.schedule
        else:
            schedule = 'fused' if profile is not None and profile.kind == 'gpu' else 'torch'
    if schedule not in SCHEDULES:
        raise ValueError(f'unknown schedule {schedule!r}; known: {sorted(SCHEDULES)}')
    return SCHEDULES[schedule]


@dataclass(frozen=True)
class BlockShape:
    """Geometry of one bottleneck: input ``in_channels x in_h x in_w``, ``planes`` mid width."""
    in_channels: int
    planes: int
    in_h: int
    in_w: int
    stride: int = 1
    downsample: bool = False
    batch: int = 1
    expansion: int = 4

    @property
    def out_channels(self):
        return self.planes * self.expansion

    @property
    def out_hw(self):
        return conv_out(self.in_h, self.stride), conv_out(self.in_w, self.stride)

    def cells(self, granularity):
        """Coarse-mask cells per image."""
        return math.prod(coarse_grid_size(*self.out_hw, granularity))

    @classmethod
    def of_block(cls, block, in_h, in_w, batch=1):
        """The shape of an mmdet (LAS) ``Bottleneck`` module at an input size."""
        return cls(block.inplanes, block.planes, in_h, in_w, block.stride,
                   block.downsample is not None, batch, block.expansion)


@dataclass(frozen=True)
class Kernel:
    """One launched op: GEMM dims (0 for memory-bound ops) and its DRAM traffic in bytes."""
    name: str
    M: int = 0
    N: int = 0
    K: int = 0
    bytes: float = 0.0          # streamed DRAM traffic
    gathered_bytes: float = 0.0  # traffic through row indices
    layout_bytes: float = 0.0   # CPU: NCHW <-> blocked conversions around a oneDNN conv
    alloc_bytes: float = 0.0    # CPU: a fresh output too large for the heap (page faults)
    window_bytes: float = 0.0   # CPU: a pooling window's reads (9 per output)
    launches: int = 1           # ops it stands for (each pays the launch cost)
    blas: bool = False          # CPU: a BLAS GEMM (efficiency ``blas`` x ``compute``)
    tile_rows: int = 0          # GPU: the rows the tile is picked for, if not M (see _gemm)
    tile_kind: str = ''         # GPU: the Triton row kernel ('gemm' / 'conv3x3', ops.tiles)
    tile_k: int = 0             # GPU: the K its tile is looked up with, if not K
    vendor: bool = False        # GPU: a dense cuDNN conv (``vendor`` x ``compute``)
    compiled: bool = False      # GPU: a conv of the compiled dense network (``compiled``)

    @property
    def is_gemm(self):
        return self.M > 0 and self.N > 0 and self.K > 0


# --- kernel timing ---------------------------------------------------------------------------

def _shape_efficiency(profile, dims):
    half = profile.efficiency['small_dim']
    eff = 1.0
    for d in dims:
        eff *= d / (d + half)
    return eff


def _gemm_compute_s(kernel, profile, dtype):
    """Compute (and on-chip traffic) time of a GEMM, with tile and wave quantisation on GPU."""
    M, N, K = kernel.M, kernel.N, kernel.K
    peak = profile.peak_flops(dtype) * profile.efficiency['compute']
    if profile.kind == 'cpu':
        if kernel.blas:
            peak *= profile.efficiency['blas']
        return 2.0 * M * N * K / (peak * _shape_efficiency(profile, (M, N, K)))
    # On a GPU, M and N enter through the (padded) tiles; a short K still costs pipeline
    # fill per tile.
    if kernel.compiled:
        peak *= profile.efficiency['compiled']
    elif kernel.vendor:
        peak *= profile.efficiency['vendor']
    per_sm = peak * _shape_efficiency(profile, (K, )) / profile.sms
    onchip = profile.onchip_gbps * 1e9
    nbytes = DTYPE_BYTES[dtype]

    def tile_time(rows, tm, tn, waves=None):
        tiles = math.ceil(rows / tm) * math.ceil(N / tn)
        if waves is None:
            # Wave quantisation, softened: tiles that share an SM overlap each other's memory
            # latency, so each wave after the first costs a fraction of the first.
            waves = 1 + (math.ceil(tiles / profile.sms) - 1) * LATER_WAVE_COST
        t_comp = waves * 2.0 * tm * tn * K / per_sm
        # Every N-tile re-reads its A rows and every M-tile its B columns from L2.
        t_l2 = (rows * K * math.ceil(N / tn) + K * N * math.ceil(rows / tm)) * nbytes / onchip
        return max(t_comp, t_l2)

    small, large = profile.tile // 2, profile.tile
    tiles = [(tm, tn) for tm in (small, large) for tn in (small, large)]
    if kernel.tile_rows:
        # The Triton row kernels pick their tile per layer (``ops.triton.gemm.Tiles``), not
        # per mask: a short row list still runs full-size tiles, one wave at full length each
        # (H100: the block's cost at r = 0.1 is most of its cost at r = 0.5). Modelled as the
        # large tile (N-wide up to it) unless the whole dense layer is under a quarter wave
        # of small tiles; picked by the fit to the H100 block measurements (docs/latency.md).
        # Its waves are the rounds of the programs the kernel really launches (below).
        if kernel.tile_rows * N <= profile.sms * small * small / 4:
            tm, tn = small, small
        else:
            tm, tn = large, large if N >= large else small
        return tile_time(M, tm, tn, _row_kernel_waves(kernel, profile, dtype))
    return min(tile_time(M, tm, tn) for tm, tn in tiles)


def _row_kernel_waves(kernel, profile, dtype):
    """Rounds of the programs a Triton row kernel launches over the SMs, each after the first
    at ``later_round`` of its cost: its tile from the kernels' own table for the profile's GPU
    (``ops.tiles``, split K included), as many programs per SM as their pipeline buffers fit
    in shared memory. Where a mask's rows cross a multiple of that, the block's time steps
    (H100, batch 1: stage 3 from 36 to 44 us between r = 0.5 and 0.6, conv2's 360 -> 432
    programs on 3 x 132 slots)."""
    cc = profile.compute_capability
    major = int(float(cc)) if cc else None
    fp32 = dtype == 'fp32'
    tile = table_tile(kernel.tile_kind, kernel.N, kernel.tile_k or kernel.K, fp32, major,
                      kernel.tile_rows)
    programs = (math.ceil(kernel.M / tile.block_m) * math.ceil(kernel.N / tile.block_n)
                * tile.split_k)
    per_sm = 1
    if profile.smem_per_sm_kb:
        buffers = tile.num_stages * (tile.block_m + tile.block_n) * tile.block_k
        smem = buffers * (4 if fp32 else 2) + SMEM_RESERVED_PER_PROGRAM
        per_sm = max(1, min(int(profile.smem_per_sm_kb * 1024) // smem,
                            MAX_THREADS_PER_SM // (32 * tile.num_warps)))
    rounds = math.ceil(programs / (profile.sms * per_sm))
    return 1 + (rounds - 1) * profile.efficiency['later_round']


def kernel_time(kernel, profile, dtype=None):
    """Predicted seconds of one kernel on ``profile``."""
    dtype = dtype or profile.dtype
    eff = profile.efficiency
    bandwidth = profile.dram_gbps * 1e9 * eff['memory']
    t_mem = kernel.bytes / bandwidth + kernel.gathered_bytes / (bandwidth * eff['gather'])
    if profile.kind == 'cpu' or dtype in ('fp16', 'bf16'):  # GPUs: for tensor cores only
        t_mem += kernel.layout_bytes / (bandwidth * eff['layout'])
    if profile.kind == 'cpu':
        t_mem += kernel.alloc_bytes / (bandwidth * eff['alloc'])
        t_mem += kernel.window_bytes / (bandwidth * eff['pool'])
    t_work = max(_gemm_compute_s(kernel, profile, dtype), t_mem) if kernel.is_gemm else t_mem
    launch = 1e-6 * eff['launch_us'] * kernel.launches
    if profile.kind == 'gpu':
        # Launches are asynchronous: the host issues the next kernel while the GPU runs this
        # one, so a kernel costs its launch or its work, whichever is longer (eager mode at
        # batch 1 is launch-bound; under CUDA graphs launch_us calibrates to a few us).
        return max(t_work, launch)
    return t_work + launch  # CPU ops run synchronously: dispatch, then work


def kernels_time(kernels, profile, dtype=None):
    return sum(kernel_time(k, profile, dtype) for k in kernels)


# --- lowering blocks to kernels ---------------------------------------------------------------

# glibc serves allocations above 32 MiB (its largest dynamic mmap threshold) with fresh pages
# from the kernel, so each new tensor that large is paid again in page faults.
MMAP_THRESHOLD = 32 * 2**20


def _fresh(nbytes):
    return nbytes if nbytes > MMAP_THRESHOLD else 0.0


def _conv(name, M, N, K, in_elems, out_elems, b, nchw=True, fresh=True, vendor=True,
          compiled=False):
    """A dense conv as a GEMM kernel (streamed input, weights, output); on NCHW tensors it
    also converts its input and output to and from the library's preferred layout (oneDNN's
    blocked one on CPUs, NHWC for half-precision tensor cores). ``fresh``: the output is a
    new tensor (not a reused buffer). ``vendor``: on a GPU it runs at the eager dense
    network's conv efficiency (``vendor``, see ``hardware``); ``compiled``: at the compiled
    deployed network's (``compiled``)."""
    layout = 2 * (in_elems + out_elems) * b if nchw else 0.0
    return Kernel(name, M, N, K, bytes=(in_elems + out_elems + N * K) * b, layout_bytes=layout,
                  alloc_bytes=_fresh(out_elems * b) if fresh else 0.0, vendor=vendor,
                  compiled=compiled)


def _eltwise(name, elems, b, passes=2, fresh=False):
    """A memory-bound op touching ``elems`` elements ``passes`` times (read + write = 2);
    ``fresh``: it writes a newly allocated tensor (else in place)."""
    return Kernel(name, bytes=passes * elems * b, alloc_bytes=_fresh(elems * b) if fresh else 0.0)


def static_kernels(shape, dtype='fp32', bn_folded=False, deployed=False):
    """Kernels of a dense Bottleneck: mmdet's in eager mode (conv, BN, ReLU as separate ops on
    NCHW tensors), or with ``deployed`` the best dense network a practitioner would run
    (channels-last, BN folded, bias + ReLU and the residual add + ReLU in the conv epilogues;
    on a GPU the deployed network is the compiled one: ``compiled_static_kernels``)."""
    b = DTYPE_BYTES[dtype]
    B, cin, mid, cout = shape.batch, shape.in_channels, shape.planes, shape.out_channels
    px1 = B * shape.in_h * shape.in_w
    out_h, out_w = shape.out_hw
    px2 = B * out_h * out_w
    if deployed:
        ks = [_conv('conv1', px1, mid, cin, px1 * cin, px1 * mid, b, nchw=False),
              _conv('conv2', px2, mid, 9 * mid, px1 * mid, px2 * mid, b, nchw=False)]
        if shape.downsample:
            ks.append(_conv('downsample', px2, cout, cin, px2 * cin, px2 * cout, b, nchw=False))
        # conv3 reads the residual in its epilogue
        ks.append(_conv('conv3', px2, cout, mid, px2 * (mid + cout), px2 * cout, b, nchw=False))
        return ks
    ks = []

    def conv_bn(name, M, N, K, in_elems, relu=True):
        ks.append(_conv(name, M, N, K, in_elems, M * N, b))
        if not bn_folded:
            ks.append(_eltwise(name + '.bn', M * N, b, fresh=True))
            if relu:
                ks.append(_eltwise(name + '.relu', M * N, b))

    conv_bn('conv1', px1, mid, cin, px1 * cin)
    conv_bn('conv2', px2, mid, 9 * mid, px1 * mid)
    conv_bn('conv3', px2, cout, mid, px2 * mid, relu=False)
    if shape.downsample:
        conv_bn('downsample', px2, cout, cin, px2 * cin, relu=False)
    ks.append(_eltwise('add', px2 * cout, b, passes=3))
    ks.append(_eltwise('relu', px2 * cout, b))
    return ks


def compiled_static_kernels(shape, dtype='fp16'):
    """Kernels of the deployed dense bottleneck as ``torch.compile`` (Inductor, max-autotune)
    runs it on a GPU: each conv a library kernel (cuDNN, or cuBLAS for the 1x1 convs Inductor
    lowers to ``addmm``; taken to win the autotuning over Inductor's Triton templates, which
    would fuse their epilogue), at the ``compiled`` efficiency. A library kernel takes no
    epilogue (Inductor peels the bias off cuDNN's convs), so each conv is followed by one
    fused Triton pass: bias + ReLU after conv1 and conv2; after conv3 its bias, the residual
    (or the downsample's output) and the ReLU."""
    b = DTYPE_BYTES[dtype]
    B, cin, mid, cout = shape.batch, shape.in_channels, shape.planes, shape.out_channels
    px1 = B * shape.in_h * shape.in_w
    out_h, out_w = shape.out_hw
    px2 = B * out_h * out_w
    ks = [_conv('conv1', px1, mid, cin, px1 * cin, px1 * mid, b, nchw=False, compiled=True),
          _eltwise('conv1.bias_relu', px1 * mid, b),
          _conv('conv2', px2, mid, 9 * mid, px1 * mid, px2 * mid, b, nchw=False, compiled=True),
          _eltwise('conv2.bias_relu', px2 * mid, b)]
    if shape.downsample:
        ks.append(_conv('downsample', px2, cout, cin, px2 * cin, px2 * cout, b, nchw=False,
                        compiled=True))
    ks.append(_conv('conv3', px2, cout, mid, px2 * mid, px2 * cout, b, nchw=False,
                    compiled=True))
    # reads conv3's output and the residual, writes the block's output
    ks.append(_eltwise('conv3.bias_add_relu', px2 * cout, b, passes=3))
    return ks


def needed_fraction(granularity, stride, rate):
    """Expected fraction of conv1 outputs that conv2 reads for a random mask at ``rate``.

    conv1 output p (1-D, input grid) is read by outputs o with ``stride*o-1 <= p <= stride*o+1``;
    over one period of ``stride*S`` positions, count the distinct mask cells each p depends on
    (k_x, k_y), and a pixel is needed unless all its ``k_x*k_y`` cells are off.
    """
    S, period = granularity, granularity * stride
    cells = [len({o // S for o in range(-S, 2 * S) if stride * o - 1 <= p <= stride * o + 1})
             for p in range(period)]
    return sum(1 - (1 - rate)**(kx * ky) for kx in cells for ky in cells) / period**2


def las_rows(shape, granularity, rate, exact=True):
    """``(needed conv1 rows, active output rows)`` over the batch at activation rate r.

    ``exact``: r is rounded to whole cells per image, as pinned masks do.
    """
    if exact:
        cells = shape.cells(granularity)
        rate = round(rate * cells) / cells
    out_h, out_w = shape.out_hw
    active = shape.batch * out_h * out_w * rate
    needed = shape.batch * shape.in_h * shape.in_w * needed_fraction(granularity, shape.stride,
                                                                        rate)
    return needed, active


def las_kernels(shape, granularity, rate, schedule=None, dtype='fp32', exact=True):
    """Kernels of a LAS bottleneck on its active pixels under ``schedule``."""
    schedule = get_schedule(schedule)
    if schedule.patch_tiles:
        return _patch_kernels(shape, granularity, rate, schedule, dtype, exact)
    return _row_kernels(shape, granularity, rate, schedule, dtype, exact)


def _masker_and_indices(shape, granularity, schedule, b, index_bytes, index_ops):
    in_px = shape.batch * shape.in_h * shape.in_w
    ks = []
    if schedule.with_masker:
        if schedule.masker_fused:
            # One pass over x (pooled in registers), two logits per cell written.
            ks.append(Kernel('masker', bytes=(in_px * shape.in_channels
                                              + shape.batch * shape.cells(granularity) * 2) * b))
        else:
            # Average pooling over x, then a 1x1 conv to two logits per cell.
            ks.append(Kernel('masker', bytes=in_px * shape.in_channels * b, launches=2))
    ks.append(Kernel('indices', bytes=index_bytes, launches=index_ops))
    return ks


def _residual_kernels(shape, schedule, n_out_rows, b):
    out_h, out_w = shape.out_hw
    out_px = shape.batch * out_h * out_w
    cin, cout = shape.in_channels, shape.out_channels
    dense_out = out_px * cout
    ks = []
    if (shape.downsample and schedule.downsample_in_conv3
            and triton_fuses_downsample(out_px, cin, cout)):
        # In conv3's launch: the x pixels at the conv's stride gathered, the GEMM at every
        # output row (the active rows' K loop continues conv3's); the output written once.
        active_out = n_out_rows * cout
        return [Kernel('downsample', out_px, cout, cin, bytes=cin * cout * b,
                       gathered_bytes=out_px * cin * b, launches=0, tile_rows=out_px,
                       tile_kind='gemm', tile_k=shape.planes),  # conv3's tile
                Kernel('residual_relu', bytes=(dense_out - active_out) * b,
                       gathered_bytes=active_out * b, launches=0)]
    if shape.downsample:
        # Channels-last, a fresh tensor: the block's output. A cuDNN conv too, but the LAS
        # backbone fits better at the library kernels' efficiency (H100: +1.7 % vs +8.2 %
        # error with ``vendor``, whose fit is dominated by the dense blocks' K >= 256 convs).
        ks.append(_conv('downsample', out_px, cout, cin, out_px * cin, dense_out, b,
                        nchw=False, vendor=False))
        if not schedule.bn_folded:
            ks.append(_eltwise('downsample.bn', dense_out, b))
    if schedule.relu_rest_in_conv3:
        # Inside conv3's launch, through the row list: the residual read and the output
        # written at the active rows (conv3's product added) and, in a downsample block, at
        # every other row too; an identity block updates its input (a block output, >= 0)
        # in place, so its other rows are not touched.
        active_out = n_out_rows * cout
        rest_out = dense_out - active_out if shape.downsample else 0
        ks.append(Kernel('residual_relu', bytes=2 * rest_out * b,
                         gathered_bytes=2 * active_out * b, launches=0))
    elif schedule.fused_scatter:
        # Read residual + active rows, write the output, ReLU in the same pass.
        ks.append(Kernel('scatter_add_relu', bytes=2 * dense_out * b,
                         gathered_bytes=n_out_rows * cout * b))
    else:
        # Residual rows gathered, conv3 added, copied back; ReLU(residual) everywhere once,
        # except in an identity block, whose input (a block output, >= 0) becomes its output.
        ks.append(Kernel('index_add', gathered_bytes=3 * n_out_rows * cout * b))
        if shape.downsample:
            ks.append(_eltwise('relu', dense_out, b))
    return ks


def _gemm(name, M, N, K, in_elems, schedule, b, gathered=False, m_pad=None, tile_rows=0,
          tile_kind='gemm'):
    """A conv GEMM (+ its BN / ReLU passes when the schedule does not fuse them).
    ``tile_rows``: the Triton row kernels pick their tile per layer from its dense row count
    (``ops.triton.gemm.Tiles``), not from the M of this mask."""
    ks = [Kernel(name, M if m_pad is None else m_pad, N, K,
                 bytes=(M * N + N * K + (0 if gathered else in_elems)) * b,
                 gathered_bytes=in_elems * b if gathered else 0.0,
                 alloc_bytes=_fresh(M * N * b), blas=M < schedule.blas_below_rows,
                 tile_rows=tile_rows, tile_kind=tile_kind if tile_rows else '')]
    if not schedule.bn_folded:
        ks.append(_eltwise(name + '.bn', M * N, b, fresh=True))
    if not schedule.epilogue_fused:
        ks.append(_eltwise(name + '.relu', M * N, b))
    return ks


def _row_kernels(shape, granularity, rate, schedule, dtype, exact):
    """Pixel-row schedule: conv1 on the needed (dilated) rows, each once; conv2 over the nine
    taps of each active row; conv3 on the active rows; rows added into the residual."""
    b = DTYPE_BYTES[dtype]
    B, cin, mid = shape.batch, shape.in_channels, shape.planes
    out_h, out_w = shape.out_hw
    n1, n2 = las_rows(shape, granularity, rate, exact)
    in_px, out_px = B * shape.in_h * shape.in_w, B * out_h * out_w
    # Mask upsampling, dilation, nonzero and the taps' row lists (int64) in small ops.
    # The int64 tap lists: centre row + nine fixed offsets, written once.
    taps = 0 if schedule.gather_in_conv else 8 * 9 * n2
    if n2 > schedule.dense_block_above * out_px:
        # Nearly all active: the deployed dense block's convs (fresh outputs), conv3's output
        # zeroed off the mask, the residual added and ReLU'd in two passes.
        ks = _masker_and_indices(shape, granularity, schedule, b, 8 * (in_px + out_px),
                                 schedule.index_ops)
        ks += static_kernels(shape, dtype, deployed=True)
        dense_out = out_px * shape.out_channels
        return ks + [_eltwise('mask_fill', dense_out, b),
                     _eltwise('add_relu', dense_out, b, passes=3)]
    if schedule.masker_in_conv1 and shape.stride * granularity in FUSED_MASKER_WINDOWS:
        # One launch: conv1 on every pixel (rows addressed directly) and one more program per
        # M tile on the same rows (or, where conv1 is one N tile, that program itself), which
        # decides (with the masker: two logits padded to 16 columns) and appends the row
        # list (4 bytes a row).
        # Its M tiles hold whole cells, consecutive over the batch (FUSED_TILE_ROWS rows
        # taken for the tile height): only the last tile is padded. The masker programs append
        # the row list after their K loop: a serial tail of about one launch's fixed cost
        # (calibrated on the H100, fused blocks took as long as those with a compaction
        # launch and a gathered conv1; without the tail the fit was 10-25 % off both ways).
        extra = 16 if schedule.with_masker else 0
        win = shape.stride * granularity
        tile_cells = max(FUSED_TILE_ROWS // (win * win), 1)
        h, w = coarse_grid_size(out_h, out_w, granularity)
        m_pad = math.ceil(B * h * w / tile_cells) * tile_cells * win * win
        ks = [Kernel('indices', bytes=4 * out_px, launches=1)]
        ks += _gemm('conv1', in_px, mid + extra, cin, in_px * cin, schedule, b, m_pad=m_pad)
        return ks + _conv2_conv3_kernels(shape, schedule, b, n1, n2, mid, out_px)
    ks = _masker_and_indices(shape, granularity, schedule, b, 8 * (in_px + out_px) + taps,
                             schedule.index_ops)
    if n1 > schedule.dense_conv1_above * in_px:
        ks += _gemm('conv1', in_px, mid, cin, in_px * cin, schedule, b)
    elif schedule.gather_in_conv:
        ks += _gemm('conv1', n1, mid, cin, n1 * cin, schedule, b, gathered=True,
                    tile_rows=in_px)
    else:
        ks.append(Kernel('gather1', bytes=n1 * cin * b, gathered_bytes=n1 * cin * b))
        ks += _gemm('conv1', n1, mid, cin, n1 * cin, schedule, b)
        ks.append(Kernel('scatter1', bytes=n1 * mid * b, gathered_bytes=n1 * mid * b))
    return ks + _conv2_conv3_kernels(shape, schedule, b, n1, n2, mid, out_px)


def _conv2_conv3_kernels(shape, schedule, b, n1, n2, mid, out_px):
    """conv2 over the nine taps of the active rows, conv3 on them, the residual."""
    ks = []
    if schedule.gather_in_conv:
        # Implicit GEMM: the nine taps' re-reads hit on-chip memory; DRAM sees conv1's rows.
        ks += _gemm('conv2', n2, mid, 9 * mid, n1 * mid, schedule, b, gathered=True,
                    tile_rows=out_px, tile_kind='conv3x3')
    else:
        ks.append(Kernel('gather2', bytes=9 * n2 * mid * b, gathered_bytes=9 * n2 * mid * b))
        ks += _gemm('conv2', n2, mid, 9 * mid, 9 * n2 * mid, schedule, b)
    ks += _gemm('conv3', n2, shape.out_channels, mid, n2 * mid,
                schedule.replace(epilogue_fused=True), b,
                tile_rows=out_px if schedule.gather_in_conv else 0)
    return ks + _residual_kernels(shape, schedule, n2, b)


def _patch_kernels(shape, granularity, rate, schedule, dtype, exact):
    """Patch schedule (LASNet/LAUDNet): every active SxS patch is a unit of work; conv1 runs on
    its ``(S-1)*stride + 3`` haloed window (the halo computed once per patch that reads it),
    and in half precision GEMM rows are padded per patch to the tensor-core tile height 16."""
    b = DTYPE_BYTES[dtype]
    mma_m = 1 if dtype == 'fp32' else 16
    S, s = granularity, shape.stride
    cin, mid = shape.in_channels, shape.planes
    if exact:
        n_p = shape.batch * round(rate * shape.cells(S))
    else:
        n_p = shape.batch * rate * shape.cells(S)
    win = (S - 1) * s + 3
    px1, px2 = n_p * win * win, n_p * S * S
    pad = lambda rows: n_p * math.ceil(rows / mma_m) * mma_m  # noqa: E731
    ks = _masker_and_indices(shape, S, schedule, b, 8 * shape.batch * shape.cells(S),
                             schedule.index_ops)
    if schedule.gather_in_conv:
        ks += _gemm('conv1', px1, mid, cin, px1 * cin, schedule, b, gathered=True,
                    m_pad=pad(win * win))
    else:
        ks.append(Kernel('gather', bytes=px1 * cin * b, gathered_bytes=px1 * cin * b))
        ks += _gemm('conv1', px1, mid, cin, px1 * cin, schedule, b, m_pad=pad(win * win))
    ks += _gemm('conv2', px2, mid, 9 * mid, px1 * mid, schedule, b, m_pad=pad(S * S))
    ks += _gemm('conv3', px2, shape.out_channels, mid, px2 * mid,
                schedule.replace(epilogue_fused=True), b, m_pad=pad(S * S))
    return ks + _residual_kernels(shape, schedule, px2, b)


def stem_kernels(in_h, in_w, batch=1, dtype='fp32', in_channels=3, stem_channels=64,
                 folded=False, fused_pool=False):
    """mmdet ResNet stem: 7x7/2 conv, BN, ReLU, 3x3/2 max-pool (NCHW). ``folded``: as
    ``LASResNet`` runs it in sparse inference, BN folded into a channels-last conv, ReLU in
    place, max-pool on channels-last maps (a plain streaming pass); ``fused_pool`` (with
    ``folded``): the bias, ReLU and max-pool in that one pass (``ops.triton.stem_pool``)."""
    b = DTYPE_BYTES[dtype]
    h, w = conv_out(in_h, 2), conv_out(in_w, 2)
    px = batch * h * w
    ph, pw = conv_out(h, 2), conv_out(w, 2)
    conv = _conv('stem.conv', px, stem_channels, 49 * in_channels,
                 batch * in_h * in_w * in_channels, px * stem_channels, b, nchw=not folded)
    pool_bytes = (px + batch * ph * pw) * stem_channels * b
    pool_fresh = _fresh(batch * ph * pw * stem_channels * b)
    if folded and fused_pool:
        return [conv, Kernel('stem.pool', bytes=pool_bytes, alloc_bytes=pool_fresh)]
    if folded:
        return [conv, _eltwise('stem.relu', px * stem_channels, b),
                Kernel('stem.maxpool', bytes=pool_bytes, alloc_bytes=pool_fresh)]
    return [conv, _eltwise('stem.bn', px * stem_channels, b, fresh=True),
            _eltwise('stem.relu', px * stem_channels, b),
            Kernel('stem.maxpool', bytes=pool_bytes,
                   window_bytes=9 * batch * ph * pw * stem_channels * b, alloc_bytes=pool_fresh)]


# --- public API -------------------------------------------------------------------------------

def predict_static_block(shape, profile, dtype=None, bn_folded=False, deployed=False):
    """Seconds of a dense bottleneck (``deployed``: the best dense schedule, see
    ``static_kernels``; on a GPU the ``torch.compile``d network, on a CPU the eager one)."""
    profile = load_profile(profile)
    dtype = dtype or profile.dtype
    if deployed and profile.kind == 'gpu':
        kernels = compiled_static_kernels(shape, dtype)
    else:
        kernels = static_kernels(shape, dtype, bn_folded, deployed)
    return kernels_time(kernels, profile, dtype)


def predict_las_block(shape, granularity, rate, profile, schedule=None, dtype=None, exact=True):
    """Seconds of a LAS bottleneck at granularity S and activation rate r."""
    profile = load_profile(profile)
    dtype = dtype or profile.dtype
    schedule = get_schedule(schedule, profile)
    return kernels_time(las_kernels(shape, granularity, rate, schedule, dtype, exact),
                        profile, dtype)


def resnet_block_shapes(in_h, in_w, depth=101, batch=1, base_channels=64):
    """``[(stage, index, BlockShape)]`` of a pytorch-style ResNet at an input size."""
    if depth not in ARCH:
        raise ValueError(f'depth must be one of {sorted(ARCH)}, got {depth!r}')
    h, w = conv_out(conv_out(in_h, 2), 2), conv_out(conv_out(in_w, 2), 2)
    inplanes = base_channels
    shapes = []
    for stage, blocks in enumerate(ARCH[depth]):
        planes = base_channels * 2**stage
        for i in range(blocks):
            stride = 2 if (i == 0 and stage > 0) else 1
            shape = BlockShape(inplanes, planes, h, w, stride, downsample=(i == 0), batch=batch)
            shapes.append((stage, i, shape))
            h, w = shape.out_hw
            inplanes = shape.out_channels
    return shapes


def predict_backbone(profile, in_h, in_w, granularity=None, rate=0.5, depth=101, batch=1,
                     schedule=None, dtype=None, exact=True, nchw_outputs=True, deployed=False):
    """Per-part seconds of a whole backbone; static when ``granularity`` is None (mmdet's
    eager ResNet, or with ``deployed`` the best dense schedule: BN folded, channels-last,
    fused epilogues, the reference of ``LatencyCost``).

    ``rate`` is one r for every block or a sequence with one r per block. A LAS backbone's
    stem has its BN folded (as ``LASResNet`` runs it in sparse inference). ``nchw_outputs``:
    LASResNet hands necks NCHW maps, converting each stage output from the sparse ops'
    channels-last layout (a transposing copy).
    Returns ``dict(total=, stem=, blocks=[...], stages=[4 sums])``.
    """
    profile = load_profile(profile)
    dtype = dtype or profile.dtype
    schedule = get_schedule(schedule, profile)
    shapes = resnet_block_shapes(in_h, in_w, depth, batch)
    if granularity is not None and isinstance(granularity, int):
        granularity = (granularity, ) * 4
    rates = list(rate) if hasattr(rate, '__len__') else [rate] * len(shapes)
    if len(rates) != len(shapes):
        raise ValueError(f'need {len(shapes)} rates, got {len(rates)}')
    las = granularity is not None
    stem = kernels_time(stem_kernels(in_h, in_w, batch, dtype, folded=las or deployed,
                                     fused_pool=las and schedule.stem_pool_fused),
                        profile, dtype)
    blocks, stages = [], [0.0] * 4
    for (stage, _, shape), r in zip(shapes, rates):
        if granularity is None:
            t = predict_static_block(shape, profile, dtype, deployed=deployed)
        else:
            t = predict_las_block(shape, granularity[stage], r, profile, schedule, dtype, exact)
        blocks.append(t)
        stages[stage] += t
    outputs = 0.0
    if granularity is not None and nchw_outputs:
        b = DTYPE_BYTES[dtype]
        for stage in range(4):
            shape = [s for st, _, s in shapes if st == stage][-1]
            elems = batch * shape.out_hw[0] * shape.out_hw[1] * shape.out_channels
            layout = 0 if schedule.streamed_nchw_outputs else 2 * elems * b
            outputs += kernel_time(Kernel(f'layer{stage + 1}.to_nchw', bytes=2 * elems * b,
                                          layout_bytes=layout, alloc_bytes=_fresh(elems * b)),
                                   profile, dtype)
    return dict(total=stem + sum(blocks) + outputs, stem=stem, blocks=blocks, stages=stages,
                outputs=outputs)
