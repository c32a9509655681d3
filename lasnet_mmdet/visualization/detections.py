"""Detections drawn by mmdet's DetLocalVisualizer, legible on small images too.

The visualizer writes labels at a minimum font size in image pixels, so on the 128 px
sample images they cover the objects; an image whose shorter side is under ``min_size`` is
enlarged by a whole factor first, its predicted boxes and masks with it.
"""
import math

import mmcv
import torch
import torch.nn.functional as F


def enlarged_prediction(data_sample, factor):
    """A copy of ``data_sample`` whose predicted boxes and masks are ``factor`` times larger."""
    enlarged = data_sample.clone()
    pred = enlarged.pred_instances
    if 'bboxes' in pred:
        pred.bboxes = pred.bboxes * factor
    if 'masks' in pred and len(pred.masks):
        masks = torch.as_tensor(pred.masks)[:, None].float()
        pred.masks = F.interpolate(masks, scale_factor=factor, mode='nearest')[:, 0].bool()
    return enlarged


def draw_detections(visualizer, image, data_sample, score_thr=0.3, min_size=384):
    """The picture ``visualizer`` (a DetLocalVisualizer) draws of the predictions, as RGB."""
    factor = max(1, math.ceil(min_size / min(image.shape[:2])))
    if factor > 1:
        image = mmcv.imrescale(image, factor, interpolation='nearest')
        data_sample = enlarged_prediction(data_sample, factor)
    visualizer.add_datasample('detections', image, data_sample=data_sample, draw_gt=False,
                              pred_score_thr=score_thr, out_file=None)
    return visualizer.get_image()
