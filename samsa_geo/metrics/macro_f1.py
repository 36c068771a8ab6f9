from typing import Optional

import torch
from torch import Tensor


def macro_f1(pred: Tensor, target: Tensor,
             num_classes: Optional[int] = None) -> float:
    r"""Macro-averaged F1 score of a node-level multi-class prediction (the
    PascalVOC-SP / COCO-SP metric of the `"Long Range Graph Benchmark"
    <https://arxiv.org/abs/2206.08164>`_):

    .. math::
        F_1 = \frac{1}{|\mathcal{C}|} \sum_{c \in \mathcal{C}}
        \frac{2\,\mathrm{TP}_c}{2\,\mathrm{TP}_c + \mathrm{FP}_c +
        \mathrm{FN}_c},

    over all nodes of the split, where :math:`\mathcal{C}` are the classes
    present in the targets or the predictions (a class neither present nor
    predicted is not averaged; one never hit scores 0), as
    :obj:`sklearn.metrics.f1_score(average='macro')`.

    Args:
        pred (torch.Tensor): Logits :math:`(N, C)` or labels :math:`(N,)`.
        target (torch.Tensor): Labels :math:`(N,)`.
        num_classes (int, optional): Number of classes; inferred if
            :obj:`None`. (default: :obj:`None`)
    """
    if pred.dim() == 2:
        pred = pred.argmax(dim=-1)
    if pred.dim() != 1 or target.shape != pred.shape:
        raise ValueError(f"Expected 'pred' of shape [N, C] or [N] and 'target' "
                         f"of shape [N] (got {list(pred.shape)} and "
                         f"{list(target.shape)})")
    if pred.numel() == 0:
        raise ValueError("Expected at least one prediction (got none)")
    pred, target = pred.detach().long(), target.detach().long()
    if num_classes is None:
        num_classes = int(max(pred.max(), target.max())) + 1
    tp = torch.bincount(target[pred == target], minlength=num_classes)
    pred_count = torch.bincount(pred, minlength=num_classes)
    true_count = torch.bincount(target, minlength=num_classes)
    if pred_count.numel() > num_classes or true_count.numel() > num_classes:
        raise ValueError(f"Expected labels in [0, {num_classes}) "
                         f"(got larger ones)")
    present = (pred_count + true_count) > 0
    denom = (pred_count + true_count).to(torch.float64)  # 2TP + FP + FN
    f1 = 2 * tp.to(torch.float64) / denom.clamp(min=1)
    return float(f1[present].mean())
