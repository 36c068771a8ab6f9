r"""samsa_geo's Triton kernels for the geometry ops (:mod:`.knn`,
:mod:`.fps`), what they serve, and the kNN kernel as a PyTorch custom
operator, so that :func:`torch.compile` keeps it in a graph.

The kernel modules import Triton; this module does not, so the checks run
without it.
"""
import contextlib
import importlib.util
import os
from typing import ContextManager, Optional, Sequence

import torch
from torch import Tensor

# Looked up once at import: a module constant is all torch.compile sees.
HAS_TRITON = importlib.util.find_spec('triton') is not None
#: Whether Triton runs kernels in its interpreter (``TRITON_INTERPRET=1``,
#: tests on CPU).
INTERPRETED = os.environ.get('TRITON_INTERPRET') == '1'
#: Largest number of neighbours and of features the kernels serve.
MAX_K = 64
MAX_FEATURES = 3
#: Widest row the layer-normalisation kernel serves (a block of rows stays
#: in registers).
MAX_NORM_CHANNELS = 1024
#: Dtypes the row kernels (layer_norm, residual_affine, residual_batch_norm)
#: and linear's column sum read and write.
KERNEL_DTYPES = (torch.float32, torch.float16, torch.bfloat16)
#: Points per call stay below this: indices and sentinels are int32.
MAX_POINTS = 2**30


def device_guard(device: torch.device) -> ContextManager:
    r"""Makes :obj:`device` current while kernels launch (Triton launches on
    the current CUDA device)."""
    if device.type == 'cuda':
        return torch.cuda.device(device)
    return contextlib.nullcontext()


def runs_on(x: Tensor, forced: bool) -> bool:
    r"""Whether the kernels run on :obj:`x`'s device: CUDA, or, when the
    caller asks for them (:obj:`forced`), a CPU under Triton's
    interpreter. Calls that pick a backend themselves never choose the
    interpreter."""
    return HAS_TRITON and (x.device.type == 'cuda' or (
        forced and INTERPRETED and x.device.type == 'cpu'))


def row_kernel_serves(x: Tensor, tensors: Sequence[Tensor],
                      forced: bool, backward: bool = False) -> bool:
    r"""Whether a row kernel (layer normalisation, the residual affine map,
    the residual batch norm) serves a call on the rows :obj:`x`
    :obj:`[*, C]` with the other inputs :obj:`tensors`: its device runs
    the kernels (see :func:`runs_on`), every input lies on it,
    :math:`0 < C \le` :obj:`MAX_NORM_CHANNELS`, :obj:`x` is not empty, no
    gradient is recorded unless the kernels have a :obj:`backward` pass,
    and no compiled or exported graph is being traced."""
    return (runs_on(x, forced)
            and 0 < x.size(-1) <= MAX_NORM_CHANNELS and x.numel() > 0
            and all(t.device == x.device for t in tensors)
            and (backward or not (torch.is_grad_enabled() and (
                x.requires_grad or any(t.requires_grad for t in tensors))))
            and not tracing())


def tracing() -> bool:
    r"""Whether a compiled, scripted or exported graph is being traced
    (where the kernels stay out: the compiler and export see PyTorch's
    ops)."""
    return (torch.compiler.is_compiling() or torch.jit.is_tracing()
            or torch.compiler.is_exporting())


def knn_supported(x: Tensor, y: Tensor, k: int, cosine: bool,
                  forced: bool = False) -> bool:
    r"""Whether the kNN kernel serves this call (Euclidean float32 points
    of up to three features, :math:`k \le` :obj:`MAX_K`)."""
    return (runs_on(x, forced) and not cosine and k <= MAX_K
            and x.dtype == torch.float32 and y.dtype == torch.float32
            and 1 <= x.size(1) <= MAX_FEATURES
            and max(x.size(0), y.size(0)) < MAX_POINTS)


def fps_supported(src: Tensor, forced: bool = False) -> bool:
    r"""Whether the FPS kernel serves this call (float32 points of up to
    three features)."""
    return (runs_on(src, forced) and src.dtype == torch.float32
            and 1 <= src.size(1) <= MAX_FEATURES
            and src.size(0) < MAX_POINTS)


def knn_indices(x: Tensor, y: Tensor, k: int,
                batch_x: Optional[Tensor], batch_y: Optional[Tensor],
                num_examples: int, same: bool,
                missing: Optional[Tensor] = None) -> Tensor:
    r"""The kNN kernels: through the custom operator :func:`knn_neighbours`
    under :func:`torch.compile`, directly (without the operator's dispatch
    cost, and counting empty slots into :obj:`missing`) in eager mode."""
    if torch.compiler.is_compiling():
        return knn_neighbours(x, y, k, batch_x, batch_y, num_examples, same)
    from samsa_geo.ops._triton.knn import knn_triton
    with device_guard(x.device):
        return knn_triton(x, x if same else y, k, batch_x, batch_y,
                          num_examples, missing)


@torch.library.custom_op('samsa_geo::knn_neighbours', mutates_args=())
def knn_neighbours(x: Tensor, y: Tensor, k: int,
                   batch_x: Optional[Tensor], batch_y: Optional[Tensor],
                   num_examples: int, same: bool) -> Tensor:
    r"""The :obj:`k` nearest candidates of every query
    (:func:`~samsa_geo.ops._triton.knn.knn_triton`), :obj:`[2, M, k]`: row
    0 the query, row 1 the global indices of its neighbours, :obj:`-1` in
    both where an example has fewer candidates; :obj:`same` says that
    :obj:`y` is :obj:`x`."""
    # Imported here: Triton is needed only where the kernel runs.
    from samsa_geo.ops._triton.knn import knn_triton
    with device_guard(x.device):
        return knn_triton(x, x if same else y, k, batch_x, batch_y,
                          num_examples)


@knn_neighbours.register_fake
def _(x, y, k, batch_x, batch_y, num_examples, same):
    return y.new_empty(2, y.size(0), k, dtype=torch.long)
