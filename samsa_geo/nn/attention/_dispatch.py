r"""Checks that decide where samsa_geo's Triton kernels run. Imports no
Triton: the kernels' modules import this one, never the other way round."""
import importlib.util

import torch
from torch import Tensor

# Looked up once at import: a module constant is all torch.compile sees.
HAS_TRITON = importlib.util.find_spec('triton') is not None
#: Largest token width and number of heads of the scorer kernel (a block of
#: rows stays in registers).
SCORE_MAX_CHANNELS = 2048
SCORE_MAX_HEADS = 64
#: Largest set (tokens and registers) of the fused inference path: the
#: selection kernel keeps one set's scores in registers. Larger sets take
#: the unfused path.
FUSED_MAX_SET_SIZE = 8192
#: Largest head width of the fused inference path.
FUSED_MAX_HEAD_DIM = 256


def triton_serves(device: torch.device) -> bool:
    """Whether samsa_geo's Triton kernels run on ``device``."""
    return HAS_TRITON and device.type == 'cuda'


def is_tracing() -> bool:
    """Whether :func:`torch.compile`, :func:`torch.export` or a TorchScript
    trace records the call (no value may be read back to Python)."""
    return torch.compiler.is_compiling() or torch.jit.is_tracing()


def is_exporting() -> bool:
    """Whether :func:`torch.export` or a TorchScript trace (ONNX export) is
    recording: the kernels stay out of exported graphs."""
    if not torch.compiler.is_compiling() and torch.jit.is_tracing():
        return True
    # Inside a torch.compile trace, PyTorch 2.11 folds
    # torch.compiler.is_exporting() to True; the flag it returns is exact.
    flag = getattr(torch.compiler, '_is_exporting_flag', None)
    return torch.compiler.is_exporting() if flag is None else bool(flag)


def needs_grad(*tensors: Tensor) -> bool:
    """Whether autograd records an operation on ``tensors`` (the forward-only
    kernels serve the calls where it does not)."""
    return torch.is_grad_enabled() and any(t.requires_grad for t in tensors)
