r"""Classification metrics of the point-cloud benchmarks (ModelNet40)."""
from typing import Optional, Tuple

import torch
from torch import Tensor

from samsa_geo.ops.validation import (
    check_int,
    check_integer_tensor,
    check_tensor,
    raise_bad_scores,
    scores_flag,
)


def _labels(pred: Tensor, target: Tensor,
            num_classes: Optional[int] = None) -> Tuple[Tensor, Tensor, int]:
    # Checks `pred` (labels [N] or scores [N, C]) and `target` (labels [N]);
    # returns both as label vectors [N] and the number of classes
    # (`num_classes`, else inferred from the largest label). Labels must lie
    # in [0, num_classes), or [0, C) for scores. The value checks share one
    # read of the device (the metrics return host numbers anyway).
    check_tensor('pred', pred)
    check_integer_tensor('target', target)
    if target.dim() != 1:
        raise ValueError(f"Expected 'target' to have shape [N] "
                         f"(got {list(target.size())})")
    if num_classes is not None:
        check_int('num_classes', num_classes, integral=True)
    num = target.size(0)
    if pred.dim() not in (1, 2) or pred.size(0) != num:
        raise ValueError(f"Expected 'pred' to have shape [N] or [N, C] with "
                         f"N={num} (got {list(pred.size())})")
    scores = pred.dim() == 2
    if scores:  # logits or probabilities [N, C]
        if not pred.is_floating_point():
            raise TypeError(f"Expected 'pred' scores [N, C] to be a "
                            f"floating-point tensor (got {pred.dtype})")
        if pred.size(1) < 2:
            raise ValueError(f"Expected 'pred' scores to have shape [N, C] "
                             f"with C >= 2 (got {list(pred.size())}; pass "
                             f"labels [N] for predicted classes)")
    elif pred.dtype.is_floating_point or pred.dtype == torch.bool:
        raise TypeError(f"Expected 'pred' to be integer labels [N] or "
                        f"floating-point scores [N, C] (got {pred.dtype} of "
                        f"shape {list(pred.size())})")
    labels = pred.argmax(dim=-1) if scores else pred.long()
    target = target.long()
    if num == 0:
        return labels, target, int(num_classes or 0)

    reads = [target.min(), target.max(), labels.min(), labels.max()]
    if scores:
        reads.append(scores_flag(pred))
    values = torch.stack([v.long() for v in reads]).tolist()  # the one read
    if scores and not values[4]:
        raise_bad_scores('pred')
    bound = num_classes if num_classes is not None else \
        pred.size(1) if scores else max(values[1], values[3]) + 1
    for name, low, high in (('target', values[0], values[1]),
                            ('pred', values[2], values[3])):
        if low < 0 or high >= bound:
            raise ValueError(f"Expected '{name}' labels in [0, {bound}) "
                             f"(got [{low}, {high}])")
    if num_classes is None:
        num_classes = max(values[1], values[3]) + 1
    return labels, target, int(num_classes)


def confusion_matrix(pred: Tensor, target: Tensor,
                     num_classes: Optional[int] = None) -> Tensor:
    r"""Returns the confusion matrix :math:`\mathbf{M}` with
    :math:`M_{ij}` the number of samples of true class :math:`i` predicted
    as class :math:`j`.

    Args:
        pred (torch.Tensor): Predicted integer labels :math:`(N)` or
            floating-point scores :math:`(N, C)`, :math:`C \geq 2`,
            without NaN or :math:`+\infty` (:math:`-\infty` marks a
            masked class)
            (arg-maxed).
        target (torch.Tensor): True integer labels :math:`(N)`, in
            :math:`[0, C)`.
        num_classes (int, optional): Number of classes :math:`C`; inferred
            from the largest label if :obj:`None`. (default: :obj:`None`)

    Labels outside :math:`[0, C)` (such as an ignore label :obj:`-100`)
    raise a :class:`ValueError`: drop such samples before scoring.

    Shapes:
        - **output:** :math:`(C, C)`, :obj:`torch.long`
    """
    pred, target, num_classes = _labels(pred, target, num_classes)
    index = target * num_classes + pred
    return torch.bincount(index.cpu(), minlength=num_classes**2).view(
        num_classes, num_classes)  # [C, C]


def overall_accuracy(pred: Tensor, target: Tensor) -> float:
    r"""Returns the overall accuracy :math:`\frac{1}{N} \sum_i
    [\hat{y}_i = y_i]` ("OA").

    Args:
        pred (torch.Tensor): Predicted integer labels :math:`(N)` or
            floating-point scores :math:`(N, C)`, :math:`C \geq 2`,
            without NaN or :math:`+\infty` (:math:`-\infty` marks a
            masked class).
        target (torch.Tensor): True integer labels :math:`(N)`, non-negative
            (and below :math:`C` for scores), as in
            :func:`confusion_matrix`.
    """
    pred, target, _ = _labels(pred, target)
    if target.numel() == 0:
        raise ValueError("Expected 'target' to be non-empty")
    return float((pred == target).float().mean())


def mean_class_accuracy(pred: Tensor, target: Tensor,
                        num_classes: Optional[int] = None) -> float:
    r"""Returns the mean class accuracy ("mAcc"), the mean over classes
    :math:`c` of the recall :math:`M_{cc} / \sum_j M_{cj}`; classes absent
    from :obj:`target` are skipped.

    Args:
        pred (torch.Tensor): Predicted labels :math:`(N)` or scores
            :math:`(N, C)`, as in :func:`confusion_matrix`.
        target (torch.Tensor): True labels :math:`(N)`.
        num_classes (int, optional): Number of classes. (default: :obj:`None`)
    """
    mat = confusion_matrix(pred, target, num_classes).double()
    if target.numel() == 0:
        raise ValueError("Expected 'target' to be non-empty")
    support = mat.sum(dim=1)
    present = support > 0
    return float((mat.diagonal()[present] / support[present]).mean())
