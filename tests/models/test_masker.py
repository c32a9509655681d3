import pytest
import torch
import torch.nn.functional as F

from lasnet_mmdet.models.layers.masker import Masker, dilate_mask, upsample_mask


def test_eval_threshold_ties_execute():
    masker = Masker(4, granularity=2).eval()
    torch.nn.init.zeros_(masker.conv2.weight)
    x = torch.randn(2, 4, 8, 8)
    for bias, expected in (([0.0, 0.0], 1.0), ([0.0, 0.1], 0.0), ([0.2, 0.1], 1.0)):
        masker.conv2.bias.data = torch.tensor(bias)
        mask = masker(x, 8, 8)
        assert mask.shape == (2, 1, 4, 4)
        assert torch.all(mask == expected)


def test_eval_mask_follows_pooled_input():
    # execute logit = mean of channel 0 over the patch, skip logit = 0
    masker = Masker(2, granularity=2, stride=2).eval()
    masker.conv2.weight.data = torch.tensor([[1.0, 0.0], [0.0, 0.0]]).view(2, 2, 1, 1)
    masker.conv2.bias.data.zero_()
    x = -torch.ones(1, 2, 6, 6)
    x[:, 0, :4, :4] = 1  # the first 4x4 input window = the first 2x2 output patch
    mask = masker(x, 3, 3)
    assert mask.shape == (1, 1, 2, 2)  # ceil(3 / 2): the last row/column is clipped
    assert mask.flatten().tolist() == [1.0, 0.0, 0.0, 0.0]


def test_training_straight_through_gradient_reaches_masker():
    torch.manual_seed(0)
    masker = Masker(3, granularity=2).train()
    x = torch.randn(2, 3, 8, 8)
    mask = masker(x, 8, 8, tau=0.5)
    assert set(mask.unique().tolist()) <= {0.0, 1.0}  # hard samples
    (mask * torch.randn_like(mask)).sum().backward()
    assert masker.conv2.weight.grad is not None
    assert masker.conv2.weight.grad.abs().sum() > 0
    assert masker.conv2.bias.grad.abs().sum() > 0


def test_init_bias_execute_five_skip_zero():
    masker = Masker(16, granularity=4)
    masker.init_weights()
    assert masker.conv2.bias.tolist() == [5.0, 0.0]
    assert masker.conv2.weight.abs().max() <= 1 / 16**0.5  # PyTorch default, not Kaiming


def test_upsample_exact_patches_clipped():
    coarse = torch.tensor([[1.0, 0.0, 1.0], [0.0, 1.0, 0.0]]).view(1, 1, 2, 3)
    mask = upsample_mask(coarse, 3, 5, 7)
    assert mask.shape == (1, 1, 5, 7)
    assert mask[0, 0, :3, :3].eq(1).all() and mask[0, 0, :3, 3:6].eq(0).all()
    assert mask[0, 0, :3, 6].eq(1).all()  # the clipped last column keeps its cell's value
    assert mask[0, 0, 3:, 3:6].eq(1).all() and mask[0, 0, 3:, 6].eq(0).all()


def test_dilate_mask_is_conv2_receptive_field():
    mask = torch.zeros(1, 1, 4, 4)
    mask[0, 0, 1, 2] = 1
    for stride, in_size in ((1, 4), (2, 8)):
        dil = dilate_mask(mask, stride, in_size, in_size)
        # conv1 positions read by a 3x3/stride conv2 at output (1, 2): what the gradient
        # of that output w.r.t. its input touches
        inp = torch.zeros(1, 1, in_size, in_size, requires_grad=True)
        out = F.conv2d(inp, torch.ones(1, 1, 3, 3), stride=stride, padding=1)
        out[0, 0, 1, 2].backward()
        assert torch.equal(dil[0, 0] > 0, inp.grad[0, 0] != 0)


@pytest.mark.parametrize('bad', [0, -1, 1.5])
def test_bad_granularity(bad):
    with pytest.raises(ValueError, match='granularity'):
        Masker(4, granularity=bad)
