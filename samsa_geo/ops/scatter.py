from typing import Optional

from torch import Tensor

import samsa_geo.typing
from samsa_geo.ops import _fallback
from samsa_geo.ops._utils import (
    CLUSTER_BACKENDS,
    resolve_backend,
    use_compiled,
)
from samsa_geo.ops.validation import check_integer_tensor, check_tensor

REDUCTIONS = ('sum', 'add', 'mean', 'max', 'min')


def _check(src: Tensor, index: Tensor, dim: int) -> int:
    check_tensor('src', src)
    check_integer_tensor('index', index)
    if src.dim() == 0:
        raise ValueError("Expected 'src' to have at least one dimension")
    if not -src.dim() <= dim < src.dim():
        raise IndexError(f"Expected 'dim' in [{-src.dim()}, {src.dim() - 1}] "
                         f"(got {dim})")
    dim = dim % src.dim()
    if index.dim() == 1:
        if index.numel() != src.size(dim):
            raise ValueError(f"Expected 'index' to have shape "
                             f"[{src.size(dim)}] (got {list(index.size())})")
    elif index.size() != src.size():
        raise ValueError(f"Expected 'index' to have shape [{src.size(dim)}] "
                         f"or {list(src.size())} (got {list(index.size())})")
    if index.numel() > 0 and int(index.min()) < 0:
        raise IndexError("Expected 'index' to be non-negative")
    return dim


def scatter(
    src: Tensor,
    index: Tensor,
    dim: int = 0,
    dim_size: Optional[int] = None,
    reduce: str = 'sum',
    *,
    backend: str = 'auto',
) -> Tensor:
    r"""Reduces all values of :obj:`src` that share an index along
    :obj:`dim`, with the semantics of :func:`torch_scatter.scatter`.

    .. math::
        \mathrm{out}_i = \bigoplus_{j \,:\, \mathrm{index}_j = i}
        \mathrm{src}_j,

    where :math:`\bigoplus` is the sum, mean, maximum or minimum. Segments
    without any entry are :obj:`0`; the mean of integers rounds down.

    Args:
        src (torch.Tensor): The source tensor.
        index (torch.Tensor): Segment of every slice of :obj:`src` along
            :obj:`dim`: 1-dimensional, or of the shape of :obj:`src`.
        dim (int, optional): The axis to reduce. (default: :obj:`0`)
        dim_size (int, optional): Size of :obj:`dim` in the output,
            :obj:`index.max() + 1` if not given. (default: :obj:`None`)
        reduce (str, optional): :obj:`"sum"`, :obj:`"mean"`, :obj:`"max"` or
            :obj:`"min"`. (default: :obj:`"sum"`)
        backend (str, optional): :obj:`"auto"` (:obj:`torch_scatter` when
            installed), :obj:`"compiled"` or :obj:`"torch"`.
            (default: :obj:`"auto"`)

    Shapes:
        - **input:** src :math:`(*, N, *)`, index :math:`(N)` or the shape of
          src
        - **output:** :math:`(*, \text{dim\_size}, *)`
    """
    return _scatter(src, index, dim, dim_size, reduce, backend)


def _check_size(name: str, size: Optional[int]) -> None:
    # The output size along `dim` (its values are checked against the
    # index in _scatter).
    if size is not None and (isinstance(size, bool)
                             or not isinstance(size, int)):
        raise TypeError(f"Expected '{name}' to be an int or None "
                        f"(got {type(size).__name__})")
    if size is not None and size < 0:
        raise ValueError(f"Expected '{name}' to be non-negative (got {size})")


def _scatter(src: Tensor, index: Tensor, dim: int, dim_size: Optional[int],
             reduce: str, backend: str, size_name: str = 'dim_size'
             ) -> Tensor:
    # scatter, with errors naming the output size `size_name`.
    backend = resolve_backend(backend, CLUSTER_BACKENDS)
    _check_size(size_name, dim_size)
    dim = _check(src, index, dim)
    if reduce not in REDUCTIONS:
        raise ValueError(f"Expected 'reduce' to be one of {REDUCTIONS} "
                         f"(got {reduce!r})")
    index = index.long()
    max_index = int(index.max()) + 1 if index.numel() > 0 else 0
    if dim_size is None:
        dim_size = max_index
    elif dim_size < max_index:
        raise IndexError(f"Expected '{size_name}' to exceed the largest "
                         f"index {max_index - 1} (got {dim_size})")

    if use_compiled(backend, samsa_geo.typing.WITH_TORCH_SCATTER, True,
                    'torch_scatter'):
        import torch_scatter
        return torch_scatter.scatter(src, index, dim, dim_size=dim_size,
                                     reduce=reduce)
    return _fallback.scatter(src, index, dim, dim_size, reduce)


def segment_softmax(
    src: Tensor,
    index: Tensor,
    num_segments: Optional[int] = None,
    dim: int = 0,
    *,
    backend: str = 'auto',
) -> Tensor:
    r"""Softmax over the entries of :obj:`src` that share an index along
    :obj:`dim`.

    .. math::
        \mathrm{out}_j = \frac{\exp(\mathrm{src}_j - m_{\mathrm{index}_j})}
        {\sum_{l \,:\, \mathrm{index}_l = \mathrm{index}_j}
        \exp(\mathrm{src}_l - m_{\mathrm{index}_j})},

    where :math:`m_i` is the segment maximum (for numerical stability).

    Args:
        src (torch.Tensor): Floating-point scores.
        index (torch.Tensor): 1-dimensional segment of every slice along
            :obj:`dim`.
        num_segments (int, optional): Number of segments.
            (default: :obj:`None`)
        dim (int, optional): The axis to normalise over. (default: :obj:`0`)
        backend (str, optional): See :func:`scatter`.
            (default: :obj:`"auto"`)

    Shapes:
        - **input:** src :math:`(*, N, *)`, index :math:`(N)`
        - **output:** the shape of src
    """
    if isinstance(src, Tensor) and not src.is_floating_point():
        raise TypeError(f"Expected 'src' to be a floating-point tensor "
                        f"(got {src.dtype})")
    backend = resolve_backend(backend, CLUSTER_BACKENDS)
    _check_size('num_segments', num_segments)
    dim = _check(src, index, dim)
    if index.dim() != 1:
        raise ValueError(f"Expected 'index' to have shape [{src.size(dim)}] "
                         f"(got {list(index.size())})")
    index = index.long()
    src_max = _scatter(src.detach(), index, dim, num_segments, 'max',
                       backend, 'num_segments').index_select(dim, index)
    out = (src - src_max).exp()
    out_sum = _scatter(out, index, dim, num_segments, 'sum', backend,
                       'num_segments').index_select(dim, index)
    return out / out_sum
