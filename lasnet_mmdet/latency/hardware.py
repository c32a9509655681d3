"""Hardware profiles: what the latency predictor knows about a device.

A profile holds two kinds of numbers:

* spec figures, straight from the vendor's data sheet (SMs, clock, peak throughputs, DRAM
  bandwidth) or, for a CPU, cores, per-core peak and memory bandwidth;
* a few efficiency parameters, the fraction of those peaks our own kernels reach. The presets
  carry sensible defaults; ``calibrate`` measures the device and fits them.

Profiles are plain JSON so a calibrated device can be committed and reused
(``lasnet_mmdet/latency/profiles/*.json``); ``load_profile`` accepts a preset name or a path.
"""
import json
import math
import os.path as osp
from dataclasses import asdict, dataclass, field, fields, replace

PROFILE_DIR = osp.join(osp.dirname(__file__), 'profiles')
KINDS = ('gpu', 'cpu')
DTYPES = ('fp32', 'fp16', 'bf16')
DTYPE_BYTES = {'fp32': 4, 'fp16': 2, 'bf16': 2}

# Fraction-of-peak parameters (fitted by calibrate) and their defaults.
#   compute:      fraction of peak FLOP/s a large, well-shaped GEMM/conv reaches
#   memory:       fraction of peak DRAM bandwidth a streaming kernel reaches
#   gather:       bandwidth of indexed (patch) reads/writes relative to streaming ones
#   small_dim:    GEMM dimension at which the efficiency halves (narrow GEMMs are slow)
#   launch_us:    fixed cost per kernel / eager op (launch, dispatch, Python)
#   layout:       bandwidth of the layout conversions (NCHW <-> blocked) oneDNN wraps around
#                 a CPU conv on NCHW tensors, relative to streaming (unused on GPUs)
#   alloc:        rate of first-touch page faults of fresh large tensors on a CPU, relative
#                 to streaming (unused on GPUs, whose caching allocator reuses memory)
#   pool:         rate of the 3x3 max-pool's window reads on a CPU (PyTorch's NCHW CPU
#                 max-pool is not bandwidth-bound), relative to streaming
#   blas:         speed of the BLAS GEMMs that the PyTorch backend runs below
#                 ``ONEDNN_MIN_ROWS`` rows on a CPU, relative to its oneDNN ones (``compute``)
#   vendor:       speed of the dense convs of mmdet's eager network (cuDNN's) on a GPU,
#                 relative to the project's Triton kernels (``compute``): another family of
#                 kernels, another efficiency curve
#   compiled:     speed of the convs of the deployed dense network on a GPU (the ones
#                 ``torch.compile`` max-autotune picks per layer), relative to ``compute``
#   later_round:  cost of each further round of a Triton row kernel's programs over the SMs,
#                 relative to the first (programs that share an SM hide part of each
#                 other's latency, so a round costs less than the first)
DEFAULT_EFFICIENCY = dict(compute=0.6, memory=0.8, gather=0.5, small_dim=0.0, launch_us=5.0,
                          layout=0.5, alloc=0.2, pool=1.0, blas=1.0, vendor=1.0, compiled=1.0,
                          later_round=0.5)
EFFICIENCY_BOUNDS = dict(compute=(1e-3, 1.0), memory=(1e-3, 1.0), gather=(1e-3, 1.0),
                         small_dim=(0.0, 4096.0), launch_us=(0.0, 1e4), layout=(1e-3, 1.0),
                         alloc=(1e-3, 1.0), pool=(1e-3, 1.0), blas=(0.05, 4.0),
                         vendor=(0.05, 4.0), compiled=(0.05, 4.0), later_round=(0.05, 1.0))


class ProfileError(ValueError):
    """A hardware profile that cannot be used (unknown, missing, corrupt or invalid)."""


@dataclass(frozen=True)
class HardwareProfile:
    """Spec figures and efficiencies of one device.

    GPU fields: ``sms``, ``clock_ghz``, ``fp32_tflops`` (CUDA cores), ``tensor_tflops``
    (dense fp16/bf16 tensor cores; 2x fp32 on GPUs without them), ``dram_gbps``,
    ``onchip_gbps`` (L2), ``tile`` (output tile edge of the GEMM kernels, for tile and wave
    quantisation), ``compute_capability`` ('9.0': which tile table the Triton row kernels
    use, ``ops.tiles``) and ``smem_per_sm_kb`` (shared memory per SM: how many of their
    programs an SM holds at once). CPU fields: ``cores``, ``core_gflops`` (fp32 peak per
    core), ``dram_gbps``.
    """
    name: str
    kind: str
    dram_gbps: float
    dtype: str = 'fp32'
    # GPU
    sms: int = 0
    clock_ghz: float = 0.0
    fp32_tflops: float = 0.0
    tensor_tflops: float = 0.0
    onchip_gbps: float = 0.0
    tile: int = 128
    compute_capability: str = ''
    smem_per_sm_kb: float = 0.0
    # CPU
    cores: int = 0
    core_gflops: float = 0.0
    efficiency: dict = field(default_factory=dict)
    schedule: str = ''  # the schedule our kernels run here ('' = by kind: fused GPU, torch CPU)
    notes: str = ''

    def __post_init__(self):
        eff = dict(DEFAULT_EFFICIENCY)
        eff.update(self.efficiency or {})
        object.__setattr__(self, 'efficiency', eff)
        validate(self)

    @property
    def dtype_bytes(self):
        return DTYPE_BYTES[self.dtype]

    def peak_flops(self, dtype=None):
        """Peak FLOP/s (2 per multiply-accumulate) for ``dtype``."""
        dtype = dtype or self.dtype
        if self.kind == 'cpu':
            return self.cores * self.core_gflops * 1e9
        tflops = self.fp32_tflops if dtype == 'fp32' else self.tensor_tflops
        return tflops * 1e12

    def with_efficiency(self, **eff):
        return replace(self, efficiency={**self.efficiency, **eff})

    def to_dict(self):
        return asdict(self)

    def save(self, path):
        with open(path, 'w') as f:
            json.dump(self.to_dict(), f, indent=2, sort_keys=True)
            f.write('\n')


def _positive(profile, name):
    value = getattr(profile, name)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(
            value) or value <= 0:
        raise ProfileError(f'profile {profile.name!r}: {name} must be a positive number, '
                           f'got {value!r}')


def validate(profile):
    """Raise ``ProfileError`` unless every figure the predictor uses is sensible."""
    if profile.kind not in KINDS:
        raise ProfileError(f'profile {profile.name!r}: kind must be one of {KINDS}, '
                           f'got {profile.kind!r}')
    if profile.dtype not in DTYPES:
        raise ProfileError(f'profile {profile.name!r}: dtype must be one of {DTYPES}, '
                           f'got {profile.dtype!r}')
    required = (('dram_gbps', 'sms', 'clock_ghz', 'fp32_tflops', 'tensor_tflops',
                 'onchip_gbps', 'tile') if profile.kind == 'gpu' else
                ('dram_gbps', 'cores', 'core_gflops'))
    for name in required:
        _positive(profile, name)
    cc = profile.compute_capability
    if cc and not (isinstance(cc, str) and cc.replace('.', '', 1).isdigit()):
        raise ProfileError(f'profile {profile.name!r}: compute_capability must be like '
                           f"'9.0' (or empty), got {cc!r}")
    if profile.smem_per_sm_kb:
        _positive(profile, 'smem_per_sm_kb')
    unknown = set(profile.efficiency) - set(DEFAULT_EFFICIENCY)
    if unknown:
        raise ProfileError(f'profile {profile.name!r}: unknown efficiency keys {sorted(unknown)}')
    for key, (low, high) in EFFICIENCY_BOUNDS.items():
        value = profile.efficiency[key]
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not (
                low <= value <= high) or (low > 0 and value <= 0):
            raise ProfileError(f'profile {profile.name!r}: efficiency {key} must be in '
                               f'[{low}, {high}], got {value!r}')


# Public data-sheet figures (boost clocks; dense tensor throughput, no sparsity; shared memory
# per SM). On-chip (L2) bandwidth is not on data sheets: these are round estimates from
# published micro-benchmarks.
# Launch overheads are typical eager-mode costs, refined by calibration.
PRESETS = {
    'v100': HardwareProfile(
        name='v100', kind='gpu', dtype='fp32', sms=80, clock_ghz=1.53, fp32_tflops=15.7,
        tensor_tflops=125.0, dram_gbps=900.0, onchip_gbps=2500.0, tile=128,
        compute_capability='7.0', smem_per_sm_kb=96,
        efficiency=dict(compute=0.5, memory=0.8, gather=0.35, launch_us=6.0),
        notes='Tesla V100 SXM2 16/32 GB (data sheet); L2 bandwidth estimated. fp32 by '
              'default, as LASNet/LAUDNet measured and simulated it'),
    'a100': HardwareProfile(
        name='a100', kind='gpu', dtype='fp16', sms=108, clock_ghz=1.41, fp32_tflops=19.5,
        tensor_tflops=312.0, dram_gbps=2039.0, onchip_gbps=5000.0, tile=128,
        compute_capability='8.0', smem_per_sm_kb=164,
        efficiency=dict(compute=0.5, memory=0.8, gather=0.35, launch_us=5.0),
        notes='A100 SXM4 80 GB (data sheet); L2 bandwidth estimated'),
    'h100': HardwareProfile(
        name='h100', kind='gpu', dtype='fp16', sms=132, clock_ghz=1.98, fp32_tflops=67.0,
        tensor_tflops=989.0, dram_gbps=3350.0, onchip_gbps=10000.0, tile=128,
        compute_capability='9.0', smem_per_sm_kb=228,
        efficiency=dict(compute=0.4, memory=0.8, gather=0.35, launch_us=5.0),
        notes='H100 SXM5 80 GB (data sheet); L2 bandwidth estimated'),
    'rtx3090': HardwareProfile(
        name='rtx3090', kind='gpu', dtype='fp16', sms=82, clock_ghz=1.695, fp32_tflops=35.6,
        tensor_tflops=71.0, dram_gbps=936.0, onchip_gbps=2000.0, tile=128,
        compute_capability='8.6', smem_per_sm_kb=100,
        efficiency=dict(compute=0.5, memory=0.8, gather=0.35, launch_us=5.0),
        notes='GeForce RTX 3090 (data sheet; fp16 tensor with fp32 accumulate); L2 estimated'),
    'tx2': HardwareProfile(
        name='tx2', kind='gpu', dtype='fp32', sms=2, clock_ghz=1.30, fp32_tflops=0.665,
        tensor_tflops=1.33, dram_gbps=59.7, onchip_gbps=200.0, tile=64,
        compute_capability='6.2', smem_per_sm_kb=64,
        efficiency=dict(compute=0.5, memory=0.7, gather=0.35, launch_us=20.0),
        notes='Jetson TX2 (Pascal, 256 CUDA cores; no tensor cores: fp16 at 2x fp32); fp32 by '
              'default, as LASNet/LAUDNet measured and simulated it'),
}
ALIASES = {'jetson_tx2': 'tx2', 'jetson-tx2': 'tx2', 'rtx_3090': 'rtx3090',
           'rtx-3090': 'rtx3090', '3090': 'rtx3090'}


def preset_names():
    return sorted(PRESETS)


def get_preset(name):
    key = ALIASES.get(str(name).lower(), str(name).lower())
    if key not in PRESETS:
        raise ProfileError(f'unknown hardware preset {name!r}; known presets: '
                           f'{", ".join(preset_names())} (or give a profile JSON path)')
    return PRESETS[key]


def profile_from_dict(data, source='<dict>'):
    if not isinstance(data, dict):
        raise ProfileError(f'{source}: a profile must be a JSON object, got {type(data).__name__}')
    known = {f.name for f in fields(HardwareProfile)}
    unknown = set(data) - known
    if unknown:
        raise ProfileError(f'{source}: unknown profile keys {sorted(unknown)}')
    missing = {'name', 'kind', 'dram_gbps'} - set(data)
    if missing:
        raise ProfileError(f'{source}: missing profile keys {sorted(missing)}')
    try:
        return HardwareProfile(**data)
    except ProfileError as e:
        raise ProfileError(f'{source}: {e}') from None
    except TypeError as e:
        raise ProfileError(f'{source}: {e}') from None


def load_profile(spec):
    """A ``HardwareProfile`` from a profile, a preset name or a JSON file path."""
    if isinstance(spec, HardwareProfile):
        return spec
    if isinstance(spec, dict):
        return profile_from_dict(spec)
    spec = str(spec)
    looks_like_path = spec.endswith('.json') or osp.sep in spec
    if not looks_like_path:
        bundled = osp.join(PROFILE_DIR, f'{spec}.json')
        if osp.isfile(bundled):  # a calibrated profile shipped with the package
            return load_profile(bundled)
        return get_preset(spec)
    if not osp.isfile(spec):
        raise ProfileError(f'hardware profile file not found: {spec}')
    try:
        with open(spec) as f:
            data = json.load(f)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ProfileError(f'corrupt hardware profile {spec}: not valid JSON ({e})') from None
    return profile_from_dict(data, source=spec)
