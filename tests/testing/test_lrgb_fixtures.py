import os

import pytest
import torch

from samsa_geo.testing.lrgb_fixtures import (COCO_ORIGINAL_LABELS, LRGB_NAMES,
                                             write_lrgb_raw)


@pytest.mark.parametrize('name', LRGB_NAMES)
def test_raw_files(tmp_path, name):
    raw = write_lrgb_raw(str(tmp_path), name, sizes={'train': 2, 'val': 1,
                                                     'test': 1})
    ext = 'pickle' if name.endswith('-sp') else 'pt'
    assert sorted(os.listdir(raw)) == sorted(f'{s}.{ext}'
                                             for s in ('train', 'val', 'test'))


def test_deterministic_and_errors(tmp_path):
    a = write_lrgb_raw(str(tmp_path / 'a'), 'peptides-func', seed=3)
    b = write_lrgb_raw(str(tmp_path / 'b'), 'peptides-func', seed=3)
    ga = torch.load(os.path.join(a, 'train.pt'))
    gb = torch.load(os.path.join(b, 'train.pt'))
    for ta, tb in zip(ga, gb):
        assert all(torch.equal(u, v) for u, v in zip(ta, tb))
    assert len(COCO_ORIGINAL_LABELS) == 81 and max(COCO_ORIGINAL_LABELS) == 90
    with pytest.raises(ValueError, match="'name'"):
        write_lrgb_raw(str(tmp_path), 'zinc')
