r"""samsa_geo's Triton inference kernels as PyTorch custom operators, so
that :func:`torch.compile` keeps them inside a model's graph (no graph
break: CUDA graphs capture the whole model), plus the checks that decide
where they run."""
import importlib.util
from typing import Optional

import torch
from torch import Tensor

# Looked up once at import: a module constant is all torch.compile sees.
HAS_TRITON = importlib.util.find_spec('triton') is not None
#: Largest token width and number of heads of the scorer kernel (a block of
#: rows stays in registers).
SCORE_MAX_CHANNELS = 2048
SCORE_MAX_HEADS = 64


def triton_serves(device: torch.device) -> bool:
    """Whether samsa_geo's Triton kernels run on ``device``."""
    return HAS_TRITON and device.type == 'cuda'


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


@torch.library.custom_op('samsa_geo::biased_attention_inference',
                         mutates_args=())
def biased_attention_inference(
    q: Tensor, k: Tensor, v: Tensor, key_valid: Optional[Tensor],
    pos_q: Tensor, pos_k: Tensor, normal_q: Optional[Tensor],
    normal_k: Optional[Tensor], A: Tensor, a: Tensor, B: Tensor, b: Tensor,
) -> Tensor:
    r"""The relative-bias attention's forward kernel
    (:func:`~samsa_geo.nn.attention._bias_triton.biased_triton_attention`):
    ``q [nt, H, T, D]`` -> token-major ``[nt, T, H, D]``."""
    # Imported here: Triton is needed only where the kernel runs.
    from samsa_geo.nn.attention import _bias_triton
    out = _bias_triton.biased_triton_attention(
        q, k, v, key_valid, pos_q, pos_k, normal_q, normal_k, (A, a, B, b))
    return out.transpose(1, 2)  # the kernel's [nt, T, H, D] storage


@biased_attention_inference.register_fake
def _(q, k, v, key_valid, pos_q, pos_k, normal_q, normal_k, A, a, B, b):
    nt, H, T, D = q.shape
    return q.new_empty(nt, T, H, D)


@torch.library.custom_op('samsa_geo::importance_score', mutates_args=())
def importance_score(y: Tensor, x: Tensor, ln_weight: Tensor,
                     ln_bias: Tensor, eps: float, weight: Tensor,
                     bias: Tensor) -> Tensor:
    r"""The importance scorer's tail in one kernel
    (:func:`~samsa_geo.nn.attention._score_triton.importance_score_triton`):
    ``[N, C]`` -> ``[N, H]`` float32."""
    from samsa_geo.nn.attention import _score_triton
    return _score_triton.importance_score_triton(
        y, x, ln_weight, ln_bias, eps, weight, bias)


@importance_score.register_fake
def _(y, x, ln_weight, ln_bias, eps, weight, bias):
    return y.new_empty(y.size(0), weight.size(0), dtype=torch.float32)
