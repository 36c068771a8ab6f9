import torch
from torch import Tensor


def mean_absolute_error(pred: Tensor, target: Tensor) -> float:
    r"""Mean absolute error over all entries (the Peptides-struct metric of
    the `"Long Range Graph Benchmark" <https://arxiv.org/abs/2206.08164>`_):

    .. math::
        \mathrm{MAE} = \frac{1}{|\mathcal{V}|} \sum_{(i,t) \in \mathcal{V}}
        |\hat{y}_{i,t} - y_{i,t}|,

    where :math:`\mathcal{V}` are the entries whose target is not NaN.

    Args:
        pred (torch.Tensor): Predictions, any shape.
        target (torch.Tensor): Targets, same shape as :obj:`pred`.
    """
    if pred.shape != target.shape:
        raise ValueError(f"Expected 'pred' and 'target' to have the same shape "
                         f"(got {list(pred.shape)} and {list(target.shape)})")
    pred = pred.detach().to(torch.float64)
    target = target.detach().to(torch.float64)
    valid = ~torch.isnan(target)
    if not bool(valid.any()):
        raise ValueError("Expected 'target' to hold at least one non-NaN value")
    return float((pred[valid] - target[valid]).abs().mean())
