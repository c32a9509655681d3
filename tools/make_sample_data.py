"""Generate the small deterministic COCO-format sample set used by the demo and the tests.

    python tools/make_sample_data.py [data/sample_coco] [--train 48] [--val 16] [--size 128]
"""
import argparse

from lasnet_mmdet.datasets import make_sample_coco


def main():
    parser = argparse.ArgumentParser(description='Generate the sample COCO data set')
    parser.add_argument('root', nargs='?', default='data/sample_coco')
    parser.add_argument('--train', type=int, default=48, help='training images')
    parser.add_argument('--val', type=int, default=16, help='validation images')
    parser.add_argument('--size', type=int, default=128, help='image side in pixels')
    parser.add_argument('--seed', type=int, default=0)
    args = parser.parse_args()
    root = make_sample_coco(args.root, args.train, args.val, args.size, args.seed)
    print(f'sample COCO data in {root}')


if __name__ == '__main__':
    main()
