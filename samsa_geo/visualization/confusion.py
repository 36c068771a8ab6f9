"""A row-normalised confusion matrix with a colour bar."""
import os
from pathlib import Path
from typing import Optional, Sequence, Union

from torch import Tensor

PathLike = Union[str, os.PathLike]


def plot_confusion_matrix(
    pred: Tensor,
    target: Tensor,
    classes: Sequence[str],
    out_png: PathLike,
    title: Optional[str] = 'test confusion (row-normalised)',
) -> str:
    r"""Draws the confusion matrix of :obj:`pred` against :obj:`target`,
    each row (true class) normalised to sum to one, with the class names on
    both axes and a colour bar of the fractions.

    Args:
        pred (torch.Tensor): Predicted classes :obj:`[N]` or scores
            :obj:`[N, C]` (arg-maxed).
        target (torch.Tensor): True classes :obj:`[N]`.
        classes (list of str): The class names, in label order.
        out_png (str): The PNG file to write.
        title (str, optional): Figure title.
            (default: :obj:`"test confusion (row-normalised)"`)

    Returns:
        The path of the PNG.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    from samsa_geo.metrics import confusion_matrix

    num = len(classes)
    cm = confusion_matrix(pred, target, num).float()  # [C, C], rows: true
    cm = cm / cm.sum(1, keepdim=True).clamp(min=1)
    size = max(4.0, 0.25 * num + 2)
    fig = Figure(figsize=(size + 1.0, size))
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    image = ax.imshow(cm.numpy(), cmap='Blues', vmin=0, vmax=1)
    fontsize = 9 if num <= 20 else 7
    ax.set_xticks(range(num), list(classes), rotation=90, fontsize=fontsize)
    ax.set_yticks(range(num), list(classes), fontsize=fontsize)
    ax.set_xlabel('predicted')
    ax.set_ylabel('true')
    if title:
        ax.set_title(title)
    fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04,
                 label='fraction of the true class')
    fig.tight_layout()
    out = Path(out_png)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=120)
    return str(out)
