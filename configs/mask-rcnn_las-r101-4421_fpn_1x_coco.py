# Mask R-CNN, LAS-ResNet-101 (S = 4-4-2-1) + FPN, 1x COCO, as in the LASNet paper:
# cost target 0.4, constant Gumbel temperature 0.1, backbone lr_mult 0.5 / decay_mult 0.9.
_base_ = 'mmdet::mask_rcnn/mask-rcnn_r50_fpn_1x_coco.py'
custom_imports = dict(imports=['lasnet_mmdet'], allow_failed_imports=False)

model = dict(
    backbone=dict(
        _delete_=True,
        type='LASResNet',
        depth=101,
        granularity=(4, 4, 2, 1),
        num_stages=4,
        out_indices=(0, 1, 2, 3),
        frozen_stages=1,
        norm_cfg=dict(type='BN', requires_grad=True),
        norm_eval=True,
        style='pytorch',
        sparse_inference='auto',
        init_cfg=dict(type='Pretrained',
                      checkpoint='checkpoints/las-r101-4421-t0.4_imagenet.pth')))

custom_hooks = [
    dict(type='LatencyLossHook', target=0.4, weight=1.0, tau=0.1),
    dict(type='LASReportHook'),
]

optim_wrapper = dict(
    paramwise_cfg=dict(custom_keys={'backbone': dict(lr_mult=0.5, decay_mult=0.9)}))
