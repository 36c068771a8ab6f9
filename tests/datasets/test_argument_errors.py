"""Argument errors of the dataset helpers that name the argument at fault."""
import pytest
import torch

from samsa_geo.datasets import (
    ModelNet40HDF5,
    ModelNet40NormalResampled,
    ShapeNetPart,
    holdout_indices,
    lrgb_task,
    modelnet_princeton,
)


@pytest.mark.parametrize('name', [3, None, b'peptides-func'])
def test_lrgb_task_needs_a_str(name):
    with pytest.raises(TypeError, match="'name' to be a str"):
        lrgb_task(name)
    assert lrgb_task('Peptides-func').level == 'graph'


Y = torch.tensor([0, 0, 0, 1, 1, 1, 2, 2, 2, 2])


@pytest.mark.parametrize('ratio, err', [
    (float('nan'), ValueError), (0.0, ValueError), (-0.5, ValueError),
    (1.0, ValueError), (1.5, ValueError), (float('inf'), ValueError),
    ('0.5', TypeError), (True, TypeError),
])
def test_holdout_indices_ratio(ratio, err):
    with pytest.raises(err, match="'ratio'"):
        holdout_indices(Y, ratio)


@pytest.mark.parametrize('y, err, match', [
    (Y.view(-1, 1), ValueError, r"'y' to have shape \[N\] \(got \[10, 1\]\)"),
    (Y.tolist(), TypeError, "'y' to be a Tensor"),
])
def test_holdout_indices_labels(y, err, match):
    with pytest.raises(err, match=match):
        holdout_indices(y, 0.5)


def test_holdout_indices_seed_and_valid_calls():
    with pytest.raises(TypeError, match="'seed' to be an int"):
        holdout_indices(Y, 0.5, seed=1.5)
    out = holdout_indices(Y, 0.5)
    assert torch.equal(out, holdout_indices(Y, 0.5, seed=0))
    assert out.tolist() == sorted(set(out.tolist()))
    # At least one sample of every class of two or more.
    assert set(Y[out].tolist()) == {0, 1, 2}
    assert holdout_indices(torch.zeros(0, dtype=torch.long), 0.5).numel() == 0


@pytest.mark.parametrize('load', [
    ModelNet40HDF5, ModelNet40NormalResampled, modelnet_princeton,
    lambda root, **kw: ShapeNetPart(root, categories='Mug', **kw),
], ids=['ModelNet40HDF5', 'ModelNet40NormalResampled', 'modelnet_princeton',
        'ShapeNetPart'])
@pytest.mark.parametrize('num_points', [True, False])
def test_num_points_must_not_be_a_bool(tmp_path, offline, load, num_points):
    # Checked before any file is read: True was clouds of one point (and
    # a cache named after 'True').
    with pytest.raises(TypeError) as info:
        load(str(tmp_path), num_points=num_points)
    assert str(info.value) == "Expected 'num_points' to be an int (got bool)"
