# Demo: Mask R-CNN with a LAS-ResNet-50 (S = 4-4-2-1) trained from scratch on the small
# generated sample set (tools/make_sample_data.py), evaluated with COCO bbox + segm AP.
# A few minutes on 2 CPU cores: `make demo`. Its maskers start untrained, as from dense
# weights, so it uses the from-dense recipe (docs/recipe.md) to reach its cost target.
_base_ = 'mmdet::mask_rcnn/mask-rcnn_r50_fpn_1x_coco.py'
custom_imports = dict(imports=['lasnet_mmdet'], allow_failed_imports=False)

data_root = 'data/sample_coco/'
metainfo = dict(classes=('rectangle', 'ellipse', 'triangle'))
image_size = (128, 128)

model = dict(
    backbone=dict(
        _delete_=True,
        type='LASResNet',
        depth=50,
        granularity=(4, 4, 2, 1),
        frozen_stages=-1,  # from scratch: nothing to freeze, BN statistics must be learnt
        norm_cfg=dict(type='BN', requires_grad=True),
        norm_eval=False,
        style='pytorch',
        # Maskers near the decision boundary: at execute bias 5 and tau 0.1 the straight-
        # through gradient vanishes and the cost loss cannot turn patches off.
        masker_cfg=dict(execute_bias=2.0, skip_bias=0.0),
        init_cfg=None),
    roi_head=dict(bbox_head=dict(num_classes=3), mask_head=dict(num_classes=3)),
    # 128 px images with 1-3 objects: a few hundred proposals and RoIs are plenty, and they
    # make the CPU demo 2.3x faster than COCO's 2000 / 512.
    train_cfg=dict(rpn_proposal=dict(nms_pre=500, max_per_img=300), rcnn=dict(sampler=dict(num=128))),
    test_cfg=dict(rpn=dict(nms_pre=500, max_per_img=300)))

train_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='LoadAnnotations', with_bbox=True, with_mask=True),
    dict(type='Resize', scale=image_size, keep_ratio=True),
    dict(type='RandomFlip', prob=0.5),
    dict(type='PackDetInputs'),
]
test_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='Resize', scale=image_size, keep_ratio=True),
    dict(type='LoadAnnotations', with_bbox=True, with_mask=True),
    dict(type='PackDetInputs',
         meta_keys=('img_id', 'img_path', 'ori_shape', 'img_shape', 'scale_factor')),
]
train_dataloader = dict(
    batch_size=4,
    num_workers=0,
    persistent_workers=False,
    dataset=dict(
        data_root=data_root,
        metainfo=metainfo,
        ann_file='annotations/instances_train.json',
        data_prefix=dict(img='train/'),
        pipeline=train_pipeline))
val_dataloader = dict(
    batch_size=1,
    num_workers=0,
    persistent_workers=False,
    dataset=dict(
        data_root=data_root,
        metainfo=metainfo,
        ann_file='annotations/instances_val.json',
        data_prefix=dict(img='val/'),
        pipeline=test_pipeline))
test_dataloader = val_dataloader
val_evaluator = dict(ann_file=data_root + 'annotations/instances_val.json',
                     metric=['bbox', 'segm'])
test_evaluator = val_evaluator

max_epochs = 12
train_cfg = dict(max_epochs=max_epochs, val_interval=max_epochs)
param_scheduler = [
    dict(type='LinearLR', start_factor=0.001, by_epoch=False, begin=0, end=50),
    dict(type='MultiStepLR', begin=0, end=max_epochs, by_epoch=True, milestones=[8, 11],
         gamma=0.1),
]
optim_wrapper = dict(
    optimizer=dict(lr=0.02),
    clip_grad=dict(max_norm=10, norm_type=2),
    # Maskers learn 10x faster, without weight decay (mmengine matches custom keys against
    # parameter names: backbone.layerX.i.masker.conv2.weight/bias).
    paramwise_cfg=dict(custom_keys={'masker.conv2': dict(lr_mult=10.0, decay_mult=0.0)}))
default_hooks = dict(
    logger=dict(type='LoggerHook', interval=6),
    checkpoint=dict(type='CheckpointHook', interval=4))

custom_hooks = [
    # LASNet's ImageNet criterion: every block's rate held near the target early (bounds
    # opening over the first third of the run), so no stage reaches it by switching off.
    # (Full Gumbel noise throughout: annealing it to 0 left the eval ratio at 0.40 in one run;
    # from scratch, BN's batch statistics in training differ from its running ones in eval.)
    dict(type='LatencyLossHook', target=0.5, weight=1.0, tau=1.0, tau_end=0.1,
         bounds=dict(relax=0.33, weight=10.0)),
    dict(type='LASReportHook'),
]
