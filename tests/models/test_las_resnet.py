import os
import subprocess
import sys

import pytest
import torch
import torch.nn as nn
from mmdet.models.backbones import ResNet
from mmdet.registry import MODELS

import lasnet_mmdet  # noqa: F401
from lasnet_mmdet.models import LASBottleneck, LASResNet
from conftest import REPO


def force_masks(backbone, execute):
    """Every masker decides the same way whatever its input."""
    for _, block in backbone.las_blocks():
        block.masker.conv2.weight.data.zero_()
        block.masker.conv2.bias.data = torch.tensor([1.0, 0.0] if execute else [0.0, 1.0])


@pytest.mark.parametrize('training', [False, True])
def test_all_masks_on_equals_mmdet_resnet(training):
    torch.manual_seed(0)
    las = MODELS.build(dict(type='LASResNet', depth=50, granularity=(4, 4, 2, 1),
                            norm_eval=False, sparse_inference='off'))
    las.init_weights()
    force_masks(las, execute=True)
    ref = ResNet(depth=50, norm_eval=False)
    missing, unexpected = ref.load_state_dict(las.state_dict(), strict=False)
    assert not missing and all('masker' in key for key in unexpected)
    las.train(training)
    ref.train(training)
    x = torch.randn(2, 3, 96, 128)
    outs, ref_outs = las(x), ref(x)
    assert len(outs) == 4
    for out, ref_out in zip(outs, ref_outs):
        assert out.shape == ref_out.shape
        torch.testing.assert_close(out, ref_out, atol=1e-5, rtol=1e-5)


def test_all_masks_off_gives_residual_only():
    block = LASBottleneck(16, 4, granularity=2).eval()
    block.sparse_inference = 'off'
    block.masker.conv2.weight.data.zero_()
    block.masker.conv2.bias.data = torch.tensor([0.0, 1.0])
    x = torch.randn(1, 16, 8, 8)
    torch.testing.assert_close(block(x), torch.relu(x))
    assert block.stats['rate'].item() == 0


def test_block_stats_hand_computed():
    """8->4->16 channels, stride 2, S = 2, input 6x6: output 3x3, coarse grid 2x2."""
    downsample = nn.Sequential(nn.Conv2d(8, 16, 1, stride=2, bias=False), nn.BatchNorm2d(16))
    block = LASBottleneck(8, 4, stride=2, downsample=downsample, granularity=2).eval()
    block.sparse_inference = 'off'
    # execute logit = mean of input channel 0 over a patch, skip logit = 0
    block.masker.conv2.weight.data.zero_()
    block.masker.conv2.weight.data[0, 0] = 1
    block.masker.conv2.bias.data.zero_()
    x = -torch.ones(1, 8, 6, 6)
    x[:, 0, :4, :4] = 1  # only output patch (0, 0) = output pixels [0:2, 0:2] executes
    block(x)
    stats = block.stats
    assert stats['rate'].item() == pytest.approx(4 / 9)
    # conv2 (stride 2) reads conv1 rows/cols -1..3 for output rows/cols 0..1 -> 4x4 of 6x6
    assert stats['rate_dil'].item() == pytest.approx(16 / 36)
    masker = 8 * 4 + (2 * 8 + 8) * 4          # pooling + logits (LASNet's count), 4 cells
    conv1 = 8 * 4 * 6 * 6
    conv2 = 9 * 4 * 4 * 3 * 3
    conv3 = 4 * 16 * 3 * 3
    down = 8 * 16 * 3 * 3
    assert stats['macs_dense'] == masker + conv1 + conv2 + conv3 + down
    expected = masker + down + conv1 * 16 / 36 + (conv2 + conv3) * 4 / 9
    assert stats['macs_dynamic'].item() == pytest.approx(expected)


def count_conv_macs(model, x):
    """Dense MACs of every conv and max-pool, from the shapes a real forward produces."""
    total = [0]

    def conv_hook(module, inputs, output):
        k = module.kernel_size[0] * module.kernel_size[1]
        total[0] += output[0].numel() * module.in_channels // module.groups * k

    def pool_hook(module, inputs, output):
        total[0] += output[0].numel() * module.kernel_size**2

    handles = [m.register_forward_hook(conv_hook) for m in model.modules()
               if isinstance(m, nn.Conv2d) and 'masker' not in str(type(m))]
    handles += [m.register_forward_hook(pool_hook) for m in model.modules()
                if isinstance(m, nn.MaxPool2d)]
    model(x)
    for handle in handles:
        handle.remove()
    return total[0]


def test_backbone_dense_macs_match_conv_shapes():
    las = LASResNet(depth=50, granularity=(4, 4, 2, 1), sparse_inference='off').eval()
    force_masks(las, execute=True)
    x = torch.randn(1, 3, 160, 224)
    las(x)
    stats = las.las_stats
    ref = ResNet(depth=50)
    ref.eval()
    maskers = sum(b.dense_macs(*b_in)['masker'] for b, b_in in block_inputs(las, x))
    assert stats['macs_dense'] == count_conv_macs(ref, x) + maskers
    # every mask on: conv1 also runs everywhere, so dynamic == dense
    assert stats['macs_dynamic'].item() == pytest.approx(stats['macs_dense'])


def block_inputs(backbone, x):
    sizes = []
    hooks = [b.register_forward_pre_hook(lambda m, a: sizes.append((m, a[0].shape[-2:])))
             for _, b in backbone.las_blocks()]
    backbone(x)
    for hook in hooks:
        hook.remove()
    return sizes


def test_pinned_masks_exact_rate_and_seeded():
    las = LASResNet(depth=50, granularity=(4, 4, 2, 1), sparse_inference='off').eval()
    x = torch.randn(2, 3, 128, 128)
    with las.pinned_masks(0.5, seed=3):
        las(x)
        first = [b.stats['rate'].item() for _, b in las.las_blocks()]
        las(x)
    with las.pinned_masks(0.5, seed=3):
        las(x)
        again = [b.stats['rate'].item() for _, b in las.las_blocks()]
    assert first == again
    # layer4 (4x4 output, S = 1): 16 cells, exactly 8 active per image
    assert first[-1] == 0.5
    with pytest.raises(ValueError, match='1.5'):
        with las.pinned_masks(1.5):
            pass
    with pytest.raises(ValueError, match='exactly one'):
        with las.pinned_masks():
            pass


def test_pinned_masks_stay_on_the_device_and_fixed_masks():
    las = LASResNet(depth=50, granularity=(4, 4, 2, 1), sparse_inference='torch').eval()
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad(), las.pinned_masks(0.5, seed=1):
        las(x)
        first = las.layer2[0].last_coarse_mask
        las(x)
        assert las.layer2[0].last_coarse_mask is first  # drawn once per shape, not per forward
    coarse = torch.zeros(1, 1, 2, 2)
    coarse[0, 0, 0, 1] = 1
    with torch.no_grad(), las.pinned_masks(masks={'layer2.0': coarse}, run_masker=True):
        las(x)
    assert torch.equal(las.layer2[0].last_coarse_mask, coarse)
    assert las.las_stats['blocks']['layer2.0']['rate'].item() == 0.25
    with pytest.raises(ValueError, match='layer9.0'):
        with las.pinned_masks(masks={'layer9.0': coarse}):
            pass
    with pytest.raises(ValueError, match=r'\(1, 1, 2, 2\)'):
        with torch.no_grad(), las.pinned_masks(masks={'layer2.0': coarse}):
            las(torch.randn(1, 3, 128, 128))


def test_per_image_stats_and_last_masks():
    las = LASResNet(depth=50, granularity=(4, 4, 2, 1), sparse_inference='torch').eval()
    x = torch.randn(2, 3, 64, 96)
    masks = {'layer3.1': torch.zeros(2, 1, 2, 3)}
    masks['layer3.1'][0] = 1  # image 0 all on, image 1 all off
    with torch.no_grad(), las.pinned_masks(masks=masks):
        las(x)
    stats = las.las_stats
    block = stats['blocks']['layer3.1']
    assert block['rate_per_image'].tolist() == [1.0, 0.0]
    assert block['rate'].item() == 0.5
    assert stats['macs_dynamic_per_image'].shape == (2, )
    assert stats['macs_dynamic'].item() == pytest.approx(
        stats['macs_dynamic_per_image'].mean().item())
    full = las.last_masks()['layer3.1']
    assert full.shape == (2, 1, 4, 6) and full[0].min() == 1 and full[1].max() == 0
    assert las.input_size == (64, 96)
    sizes = {name: hw for name, _, hw in las.block_input_sizes(64, 96)}
    assert sizes['layer1.0'] == (16, 24) and sizes['layer3.1'] == (4, 6)


def test_fp16_stats_do_not_overflow():
    las = LASResNet(depth=50, granularity=(4, 4, 2, 1), sparse_inference='off').eval()
    force_masks(las, execute=True)
    x = torch.randn(1, 3, 256, 256)
    with torch.no_grad():
        las(x)
        ref = las.las_stats
        if torch.cuda.is_available():
            las.cuda().half()
            las(x.cuda().half())
        else:
            las.to(torch.bfloat16)
            las(x.to(torch.bfloat16))
    stats = las.las_stats
    assert stats['macs_dynamic'].dtype == torch.float32
    assert stats['macs_dynamic'].item() == pytest.approx(ref['macs_dynamic'].item())
    assert stats['macs_dynamic'].item() == pytest.approx(stats['macs_dense'])


def test_masker_cfg_survives_init_weights():
    las = LASResNet(depth=50, masker_cfg=dict(execute_bias=2.0, skip_bias=0.5),
                    init_cfg=[dict(type='Kaiming', layer='Conv2d')])
    las.layer2[1].masker.conv2.bias.data.fill_(9.0)
    las.init_weights()
    for _, block in las.las_blocks():
        assert block.masker.conv2.bias.tolist() == [2.0, 0.5]
    with pytest.raises(ValueError, match='execute_bias'):
        LASResNet(depth=50, masker_cfg=dict(execute_bias='2'))
    with pytest.raises(ValueError, match='bias_execute'):
        LASResNet(depth=50, masker_cfg=dict(bias_execute=2.0))


def test_ops_import_without_models():
    """Layers go one way: the kernels and backends never import the models. The package's
    own __init__ (which registers the models) is bypassed, so only the ops' imports count."""
    code = ('import sys, types; pkg = types.ModuleType("lasnet_mmdet"); '
            f'pkg.__path__ = [{REPO!r} + "/lasnet_mmdet"]; sys.modules["lasnet_mmdet"] = pkg; '
            'import lasnet_mmdet.ops, lasnet_mmdet.ops.torch_backend, lasnet_mmdet.ops.geometry, '
            'lasnet_mmdet.ops.cuda_graph, lasnet_mmdet.ops.layout, lasnet_mmdet.ops.triton; '
            'bad = [m for m in sys.modules if m.startswith(("lasnet_mmdet.models", '
            '"lasnet_mmdet.engine", "lasnet_mmdet.latency", "lasnet_mmdet.utils"))]; '
            'assert not bad, bad; print(sorted(m for m in sys.modules if "lasnet" in m))')
    proc = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True,
                          cwd=REPO)
    assert proc.returncode == 0, proc.stderr
    assert 'lasnet_mmdet.ops.triton.launcher' in proc.stdout


def test_import_changes_nothing_outside_the_plugin():
    code = ('import torch, mmengine.runner.checkpoint as c, mmengine.dist.utils as d; '
            'from mmengine.model import MMDistributedDataParallel as D; '
            'before = (dict(c.CheckpointLoader._schemes), d._init_dist_pytorch, D.__init__, '
            'list(torch.serialization.get_safe_globals())); '
            'import lasnet_mmdet; '
            'after = (dict(c.CheckpointLoader._schemes), d._init_dist_pytorch, D.__init__, '
            'list(torch.serialization.get_safe_globals())); '
            'assert before == after, "import changed globals"; '
            'lasnet_mmdet.setup_env(); '
            'assert c.CheckpointLoader._schemes != before[0] and d._init_dist_pytorch is not '
            'before[1]; assert list(torch.serialization.get_safe_globals()) == before[3]')
    proc = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True,
                          cwd=REPO, env={**os.environ, 'PYTHONPATH': REPO})
    assert proc.returncode == 0, proc.stderr


def test_state_dict_keys_follow_lasnet():
    keys = set(LASResNet(depth=101).state_dict())
    assert len(keys) == 692 - 2  # LASNet's dyn_resnet101 has 692, fc.weight/bias included
    for key in ('conv1.weight', 'bn1.running_var', 'layer1.0.downsample.0.weight',
                'layer1.0.downsample.1.bias', 'layer3.22.conv3.weight', 'layer3.22.bn3.weight',
                'layer1.0.masker.conv2.weight', 'layer4.2.masker.conv2.bias'):
        assert key in keys
    shape = LASResNet(depth=101).state_dict()['layer3.0.masker.conv2.weight'].shape
    assert tuple(shape) == (2, 512, 1, 1)


def test_frozen_stage_maskers_threshold_in_training():
    las = LASResNet(depth=50, frozen_stages=1)
    las.train()
    assert not las.layer1[0].masker.training
    assert las.layer2[0].masker.training
    assert not any(p.requires_grad for p in las.layer1.parameters())


@pytest.mark.parametrize('kwargs, match', [
    (dict(depth=18), 'depth'),
    (dict(depth=50, granularity=(4, 4, 2)), 'granularity'),
    (dict(depth=50, granularity=(4, 0, 2, 1)), 'granularity'),
    (dict(depth=50, sparse_inference='cuda'), 'sparse_inference'),
    (dict(depth=50, tau=0), 'tau'),
    (dict(depth=50, tau='0.1'), "tau must be a finite number, got '0.1'"),
    (dict(depth=50, tau=float('inf')), 'tau must be a finite number, got inf'),
    (dict(depth=50, gumbel_noise=-0.5), 'gumbel_noise must be >= 0, got -0.5'),
    (dict(depth=50, granularity=2.5), 'granularity values must be integers >= 1, got'),
    (dict(depth=50, granularity='4'), "granularity must be an integer S or one S per stage"),
    (dict(depth=50, cuda_graph='yes'), 'cuda_graph'),
])
def test_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        LASResNet(**kwargs)
