r"""Classification metrics of the point-cloud benchmarks (ModelNet40)."""
from typing import Optional

import torch
from torch import Tensor


def _labels(pred: Tensor, target: Tensor) -> Tensor:
    if target.dim() != 1:
        raise ValueError(f"Expected 'target' to have shape [N] "
                         f"(got {list(target.size())})")
    if pred.dim() == 2:  # logits or probabilities [N, C]
        pred = pred.argmax(dim=-1)
    if pred.dim() != 1 or pred.size(0) != target.size(0):
        raise ValueError(f"Expected 'pred' to have shape [N] or [N, C] with "
                         f"N={target.size(0)} (got {list(pred.size())})")
    return pred.long()


def confusion_matrix(pred: Tensor, target: Tensor,
                     num_classes: Optional[int] = None) -> Tensor:
    r"""Returns the confusion matrix :math:`\mathbf{M}` with
    :math:`M_{ij}` the number of samples of true class :math:`i` predicted
    as class :math:`j`.

    Args:
        pred (torch.Tensor): Predicted labels :math:`(N)` or scores
            :math:`(N, C)` (arg-maxed).
        target (torch.Tensor): True labels :math:`(N)`.
        num_classes (int, optional): Number of classes :math:`C`; inferred
            from the largest label if :obj:`None`. (default: :obj:`None`)

    Shapes:
        - **output:** :math:`(C, C)`, :obj:`torch.long`
    """
    pred = _labels(pred, target)
    target = target.long()
    if num_classes is None:
        labels = torch.cat([pred, target])
        num_classes = int(labels.max()) + 1 if labels.numel() else 0
    for name, value in (('target', target), ('pred', pred)):
        if value.numel() and (value.min() < 0 or value.max() >= num_classes):
            raise ValueError(f"Expected '{name}' labels in [0, {num_classes}) "
                             f"(got [{int(value.min())}, {int(value.max())}])")
    index = target * num_classes + pred
    return torch.bincount(index.cpu(), minlength=num_classes**2).view(
        num_classes, num_classes)  # [C, C]


def overall_accuracy(pred: Tensor, target: Tensor) -> float:
    r"""Returns the overall accuracy :math:`\frac{1}{N} \sum_i
    [\hat{y}_i = y_i]` ("OA").

    Args:
        pred (torch.Tensor): Predicted labels :math:`(N)` or scores
            :math:`(N, C)`.
        target (torch.Tensor): True labels :math:`(N)`.
    """
    pred = _labels(pred, target)
    if target.numel() == 0:
        raise ValueError("Expected 'target' to be non-empty")
    return float((pred == target.long()).float().mean())


def mean_class_accuracy(pred: Tensor, target: Tensor,
                        num_classes: Optional[int] = None) -> float:
    r"""Returns the mean class accuracy ("mAcc"), the mean over classes
    :math:`c` of the recall :math:`M_{cc} / \sum_j M_{cj}`; classes absent
    from :obj:`target` are skipped.

    Args:
        pred (torch.Tensor): Predicted labels :math:`(N)` or scores
            :math:`(N, C)`.
        target (torch.Tensor): True labels :math:`(N)`.
        num_classes (int, optional): Number of classes. (default: :obj:`None`)
    """
    if target.numel() == 0:
        raise ValueError("Expected 'target' to be non-empty")
    mat = confusion_matrix(pred, target, num_classes).double()
    support = mat.sum(dim=1)
    present = support > 0
    return float((mat.diagonal()[present] / support[present]).mean())
