from typing import Dict, Optional

from torch_geometric.data import Batch


def batch_hints(data: Batch) -> Dict[str, Optional[int]]:
    r"""The sizes of the graphs of a PyG :class:`~torch_geometric.data.Batch`
    as host integers, read from its CPU-side bookkeeping (no device
    transfer): ``{'num_graphs': B, 'max_num_nodes': n_max}``.

    Passed to :class:`~samsa_geo.nn.SamsaConv`,
    :class:`~samsa_geo.nn.SamsaAttention` or the models, they let the
    forward pass run without a single host synchronisation, with exact
    shapes (a plain reshape when all graphs have the same size)::

        hints = batch_hints(data)
        out = conv(data.x, data.edge_index, data.batch, **hints)

    ``max_num_nodes`` is :obj:`None` when the batch does not record its
    node offsets (a batch not built by :meth:`Batch.from_data_list`); the
    layers then use bounds, still without a synchronisation.
    """
    if not isinstance(data, Batch):
        raise TypeError(f"Expected 'data' to be a torch_geometric Batch "
                        f"(got {type(data).__name__})")
    slices = getattr(data, '_slice_dict', None) or {}
    max_num_nodes = None
    for key in ('x', 'pos'):  # node-level attributes record the offsets
        cand = slices.get(key)
        if cand is None or cand.device.type != 'cpu':
            continue
        ptr = cand.tolist()  # host integers: no tensor op per batch
        if ptr and ptr[-1] == data.num_nodes:
            max_num_nodes = max((b - a for a, b in zip(ptr, ptr[1:])),
                                default=0)
            break
    return {'num_graphs': data.num_graphs, 'max_num_nodes': max_num_nodes}
