r"""What an LRGB pipeline needs beyond
:class:`torch_geometric.datasets.LRGBDataset` (which downloads and processes
the archives): the per-dataset task table and the feature normalisation of
the superpixel datasets.
"""
from typing import Dict, Iterable, NamedTuple, Optional

from torch_geometric.data import Data

from samsa_geo.transforms.standardize_features import StandardizeFeatures


class LRGBTask(NamedTuple):
    r"""Task description of one LRGB dataset.

    Attributes:
        level (str): :obj:`"graph"`, :obj:`"node"` or :obj:`"edge"`.
        task_type (str): :obj:`"multilabel"`, :obj:`"regression"`,
            :obj:`"multiclass"` or :obj:`"link_prediction"`.
        out_channels (int): Model output width.
        metric (str): Name of the :mod:`samsa_geo.metrics` function (for
            PCQM-Contact the key of :func:`~samsa_geo.metrics.mrr`'s result).
        higher_is_better (bool): Direction of the metric.
        loss (str): Usual training loss.
        categorical (bool): OGB integer features (use
            :class:`~samsa_geo.nn.encoders.CategoricalEncoder`) rather than
            float features.
        node_channels (int): Columns of :obj:`data.x`.
        edge_channels (int): Columns of :obj:`data.edge_attr`.
    """
    level: str
    task_type: str
    out_channels: int
    metric: str
    higher_is_better: bool
    loss: str
    categorical: bool
    node_channels: int
    edge_channels: int


LRGB_TASKS: Dict[str, LRGBTask] = {
    'peptides-func': LRGBTask('graph', 'multilabel', 10,
                              'average_precision_multitask', True,
                              'bce_with_logits', True, 9, 3),
    'peptides-struct': LRGBTask('graph', 'regression', 11,
                                'mean_absolute_error', False, 'l1', True, 9, 3),
    'pascalvoc-sp': LRGBTask('node', 'multiclass', 21, 'macro_f1', True,
                             'cross_entropy', False, 14, 2),
    'coco-sp': LRGBTask('node', 'multiclass', 81, 'macro_f1', True,
                        'cross_entropy', False, 14, 2),
    'pcqm-contact': LRGBTask('edge', 'link_prediction', 1, 'mrr_filtered',
                             True, 'bce_with_logits', True, 9, 3),
}


def lrgb_task(name: str) -> LRGBTask:
    r"""The :class:`LRGBTask` of dataset :obj:`name` (case-insensitive, as
    accepted by :class:`~torch_geometric.datasets.LRGBDataset`)."""
    if not isinstance(name, str):
        raise TypeError(f"Expected 'name' to be a str, one of "
                        f"{list(LRGB_TASKS)} (got {type(name).__name__})")
    key = name.lower()
    if key not in LRGB_TASKS:
        raise ValueError(f"Expected 'name' to be one of {list(LRGB_TASKS)} "
                         f"(got {name!r})")
    return LRGB_TASKS[key]


def lrgb_feature_normalization(
        name: str,
        train_dataset: Iterable[Data]) -> Optional[StandardizeFeatures]:
    r"""Channel-wise standardisation of :obj:`x` and :obj:`edge_attr` with
    statistics of the *training* split, for PascalVOC-SP and COCO-SP (returns
    :obj:`None` for the datasets with categorical features). Use the returned
    transform as :obj:`transform` of all three splits.

    Example::

        train = LRGBDataset(root, 'PascalVOC-SP', split='train')
        norm = lrgb_feature_normalization('PascalVOC-SP', train)
        train.transform = norm
        val = LRGBDataset(root, 'PascalVOC-SP', split='val', transform=norm)
    """
    if lrgb_task(name).categorical:
        return None
    return StandardizeFeatures.from_dataset(train_dataset,
                                            attrs=('x', 'edge_attr'))
