r"""Part-segmentation metrics of the ShapeNet-part benchmark."""
from typing import Mapping, Optional, Sequence, Tuple, Union

import torch
from torch import Tensor

CategoryParts = Union[Mapping[Union[int, str], Sequence[int]],
                      Sequence[Sequence[int]]]


def _parts_table(category_parts: CategoryParts) -> list:
    if isinstance(category_parts, Mapping):
        keys = list(category_parts.keys())
        if all(isinstance(k, int) for k in keys):
            table = [[] for _ in range(max(keys) + 1)]
            for k, parts in category_parts.items():
                table[k] = list(parts)
            return table
        # Named categories (e.g. PyG's ShapeNet.seg_classes): index = order.
        return [list(parts) for parts in category_parts.values()]
    return [list(parts) for parts in category_parts]


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
        pred (torch.Tensor): Predicted part labels :math:`(N)` or scores
            :math:`(N, P)`.
        target (torch.Tensor): True part labels :math:`(N)`.
        category (torch.Tensor): Category of each shape :math:`(B)`.
        category_parts (dict or list): Part labels of each category, as a
            list indexed by category, a dict from category index, or a dict
            from category name in category order (PyG's
            :obj:`ShapeNet.seg_classes`).
        batch (torch.Tensor, optional): Shape index of each point
            :math:`(N)`; :obj:`None` for a single shape. (default: :obj:`None`)

    Shapes:
        - **output:** :math:`(B)`, :obj:`torch.float64`
    """
    table = _parts_table(category_parts)
    category = torch.as_tensor(category).view(-1).long().cpu()
    target = target.view(-1).long().cpu()
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
    pred = pred.detach().cpu()
    if pred.dim() == 2:
        mask = torch.full(pred.size(), float('-inf'), dtype=torch.float64)
        for c, parts in enumerate(table):
            rows = (category[batch] == c).nonzero().view(-1, 1)
            if len(parts) and rows.numel():
                mask[rows, torch.tensor(parts).view(1, -1)] = 0.
        pred = (pred.double() + mask).argmax(dim=-1)
    pred = pred.view(-1).long()
    if pred.numel() != num_points:
        raise ValueError(f"Expected 'pred' to have shape [{num_points}] or "
                         f"[{num_points}, P] (got {list(pred.size())})")

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
