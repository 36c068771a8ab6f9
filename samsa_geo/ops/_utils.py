"""Input validation and backend selection shared by the geometry ops."""
from typing import List, NamedTuple, Optional, Sequence, Tuple, Union

import torch
from torch import Tensor

from samsa_geo.ops import _triton, config, validation

#: Backends of radius and scatter, which have no Triton kernel.
CLUSTER_BACKENDS = ('auto', 'compiled', 'torch')


def resolve_backend(backend: str,
                    backends: Tuple[str, ...] = config.BACKENDS) -> str:
    r"""Checks :obj:`backend` against the op's :obj:`backends` and resolves
    :obj:`"auto"` to :func:`~samsa_geo.ops.config.default_backend` (kept
    :obj:`"auto"` where the op does not offer the default)."""
    if backend not in backends:
        raise ValueError(f"Expected 'backend' to be one of {backends} "
                         f"(got {backend!r})")
    if backend == 'auto' and config.default_backend() in backends:
        return config.default_backend()
    return backend


def use_compiled(backend: str, available: bool, supported: bool,
                 package: str) -> bool:
    r"""Decides whether a call goes to the compiled extension.

    :obj:`available` says whether :obj:`package` is installed,
    :obj:`supported` whether it can serve this particular call (device,
    arguments).
    """
    if backend in ('torch', 'triton'):
        return False
    if backend == 'compiled':
        if not available:
            raise ImportError(f"backend='compiled' requires '{package}', "
                              f"which is not installed")
        if not supported:
            raise ValueError(f"'{package}' does not support this call "
                             f"(device or arguments); use backend='auto'")
        return True
    return available and supported


def use_triton(backend: str, supported: bool, what: str) -> bool:
    r"""Decides whether a call goes to samsa_geo's Triton kernel, after
    :func:`use_compiled` declined it; :obj:`supported` says whether the
    kernel serves the call and :obj:`what` names what it needs."""
    if backend == 'triton':
        if not _triton.HAS_TRITON:
            raise ImportError("backend='triton' requires 'triton', which "
                              "is not installed")
        if not supported:
            raise ValueError(f"samsa_geo's Triton kernel does not support "
                             f"this call (it needs {what}); use "
                             f"backend='auto'")
        return True
    return backend == 'auto' and supported


def check_points(name: str, x: Tensor) -> Tensor:
    r"""Returns :obj:`x` as a 2-dimensional floating-point matrix."""
    validation.check_float_tensor(name, x)
    if x.dim() == 1:
        x = x.view(-1, 1)  # [N, 1]
    if x.dim() != 2:
        raise ValueError(f"Expected '{name}' to have shape [N, F] "
                         f"(got {list(x.size())})")
    return x


def check_residual(x: Tensor, h: Tensor) -> None:
    r"""Checks rows :obj:`x` :obj:`[N, C]` and a residual :obj:`h` of
    their shape."""
    if not isinstance(x, Tensor) or x.dim() != 2:
        raise ValueError(f"Expected 'x' to be a tensor of shape [N, C] "
                         f"(got {getattr(x, 'shape', type(x).__name__)})")
    if not isinstance(h, Tensor) or h.shape != x.shape:
        raise ValueError(f"Expected 'h' to have the shape of 'x' "
                         f"{list(x.shape)} (got "
                         f"{getattr(h, 'shape', type(h).__name__)})")


def check_channel_vectors(C: int, vectors: Sequence[Tuple[str, Optional[
        Tensor]]]) -> None:
    r"""Checks per-channel vectors :obj:`(name, tensor)` of shape
    :obj:`[C]` (:obj:`None` ones are skipped)."""
    for name, t in vectors:
        if t is not None and (not isinstance(t, Tensor)
                              or tuple(t.shape) != (C, )):
            raise ValueError(f"Expected '{name}' to have shape [{C}] "
                             f"(got {getattr(t, 'shape', t)})")


def check_floating(tensors: Sequence[Tuple[str, Optional[Tensor]]]) -> None:
    r"""Checks that the tensors :obj:`(name, tensor)` are floating point
    (:obj:`None` ones are skipped)."""
    for name, t in tensors:
        if t is not None and not t.is_floating_point():
            raise TypeError(f"Expected '{name}' to be floating point "
                            f"(got {t.dtype})")


def check_batch(name: str, batch: Optional[Tensor], num_nodes: int,
                device: torch.device) -> Optional[Tensor]:
    r"""Validates the type, shape and device of a batch vector of length
    :obj:`num_nodes` (its values are checked by :func:`read_values`)."""
    if batch is None:
        return None
    validation.check_integer_tensor(name, batch)
    if batch.dim() != 1 or batch.numel() != num_nodes:
        raise ValueError(f"Expected '{name}' to have shape [{num_nodes}] "
                         f"(got {list(batch.size())})")
    if batch.device != device:
        raise ValueError(f"Expected '{name}' on device {device} "
                         f"(got {batch.device})")
    return batch.long()


def _distinct(named: Sequence[Tuple[str, Optional[Tensor]]]
              ) -> List[Tuple[str, Tensor]]:
    # The non-empty tensors of `named`, each object once.
    seen, out = set(), []
    for name, t in named:
        if t is not None and t.numel() > 0 and id(t) not in seen:
            seen.add(id(t))
            out.append((name, t))
    return out


#: Integer dtypes of a float's bit pattern, by the float's size in bytes.
_BITS = {2: torch.int16, 4: torch.int32, 8: torch.int64}
#: Exponent bits of the floating-point dtypes: all set in inf and NaN.
_EXPONENT = {torch.float16: 0x7C00, torch.bfloat16: 0x7F80,
             torch.float32: 0x7F800000, torch.float64: 0x7FF0000000000000}


class PendingReads(NamedTuple):
    r"""Device-side values of an op's value checks (:func:`collect_values`),
    read later in one device-to-host copy by :func:`finish_reads`."""
    kinds: List[Tuple[str, str, Optional[torch.dtype]]]
    values: List[Tensor]


def collect_values(points: Sequence[Tuple[str, Tensor]],
                   batches: Sequence[Tuple[str, Optional[Tensor]]],
                   batch_size: Optional[int]) -> PendingReads:
    r"""The device-side scalars that the value checks and the number of
    examples need (see :func:`read_values`), without reading them: per
    point tensor its minimum and maximum (:meth:`torch.aminmax`, which
    propagates NaN; as bit patterns, so that one integer tensor holds every
    value), per batch vector its first entry, its smallest step and its
    last entry."""
    if batch_size is not None:
        validation.check_positive_int('batch_size', batch_size)
    check = config.value_checks_enabled() and \
        not torch.compiler.is_compiling()
    need_last = check or batch_size is None
    # A tensor passed twice (knn(x, x, ...)) is read once, by its first name.
    points, batches = _distinct(points), _distinct(batches)
    kinds: List[Tuple[str, str, Optional[torch.dtype]]] = []
    values: List[Tensor] = []
    if check:
        for name, x in points:
            if x.dtype not in _EXPONENT:  # e.g. float8: compared in float32
                x = x.float()
            kinds += [('finite', name, x.dtype)] * 2
            values += [v.view(_BITS[x.element_size()])
                       for v in torch.aminmax(x)]
        for name, b in batches:
            kinds.append(('first', name, None))
            values.append(b[0])
            if b.numel() > 1:
                kinds.append(('step', name, None))
                values.append(torch.diff(b).min())
    if need_last:
        kinds += [('last', name, None) for name, _ in batches]
        values += [b[-1] for _, b in batches]
    return PendingReads(kinds, values)


class DeferredReads(NamedTuple):
    r"""The value checks of an op's inputs before any of them is launched:
    :func:`finish_reads` launches them (:func:`collect_values`) and reads
    them, so that an op whose kernel is safe on any batch values can
    launch its kernel first and the checks while the GPU runs it."""
    points: List[Tuple[str, Tensor]]
    batches: List[Tuple[str, Optional[Tensor]]]
    batch_size: Optional[int]


def finish_reads(pending: Union[PendingReads, DeferredReads],
                 batch_size: Optional[int],
                 extra: Sequence[Tensor] = ()) -> Tuple[int, List[int]]:
    r"""Reads the values of :obj:`pending` (launching its checks first if
    they are deferred) and the integer scalars :obj:`extra` in one
    device-to-host copy, raises the errors of the value checks and returns
    the number of examples and the values of :obj:`extra`."""
    if isinstance(pending, DeferredReads):
        pending = collect_values(*pending)
    tensors = pending.values + list(extra)
    values = torch.stack([t.long() for t in tensors]).tolist() \
        if tensors else []  # the one host read
    inferred = 1
    for (kind, name, dtype), value in zip(pending.kinds, values):
        if kind == 'finite' and value & _EXPONENT[dtype] == _EXPONENT[dtype]:
            validation.raise_non_finite(name)
        if kind in ('first', 'step') and value < 0:
            validation.raise_unsorted(name)
        if kind == 'last':
            inferred = max(inferred, value + 1)
    extra_values = values[len(pending.values):]
    if batch_size is None:
        return inferred, extra_values
    if batch_size < inferred:
        raise ValueError(f"Expected 'batch_size' to be at least the number "
                         f"of examples in the batch vector ({inferred}) "
                         f"(got {batch_size})")
    return batch_size, extra_values


def read_values(points: Sequence[Tuple[str, Tensor]],
                batches: Sequence[Tuple[str, Optional[Tensor]]],
                batch_size: Optional[int]) -> int:
    r"""Checks the values of an op's inputs and returns the number of
    examples, with at most one device-to-host read.

    With value checks on (:func:`~samsa_geo.ops.config.value_checks`, and
    not under :func:`torch.compile`), :obj:`points` must be finite and the
    :obj:`batches` sorted and non-negative. The number of examples is
    :obj:`batch_size`, checked against the batch vectors, or inferred from
    their last entries; without checks and with :obj:`batch_size` given
    nothing is read.
    """
    return finish_reads(collect_values(points, batches, batch_size),
                        batch_size)[0]


def batch_to_ptr(batch: Optional[Tensor], num_nodes: int, batch_size: int,
                 device: torch.device) -> Tensor:
    r"""Converts a sorted batch vector into CSR boundaries
    :obj:`ptr` of shape :obj:`[batch_size + 1]`."""
    if batch is None:
        ptr = torch.zeros(batch_size + 1, dtype=torch.long, device=device)
        ptr[1:] = num_nodes
        return ptr
    bounds = torch.arange(batch_size + 1, device=device)
    return torch.searchsorted(batch, bounds)


def check_pair(
    x: Tensor, y: Tensor, batch_x: Optional[Tensor], batch_y: Optional[Tensor],
    batch_size: Optional[int], chunk_size: Optional[int], defer: bool = False,
    batch_names: Tuple[str, str] = ('batch_x', 'batch_y'),
) -> Tuple[Tensor, Tensor, Optional[Tensor], Optional[Tensor], int,
           Optional[DeferredReads]]:
    r"""Validates the candidates :obj:`x` and queries :obj:`y` of
    :func:`~samsa_geo.ops.knn` and :func:`~samsa_geo.ops.radius` (points of
    one width on one device), their batch vectors (values included, see
    :func:`read_values`) and :obj:`chunk_size`; returns
    :obj:`(x, y, batch_x, batch_y, batch_size, pending)`. With
    :obj:`defer` and :obj:`batch_size` given, the value checks are neither
    launched nor read yet but returned as :obj:`pending`
    (:class:`DeferredReads`), for the caller's :func:`finish_reads`
    (:obj:`None` otherwise). Errors name the batch vectors
    :obj:`batch_names` (``('batch', 'batch')`` for the graph ops, whose
    caller passed one)."""
    name_x, name_y = batch_names
    x, y = check_points('x', x), check_points('y', y)
    if x.size(1) != y.size(1):
        raise ValueError(f"Expected 'x' and 'y' to have the same number of "
                         f"features (got {x.size(1)} and {y.size(1)})")
    if y.device != x.device:
        raise ValueError(f"Expected 'y' on device {x.device} "
                         f"(got {y.device})")
    if chunk_size is not None:
        validation.check_positive_int('chunk_size', chunk_size)
    batch_x = check_batch(name_x, batch_x, x.size(0), x.device)
    batch_y = check_batch(name_y, batch_y, y.size(0), y.device)
    pending: Optional[DeferredReads] = DeferredReads(
        [('x', x), ('y', y)], [(name_x, batch_x), (name_y, batch_y)],
        batch_size)
    if defer and batch_size is not None:
        validation.check_positive_int('batch_size', batch_size)
        size = batch_size
    else:
        size, _ = finish_reads(pending, batch_size)
        pending = None
    if size > 1 and (batch_x is None or batch_y is None):
        names = f"'{name_x}'" if name_x == name_y else \
            f"both '{name_x}' and '{name_y}'"
        raise ValueError(f"Expected {names} when the batch holds several "
                         f"examples (got {size} examples)")
    return x, y, batch_x, batch_y, size, pending


FLOWS = ('source_to_target', 'target_to_source')


def check_flow(flow: str) -> None:
    if flow not in FLOWS:
        raise ValueError(f"Expected 'flow' to be one of {FLOWS} "
                         f"(got {flow!r})")


def flow_edges(edge_index: Tensor, flow: str) -> Tuple[Tensor, Tensor]:
    r"""The :obj:`(row, col)` of a :func:`~samsa_geo.ops.knn` or
    :func:`~samsa_geo.ops.radius` result (row 0 the queries) in the order of
    :obj:`flow`: :obj:`"source_to_target"` puts the queries, the centres,
    in :obj:`col`."""
    if flow == 'source_to_target':
        return edge_index[1], edge_index[0]
    return edge_index[0], edge_index[1]


def cluster_supports(x: Tensor) -> bool:
    r"""Whether the installed :obj:`torch_cluster` handles :obj:`x`'s
    device."""
    if x.device.type == 'cpu':
        return True
    if x.device.type != 'cuda':
        return False
    import torch_cluster  # noqa: F401  (registers torch.ops.torch_cluster)
    return int(torch.ops.torch_cluster.cuda_version()) != -1


def promoted_float(a: torch.dtype, b: torch.dtype) -> torch.dtype:
    r"""The dtype that an operation of floating-point tensors of dtypes
    :obj:`a` and :obj:`b` gives, as :func:`torch.promote_types`, without
    its dispatch (host time on every call of a layer)."""
    if a == b:
        return a
    if a.itemsize != b.itemsize:
        return a if a.itemsize > b.itemsize else b
    return torch.promote_types(a, b)  # float16 with bfloat16


def at_least_float32(dtype: torch.dtype) -> torch.dtype:
    r"""The dtype of steps that run in float32 from narrower floating-point
    dtypes (scores, norms) and in :obj:`dtype` itself where it is wider
    (float64 in a float64 layer)."""
    return promoted_float(dtype, torch.float32)
