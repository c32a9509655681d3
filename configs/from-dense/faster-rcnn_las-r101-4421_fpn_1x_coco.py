# Faster R-CNN, LAS-ResNet-101 (S = 4-4-2-1) + FPN, 1x COCO, from DENSE ImageNet weights
# (torchvision's ResNet-101) instead of the paper's LAS ImageNet checkpoint, which LASNet does
# not publish. The maskers start untrained, so this adds the from-dense recipe
# (docs/recipe.md) to the paper's config (../lasnet_r101_fpn.py): masker
# biases near the decision boundary, a masker learning rate of its own, LASNet's per-block bounds
# (relaxed over the first third of the run), a Gumbel temperature annealed 1.0 -> 0.1 and
# Gumbel noise annealed 1 -> 0.
_base_ = '../lasnet_r101_fpn.py'

target = 0.5  # the paper's Faster R-CNN target

model = dict(
    backbone=dict(
        # Only the stem stays frozen: stage-1 maskers are untrained in dense weights and must
        # learn (the paper freezes stage 1, maskers included, because its ImageNet LAS
        # checkpoint trained them).
        frozen_stages=0,
        masker_cfg=dict(execute_bias=2.0, skip_bias=0.0),
        # torchvision's keys (layerX.i.conv1, bn1, downsample.0/1) are LASResNet's: everything
        # but the maskers loads. Needs torchvision and a download; offline, convert a local
        # file: tools/convert_lasnet_weights.py resnet101-63fe2227.pth OUT --depth 101.
        init_cfg=dict(_delete_=True, type='Pretrained', checkpoint='torchvision://resnet101')))

custom_hooks = [
    # The Gumbel noise anneals to 0: the last iterations train on the eval decisions, so
    # the cost reached in training is the deployed cost (docs/recipe.md).
    dict(type='LatencyLossHook', target=target, weight=1.0, tau=1.0, tau_end=0.1,
         gumbel_noise_end=0.0, bounds=dict(relax=0.33, weight=10.0, by_epoch=False)),
    dict(type='LASReportHook'),
]

# Maskers at the base lr (not the demo's 10x: on trained dense features a masker step moves
# its logits far more than from scratch; at 10x a from-dense probe on the sample data
# overshot to cost ratio 0.24 and stayed there), without weight decay. mmengine gives each
# parameter the multipliers of the LONGEST custom key in its name: 'masker.conv2' wins over
# 'backbone' (0.5x, 0.9x).
optim_wrapper = dict(
    paramwise_cfg=dict(custom_keys={'masker.conv2': dict(lr_mult=1.0, decay_mult=0.0)}))
