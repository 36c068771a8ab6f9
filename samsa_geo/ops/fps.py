from typing import Optional, Union

import torch
from torch import Tensor

import samsa_geo.typing
from samsa_geo.ops import _fallback, _triton
from samsa_geo.ops._fallback.fps import sample_counts, start_points
from samsa_geo.ops._utils import (
    batch_to_ptr,
    check_batch,
    check_points,
    cluster_supports,
    read_values,
    resolve_backend,
    use_compiled,
    use_triton,
)
from samsa_geo.ops.validation import check_bool


def _ratio_tensor(ratio: Union[float, Tensor], src: Tensor,
                  batch_size: int) -> Tensor:
    if isinstance(ratio, Tensor):
        if not ratio.is_floating_point():
            raise TypeError(f"Expected 'ratio' to be a floating-point tensor "
                            f"(got {ratio.dtype})")
        if ratio.dim() > 1 or (ratio.dim() == 1
                               and ratio.numel() not in (1, batch_size)):
            raise ValueError(f"Expected 'ratio' to have shape [] or "
                             f"[{batch_size}] (got {list(ratio.size())})")
        r = ratio.to(src.device)
        if r.numel() > 0 and not bool(((r > 0) & (r <= 1)).all()):
            raise ValueError(f"Expected 'ratio' to lie in (0, 1] "
                             f"(got {ratio})")
        return r
    if isinstance(ratio, bool) or not isinstance(ratio, (float, int)):
        raise TypeError(f"Expected 'ratio' to be a float or a Tensor "
                        f"(got {type(ratio).__name__})")
    if not 0 < ratio <= 1:  # checked on the host: no device read
        raise ValueError(f"Expected 'ratio' to lie in (0, 1] (got {ratio})")
    return torch.full((), float(ratio), dtype=src.dtype, device=src.device)


def fps(
    src: Tensor,
    batch: Optional[Tensor] = None,
    ratio: Union[float, Tensor] = 0.5,
    random_start: bool = True,
    batch_size: Optional[int] = None,
    *,
    backend: str = 'auto',
) -> Tensor:
    r"""Farthest point sampling from the `"PointNet++: Deep Hierarchical
    Feature Learning on Point Sets in a Metric Space"
    <https://arxiv.org/abs/1706.02413>`_ paper, with the semantics of
    :func:`torch_cluster.fps`.

    Starting from one point :math:`s_0` per example, every step adds the
    point farthest from those already sampled:

    .. math::
        s_{i} = \operatorname{arg\,max}_{j \in \mathcal{V}_b}
        \min_{l < i} \| \mathbf{x}_j - \mathbf{x}_{s_l} \|_2^2,

    where :math:`\mathcal{V}_b` are the points of example :math:`b`, until
    :math:`\lceil r \cdot |\mathcal{V}_b| \rceil` points are sampled
    (ties go to the smallest index).

    Uses :obj:`torch_cluster` when installed; otherwise, on CUDA, samsa_geo's
    Triton kernel (float32 points of up to three features: one program per
    example runs all steps, one host read per call); otherwise all examples
    are sampled at once in pure PyTorch on a padded :obj:`[B, N_max]`
    distance matrix. With :obj:`random_start=False` all give the same
    order; the random start of the Triton and pure-PyTorch paths follows
    :func:`torch.manual_seed` (:obj:`torch_cluster` on CPU draws it from
    C's :obj:`rand()`).

    With value checks on (the default, see
    :func:`~samsa_geo.ops.value_checks`), non-finite :obj:`src` and an
    unsorted :obj:`batch` raise a :class:`ValueError` naming the argument;
    all such checks share one device-to-host read per call. Inner layers
    that validated their input at the model's entry turn them off, as a
    read stalls the host on every call.

    Args:
        src (torch.Tensor): Point matrix :math:`\mathbf{X}`.
        batch (torch.Tensor, optional): Sorted batch vector assigning each
            point to an example. (default: :obj:`None`)
        ratio (float or torch.Tensor, optional): Sampling ratio in
            :math:`(0, 1]`, a scalar or one value per example.
            (default: :obj:`0.5`)
        random_start (bool, optional): If :obj:`False`, every example starts
            from its first point. (default: :obj:`True`)
        batch_size (int, optional): Number of examples :math:`B`, inferred
            from :obj:`batch` if not given. (default: :obj:`None`)
        backend (str, optional): :obj:`"auto"` (compiled when available,
            else Triton on CUDA where it applies), :obj:`"compiled"`,
            :obj:`"triton"` or :obj:`"torch"` (pure PyTorch).
            (default: :obj:`"auto"`)

    Shapes:
        - **input:** points :math:`(N, F)` (or :math:`(N)`), batch
          :math:`(N)`
        - **output:** global indices :math:`(\sum_b \lceil r \cdot N_b
          \rceil)`, in sampling order, concatenated by example
    """
    backend = resolve_backend(backend)
    src = check_points('src', src)
    batch = check_batch('batch', batch, src.size(0), src.device)
    size = read_values([('src', src)], [('batch', batch)], batch_size)
    r = _ratio_tensor(ratio, src, size)
    check_bool('random_start', random_start)
    ptr = batch_to_ptr(batch, src.size(0), size, src.device)
    src = src.contiguous()

    available = samsa_geo.typing.WITH_TORCH_CLUSTER
    supported = cluster_supports(src) if available else False
    if use_compiled(backend, available, supported, 'torch_cluster'):
        import torch_cluster  # noqa: F401  (registers torch.ops.torch_cluster)

        # torch_cluster writes out of bounds for empty examples; drop them.
        deg = ptr[1:] - ptr[:-1]
        nonempty = deg > 0
        if not bool(nonempty.all()):
            if r.dim() == 1 and r.numel() == size:
                r = r[nonempty]
            ptr = torch.cat([ptr[:1], ptr[1:][nonempty]])
        if ptr.numel() == 1:
            return torch.empty(0, dtype=torch.long, device=src.device)
        return torch.ops.torch_cluster.fps(src, ptr, r, random_start)

    supported = _triton.fps_supported(src, forced=backend == 'triton')
    if use_triton(backend, supported, 'float32 points of up to 3 features '
                  'on a CUDA device'):
        from samsa_geo.ops._triton.fps import fps_triton
        deg = ptr[1:] - ptr[:-1]
        num_samples = sample_counts(deg, r)
        start = start_points(deg, random_start)
        # The one host read: the output size and the kernel variant.
        max_points, total = torch.stack([deg.max(),
                                         num_samples.sum()]).tolist()
        with _triton.device_guard(src.device):
            return fps_triton(src, ptr, start, num_samples, max_points,
                              total)

    return _fallback.fps(src, ptr, r, random_start)
