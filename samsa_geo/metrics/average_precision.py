import torch
from torch import Tensor

from samsa_geo.ops.validation import check_scores, check_tensor


def _binary_average_precision(score: Tensor, target: Tensor) -> Tensor:
    # AP = sum_n (R_n - R_{n-1}) P_n over distinct thresholds, scores that tie
    # forming one threshold (as sklearn.metrics.average_precision_score).
    order = torch.argsort(score, descending=True)
    score, target = score[order], target[order].to(torch.float64)
    tp = target.cumsum(0)
    fp = (1.0 - target).cumsum(0)
    last = torch.ones_like(score, dtype=torch.bool)  # last index of a tie
    last[:-1] = score[1:] != score[:-1]
    tp, fp = tp[last], fp[last]
    precision = tp / (tp + fp)
    recall = tp / tp[-1]
    recall_step = torch.diff(recall, prepend=recall.new_zeros(1))
    return (recall_step * precision).sum()


def average_precision_multitask(pred: Tensor, target: Tensor) -> float:
    r"""Mean over tasks of the per-task average precision, the Peptides-func
    metric of the `"Long Range Graph Benchmark"
    <https://arxiv.org/abs/2206.08164>`_ (OGB's :obj:`ap`):

    .. math::
        \mathrm{AP} = \frac{1}{|\mathcal{T}|} \sum_{t \in \mathcal{T}}
        \sum_n (R_{t,n} - R_{t,n-1}) P_{t,n},

    with :math:`P_{t,n}, R_{t,n}` precision and recall of task :math:`t` at
    the :math:`n`-th distinct score threshold, computed over the whole split.
    Entries whose label is NaN are ignored; tasks that have no positive or
    no negative label left are skipped (as OGB's evaluator), so
    :math:`\mathcal{T}` holds the remaining tasks.

    Args:
        pred (torch.Tensor): Scores (logits or probabilities; only their
            order matters), without NaN or :math:`+\infty`, shape
            :math:`(N, T)`.
        target (torch.Tensor): Binary labels, NaN for missing, shape
            :math:`(N, T)`.
    """
    check_tensor('pred', pred)
    check_tensor('target', target)
    if pred.dim() == 1:
        pred = pred.view(-1, 1)  # [N, 1]
    if target.dim() == 1:
        target = target.view(-1, 1)  # [N, 1]
    if pred.dim() != 2 or pred.shape != target.shape:
        raise ValueError(f"Expected 'pred' and 'target' to have the same shape "
                         f"[N, T] (got {list(pred.shape)} and "
                         f"{list(target.shape)})")
    check_scores(pred, 'pred')  # NaN scores would sort arbitrarily
    pred = pred.detach().to(torch.float64)
    target = target.detach().to(torch.float64)
    values = []
    for t in range(target.size(1)):
        valid = ~torch.isnan(target[:, t])
        y = target[valid, t]
        if bool(((y != 0) & (y != 1)).any()):
            raise ValueError(f"Expected 'target' to hold 0, 1 or NaN "
                             f"(task {t} has other values)")
        if y.sum() == 0 or y.sum() == y.numel():
            continue
        values.append(_binary_average_precision(pred[valid, t], y))
    if len(values) == 0:
        raise ValueError("Expected at least one task with both positive and "
                         "negative labels in 'target'")
    return float(torch.stack(values).mean())
