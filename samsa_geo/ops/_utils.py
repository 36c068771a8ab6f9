"""Input validation and backend selection shared by the geometry ops."""
from typing import Optional, Tuple

import torch
from torch import Tensor

BACKENDS = ('auto', 'compiled', 'torch')


def check_backend(backend: str) -> None:
    if backend not in BACKENDS:
        raise ValueError(f"Expected 'backend' to be one of {BACKENDS} "
                         f"(got {backend!r})")


def use_compiled(backend: str, available: bool, supported: bool,
                 package: str) -> bool:
    r"""Decides whether a call goes to the compiled extension.

    :obj:`available` says whether :obj:`package` is installed,
    :obj:`supported` whether it can serve this particular call (device,
    arguments).
    """
    check_backend(backend)
    if backend == 'torch':
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


def check_points(name: str, x: Tensor) -> Tensor:
    r"""Returns :obj:`x` as a 2-dimensional floating-point matrix."""
    if not isinstance(x, Tensor):
        raise TypeError(f"Expected '{name}' to be a Tensor "
                        f"(got {type(x).__name__})")
    if not x.is_floating_point():
        raise TypeError(f"Expected '{name}' to be a floating-point tensor "
                        f"(got {x.dtype})")
    if x.dim() == 1:
        x = x.view(-1, 1)  # [N, 1]
    if x.dim() != 2:
        raise ValueError(f"Expected '{name}' to have shape [N, F] "
                         f"(got {list(x.size())})")
    return x


def check_positive_int(name: str, value: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"Expected '{name}' to be an int "
                        f"(got {type(value).__name__})")
    if value <= 0:
        raise ValueError(f"Expected '{name}' to be positive (got {value})")


def check_batch(name: str, batch: Optional[Tensor], num_nodes: int,
                device: torch.device) -> Optional[Tensor]:
    r"""Validates a sorted batch vector of length :obj:`num_nodes`."""
    if batch is None:
        return None
    if not isinstance(batch, Tensor):
        raise TypeError(f"Expected '{name}' to be a Tensor "
                        f"(got {type(batch).__name__})")
    if batch.dtype.is_floating_point or batch.dtype == torch.bool:
        raise TypeError(f"Expected '{name}' to be an integer tensor "
                        f"(got {batch.dtype})")
    if batch.dim() != 1 or batch.numel() != num_nodes:
        raise ValueError(f"Expected '{name}' to have shape [{num_nodes}] "
                         f"(got {list(batch.size())})")
    if batch.device != device:
        raise ValueError(f"Expected '{name}' on device {device} "
                         f"(got {batch.device})")
    batch = batch.long()
    if num_nodes > 0:
        if int(batch.min()) < 0:
            raise ValueError(f"Expected '{name}' to be non-negative")
        if bool((batch[1:] < batch[:-1]).any()):
            raise ValueError(f"Expected '{name}' to be sorted in ascending "
                             f"order")
    return batch


def num_examples(batch_size: Optional[int], *batches: Optional[Tensor]) -> int:
    r"""Returns the number of examples, checked against the batch vectors."""
    inferred = 1
    for batch in batches:
        if batch is not None and batch.numel() > 0:
            inferred = max(inferred, int(batch[-1]) + 1)
    if batch_size is None:
        return inferred
    check_positive_int('batch_size', batch_size)
    if batch_size < inferred:
        raise ValueError(f"Expected 'batch_size' to be at least the number "
                         f"of examples in the batch vector ({inferred}) "
                         f"(got {batch_size})")
    return batch_size


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


def paired_batches(x: Tensor, y: Tensor, batch_x: Optional[Tensor],
                   batch_y: Optional[Tensor], batch_size: Optional[int]
                   ) -> Tuple[Optional[Tensor], Optional[Tensor], int]:
    r"""Validates the batch vectors of a query/candidate pair."""
    batch_x = check_batch('batch_x', batch_x, x.size(0), x.device)
    batch_y = check_batch('batch_y', batch_y, y.size(0), y.device)
    size = num_examples(batch_size, batch_x, batch_y)
    if size > 1 and (batch_x is None or batch_y is None):
        raise ValueError("Expected both 'batch_x' and 'batch_y' when the "
                         f"batch holds several examples (got {size} examples)")
    return batch_x, batch_y, size


def cluster_supports(x: Tensor) -> bool:
    r"""Whether the installed :obj:`torch_cluster` handles :obj:`x`'s
    device."""
    if x.device.type == 'cpu':
        return True
    if x.device.type != 'cuda':
        return False
    import torch_cluster  # noqa: F401  (registers torch.ops.torch_cluster)
    return int(torch.ops.torch_cluster.cuda_version()) != -1
