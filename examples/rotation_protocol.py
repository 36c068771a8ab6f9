"""The rotation protocol of ModelNet40: z/z, z/SO3 and SO3/SO3 accuracies
(train rotation / test rotation), for the plain and the rotation-invariant
SamsaPointClassifier, printed side by side.

z/SO3 evaluates the z-trained model's best checkpoint on SO(3)-rotated test
shapes; 'z' rotates about the up axis (--up-axis, y for the archives).
Extra arguments go to examples/modelnet40.py (e.g. --root, --epochs).

    python examples/rotation_protocol.py --epochs 12
"""
import argparse
import json
import os.path as osp
import sys

sys.path.insert(0, osp.dirname(osp.abspath(__file__)))
import modelnet40  # noqa: E402


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    p.add_argument('--out', default='runs/rotation_protocol')
    args, rest = p.parse_known_args(argv)
    table = {}
    for name, flags in [('samsa', []), ('samsa_ri', ['--rotation-invariant'])]:
        run = lambda tag, extra: modelnet40.main(  # noqa: E731
            rest + flags + extra + ['--out', osp.join(args.out, name, tag)])
        z = run('z_z', ['--train-rotation', 'z', '--test-rotation', 'z'])
        z_so3 = run('z_so3', [
            '--train-rotation', 'z', '--test-rotation', 'so3',
            '--eval-checkpoint', osp.join(args.out, name, 'z_z', 'best.pt')])
        so3 = run('so3_so3', ['--train-rotation', 'so3',
                              '--test-rotation', 'so3'])
        table[name] = {'z/z': z['test_oa'], 'z/SO3': z_so3['test_oa'],
                       'SO3/SO3': so3['test_oa']}
    print(f"\n{'model':<10} {'z/z':>7} {'z/SO3':>7} {'SO3/SO3':>8}")
    for name, row in table.items():
        print(f"{name:<10} {row['z/z']:>7.4f} {row['z/SO3']:>7.4f} "
              f"{row['SO3/SO3']:>8.4f}")
    with open(osp.join(args.out, 'rotation_protocol.json'), 'w') as f:
        json.dump(table, f, indent=1)
    return table


if __name__ == '__main__':
    main()
