"""Writes the bundled synthetic samples in the real formats.

  datasets/modelnet40_sample/modelnet40_normal_resampled/...
      (read by samsa_geo.datasets.ModelNet40NormalResampled)
  datasets/shapenet_part_sample/shapenetcore_partanno_segmentation_benchmark_v0_normal/...
      (read by samsa_geo.datasets.ShapeNetPart)
  datasets/lrgb_sample/<name>/raw/{train,val,test}.{pt,pickle}
      (read by samsa_geo.datasets.LRGBDataset, any of its five names)

The generator lives in the library (samsa_geo.datasets.write_samples), which
also writes the samples on first use after a non-editable install.

    python3 scripts/make_sample_data.py [--out datasets]
"""
import argparse
import os.path as osp
import sys

sys.path.insert(0, osp.dirname(osp.dirname(osp.abspath(__file__))))
from samsa_geo.datasets import write_samples  # noqa: E402


def main():
    parser = argparse.ArgumentParser(
        description=__doc__.split('\n')[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument('--out', default=osp.join(
        osp.dirname(osp.dirname(osp.abspath(__file__))), 'datasets'),
        help='folder that receives modelnet40_sample/, '
        'shapenet_part_sample/ and lrgb_sample/')
    parser.add_argument('--modelnet-split', type=int, nargs=2,
                        default=(12, 4), metavar=('TRAIN', 'TEST'),
                        help='shapes per class (a larger synthetic set for '
                        'throughput runs; the bundled sample uses the '
                        'default)')
    parser.add_argument('--modelnet-only', action='store_true',
                        help='write the ModelNet sample only')
    args = parser.parse_args()
    write_samples(args.out, tuple(args.modelnet_split), args.modelnet_only)
    if args.modelnet_only:
        print(f'wrote {args.out}/modelnet40_sample')
    else:
        print(f'wrote {args.out}/modelnet40_sample, '
              f'{args.out}/shapenet_part_sample and {args.out}/lrgb_sample')


if __name__ == '__main__':
    main()
