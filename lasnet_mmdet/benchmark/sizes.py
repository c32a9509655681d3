"""The padded input sizes of COCO-like images under mmdet's test pipeline.

mmdet's COCO test configs resize with ``keep_ratio`` into 1333x800 (the long side at most 1333,
the short side at most 800) and the data preprocessor pads to a multiple of 32, so COCO val's
images arrive in a few dozen distinct padded sizes. ``COCO_IMAGE_SIZES`` are original (H, W)
sizes of COCO val images giving eight distinct padded sizes, fixed so that runs compare.
"""
import math

COCO_IMAGE_SIZES = ((480, 640), (427, 640), (640, 480), (612, 612), (640, 427), (360, 640),
                    (480, 600), (400, 640))


def padded_test_sizes(scale=1.0, sizes=COCO_IMAGE_SIZES, target=(1333, 800), pad=32):
    """``(H, W)`` after keep-ratio resize into ``target`` x ``scale`` and padding to ``pad``.

    ``scale`` < 1 shrinks the target (e.g. tiny sizes for tests); duplicates are dropped, the
    order kept."""
    long_max, short_max = target[0] * scale, target[1] * scale
    out = []
    for h, w in sizes:
        factor = min(long_max / max(h, w), short_max / min(h, w))
        rh, rw = int(h * factor + 0.5), int(w * factor + 0.5)
        padded = (max(pad, math.ceil(rh / pad) * pad), max(pad, math.ceil(rw / pad) * pad))
        if padded not in out:
            out.append(padded)
    return out
