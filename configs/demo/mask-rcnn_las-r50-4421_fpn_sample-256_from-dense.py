# LAS-R50 (S = 4-4-2-1) Mask R-CNN started from the dense Mask R-CNN R50 of
# ./mask-rcnn_r50_fpn_sample-256.py (set load_from to its checkpoint), with the from-dense
# recipe (docs/recipe.md): maskers that start near the decision boundary, LASNet's per-block
# bounds, a Gumbel temperature and noise that anneal.
# tools/recipe_experiment.py runs it for a few epochs and compares it with the dense model.
_base_ = './mask-rcnn_r50_fpn_sample-256.py'

target = 0.5
max_epochs = 2

model = dict(
    backbone=dict(
        _delete_=True,
        type='LASResNet',
        depth=50,
        granularity=(4, 4, 2, 1),
        frozen_stages=-1,
        norm_cfg=dict(type='BN', requires_grad=True),
        norm_eval=False,
        style='pytorch',
        masker_cfg=dict(execute_bias=2.0, skip_bias=0.0),
        init_cfg=None))

train_cfg = dict(max_epochs=max_epochs, val_interval=max_epochs)
param_scheduler = [
    dict(type='LinearLR', start_factor=0.001, by_epoch=False, begin=0, end=50),
    dict(type='MultiStepLR', begin=0, end=max_epochs, by_epoch=True,
         milestones=[max_epochs - 1], gamma=0.1),
]
# Maskers at the base lr, no weight decay. Not the demo's 10x: on trained dense features
# (large, many channels) a masker step moves its logits far more than from scratch; at 10x
# a probe run overshot to cost ratio 0.24 within 12 iterations and stayed there (rates ~0.1,
# their straight-through gradient saturated). LASNet itself gives maskers 0.1x on ImageNet.
optim_wrapper = dict(paramwise_cfg=dict(
    custom_keys={'masker.conv2': dict(lr_mult=1.0, decay_mult=0.0)}))

custom_hooks = [
    # A fine-tune of a few dozen iterations. The bounds open over twice the run (LASNet's
    # relax=0.33 is a third of 100 ImageNet epochs), so at the end every block still has
    # to run on at least t/2 of its patches: no block gives up. The Gumbel noise goes to 0,
    # so the last iterations train on the eval decisions and the cost the loss reaches is
    # the deployed one (with full noise, eval ran 0.04-0.09 below the training ratio).
    dict(type='LatencyLossHook', target=target, weight=1.0, tau=1.0, tau_end=0.1,
         gumbel_noise_end=0.0, bounds=dict(relax=2.0, weight=10.0)),
    dict(type='LASReportHook', per_block=True),
]
