# The "dense weights users have", in small: Mask R-CNN with mmdet's own (dense) ResNet-50,
# trained from scratch on the 256 px sample set (tools/make_sample_data.py --size 256).
# tools/recipe_experiment.py trains it, then starts LAS-R50 from it
# (./mask-rcnn_las-r50-4421_fpn_sample-256_from-dense.py) and continues it for comparison.
_base_ = './mask-rcnn_las-r50-4421_fpn_sample.py'

data_root = 'data/sample_coco_256/'
image_size = (256, 256)

model = dict(
    backbone=dict(
        _delete_=True,
        type='ResNet',
        depth=50,
        frozen_stages=-1,  # from scratch: nothing to freeze, BN statistics must be learnt
        norm_cfg=dict(type='BN', requires_grad=True),
        norm_eval=False,
        style='pytorch',
        init_cfg=None))

# Same steps as the demo's pipelines, at 256 px (redefined: a base's pipeline keeps its size).
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
train_dataloader = dict(dataset=dict(data_root=data_root, pipeline=train_pipeline))
val_dataloader = dict(dataset=dict(data_root=data_root, pipeline=test_pipeline))
test_dataloader = val_dataloader
val_evaluator = dict(ann_file=data_root + 'annotations/instances_val.json')
test_evaluator = val_evaluator

# A dense backbone: no cost loss, no LAS report, no maskers for the demo's lr multiplier.
custom_hooks = []
optim_wrapper = dict(paramwise_cfg=dict(_delete_=True))
