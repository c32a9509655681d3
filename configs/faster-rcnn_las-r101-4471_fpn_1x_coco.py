# Faster R-CNN, LAS-ResNet-101 (S = 4-4-7-1) + FPN, 1x COCO, target 0.5 (LASNet paper).
_base_ = './lasnet_r101_fpn.py'

model = dict(
    backbone=dict(
        granularity=(4, 4, 7, 1),
        init_cfg=dict(checkpoint='checkpoints/las-r101-4471-t0.5_imagenet.pth')))
