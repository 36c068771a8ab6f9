from typing import List, Optional, Union

import torch
from torch_geometric.data import Data
from torch_geometric.transforms import BaseTransform


class RandomSignFlip(BaseTransform):
    r"""Multiplies every column (eigenvector) of the Laplacian positional
    encoding by an independent random sign, a training-time augmentation
    from the `"Benchmarking Graph Neural Networks"
    <https://arxiv.org/abs/2003.00982>`_ paper:

    .. math::
        \mathbf{U}' = \mathbf{U} \, \mathrm{diag}(s_1, \ldots, s_k), \qquad
        s_j \sim \mathcal{U}\{-1, +1\}.

    One sign per eigenvector and graph, shared by all nodes of the graph.
    Use it as :obj:`transform` (applied on every access), never as
    :obj:`pre_transform`.

    Args:
        attr_name (str or List[str], optional): The attribute(s) to flip.
            (default: :obj:`"lap_pe"`)
        generator (torch.Generator, optional): Random generator; the global
            one if :obj:`None`. (default: :obj:`None`)
    """
    def __init__(
        self,
        attr_name: Union[str, List[str]] = 'lap_pe',
        generator: Optional[torch.Generator] = None,
    ) -> None:
        names = [attr_name] if isinstance(attr_name, str) else list(attr_name)
        if len(names) == 0 or not all(isinstance(n, str) for n in names):
            raise ValueError(f"Expected 'attr_name' to be a string or a list "
                             f"of strings (got {attr_name!r})")
        self.attr_name = names
        self.generator = generator

    def forward(self, data: Data) -> Data:
        for name in self.attr_name:
            pe = data[name] if name in data else None
            if pe is None:
                raise ValueError(f"Expected 'data.{name}' to be set (did you "
                                 f"run AddLaplacianPE as pre_transform?)")
            if pe.dim() != 2:
                raise ValueError(f"Expected 'data.{name}' to have shape "
                                 f"[N, k] (got {list(pe.shape)})")
            bits = torch.randint(0, 2, (pe.size(1), ),
                                 generator=self.generator)
            sign = (2 * bits - 1).to(pe.dtype).to(pe.device)  # [k]
            data[name] = pe * sign
        return data

    def __repr__(self) -> str:
        names = self.attr_name[0] if len(self.attr_name) == 1 else self.attr_name
        return f'{self.__class__.__name__}(attr_name={names!r})'
