import math

import numpy as np
import pytest
from PIL import Image

from samsa_geo.visualization import plot_training_curves, read_log


def _write_log(run_dir, rows):
    header = 'epoch,lr,train_loss,time,val_loss,val_acc,val_f1\n'
    (run_dir / 'log.csv').write_text(header + ''.join(rows))


def test_plot_training_curves(tmp_path):
    _write_log(tmp_path, [f'{e},{1e-3 / e},{2.0 / e},{10 + e},{2.5 / e},'
                          f'{0.5 + 0.1 * e},{0.4 + 0.1 * e}\n'
                          for e in range(1, 6)])
    cols = read_log(tmp_path / 'log.csv')
    assert cols['epoch'] == [1.0, 2.0, 3.0, 4.0, 5.0]
    assert cols['val_acc'][2] == pytest.approx(0.8)
    path = plot_training_curves(tmp_path)
    assert path == str(tmp_path / 'curves.png')
    img = np.asarray(Image.open(path).convert('RGB'))
    # loss, acc, f1 and learning-rate panels: 3 columns x 2 rows.
    assert img.shape == (640, 1260, 3)
    assert img.std() > 5
    other = plot_training_curves(tmp_path, tmp_path / 'sub' / 'c.png')
    assert other.endswith('c.png')


def test_missing_cells_and_errors(tmp_path):
    _write_log(tmp_path, ['1,0.1,1.0,3,,,\n', '2,0.1,0.5,3,0.7,0.6,0.5\n'])
    assert math.isnan(read_log(tmp_path / 'log.csv')['val_acc'][0])
    plot_training_curves(tmp_path)

    with pytest.raises(FileNotFoundError, match="'log.csv'"):
        plot_training_curves(tmp_path / 'nothing')
    _write_log(tmp_path, ['1,0.1,abc,3,1,1,1\n'])
    with pytest.raises(ValueError, match="column 'train_loss'"):
        plot_training_curves(tmp_path)
    (tmp_path / 'log.csv').write_text('lr,time\n0.1,3\n')
    with pytest.raises(ValueError, match="'epoch'"):
        plot_training_curves(tmp_path)


def _saved_figures(monkeypatch):
    from matplotlib.figure import Figure
    figures, save = [], Figure.savefig

    def spy(fig, *args, **kwargs):
        figures.append(fig)
        return save(fig, *args, **kwargs)

    monkeypatch.setattr(Figure, 'savefig', spy)
    return figures


def test_epoch_ticks_are_integers(tmp_path, monkeypatch):
    figures = _saved_figures(monkeypatch)
    _write_log(tmp_path, [f'{e},1e-3,1.0,1.0,1.0,0.5,0.5\n'
                          for e in range(1, 4)])
    plot_training_curves(tmp_path)
    for ax in figures[0].axes:
        lo, hi = ax.get_xlim()
        ticks = [t for t in ax.get_xticks() if lo <= t <= hi]
        assert ticks and all(float(t).is_integer() for t in ticks), ticks


def test_confusion_matrix_has_a_colour_bar(tmp_path, monkeypatch):
    import torch
    from samsa_geo.visualization import plot_confusion_matrix
    figures = _saved_figures(monkeypatch)
    pred = torch.tensor([0, 1, 1, 2, 2, 2])
    target = torch.tensor([0, 1, 2, 2, 2, 0])
    path = plot_confusion_matrix(pred, target, ['a', 'b', 'c'],
                                 tmp_path / 'cm.png')
    assert Image.open(path).size[0] > 400
    ax, bar = figures[0].axes
    assert bar.get_ylabel() == 'fraction of the true class'
    cells = ax.images[0].get_array()
    np.testing.assert_allclose(cells, [[0.5, 0, 0.5], [0, 1, 0],
                                       [0, 1 / 3, 2 / 3]], atol=1e-6)
    assert [t.get_text() for t in ax.get_xticklabels()] == ['a', 'b', 'c']
