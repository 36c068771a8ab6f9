"""Training curves from a run folder's ``log.csv``."""
import csv
import math
import os
from pathlib import Path
from typing import Dict, List, Optional, Union

PathLike = Union[str, os.PathLike]

_NOT_METRICS = ('epoch', 'lr', 'time')


def read_log(path: PathLike) -> Dict[str, List[float]]:
    r"""Reads a :obj:`log.csv` (a header row, then one row per epoch) into
    columns of floats; empty cells become :obj:`nan`."""
    path = Path(path)
    with open(path, newline='') as f:
        rows = list(csv.reader(f))
    if len(rows) == 0:
        raise ValueError(f"Expected '{path}' to start with a header row "
                         f"(got an empty file)")
    header = [h.strip() for h in rows[0]]
    columns: Dict[str, List[float]] = {h: [] for h in header}
    for line, row in enumerate(rows[1:], start=2):
        if not any(cell.strip() for cell in row):
            continue
        if len(row) != len(header):
            raise ValueError(f"Expected {len(header)} cells in line {line} "
                             f"of '{path}' (got {len(row)})")
        for name, cell in zip(header, row):
            try:
                columns[name].append(float(cell) if cell.strip() else math.nan)
            except ValueError:
                raise ValueError(f"Expected a number in column '{name}', "
                                 f"line {line} of '{path}' (got '{cell}')")
    return columns


def plot_training_curves(
    run_dir: PathLike,
    out_png: Optional[PathLike] = None,
) -> str:
    r"""Plots the losses and every metric of a run per epoch.

    Reads :obj:`run_dir/log.csv` (columns :obj:`epoch`, :obj:`lr`,
    :obj:`train_loss`, :obj:`time` and any :obj:`val_*` / :obj:`test_*`
    metric columns). One panel shows every :obj:`*loss` column, one panel
    each other metric (the train/val/test variants of a metric share a
    panel), and one the learning rate; epochs are integer ticks.

    Args:
        run_dir (str): The run folder.
        out_png (str, optional): Where to write the PNG;
            :obj:`run_dir/curves.png` if :obj:`None`. (default: :obj:`None`)

    Returns:
        The path of the PNG.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

    run_dir = Path(run_dir)
    log = run_dir / 'log.csv'
    if not log.is_file():
        raise FileNotFoundError(f"Expected a 'log.csv' in run_dir "
                                f"'{run_dir}' (not found)")
    columns = read_log(log)
    for required in ('epoch', 'train_loss'):
        if required not in columns:
            raise ValueError(f"Expected column '{required}' in '{log}' "
                             f"(got {list(columns)})")
    epochs = columns['epoch']

    # Group columns into panels: all losses, then one panel per metric name.
    panels: Dict[str, List[str]] = {'loss': []}
    for name in columns:
        if name in _NOT_METRICS:
            continue
        if name.endswith('loss'):
            panels['loss'].append(name)
            continue
        metric = name.split('_', 1)[1] if name.startswith(
            ('train_', 'val_', 'test_')) else name
        panels.setdefault(metric, []).append(name)
    if 'lr' in columns:
        panels['learning rate'] = ['lr']

    num = len(panels)
    ncols = min(num, 3)
    nrows = -(-num // ncols)
    fig = Figure(figsize=(4.2 * ncols, 3.2 * nrows), dpi=100)
    FigureCanvasAgg(fig)
    for i, (title, names) in enumerate(panels.items()):
        ax = fig.add_subplot(nrows, ncols, i + 1)
        for name in names:
            ax.plot(epochs, columns[name], marker='o', markersize=3,
                    label=name)
        ax.set_title(title)
        ax.set_xlabel('epoch')
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(True, alpha=0.3)
        if title == 'learning rate':
            ax.ticklabel_format(axis='y', style='sci', scilimits=(-2, 2))
        ax.legend(fontsize=8)
    fig.tight_layout()
    out = Path(out_png) if out_png is not None else run_dir / 'curves.png'
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out)
    return str(out)
