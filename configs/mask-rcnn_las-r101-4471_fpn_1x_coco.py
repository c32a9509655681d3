# Mask R-CNN, LAS-ResNet-101 (S = 4-4-7-1) + FPN, 1x COCO, target 0.4 (LASNet paper).
_base_ = './mask-rcnn_las-r101-4421_fpn_1x_coco.py'

model = dict(
    backbone=dict(
        granularity=(4, 4, 7, 1),
        init_cfg=dict(checkpoint='checkpoints/las-r101-4471-t0.4_imagenet.pth')))
