from typing import Optional

from torch import Tensor

from samsa_geo.metrics.classification import confusion_matrix


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
    mat = confusion_matrix(pred, target, num_classes).double()  # [C, C]
    if target.numel() == 0:
        raise ValueError("Expected at least one prediction (got none)")
    tp = mat.diagonal()
    denom = mat.sum(0) + mat.sum(1)  # 2TP + FP + FN
    return float((2 * tp / denom.clamp(min=1))[denom > 0].mean())
