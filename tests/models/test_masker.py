import pytest
import torch
import torch.nn.functional as F

from lasnet_mmdet.models.layers.masker import (Masker, dilate_mask, gumbel_execute,
                                               upsample_mask)


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


def test_gumbel_noise_scale_moves_training_masks_to_the_eval_decision():
    torch.manual_seed(0)
    # execute logit - skip logit = -1 in every cell: eval skips them all
    logits = torch.stack([torch.full((4, 64, 64), -1.0), torch.zeros(4, 64, 64)], 1)
    rates = {noise: gumbel_execute(logits, tau=0.5, noise=noise).mean().item()
             for noise in (1.0, 0.5, 0.0)}
    assert rates[1.0] == pytest.approx(torch.sigmoid(torch.tensor(-1.0)).item(), abs=0.01)
    assert 0 < rates[0.5] < rates[1.0]  # less noise, fewer cells cross the boundary
    assert rates[0.0] == 0.0  # no noise: exactly the eval decision (ties execute)
    ties = gumbel_execute(torch.zeros(1, 2, 3, 3), tau=0.5, noise=0.0)
    assert ties.eq(1).all()
    # the straight-through gradient is the tempered softmax's, noise or not
    logits = logits[:1, :, :2, :2].clone().requires_grad_()
    gumbel_execute(logits, tau=0.5, noise=0.0).sum().backward()
    soft = torch.sigmoid(torch.tensor(-1.0 / 0.5))
    assert logits.grad[:, 0].allclose(soft * (1 - soft) / 0.5)
    assert logits.grad[:, 1].allclose(-soft * (1 - soft) / 0.5)


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
