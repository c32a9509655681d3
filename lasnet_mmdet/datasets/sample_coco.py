"""A small, deterministic COCO-format data set (boxes + instance masks) for demos and tests.

Images show 1-3 filled shapes (rectangle, ellipse, triangle: the three classes) in random
colours on a noisy gradient. The polygon that draws a shape is its segmentation, so boxes and
masks agree exactly with the pixels. Same seed, same files.
"""
import json
import math
import os
import os.path as osp

import cv2
import numpy as np

CLASSES = ('rectangle', 'ellipse', 'triangle')


def _shape_polygon(rng, kind, size):
    """Polygon (N, 2) of one shape fully inside a ``size x size`` image."""
    extent = rng.uniform(0.2, 0.45) * size
    cx, cy = rng.uniform(extent / 2 + 2, size - extent / 2 - 2, size=2)
    if kind == 'rectangle':
        w, h = extent, extent * rng.uniform(0.5, 1.0)
        points = [(-w / 2, -h / 2), (w / 2, -h / 2), (w / 2, h / 2), (-w / 2, h / 2)]
    elif kind == 'ellipse':
        a, b = extent / 2, extent / 2 * rng.uniform(0.5, 1.0)
        points = [(a * math.cos(t), b * math.sin(t))
                  for t in np.linspace(0, 2 * math.pi, 24, endpoint=False)]
    else:
        r = extent / 2
        start = rng.uniform(0, 2 * math.pi)
        points = [(r * math.cos(start + k * 2 * math.pi / 3), r * math.sin(start + k * 2 * math.pi / 3))
                  for k in range(3)]
    return np.array([(cx + x, cy + y) for x, y in points], dtype=np.float32)


def _image(rng, size):
    ramp = np.linspace(0, 1, size, dtype=np.float32)
    base = rng.uniform(40, 200, size=3).astype(np.float32)
    tilt = rng.uniform(-40, 40, size=3).astype(np.float32)
    img = base + tilt * ramp[None, :, None] + rng.normal(0, 8, size=(size, size, 3))
    return np.clip(img, 0, 255).astype(np.uint8)


def _split(rng, root, split, num_images, size, first_ann_id):
    images, annotations = [], []
    ann_id = first_ann_id
    os.makedirs(osp.join(root, split), exist_ok=True)
    for image_id in range(1, num_images + 1):
        img = _image(rng, size)
        mask_taken = np.zeros((size, size), dtype=bool)
        for _ in range(rng.integers(1, 4)):
            label = int(rng.integers(len(CLASSES)))
            polygon = _shape_polygon(rng, CLASSES[label], size)
            shape_mask = np.zeros((size, size), dtype=np.uint8)
            cv2.fillPoly(shape_mask, [np.round(polygon).astype(np.int32)], 1)
            if (shape_mask.astype(bool) & mask_taken).any():
                continue  # keep objects disjoint so every mask is what the image shows
            mask_taken |= shape_mask.astype(bool)
            colour = [int(c) for c in rng.integers(0, 256, size=3)]
            cv2.fillPoly(img, [np.round(polygon).astype(np.int32)], colour)
            x, y, w, h = cv2.boundingRect(np.round(polygon).astype(np.int32))
            annotations.append(dict(
                id=ann_id, image_id=image_id, category_id=label + 1, iscrowd=0,
                bbox=[float(x), float(y), float(w), float(h)], area=float(shape_mask.sum()),
                segmentation=[np.round(polygon, 1).flatten().tolist()]))
            ann_id += 1
        file_name = f'{image_id:06d}.png'
        cv2.imwrite(osp.join(root, split, file_name), img)
        images.append(dict(id=image_id, file_name=file_name, width=size, height=size))
    coco = dict(images=images, annotations=annotations,
                categories=[dict(id=i + 1, name=name) for i, name in enumerate(CLASSES)])
    path = osp.join(root, 'annotations', f'instances_{split}.json')
    with open(path + '.tmp', 'w') as f:
        json.dump(coco, f)
    os.replace(path + '.tmp', path)  # a killed run leaves no half-written annotation file
    return ann_id


def make_sample_coco(root, num_train=48, num_val=16, size=128, seed=0):
    """Write ``root/{train,val}/*.png`` and ``root/annotations/instances_{train,val}.json``.

    Skips the work if both annotation files exist. Returns ``root``.
    """
    for name, value in (('num_train', num_train), ('num_val', num_val), ('size', size)):
        if int(value) != value or value < 1:
            raise ValueError(f'{name} must be a positive integer, got {value!r}')
    if size < 32:
        raise ValueError(f'size must be >= 32 pixels, got {size!r}')
    done = [osp.join(root, 'annotations', f'instances_{s}.json') for s in ('train', 'val')]
    if all(osp.isfile(path) for path in done):
        return root
    os.makedirs(osp.join(root, 'annotations'), exist_ok=True)
    rng = np.random.default_rng(seed)
    next_id = _split(rng, root, 'train', num_train, size, first_ann_id=1)
    _split(rng, root, 'val', num_val, size, first_ann_id=next_id)
    return root
