"""Turn a LASNet ImageNet checkpoint or a torchvision ResNet state dict into a clean
LAS-ResNet backbone checkpoint for ``init_cfg=dict(type='Pretrained', checkpoint=DST)``.

    python tools/convert_lasnet_weights.py SRC DST --depth 101

SRC: (a) LASNet's ``{'state_dict': ..., 'epoch', 'optimizer', 'args', ...}`` (keys possibly
``module.``-prefixed; ``fc.*`` is dropped), or (b) a torchvision ``resnet101-*.pth`` state dict
(masker weights are then missing: LASResNet initialises them, execute bias 5). A key of
another depth or network, a shape mismatch, an unreadable SRC or DST == SRC fail naming the
file and the key; nothing is written then (DST is written to a temporary file and renamed).
"""
import argparse
import sys

import lasnet_mmdet  # noqa: F401
from lasnet_mmdet.utils import convert_checkpoint


def parse_args():
    parser = argparse.ArgumentParser(description='Convert LASNet/torchvision ResNet weights')
    parser.add_argument('src', help='LASNet ImageNet checkpoint or torchvision state dict')
    parser.add_argument('dst', help='output backbone checkpoint (.pth)')
    parser.add_argument('--depth', type=int, required=True, choices=(50, 101, 152))
    return parser.parse_args()


def main():
    args = parse_args()
    try:
        state_dict, masker_missing = convert_checkpoint(args.src, args.dst, args.depth)
    except (OSError, KeyError, TypeError, ValueError) as e:
        sys.exit(f'convert_lasnet_weights: error: {e.args[0] if isinstance(e, KeyError) else e}')
    print(f'wrote {args.dst}: {len(state_dict)} tensors for LASResNet depth {args.depth}')
    if masker_missing:
        print(f'{len(masker_missing)} masker tensors not in the source (LASResNet initialises '
              f'them: execute bias 5.0, skip bias 0.0), e.g. {masker_missing[0]}')


if __name__ == '__main__':
    main()
