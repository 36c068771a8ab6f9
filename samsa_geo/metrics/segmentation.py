r"""Part-segmentation metrics of the ShapeNet-part benchmark."""
from numbers import Integral
from typing import List, Mapping, Optional, Sequence, Tuple, Union

import torch
from torch import Tensor

from samsa_geo.ops.validation import (
    check_scores,
    check_float_tensor,
    check_integer_tensor,
    check_tensor,
)

CategoryParts = Union[Mapping[Union[int, str], Sequence[int]],
                      Sequence[Sequence[int]]]


def _parts_table(category_parts: CategoryParts) -> List[List[int]]:
    # The part labels of every category, indexed by category; a category
    # missing from a dict keyed by index gets no parts (an error only if a
    # shape of that category is scored).
    if isinstance(category_parts, Mapping):
        keys = list(category_parts.keys())
        if len(keys) and all(isinstance(k, int) for k in keys):
            if min(keys) < 0:
                raise ValueError(f"Expected the category indices of "
                                 f"'category_parts' to be non-negative "
                                 f"(got {min(keys)})")
            table: List[List[int]] = [[] for _ in range(max(keys) + 1)]
            for k, parts in category_parts.items():
                table[k] = list(parts)
        else:
            # Named categories (e.g. PyG's ShapeNet.seg_classes): index =
            # order.
            table = [list(parts) for parts in category_parts.values()]
    else:
        table = [list(parts) for parts in category_parts]
    for c, parts in enumerate(table):
        if not all(isinstance(p, Integral) and p >= 0 for p in parts):
            raise ValueError(f"Expected the parts of category {c} in "
                             f"'category_parts' to be non-negative integer "
                             f"labels (got {parts})")
        table[c] = [int(p) for p in parts]
    return table


def shape_part_iou(pred: Tensor, target: Tensor, category: Tensor,
                   category_parts: CategoryParts,
                   batch: Optional[Tensor] = None) -> Tensor:
    r"""Returns the part IoU of every shape, ShapeNet-part convention.

    .. math::
        \mathrm{IoU}_s = \frac{1}{|P_{c_s}|} \sum_{p \in P_{c_s}}
        \frac{|\{i \in s : \hat{y}_i = p \wedge y_i = p\}|}
             {|\{i \in s : \hat{y}_i = p \vee y_i = p\}|}

    :math:`P_{c_s}` are the part labels of the category :math:`c_s` of shape
    :math:`s`; a part absent from both prediction and ground truth of a
    shape counts as IoU :math:`1`. Scores :math:`(N, P)` are arg-maxed over
    the parts of each shape's category only (the standard restriction of
    the logits).

    Args:
        pred (torch.Tensor): Predicted integer part labels :math:`(N)` or
            floating-point scores :math:`(N, P)`, one column per part
            label (:math:`P` above the largest label of
            :obj:`category_parts`), without NaN or :math:`+\infty`
            (:math:`-\infty` marks a masked part).
        target (torch.Tensor): True integer part labels :math:`(N)`, each
            one of the parts of its shape's category.
        category (torch.Tensor): Category of each shape :math:`(B)`.
        category_parts (dict or list): Part labels of each category, as a
            list indexed by category, a dict from category index (categories
            left out may not be scored), or a dict from category name in
            category order (PyG's :obj:`ShapeNet.seg_classes`).
        batch (torch.Tensor, optional): Shape index of each point
            :math:`(N)`; :obj:`None` for a single shape. (default: :obj:`None`)

    Shapes:
        - **output:** :math:`(B)`, :obj:`torch.float64`
    """
    table = _parts_table(category_parts)
    category = torch.as_tensor(category).view(-1).long().cpu()
    check_tensor('target', target)
    num_points = target.numel()
    if batch is None:
        batch = torch.zeros(num_points, dtype=torch.long)
    batch = batch.view(-1).long().cpu()
    if batch.numel() != num_points:
        raise ValueError(f"Expected 'batch' to have shape [{num_points}] "
                         f"(got {list(batch.size())})")
    num_shapes = int(batch.max()) + 1 if num_points else 0
    if category.numel() != num_shapes:
        raise ValueError(f"Expected 'category' to have shape [{num_shapes}] "
                         f"(one per shape, got {list(category.size())})")
    if num_shapes and (category.min() < 0 or category.max() >= len(table)):
        raise ValueError(f"Expected 'category' in [0, {len(table)}) (got "
                         f"[{int(category.min())}, {int(category.max())}])")
    if num_points and int(batch.min()) < 0:
        raise ValueError(f"Expected 'batch' to hold non-negative shape "
                         f"indices (got {int(batch.min())})")
    for c in category.unique().tolist():
        if len(table[c]) == 0:
            raise ValueError(f"Expected 'category_parts' to list the parts "
                             f"of category {c} (got none)")
    # valid[c, p]: part p belongs to category c.
    num_parts = max((max(parts) + 1 for parts in table if parts), default=0)
    valid = torch.zeros(len(table), num_parts, dtype=torch.bool)
    for c, parts in enumerate(table):
        valid[c, parts] = True

    check_tensor('pred', pred)
    scores = pred.dim() == 2
    if scores and (pred.size(0) != num_points or pred.size(1) < num_parts):
        raise ValueError(f"Expected 'pred' scores to have shape "
                         f"[{num_points}, P] with P >= {num_parts} (one "
                         f"column per part label of 'category_parts') "
                         f"(got {list(pred.size())})")
    if not scores and (pred.dim() != 1 or pred.numel() != num_points):
        raise ValueError(f"Expected 'pred' to have shape [{num_points}] or "
                         f"[{num_points}, P] (got {list(pred.size())})")
    if scores:
        check_float_tensor('pred', pred)
    else:
        check_integer_tensor('pred', pred)

    check_integer_tensor('target', target)
    target = target.view(-1).long().cpu()
    point_category = category[batch]  # [N]
    known = (target >= 0) & (target < num_parts)
    ok = known.clone()
    ok[known] = valid[point_category[known], target[known]]
    if not bool(ok.all()):
        i = int((~ok).nonzero()[0])
        c = int(point_category[i])
        raise ValueError(f"Expected 'target' to hold part labels of each "
                         f"shape's category (point {i}, of category {c} with "
                         f"parts {table[c]}, has label {int(target[i])})")

    pred = pred.detach().cpu()
    if scores:
        check_scores(pred, 'pred')  # -inf: a masked part
        # Restrict the arg-max to the parts of each point's category.
        mask = torch.full(pred.size(), float('-inf'), dtype=torch.float64)
        mask[:, :num_parts].masked_fill_(valid[point_category], 0.)
        pred = pred.double() + mask  # [N, P]
        pred = pred.argmax(dim=-1)
    pred = pred.long()

    ious = torch.empty(num_shapes, dtype=torch.float64)
    for s in range(num_shapes):
        mask = batch == s
        p, t = pred[mask], target[mask]
        part_ious = []
        for part in table[int(category[s])]:
            inter = int(((p == part) & (t == part)).sum())
            union = int(((p == part) | (t == part)).sum())
            part_ious.append(1.0 if union == 0 else inter / union)
        ious[s] = sum(part_ious) / len(part_ious)
    return ious


def part_miou(pred: Tensor, target: Tensor, category: Tensor,
              category_parts: CategoryParts,
              batch: Optional[Tensor] = None) -> Tuple[float, float]:
    r"""Returns the instance mIoU and the class mIoU of part segmentation,
    ShapeNet-part convention.

    .. math::
        \text{ins. mIoU} = \frac{1}{B} \sum_s \mathrm{IoU}_s, \qquad
        \text{cls. mIoU} = \frac{1}{|C|} \sum_{c \in C}
        \frac{1}{|S_c|} \sum_{s \in S_c} \mathrm{IoU}_s

    :math:`\mathrm{IoU}_s` is :func:`shape_part_iou`, :math:`S_c` the shapes
    of category :math:`c` and :math:`C` the categories present.
    Arguments are those of :func:`shape_part_iou`; to score an epoch,
    concatenate its predictions, labels, categories and offset batch
    vectors.
    """
    ious = shape_part_iou(pred, target, category, category_parts, batch)
    if ious.numel() == 0:
        raise ValueError("Expected at least one shape (got none)")
    category = torch.as_tensor(category).view(-1).long().cpu()
    per_class = [ious[category == c].mean() for c in category.unique()]
    return float(ious.mean()), float(torch.stack(per_class).mean())
