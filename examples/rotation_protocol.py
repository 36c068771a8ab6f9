"""The rotation protocol of ModelNet40: z/z, z/SO3 and SO3/SO3 accuracies
(train rotation / test rotation), for the plain and the rotation-invariant
SamsaPointClassifier, printed side by side.

z/SO3 evaluates the z-trained model's best checkpoint on SO(3)-rotated test
shapes; 'z' rotates about the up axis (--up-axis, y for the archives). Every
flag of examples/modelnet40.py applies to the six runs (--root, --epochs,
--config, ...) except the rotations, --rotation-invariant and
--eval-checkpoint, which the protocol sets; run folders are
<out>/<samsa|samsa_ri>/<z_z|z_so3|so3_so3>/, and <out>/rotation_protocol.json
holds the table. A new protocol moves an old one in <out> aside whole, to
<out>.old-<time>/, before its first run (--overwrite deletes it; --resume
continues every run in its folder).

    python examples/rotation_protocol.py --epochs 12
"""
import copy
import json
import os.path as osp
import sys

from samsa_geo.train import (atomic_write, claim_run_folder,
                             init_distributed, make_parser,
                             parse_args_with_config)

sys.path.insert(0, osp.dirname(osp.abspath(__file__)))
from _modelnet40_pipeline import build_parser, run  # noqa: E402

# Set by the protocol for each run.
PROTOCOL_FLAGS = ('train_rotation', 'test_rotation', 'rotation_invariant',
                  'eval_checkpoint')

#: What the protocol writes into --out: its table and the models' run
#: folders. An old protocol's move aside, or are deleted, together.
OUTPUTS = ('rotation_protocol.json', 'samsa', 'samsa_ri')


def parse_args(argv=None):
    p = make_parser(__doc__)
    for action in build_parser()._actions:
        if action.dest not in ('help', *PROTOCOL_FLAGS):
            p._add_action(action)
    p.set_defaults(out='runs/rotation_protocol')
    return parse_args_with_config(p, argv)


def main(argv=None):
    args = parse_args(argv)
    init_distributed()  # under torchrun the ranks share every run
    with claim_run_folder(args.out, args.resume, args.overwrite,
                          run_files=OUTPUTS):
        return protocol(args)


def protocol(args):
    """The six runs; writes and returns the table of test accuracies."""
    table = {}
    for name, invariant in [('samsa', False), ('samsa_ri', True)]:
        def run_one(tag, train, test, checkpoint=None):
            run_args = copy.copy(args)
            run_args.rotation_invariant = invariant
            run_args.train_rotation, run_args.test_rotation = train, test
            run_args.eval_checkpoint = checkpoint
            run_args.out = osp.join(args.out, name, tag)
            return run(run_args)

        z = run_one('z_z', 'z', 'z')
        z_so3 = run_one('z_so3', 'z', 'so3',
                        osp.join(args.out, name, 'z_z', 'best.pt'))
        so3 = run_one('so3_so3', 'so3', 'so3')
        table[name] = {'z/z': z['test_oa'], 'z/SO3': z_so3['test_oa'],
                       'SO3/SO3': so3['test_oa']}
    print(f"\n{'model':<10} {'z/z':>7} {'z/SO3':>7} {'SO3/SO3':>8}")
    for name, row in table.items():
        print(f"{name:<10} {row['z/z']:>7.4f} {row['z/SO3']:>7.4f} "
              f"{row['SO3/SO3']:>8.4f}")
    with atomic_write(osp.join(args.out, 'rotation_protocol.json')) as f:
        json.dump(table, f, indent=1)
    return table


if __name__ == '__main__':
    main()
