from .sample_coco import CLASSES, make_sample_coco

__all__ = ['CLASSES', 'make_sample_coco']
