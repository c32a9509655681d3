"""Masks on pictures: from a block's mask to an overlay on the original image, and panels.

Pure functions of numpy arrays (and matplotlib for the titled panel figure), shared by
``tools/vis_masks.py`` and ``LASDetVisualizationHook``.

A block's mask lives on the padded batch input the backbone saw, at the block's output
resolution (``ceil(input / stride)``, as the convs compute it). Mapping it back to the
image takes the steps of mmdet's test pipeline in reverse: repeat each mask pixel
``stride x stride`` times (back to the padded input), crop the padding (the image sits at
the top left, ``img_shape``), and resize to the original image (``ori_shape``).
"""
import numpy as np


def mask_to_image(mask, stride, img_shape, ori_shape):
    """A ``(h, w)`` block mask as a float32 ``ori_shape`` map over the original image.

    Args:
        mask (np.ndarray): ``(h, w)`` values in [0, 1] (a block's decision, or a mean over
            blocks of one resolution).
        stride (int): Input pixels per mask pixel (4, 8, 16, 32 for ResNet stages).
        img_shape (tuple): ``(h, w)`` of the resized image inside the padded input.
        ori_shape (tuple): ``(h, w)`` of the original image.
    """
    import mmcv
    img_h, img_w = img_shape[:2]
    ori_h, ori_w = ori_shape[:2]
    mask = np.asarray(mask, dtype=np.float32)
    if mask.shape[0] * stride < img_h or mask.shape[1] * stride < img_w:
        raise ValueError(f'a {mask.shape} mask at stride {stride} does not cover an image '
                         f'of {img_shape[:2]}')
    padded = np.repeat(np.repeat(mask, stride, axis=0), stride, axis=1)
    on_image = np.ascontiguousarray(padded[:img_h, :img_w])
    if (img_h, img_w) == (ori_h, ori_w):
        return on_image
    # Nearest keeps the patch edges sharp and the values those of the mask.
    return mmcv.imresize(on_image, (ori_w, ori_h), interpolation='nearest')


def overlay_mask(image, mask, alpha=0.55, cmap='inferno'):
    """``image`` (RGB uint8, HxWx3) in grey, tinted by ``mask`` (HxW in [0, 1]) through
    ``cmap``.

    Grey keeps the picture's colours from mixing with the colormap's; with 'inferno' skipped
    pixels turn dark and executed ones bright yellow, and the shapes stay visible under both.
    """
    from matplotlib import colormaps
    if image.shape[:2] != mask.shape:
        raise ValueError(f'image {image.shape[:2]} and mask {mask.shape} differ in size')
    colors = colormaps[cmap](np.clip(mask, 0, 1))[..., :3] * 255
    grey = image.astype(np.float32) @ np.array([0.299, 0.587, 0.114], np.float32)
    blended = (1 - alpha) * grey[..., None] + alpha * colors
    return np.clip(blended + 0.5, 0, 255).astype(np.uint8)


def panel_figure(panels, titles, height=256, dpi=100, cmap='inferno'):
    """Pictures side by side, each under its title, as one RGB uint8 array.

    Args:
        panels (list[np.ndarray]): RGB uint8 pictures (any sizes; shown at one height).
        titles (list[str]): One title per panel.
        height (int): Height of each panel in the figure, pixels.
        dpi (int): Resolution of the figure (sets the title font size in pixels).
        cmap (str | None): Adds a colour bar of this colormap (the overlay's scale).
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.cm import ScalarMappable
    from matplotlib.colors import Normalize
    from matplotlib.figure import Figure
    if len(panels) != len(titles) or not panels:
        raise ValueError(f'need one title per panel, got {len(panels)} panels and '
                         f'{len(titles)} titles')
    ratios = [panel.shape[1] / panel.shape[0] for panel in panels]
    title_px, bar_px = 28, (72 if cmap else 0)
    width_px = height * sum(ratios) + 6 * len(panels) + bar_px
    fig = Figure(figsize=(width_px / dpi, (height + title_px) / dpi), dpi=dpi)
    right = 1 - bar_px / width_px
    grid = fig.add_gridspec(1, len(panels), width_ratios=ratios, left=0.002, right=right - 0.002,
                            bottom=0.005, top=height / (height + title_px), wspace=0.02)
    for i, (panel, title) in enumerate(zip(panels, titles)):
        ax = fig.add_subplot(grid[0, i])
        ax.imshow(panel, interpolation='nearest')
        ax.set_title(title, fontsize=8)
        ax.set_axis_off()
    if cmap:
        bar_ax = fig.add_axes([right + 0.12 * bar_px / width_px, 0.08, 0.14 * bar_px / width_px,
                               0.8 * height / (height + title_px)])
        bar = fig.colorbar(ScalarMappable(Normalize(0, 1), cmap), cax=bar_ax)
        bar.set_label('executed (fraction of blocks)', fontsize=7, labelpad=2)
        bar.ax.tick_params(labelsize=6)
    canvas = FigureCanvasAgg(fig)
    canvas.draw()
    return np.asarray(canvas.buffer_rgba())[..., :3].copy()


def masks_figure(image, masks, img_shape, ori_shape, detections=None,
                 detections_title='detections', alpha=0.55, cmap='inferno', height=None):
    """One picture per image: the detections (if given), then one overlay per mask.

    Args:
        image (np.ndarray): The original RGB uint8 image.
        masks (dict): ``{panel name: (mask (h, w), stride)}`` of this image; a panel that is
            a mean over blocks shows values between 0 and 1.
        img_shape, ori_shape: From the image's data sample (mmdet's metainfo).
        detections (np.ndarray, optional): The picture mmdet's visualizer drew.
        height (int, optional): Panel height in pixels (default: that of the detections
            picture, else the image's, kept within 256..512: a picture drawn larger than
            the image, for legible labels, is shown at its own size).
    Returns:
        ``(figure RGB uint8 array, {panel name: rate})``; a panel's rate is its mask's mean
        over the padded input, as the backbone counts it (``las_stats``' ``rate_per_image``).
    """
    panels, titles, rates = [], [], {}
    if detections is not None:
        panels.append(detections)
        titles.append(detections_title)
    for name, (mask, stride) in masks.items():
        rates[name] = float(np.asarray(mask, dtype=np.float64).mean())
        on_image = mask_to_image(mask, stride, img_shape, ori_shape)
        panels.append(overlay_mask(image, on_image, alpha, cmap))
        titles.append(f'{name}: rate {rates[name]:.2f}')
    drawn = detections if detections is not None else image
    height = height or int(min(max(drawn.shape[0], 256), 512))
    return panel_figure(panels, titles, height=height, cmap=cmap), rates
