import math
from dataclasses import replace

import pytest
import torch

from lasnet_mmdet.latency.hardware import PRESETS
from lasnet_mmdet.latency.predictor import (SCHEDULES, BlockShape, Kernel, _row_kernel_waves,
                                            kernel_time, las_kernels, needed_fraction,
                                            predict_backbone, predict_las_block,
                                            predict_static_block,
                                            resnet_block_shapes)
from lasnet_mmdet.models.layers.masker import (coarse_grid_size, dilate_mask,
                                               random_coarse_mask, upsample_mask)

STAGE3 = BlockShape(1024, 256, 50, 76)


@pytest.mark.parametrize('S,stride', [(1, 1), (1, 2), (2, 1), (4, 2), (7, 1), (8, 1)])
def test_needed_fraction_matches_the_dilated_mask(S, stride):
    generator = torch.Generator().manual_seed(0)
    size = 112
    out = (size - 1) // stride + 1
    h, w = coarse_grid_size(out, out, S)
    for rate in (0.1, 0.5, 0.9):
        coarse = random_coarse_mask(1, h, w, rate, generator, 'cpu')
        mask = upsample_mask(coarse, S, out, out)
        measured = dilate_mask(mask, stride, size, size).mean().item()
        exact = round(rate * h * w) / (h * w)
        assert needed_fraction(S, stride, exact) == pytest.approx(measured, abs=0.03)


@pytest.mark.parametrize('preset', sorted(PRESETS))
@pytest.mark.parametrize('schedule', sorted(SCHEDULES))
def test_las_block_grows_with_rate(preset, schedule):
    times = [predict_las_block(STAGE3, 4, r / 10, preset, schedule) for r in range(11)]
    if schedule != 'torch':  # the torch backend switches conv1 to dense above 75% rows
        assert all(b >= a * 0.999 for a, b in zip(times, times[1:]))
    # (and the whole block to dense convs above 80 % active pixels: fewer ops than sparse)
    assert times[0] < times[5]


def test_wave_quantisation():
    h100 = PRESETS['h100']
    tile = h100.tile
    one_wave = kernel_time(Kernel('g', M=tile * h100.sms, N=tile, K=4096), h100)
    one_more = kernel_time(Kernel('g', M=tile * (h100.sms + 1), N=tile, K=4096), h100)
    two_waves = kernel_time(Kernel('g', M=tile * 2 * h100.sms, N=tile, K=4096), h100)
    # One more row of tiles than fits in a full wave costs far more than its 1/132 share
    # (a partial wave), a second full wave less than the first (tiles sharing SMs overlap).
    assert one_more > (1 + 5 / h100.sms) * one_wave
    assert 1.4 * one_wave < two_waves < 2 * one_wave


def test_row_kernels_run_in_rounds_of_their_real_programs():
    """The Triton row kernels' waves are rounds of the programs their own tile table launches:
    stage 3's conv2 at batch 1 (64 x 64 tiles, K split 3 ways, 64 KiB of pipeline buffers: 3
    programs an SM) is 360 programs at r = 0.5 (one round on 132 x 3 slots), 432 at r = 0.6
    (two); the block's predicted time steps there, as measured on the H100 (36 -> 44 us)."""
    h100 = PRESETS['h100']
    conv2 = dict(name='conv2', N=256, K=9 * 256, tile_rows=50 * 76, tile_kind='conv3x3')
    assert _row_kernel_waves(Kernel(M=1900, **conv2), h100, 'fp16') == 1
    later = h100.efficiency['later_round']
    assert _row_kernel_waves(Kernel(M=2280, **conv2), h100, 'fp16') == 1 + later
    # Without the shared-memory figure one program an SM: 360 programs are three rounds.
    no_smem = replace(h100, smem_per_sm_kb=0)
    assert _row_kernel_waves(Kernel(M=1900, **conv2), no_smem, 'fp16') == 1 + 2 * later
    # Whole blocks: the step between r = 0.5 and 0.6 is larger than the steps beside it.
    t = [predict_las_block(STAGE3, 2, r, h100, 'rows', 'fp16') for r in (0.4, 0.5, 0.6, 0.7)]
    assert t[2] - t[1] > 3 * max(t[1] - t[0], t[3] - t[2])


def test_tensor_cores_and_fusion_pay():
    v100 = PRESETS['v100']
    assert (predict_static_block(STAGE3, v100, 'fp16') < 0.5
            * predict_static_block(STAGE3, v100, 'fp32'))
    for shape, dtype in ((STAGE3, 'fp16'), (replace(STAGE3, batch=8), 'fp32')):
        fused = predict_las_block(shape, 4, 0.5, v100, 'rows', dtype)
        torch_like = predict_las_block(shape, 4, 0.5, v100, 'torch', dtype)
        assert fused < torch_like, (shape, dtype)
    # (fp32 at batch 1 on a V100 the rows kernels' per-layer tiles leave SMs idle: 1900 rows
    # of stage 3 are 30 large tiles on 80 SMs, where a per-size GEMM picks small ones.)


def test_rows_schedule_launches_what_the_triton_backend_launches():
    """Per identity block: conv1 with the masker and the row list in one launch (windows in
    ``FUSED_MASKER_WINDOWS``; else the masker, the compaction and a gathered conv1), conv2
    and conv3, which updates the block input in place at the active rows; a downsample
    block's conv3 launch also runs the downsample conv, at every output row, and writes
    ReLU(downsample) off the mask: the block output written once, no residual read."""
    from lasnet_mmdet.ops import TRITON_INDEX_OPS
    kernels = las_kernels(STAGE3, 2, 0.5, 'rows')
    assert [k.name for k in kernels] == ['indices', 'conv1', 'conv2', 'conv3', 'residual_relu']
    conv1 = next(k for k in kernels if k.name == 'conv1')
    # every pixel, tiles of 16 whole cells consecutive over cell rows (950 -> 960 cells),
    # the masker's program
    assert conv1.M == 960 * 4 and conv1.N == 256 + 16
    pinned = las_kernels(STAGE3, 2, 0.5, SCHEDULES['rows'].replace(with_masker=False))
    assert next(k for k in pinned if k.name == 'conv1').N == 256
    unfused = las_kernels(STAGE3, 7, 0.5, 'rows')
    assert sum(k.launches for k in unfused) == 1 + TRITON_INDEX_OPS + 3
    # the row-list tail of the fused launch costs one launch's fixed cost: the masker's
    # own launch is what the fusion saves
    assert sum(k.launches for k in kernels) == sum(k.launches for k in unfused) - 1
    residual = next(k for k in kernels if k.name == 'residual_relu')
    dense_out = 2 * 50 * 76 * 1024 * 4  # read and written once each, fp32
    assert residual.bytes == 0 and residual.gathered_bytes == dense_out / 2  # r = 0.5
    first = BlockShape(512, 256, 100, 152, stride=2, downsample=True)
    first_kernels = las_kernels(first, 2, 0.5, 'rows')
    assert [k.name for k in first_kernels][-3:] == ['conv3', 'downsample', 'residual_relu']
    downsample = first_kernels[-2]
    assert (downsample.M, downsample.N, downsample.K) == (50 * 76, 1024, 512)
    assert downsample.launches == 0 and downsample.gathered_bytes == 50 * 76 * 512 * 4
    residual = first_kernels[-1]
    assert residual.bytes + residual.gathered_bytes == dense_out / 2  # written only
    # as a launch of its own, a conv with its output: off in the schedule, or (as the
    # backend does) where the GEMM is large and not memory-bound (batch 8: 16 G MACs)
    for shape, schedule in ((first, SCHEDULES['rows'].replace(downsample_in_conv3=False)),
                            (replace(first, batch=8), SCHEDULES['rows'])):
        apart = las_kernels(shape, 2, 0.5, schedule)
        assert next(k for k in apart if k.name == 'downsample').launches == 1
        residual = next(k for k in apart if k.name == 'residual_relu')
        assert residual.bytes + residual.gathered_bytes == dense_out * shape.batch
    stage1 = BlockShape(64, 64, 200, 304, downsample=True, batch=8)  # K = 64: in the launch
    assert next(k for k in las_kernels(stage1, 4, 0.5, 'rows')
                if k.name == 'downsample').launches == 0


def test_rows_schedule_runs_the_stem_epilogue_in_one_pass():
    """The Triton backbone's stem: the conv, then bias + ReLU + max-pool in one launch
    (``ops.triton.stem_pool``); the deployed dense stem keeps its ReLU pass."""
    from lasnet_mmdet.latency.predictor import stem_kernels
    fused = stem_kernels(800, 1216, 1, 'fp16', folded=True, fused_pool=True)
    assert [k.name for k in fused] == ['stem.conv', 'stem.pool']
    plain = stem_kernels(800, 1216, 1, 'fp16', folded=True)
    assert [k.name for k in plain] == ['stem.conv', 'stem.relu', 'stem.maxpool']
    rows = predict_backbone('h100', 800, 1216, (4, 4, 2, 1), 0.5, schedule='rows')
    torch_ = predict_backbone('h100', 800, 1216, (4, 4, 2, 1), 0.5, schedule='torch')
    assert rows['stem'] < torch_['stem']


def test_deployed_block_on_a_gpu_is_the_compiled_network():
    """On a GPU the deployed dense block is what torch.compile runs: library convs at the
    ``compiled`` efficiency, each followed by one fused pass for its epilogue (Inductor peels
    the bias off cuDNN's convs); on a CPU the eager folded block, whatever ``compiled`` is."""
    from lasnet_mmdet.latency.hardware import load_profile
    from lasnet_mmdet.latency.predictor import (compiled_static_kernels, kernels_time,
                                                static_kernels)
    assert [k.name for k in compiled_static_kernels(STAGE3)] == [
        'conv1', 'conv1.bias_relu', 'conv2', 'conv2.bias_relu', 'conv3', 'conv3.bias_add_relu']
    first = BlockShape(512, 256, 100, 152, stride=2, downsample=True)
    assert 'downsample' in [k.name for k in compiled_static_kernels(first)]
    h100 = PRESETS['h100']
    deployed = predict_static_block(STAGE3, h100, deployed=True)
    assert deployed == pytest.approx(kernels_time(compiled_static_kernels(STAGE3), h100))
    assert predict_static_block(STAGE3, h100.with_efficiency(compiled=2.0), deployed=True) < (
        deployed)
    # ``vendor`` is mmdet's eager network's (cuDNN called eagerly), not the compiled one's
    other_vendor = h100.with_efficiency(vendor=2.0)
    assert predict_static_block(STAGE3, other_vendor, deployed=True) == deployed
    assert predict_static_block(STAGE3, other_vendor) < predict_static_block(STAGE3, h100)
    cpu = load_profile('cpu-2t')
    eager = predict_static_block(STAGE3, cpu, deployed=True)
    assert eager == pytest.approx(kernels_time(static_kernels(STAGE3, deployed=True), cpu))
    assert predict_static_block(STAGE3, cpu.with_efficiency(compiled=0.1), deployed=True) == (
        eager)


def test_patch_schedule_pays_the_halo_at_fine_granularity():
    names = [k.name for k in las_kernels(STAGE3, 1, 0.5, 'fused')]
    assert 'conv1' in names and 'scatter_add_relu' in names
    def rows(S, name):
        return next(k for k in las_kernels(STAGE3, S, 0.5, 'fused') if k.name == name).M

    # S=1: every active pixel recomputes a 3x3 conv1 window; S=8: a 10x10 window per 8x8.
    assert rows(1, 'conv1') / rows(1, 'conv3') == pytest.approx(9)
    assert rows(8, 'conv1') / rows(8, 'conv3') == pytest.approx(100 / 64)


def test_backbone_prediction_structure():
    shapes = resnet_block_shapes(800, 1216, 101)
    assert len(shapes) == 33 and shapes[3][2].stride == 2 and shapes[3][2].downsample
    static = predict_backbone('h100', 800, 1216)
    assert math.isclose(static['total'], static['stem'] + sum(static['stages']))
    las = predict_backbone('h100', 800, 1216, (4, 4, 7, 4), 0.5)
    assert las['total'] < static['total']
    with pytest.raises(ValueError, match='rates'):
        predict_backbone('h100', 800, 1216, 4, [0.5] * 3)


def test_cpu_gemms_below_onednn_rows_run_at_the_blas_efficiency():
    from lasnet_mmdet.latency.hardware import load_profile
    from lasnet_mmdet.ops.torch_backend import ONEDNN_MIN_ROWS
    cpu = load_profile('lasnet_mmdet/latency/profiles/cpu-2t.json')
    stage4 = BlockShape(2048, 512, 25, 38)  # 950 pixels: every GEMM below ONEDNN_MIN_ROWS
    assert 25 * 38 < ONEDNN_MIN_ROWS
    gemms = [k for k in las_kernels(stage4, 1, 0.5, 'torch') if k.is_gemm]
    assert gemms and all(k.blas for k in gemms)
    assert not any(k.blas for k in las_kernels(STAGE3, 4, 0.9, 'torch') if k.is_gemm)
    slow = cpu.with_efficiency(blas=cpu.efficiency['blas'] / 2)
    for k in gemms:
        assert kernel_time(k, slow) > kernel_time(k, cpu)
    # the Triton schedule has no BLAS path
    assert not any(k.blas for k in las_kernels(stage4, 1, 0.5, 'rows'))


def test_torch_schedule_runs_nearly_full_blocks_densely():
    from lasnet_mmdet.ops.torch_backend import DENSE_BLOCK_ABOVE
    names = {r: {k.name for k in las_kernels(STAGE3, 4, r, 'torch')} for r in (0.5, 0.95)}
    assert 0.5 < DENSE_BLOCK_ABOVE < 0.95
    assert 'gather2' in names[0.5] and 'mask_fill' not in names[0.5]
    assert 'mask_fill' in names[0.95] and 'gather2' not in names[0.95]
    # the Triton schedule has no such switch
    assert 'mask_fill' not in {k.name for k in las_kernels(STAGE3, 4, 0.95, 'rows')}


def test_torch_schedule_reads_the_ops_constants():
    """The PyTorch and Triton schedules take their switches from the backends they model (no
    copies that drift when a backend's constant is retuned)."""
    from lasnet_mmdet import ops
    from lasnet_mmdet.latency import predictor
    from lasnet_mmdet.ops import torch_backend
    torch_schedule = SCHEDULES['torch']
    assert torch_schedule.dense_conv1_above == torch_backend.DENSE_CONV1_ABOVE
    assert torch_schedule.index_ops == torch_backend.INDEX_OPS
    assert torch_schedule.blas_below_rows == torch_backend.ONEDNN_MIN_ROWS
    assert torch_schedule.dense_block_above == torch_backend.DENSE_BLOCK_ABOVE
    assert SCHEDULES['rows'].index_ops == ops.TRITON_INDEX_OPS
    for name in ('DENSE_CONV1_ABOVE', 'INDEX_OPS', 'ONEDNN_MIN_ROWS', 'DENSE_BLOCK_ABOVE'):
        assert getattr(predictor, name) is getattr(torch_backend, name)
    assert predictor.TRITON_INDEX_OPS is ops.TRITON_INDEX_OPS


def test_predictor_reads_the_kernels_tile_table_without_triton():
    """The tile tables are data (``ops.tiles``): the predictor models the row kernels' real
    programs on a machine without Triton too."""
    import subprocess
    import sys
    code = ("import sys; sys.modules['triton'] = None\n"
            "from lasnet_mmdet.ops.tiles import Tile, table_tile\n"
            "hopper = table_tile('conv3x3', 256, 2304, False, 9, 3800)\n"
            "assert hopper == Tile(64, 64, 64, 4, 4, 3), hopper\n"
            "other = table_tile('conv3x3', 256, 2304, False, None, 3800)\n"
            "assert other == Tile(128, 128, 64, 8, 3), other\n"
            "from lasnet_mmdet.latency.predictor import BlockShape, predict_las_block\n"
            "shape = BlockShape(1024, 256, 50, 76)\n"
            "print(predict_las_block(shape, 2, 0.5, 'h100', 'rows', 'fp16'))\n")
    proc = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert 0 < float(proc.stdout.split()[-1]) < 1e-3
