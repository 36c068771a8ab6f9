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
#: Largest token width for which the scorer kernel also runs the MLP's
#: second layer (its ``[rows, C]`` accumulator stays in registers).
SCORE_MLP_MAX_CHANNELS = 512
#: Largest token width of the scorer's backward kernel (its products of
#: ``[rows, C]`` blocks stage them in shared memory: at 768 channels, a
#: block of 1,024 columns, it needs more than an H200 has).
SCORE_GRAD_MAX_CHANNELS = 512
#: Dtypes of the hidden rows that the scorer's GELU reads in its kernels.
SCORE_GELU_DTYPES = (torch.float32, torch.bfloat16, torch.float16)
#: Largest set of the fused inference path. Beyond it the unfused path's
#: attention (cuDNN's, over the gathered keys and values) takes less GPU
#: time than the gather-attention kernel: on an H200, one SamsaConv
#: forward took 2.01 ms unfused against 2.07 ms fused at 262,144 tokens,
#: and 1.34 against 0.77 ms at 65,536 (``benchmarks/layer.py --ab
#: fused_inference --fused-max-set-size 1048576``, commit cd4076e); on a
#: machine with a slower host, 2.35 against 2.17 ms at 262,144 (8389479):
#: the fewer launches of the fused path pay where the host is slow.
FUSED_MAX_SET_SIZE = 131072
#: Fewest tokens from which the general path projects the keys and values
#: of the sampled rows alone (see
#: :func:`~samsa_geo.nn.attention._sampling.project_rows`): it saves the
#: GEMM's :math:`2C` columns of every token but adds launches. On an H200
#: (eval forward of SamsaConv, 256 channels, 8 heads, k = 256, median of 5
#: alternating rounds, commit 6b9dc4f) it took 1.88 / 1.78 ms per call /
#: pipelined against 1.98 / 1.90 at 262,144 tokens, and 2.40 / 2.22
#: against 2.30 / 2.11 at 150,000, where the call was bound by the host.
#: Training has its own threshold, :data:`TRAINING_SAMPLED_ROWS_MIN_TOKENS`.
SAMPLED_ROWS_MIN_TOKENS = 1 << 18
#: The same in training, with the rows of the top and bottom sets: there
#: the path also saves the backward's :math:`[N, 2C]` gradient (zeroed,
#: scattered into, copied into the stacked GEMM's) and the :math:`2C`
#: columns of its two GEMMs, and the scorer's backward runs on those rows
#: alone (see :class:`~samsa_geo.nn.attention._score_grad.ScoredRows`). On
#: an H100 (SamsaConv forward+backward from a fixed output gradient, 256
#: channels, 8 heads, k = 256, bf16, 1 x 65,536 tokens, steps replayed as
#: CUDA graphs, two rounds each, commit a308466) a step took 3.226 and
#: 3.143 ms per call, 2.928 and 2.932 pipelined, against 3.489 and 3.358,
#: 3.220 and 3.206 with every token projected.
TRAINING_SAMPLED_ROWS_MIN_TOKENS = 1 << 16
#: The same for the fused inference path, in calls captured as CUDA
#: graphs (see :func:`is_capturing`): from this many tokens they project
#: the keys and values of the selected rows alone, between the selection
#: and the attention kernel, where the stacked GEMM would write :math:`2C`
#: columns for every token (at 1 x 65,536 tokens of 256 channels, 64 MiB
#: of bfloat16 keys and values). On an H100 (SamsaConv inference, 256
#: channels, 8 heads, k = 256, bf16, commit 4214908) the GEMM took 0.042
#: against 0.069 ms at 1 x 65,536 and the rows' gather and GEMM about
#: 0.01; a replayed call 0.715 against 0.737 ms (median of 5 alternating
#: rounds). Eager calls keep every row: their four more launches cost the
#: host more than the GPU saves (1.569 against 1.314 ms at 1 x 131,072,
#: beyond the layer's graphs), and with 8 x 4,096 and 2 x 16,384 tokens
#: replayed calls gained nothing (0.438 against 0.431, 0.474 against
#: 0.456).
FUSED_SAMPLED_ROWS_MIN_TOKENS = 1 << 16
#: Most keys per tile, and widest head, that the tiles' attention kernels
#: take (:mod:`~samsa_geo.nn.attention._tile_attention_triton`: all of a
#: tile's keys in one block; on packed rows, all of a set's tokens).
TILE_ATTENTION_MAX_KEYS = 256
TILE_ATTENTION_MAX_HEAD_DIM = 128
#: The dtypes that they take.
TILE_ATTENTION_DTYPES = (torch.float16, torch.bfloat16, torch.float32)
#: Largest block of candidate scores (a set's tokens and registers) that
#: one program of the fused path's selection kernel keeps in registers.
SELECT_MAX_BLOCK = 8192
#: Tokens per chunk of a set whose candidates exceed one block: the top
#: :math:`k` of every chunk is selected first, then the chunks' winners
#: and the registers are merged (see :func:`selection_chunks`).
SELECT_CHUNK = 4096
#: Largest head width of the fused inference path.
FUSED_MAX_HEAD_DIM = 256


def selection_chunks(max_size: int, num_registers: int, k_max: int) -> int:
    r"""Chunks per set of the fused path's top-:math:`k` selection for sets
    of at most ``max_size`` tokens, ``num_registers`` registers and
    ``k_max`` kept candidates: 1 where a set's candidates fit one block
    (:data:`SELECT_MAX_BLOCK`); else the fewest chunks (at least 2) of at
    most :data:`SELECT_CHUNK` (or, failing that, :data:`SELECT_MAX_BLOCK`)
    tokens whose :math:`k_{\max}` winners each, with the registers, fit
    one block of the merge; 0 where no split fits (the unfused path
    serves such sets).

    The top :math:`k` of a set is the top :math:`k` of its chunks' top
    :math:`k`, ties included: every chunk keeps its lowest-indexed tied
    tokens, as the whole set does."""
    if max_size + num_registers <= SELECT_MAX_BLOCK:
        return 1
    for chunk in (min(SELECT_CHUNK, SELECT_MAX_BLOCK), SELECT_MAX_BLOCK):
        chunks = max(2, -(-max_size // chunk))
        if chunks * k_max + num_registers <= SELECT_MAX_BLOCK:
            return chunks
    return 0


def scorer_mlp_in_kernel(hidden: Tensor) -> bool:
    r"""Whether the scorer kernel also runs the MLP's GELU and second layer
    from the hidden rows ``hidden`` :math:`(N, C)` (in their dtype): up
    to :data:`SCORE_MLP_MAX_CHANNELS` channels, in float32, bfloat16 or
    float16. (On an H200 it took as much GPU time as the GELU kernel,
    cuBLAS's GEMM and the tail's kernel at 32,768 bfloat16 rows and less
    at 65,536 and 262,144: see :data:`~._score_triton.KERNEL_CONFIG`.)"""
    return (hidden.size(-1) <= SCORE_MLP_MAX_CHANNELS
            and hidden.dtype in SCORE_GELU_DTYPES)


def is_capturing() -> bool:
    r"""Whether the current CUDA stream is capturing a CUDA graph: its
    replays run the captured launches with no host work, so that more,
    smaller kernels cost nothing on the host there."""
    return torch.cuda.is_available() and \
        torch.cuda.is_current_stream_capturing()


def triton_serves(device: torch.device) -> bool:
    """Whether samsa_geo's Triton kernels run on ``device``."""
    return HAS_TRITON and device.type == 'cuda'


def tile_kernels_take(dtype: torch.dtype, num_keys: int, head_dim: int,
                      dropout: float) -> bool:
    """Whether samsa_geo's tile attention kernels (on tiles or on packed
    rows) take a call of this shape: no attention dropout, a dtype of
    :data:`TILE_ATTENTION_DTYPES`, at most :data:`TILE_ATTENTION_MAX_KEYS`
    keys of at most :data:`TILE_ATTENTION_MAX_HEAD_DIM` channels, an eager
    call (compiled and exported graphs keep PyTorch's SDPA)."""
    return (dropout == 0.0 and dtype in TILE_ATTENTION_DTYPES
            and num_keys <= TILE_ATTENTION_MAX_KEYS
            and head_dim <= TILE_ATTENTION_MAX_HEAD_DIM and not is_tracing())


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
