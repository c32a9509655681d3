"""Show where a LAS detector computes: per image, the executed patches of chosen blocks (or
the mean over each stage's blocks) overlaid on the image, beside the detections drawn by
mmdet's DetLocalVisualizer; each panel's title gives its activation rate.

    python tools/vis_masks.py CONFIG CHECKPOINT IMAGE_OR_DIR --out-dir DIR
        [--stages layer1 ...] [--blocks layer3.0 ...] [--device cpu|cuda]
        [--score-thr 0.3] [--panel-height PX] [--save-masks] [--cfg-options k=v ...]

Writes ``DIR/<image name>.png`` per image, and with ``--save-masks`` ``DIR/<image name>.npz``:
one ``(h, w)`` array per panel at the block's output resolution over the padded input (the
backbone's eval-mode decision; a stage panel is the mean of its blocks' masks).
"""
import argparse
import os
import os.path as osp

import lasnet_mmdet  # noqa: F401  (registers LAS modules)

IMAGE_EXTENSIONS = ('.jpg', '.jpeg', '.png', '.bmp', '.tif', '.tiff', '.webp')


def parse_args(argv=None):
    from mmengine.config import DictAction
    parser = argparse.ArgumentParser(description='Overlay the masks of a LAS detector on images')
    parser.add_argument('config', help='config file of a detector with a LAS backbone')
    parser.add_argument('checkpoint', help='checkpoint file')
    parser.add_argument('inputs', help='an image file or a folder of images')
    parser.add_argument('--out-dir', required=True, help='folder for the pictures')
    parser.add_argument('--stages', nargs='+', default=None,
                        help='stages to show, each as the mean of its blocks (e.g. layer1)')
    parser.add_argument('--blocks', nargs='+', default=None,
                        help='blocks to show on their own (e.g. layer3.0)')
    parser.add_argument('--device', default=None,
                        help='cpu, cuda or cuda:N (default: cuda:0 if available, else cpu)')
    parser.add_argument('--score-thr', type=float, default=0.3,
                        help='score threshold of the drawn detections')
    parser.add_argument('--panel-height', type=int, default=None,
                        help='height of each panel in pixels (default: that of the drawn '
                        'detections, images under 384 px enlarged, kept within 256..512)')
    parser.add_argument('--save-masks', action='store_true',
                        help='also save the mask arrays of each image (.npz)')
    parser.add_argument('--cfg-options', nargs='+', action=DictAction,
                        help='override config settings, key=value')
    args = parser.parse_args(argv)
    if not 0 <= args.score_thr <= 1:
        parser.error(f'--score-thr must be in [0, 1], got {args.score_thr}')
    if args.panel_height is not None and not 32 <= args.panel_height <= 4096:
        parser.error(f'--panel-height must be in 32..4096 pixels, got {args.panel_height}')
    return args


def list_images(inputs):
    """The image files to show: ``inputs`` itself, or the images in that folder (sorted)."""
    if osp.isfile(inputs):
        return [inputs]
    if not osp.isdir(inputs):
        raise FileNotFoundError(f'no such image or folder: {inputs}')
    images = sorted(osp.join(inputs, name) for name in os.listdir(inputs)
                    if name.lower().endswith(IMAGE_EXTENSIONS))
    if not images:
        raise FileNotFoundError(f'no images ({", ".join(IMAGE_EXTENSIONS)}) in {inputs}')
    return images


def load_config(args):
    """The config, its LAS panels and the images, every argument checked before any work."""
    from mmengine.config import Config
    from lasnet_mmdet.visualization import choose_panels, las_block_names
    for path, what in ((args.config, 'config'), (args.checkpoint, 'checkpoint')):
        if not osp.isfile(path):
            raise FileNotFoundError(f'no such {what} file: {path}')
    images = list_images(args.inputs)
    cfg = Config.fromfile(args.config)
    if args.cfg_options:
        cfg.merge_from_dict(args.cfg_options)
    panels = choose_panels(las_block_names(cfg.model.get('backbone')), args.stages, args.blocks)
    return cfg, panels, images


def main(argv=None):
    args = parse_args(argv)
    try:
        from lasnet_mmdet.utils import setup_env  # explicit environment setup, where present
    except ImportError:
        setup_env = None
    if setup_env is not None:
        setup_env()
    import mmcv
    import torch
    from mmdet.apis import inference_detector, init_detector
    from mmdet.visualization import DetLocalVisualizer
    from mmengine.logging import print_log

    from lasnet_mmdet.engine.hooks.utils import las_backbone
    from lasnet_mmdet.visualization import draw_detections, masks_figure, panel_masks
    from lasnet_mmdet.visualization.atomic_write import save_image, save_npz

    try:
        cfg, panels, images = load_config(args)
    except (FileNotFoundError, ValueError) as error:
        raise SystemExit(f'vis_masks.py: error: {error}')
    device = args.device or ('cuda:0' if torch.cuda.is_available() else 'cpu')

    model = init_detector(cfg, args.checkpoint, device=device)
    backbone = las_backbone(model, 'vis_masks.py')
    visualizer = DetLocalVisualizer(name='lasnet_vis_masks')
    visualizer.dataset_meta = model.dataset_meta
    os.makedirs(args.out_dir, exist_ok=True)

    for path in images:
        result = inference_detector(model, path)
        masks = {name: (mask[0], stride) for name, (mask, stride)
                 in panel_masks(backbone, panels).items()}
        image = mmcv.imread(path, channel_order='rgb')
        figure, rates = masks_figure(
            image, masks, result.metainfo['img_shape'], result.metainfo['ori_shape'],
            detections=draw_detections(visualizer, image, result, args.score_thr),
            detections_title=f'detections (score >= {args.score_thr:g})',
            height=args.panel_height)
        stem = osp.join(args.out_dir, osp.splitext(osp.basename(path))[0])
        save_image(stem + '.png', figure)
        if args.save_masks:
            save_npz(stem + '.npz', **{name: mask for name, (mask, _) in masks.items()})
        print_log(f'{stem}.png: ' + ', '.join(f'{name} {rate:.3f}'
                                             for name, rate in rates.items()), logger='current')


if __name__ == '__main__':
    main()
