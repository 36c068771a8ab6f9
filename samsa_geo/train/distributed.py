"""Process-group set-up and variable-length gathering for DDP via torchrun."""
import atexit
import os
from datetime import timedelta
from typing import Any, Dict, List, Optional, Tuple

import torch
import torch.distributed as dist
from torch import Tensor


def _env_int(name: str, default: int) -> int:
    value = os.environ.get(name)
    if value is None or value == '':
        return default
    try:
        return int(value)
    except ValueError:
        raise ValueError(f"Expected environment variable '{name}' to be an "
                         f"integer (got {value!r})") from None


def init_distributed(backend: Optional[str] = None) -> Tuple[int, int, int]:
    r"""Joins the process group described by torchrun's environment
    (:obj:`RANK`, :obj:`WORLD_SIZE`, :obj:`LOCAL_RANK`, :obj:`MASTER_ADDR`,
    :obj:`MASTER_PORT`) if :obj:`WORLD_SIZE > 1` and no group exists yet.
    Idempotent; a no-op for single-process runs.

    Args:
        backend (str, optional): :obj:`'nccl'` or :obj:`'gloo'`; NCCL when CUDA
            is available, Gloo otherwise, if :obj:`None`. (default: :obj:`None`)

    Returns:
        :obj:`(rank, world_size, local_rank)`.
    """
    if dist.is_available() and dist.is_initialized():
        return (dist.get_rank(), dist.get_world_size(),
                _env_int('LOCAL_RANK', 0))
    world_size = _env_int('WORLD_SIZE', 1)
    if world_size <= 1:
        return 0, 1, 0
    rank = _env_int('RANK', 0)
    local_rank = _env_int('LOCAL_RANK', 0)
    if backend is None:
        backend = 'nccl' if torch.cuda.is_available() else 'gloo'
    if backend == 'nccl':
        torch.cuda.set_device(local_rank)
    dist.init_process_group(backend=backend, init_method='env://',
                            rank=rank, world_size=world_size)
    atexit.register(_destroy)
    return rank, world_size, local_rank


def _destroy() -> None:
    if dist.is_available() and dist.is_initialized():
        if dist.get_backend() == 'gloo' and dist.get_world_size() > 1:
            # Leave together: a rank tearing the group down while another
            # still uses it can abort that one. Bounded: a dead peer only
            # delays the exit.
            try:
                dist.monitored_barrier(timeout=timedelta(seconds=30))
            except RuntimeError:
                pass
        dist.destroy_process_group()


def is_distributed() -> bool:
    r"""Whether a process group with more than one rank is active."""
    return (dist.is_available() and dist.is_initialized()
            and dist.get_world_size() > 1)


def get_rank() -> int:
    r"""This process's rank (0 without a process group)."""
    return dist.get_rank() if is_distributed() else 0


def get_world_size() -> int:
    r"""Number of ranks (1 without a process group)."""
    return dist.get_world_size() if is_distributed() else 1


def _comm_device() -> torch.device:
    if dist.get_backend() == 'nccl':
        return torch.device('cuda', torch.cuda.current_device())
    return torch.device('cpu')


def all_gather_cat(tensor: Tensor) -> Tensor:
    r"""Concatenates, in rank order along dimension 0, tensors of different
    lengths from every rank (all other dimensions must agree). Returns the
    tensor unchanged without a process group.

    Args:
        tensor (torch.Tensor): This rank's tensor of shape :obj:`[n_r, *]`.

    Returns:
        torch.Tensor: A CPU tensor of shape :obj:`[sum_r n_r, *]`, identical on
        every rank.
    """
    if not is_distributed():
        return tensor
    device = _comm_device()
    world_size = dist.get_world_size()
    dtype = tensor.dtype
    # NCCL/Gloo have no bool all_gather everywhere: send bytes.
    send = tensor.to(torch.uint8) if dtype == torch.bool else tensor
    send = send.to(device)
    size = torch.tensor([send.shape[0]], dtype=torch.int64, device=device)
    sizes = [torch.zeros_like(size) for _ in range(world_size)]
    dist.all_gather(sizes, size)
    counts = [int(s.item()) for s in sizes]
    max_count = max(counts)
    if send.shape[0] < max_count:
        pad = send.new_zeros((max_count - send.shape[0], ) + send.shape[1:])
        send = torch.cat([send, pad], dim=0)  # [max_count, *]
    recv = [torch.empty_like(send) for _ in range(world_size)]
    dist.all_gather(recv, send.contiguous())
    out = torch.cat([r[:c] for r, c in zip(recv, counts)], dim=0).cpu()
    return out.to(dtype)


def all_gather_outputs(outputs: Dict[str, Tensor]) -> Dict[str, Tensor]:
    r"""Applies :func:`all_gather_cat` to every entry of a dict of per-item
    outputs. Ranks that saw no data (more ranks than examples) may pass an
    empty dict; keys, dtypes and trailing shapes are taken from the others.
    """
    if not is_distributed():
        return outputs
    meta = {k: (v.dtype, tuple(v.shape[1:])) for k, v in outputs.items()}
    metas: List[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(metas, meta)
    reference = next((m for m in metas if m), {})
    for i, m in enumerate(metas):
        if m and set(m) != set(reference):
            raise ValueError(f"Expected 'eval_step' to return the same keys "
                             f"on every rank (rank {i}: {sorted(m)}, "
                             f"others: {sorted(reference)})")
    gathered = {}
    for key in sorted(reference):
        dtype, tail = reference[key]
        local = outputs.get(key)
        if local is None:
            local = torch.zeros((0, ) + tail, dtype=dtype)
        gathered[key] = all_gather_cat(local)
    return gathered


def _all_reduce(values: List[float], op: Any) -> List[float]:
    if not is_distributed():
        return values
    t = torch.tensor(values, dtype=torch.float64, device=_comm_device())
    dist.all_reduce(t, op=op)
    return t.tolist()


def all_reduce_max(values: List[float]) -> List[float]:
    r"""Element-wise maximum of small float lists over all ranks."""
    return _all_reduce(values, dist.ReduceOp.MAX)


def all_reduce_sum(values: List[float]) -> List[float]:
    r"""Element-wise sum of small float lists over all ranks."""
    return _all_reduce(values, dist.ReduceOp.SUM)


def barrier() -> None:
    r"""Waits for every rank (no-op without a process group)."""
    if is_distributed():
        dist.barrier()
