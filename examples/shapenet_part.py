"""ShapeNet part segmentation with SamsaPointSegmenter.

With no arguments it trains on the bundled *synthetic* sample (3 categories
in the `shapenetcore_partanno_segmentation_benchmark_v0_normal` format).
Point --root at the folder holding the real archive folder for the real
benchmark (16 categories, 50 parts).

Protocol: train on the official train split, select the epoch on val
(instance mIoU), report test instance and class mIoU once, with logits
restricted to the parts of each shape's category. Every shape is first
centred and scaled into [-1, 1]^3 on all its points (NormalizeScale); training
then draws --num-points of them at random at every access, while validation
and test score every point of every shape (as PointNet and PyG's example), so
their metrics are the same at every evaluation. The run folder holds
metrics.json (val_instance_miou, test_instance_miou, test_class_miou,
best_epoch, ...), best.pt / last.pt and log.csv.

    python examples/shapenet_part.py
    python examples/shapenet_part.py --config examples/configs/shapenet_part_paper.yaml
"""
import os.path as osp
import sys

import torch
import torch.nn.functional as F
import torch_geometric.transforms as T

from samsa_geo.datasets import ShapeNetPart, sample_root
from samsa_geo.metrics import shape_part_iou
from samsa_geo.nn import batch_hints
from samsa_geo.nn.models import SamsaPointSegmenter
from samsa_geo.train import (
    make_loader,
    make_parser,
    parse_args_with_config,
    seed_everything,
)

sys.path.insert(0, osp.dirname(osp.abspath(__file__)))
from _point_pipeline import (  # noqa: E402
    add_point_args,
    check_resume_first,
    point_trainer,
    point_transforms,
    preset_model,
    resolve_preset,
)


def parse_args(argv=None):
    p = make_parser(__doc__)
    add_point_args(p, 'shapenet_part', batch_size=8,
                   out='runs/shapenet_part')
    return resolve_preset(parse_args_with_config(p, argv), 'shapenet_part')


class PartSegmentation:
    """Loss and metrics of ShapeNet part (instance and class mIoU)."""
    def __init__(self, category_parts, normals):
        self.category_parts, self.normals = category_parts, normals

    def logits(self, model, data):
        x = data.normal if self.normals else None
        return model(data.pos, data.batch, x=x, category=data.category,
                     **batch_hints(data))

    def training_step(self, model, data):
        return F.cross_entropy(self.logits(model, data), data.y)

    def eval_step(self, model, data):
        logits = self.logits(model, data).float()
        # Per shape: IoU over its category's parts (argmax restricted to them).
        iou = shape_part_iou(logits, data.y, data.category,
                             self.category_parts, data.batch)
        return {'iou': iou, 'category': data.category.view(-1),
                'loss': F.cross_entropy(logits, data.y, reduction='none')}

    def compute_metrics(self, out):
        iou, cat = out['iou'], out['category']
        per_class = [iou[cat == c].mean() for c in cat.unique()]
        return {'instance_miou': iou.mean().item(),
                'class_miou': torch.stack(per_class).mean().item(),
                'loss': out['loss'].mean().item()}


def datasets(args):
    """Train, val and test splits: whole shapes scaled by NormalizeScale,
    then --num-points random points of each in training only; validation
    and test shapes keep all their points (a PyG batch of ragged shapes)."""
    root = args.root or sample_root('shapenet_part')
    sample = T.FixedPoints(args.num_points, replace=False,
                           allow_duplicates=True)
    train_tf, _ = point_transforms(args, first=[T.NormalizeScale(), sample])
    _, eval_tf = point_transforms(args, first=[T.NormalizeScale()])
    return (ShapeNetPart(root, split='train', transform=train_tf),
            ShapeNetPart(root, split='val', transform=eval_tf),
            ShapeNetPart(root, split='test', transform=eval_tf))


def main(argv=None):
    args = parse_args(argv)
    check_resume_first(args)  # before the data: another --root, say
    seed_everything(args.seed)  # model initialisation too
    train_ds, val_ds, test_ds = datasets(args)

    model = preset_model(SamsaPointSegmenter, args, 50, num_categories=16,
                         in_channels=3 if args.normals else 0,
                         rotation_invariant=args.rotation_invariant)
    task = PartSegmentation(ShapeNetPart.category_parts, args.normals)
    trainer = point_trainer(model, task, args, len(train_ds),
                            'val_instance_miou')
    best = trainer.fit(
        make_loader(train_ds, args.batch_size, shuffle=True, seed=args.seed,
                    drop_last=True),
        make_loader(val_ds, args.batch_size, shuffle=False))
    test = trainer.evaluate(make_loader(test_ds, args.batch_size,
                                        shuffle=False), 'test',
                            checkpoint='best')
    num_params = sum(p.numel() for p in model.parameters())
    trainer.update_summary(num_params=num_params)
    if trainer.is_main:
        print(f"best epoch {best['best_epoch']}: val_instance_miou "
              f"{best['val_instance_miou']:.4f} | test_instance_miou "
              f"{test['test_instance_miou']:.4f} test_class_miou "
              f"{test['test_class_miou']:.4f} -> {args.out}")
    return {**best, **test, 'num_params': num_params}


if __name__ == '__main__':
    main()
