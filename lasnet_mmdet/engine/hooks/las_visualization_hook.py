"""mmdet's test-time visualization hook, with the LAS masks of each image beside its picture.

``tools/test.py --show-dir DIR --las-show-masks`` swaps it in for the default
``DetVisualizationHook``: the picture mmdet draws (ground truth | prediction) keeps its place
and file name, and the mask overlays of the chosen stages or blocks are added beside it.
"""
import os
import os.path as osp
import tempfile

import mmcv
from mmengine.fileio import get
from mmengine.utils import mkdir_or_exist
from mmdet.engine.hooks import DetVisualizationHook
from mmdet.registry import HOOKS

from .utils import las_backbone


@HOOKS.register_module()
class LASDetVisualizationHook(DetVisualizationHook):
    """``DetVisualizationHook`` that also overlays the LAS masks of each test image.

    Args:
        stages (list[str], optional): Stages to show, each as the mean of its blocks.
        blocks (list[str], optional): Blocks to show on their own (e.g. ``'layer3.0'``).
            Every stage when neither is given.
        Other args as :class:`mmdet.engine.hooks.DetVisualizationHook` (validation keeps
        mmdet's behaviour).
    """

    def __init__(self, stages=None, blocks=None, **kwargs):
        super().__init__(**kwargs)
        self.stages = stages
        self.blocks = blocks
        self._panels = None
        self._out_dir = None

    def before_test(self, runner):
        from ...visualization import choose_panels
        backbone = las_backbone(runner.model, type(self).__name__)
        self._panels = choose_panels([name for name, _ in backbone.las_blocks()],
                                     self.stages, self.blocks)  # fails before any image

    def after_test_iter(self, runner, batch_idx, data_batch, outputs):
        from ...visualization import masks_figure, panel_masks
        from ...visualization.atomic_write import save_image
        if self.draw is False:
            return
        if self.test_out_dir is not None and self._out_dir is None:
            # (mmdet joins the folder anew at every iteration; once is enough)
            self._out_dir = osp.join(runner.work_dir, runner.timestamp, self.test_out_dir)
            mkdir_or_exist(self._out_dir)
        masks = panel_masks(las_backbone(runner.model, type(self).__name__), self._panels)
        for i, data_sample in enumerate(outputs):
            self._test_index += 1
            img_path = data_sample.img_path
            image = mmcv.imfrombytes(get(img_path, backend_args=self.backend_args),
                                     channel_order='rgb')
            # mmdet's own picture, drawn as DetVisualizationHook draws it; written to a
            # scratch file because add_datasample sends it to the vis backends otherwise.
            with tempfile.TemporaryDirectory() as scratch:
                self._visualizer.add_datasample(
                    'test_img', image, data_sample=data_sample, show=False,
                    pred_score_thr=self.score_thr, out_file=osp.join(scratch, 'det.png'))
            figure, _ = masks_figure(
                image, {name: (mask[i], stride) for name, (mask, stride) in masks.items()},
                data_sample.metainfo['img_shape'], data_sample.metainfo['ori_shape'],
                detections=self._visualizer.get_image(),
                detections_title='ground truth | prediction')
            name = osp.basename(img_path)
            if self.show:
                self._visualizer.show(figure, win_name=name, wait_time=self.wait_time)
            if self._out_dir is not None:
                save_image(osp.join(self._out_dir, name), figure)
            elif not self.show:
                self._visualizer.add_image('test_img', figure, self._test_index)
