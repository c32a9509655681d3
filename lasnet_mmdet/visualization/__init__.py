"""Pictures of what a LAS backbone computes: its masks over the images, beside the detections."""
from .detections import draw_detections
from .las_masks import choose_panels, las_block_names, panel_masks, stage_strides
from .mask_overlay import mask_to_image, masks_figure, overlay_mask, panel_figure

__all__ = ['draw_detections', 'choose_panels', 'las_block_names', 'panel_masks', 'stage_strides',
           'mask_to_image', 'masks_figure', 'overlay_mask', 'panel_figure']
