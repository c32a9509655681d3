import os.path as osp

import pytest

REPO = osp.dirname(osp.dirname(osp.abspath(__file__)))


@pytest.fixture(scope='session')
def sample_coco(tmp_path_factory):
    """A small generated COCO set (boxes + masks), made once per test session."""
    from lasnet_mmdet.datasets import make_sample_coco
    return make_sample_coco(str(tmp_path_factory.mktemp('data') / 'sample_coco'),
                            num_train=8, num_val=4, size=128, seed=0)


def sample_data_options(root, with_mask=True):
    """Config overrides pointing any mmdet COCO config at the sample set, at a small size."""
    options = {'train_cfg.max_epochs': 1, 'train_cfg.val_interval': 1}
    for loader, split in (('train_dataloader', 'train'), ('val_dataloader', 'val'),
                          ('test_dataloader', 'val')):
        options.update({
            f'{loader}.batch_size': 2 if split == 'train' else 1,
            f'{loader}.num_workers': 0,
            f'{loader}.persistent_workers': False,
            f'{loader}.dataset.data_root': root + '/',
            f'{loader}.dataset.ann_file': f'annotations/instances_{split}.json',
            f'{loader}.dataset.data_prefix.img': f'{split}/',
            f'{loader}.dataset.metainfo.classes': ('rectangle', 'ellipse', 'triangle'),
        })
    for evaluator in ('val_evaluator', 'test_evaluator'):
        options[f'{evaluator}.ann_file'] = root + '/annotations/instances_val.json'
        options[f'{evaluator}.metric'] = ['bbox', 'segm'] if with_mask else ['bbox']
    return options


def resize_options(cfg, image_size=128):
    """Overrides of every Resize in the train/test pipelines to ``image_size``."""
    options = {}
    for loader in ('train_dataloader', 'val_dataloader', 'test_dataloader'):
        for i, step in enumerate(cfg[loader]['dataset']['pipeline']):
            if step['type'] == 'Resize':
                options[f'{loader}.dataset.pipeline.{i}.scale'] = (image_size, image_size)
    return options


def small_las_options(num_classes=3, detector='two_stage'):
    """A LAS-R50 backbone from scratch (no pretrained file) and heads for the sample classes."""
    options = {'model.backbone.depth': 50, 'model.backbone.init_cfg': None,
               'model.backbone.frozen_stages': -1}
    if detector == 'two_stage':
        options['model.roi_head.bbox_head.num_classes'] = num_classes
    elif detector == 'mask':
        options['model.roi_head.bbox_head.num_classes'] = num_classes
        options['model.roi_head.mask_head.num_classes'] = num_classes
    else:
        options['model.bbox_head.num_classes'] = num_classes
    return options


def as_cli(options):
    """``--cfg-options`` arguments for a dict of overrides."""
    def fmt(value):
        if isinstance(value, (tuple, list)):
            inner = ','.join(fmt(v) for v in value)
            return f'({inner})' if isinstance(value, tuple) else f'[{inner}]'
        return str(value)
    return [f'{key}={fmt(value)}' for key, value in options.items()]


@pytest.fixture
def no_tf32():
    """fp32 references must be fp32: cuDNN convs and matmuls default to TF32 on Ampere and
    later (the sparse kernels follow ``torch.backends.cudnn.allow_tf32`` too)."""
    import torch
    saved = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    yield
    torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = saved
