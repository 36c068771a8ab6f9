r"""The relative-bias attention through
:func:`~torch.nn.attention.flex_attention.flex_attention`: one fused kernel
with a generated backward pass, compiled on its own."""
from dataclasses import dataclass
from typing import Callable, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor

from samsa_geo.nn.attention import config
from samsa_geo.nn.attention._dispatch import triton_serves

try:
    from torch.nn.attention.flex_attention import flex_attention
except ImportError:  # pragma: no cover - older PyTorch
    flex_attention = None


@dataclass
class PairGeometry:
    r"""Positions (and normals) of the queries and the sampled keys, per
    tile, from which the relative bias features of every pair are computed.

    Attributes:
        pos_q (Tensor): ``[nt, T, P]`` query positions.
        pos_k (Tensor): ``[nt, H, k, P]`` sampled key positions.
        normal_q (Tensor, optional): ``[nt, T, P]``.
        normal_k (Tensor, optional): ``[nt, H, k, P]``.
    """
    pos_q: Tensor
    pos_k: Tensor
    normal_q: Optional[Tensor] = None
    normal_k: Optional[Tensor] = None

    def slice(self, start: int, end: int) -> 'PairGeometry':
        """Tiles ``start:end``."""
        return PairGeometry(*(None if g is None else g[start:end] for g in (
            self.pos_q, self.pos_k, self.normal_q, self.normal_k)))


def flex_supported(device: torch.device) -> bool:
    """Whether the fused kernels serve ``device`` (CUDA with Triton
    installed: FlexAttention forward and backward, samsa_geo's inference
    kernel)."""
    return flex_attention is not None and triton_serves(device)


def biased_flex_attention(
    q: Tensor, k: Tensor, v: Tensor, key_valid: Optional[Tensor],
    geo: PairGeometry, weights: Tuple[Tensor, Tensor, Tensor, Tensor],
    compiled: bool = True, kernel_options: Optional[dict] = None,
) -> Tensor:
    r"""Dot-product softmax attention with the relative bias of
    :class:`~samsa_geo.nn.attention.RelativeBias` fused into one
    :func:`~torch.nn.attention.flex_attention.flex_attention` kernel:

    .. math::
        s'_{ij} = s_{ij} \cdot \mathrm{softplus}(a_h + \mathbf{A}_h
        \mathbf{r}_{ij}) + b_h + \mathbf{B}_h \mathbf{r}_{ij}, \qquad
        \mathbf{r}_{ij} = \big(\Vert \mathbf{p}_i - \mathbf{p}_j
        \Vert^2, \mathbf{n}_i^\top \mathbf{n}_j\big).

    The pair features are computed inside the kernel from the positions, so
    no :math:`T \times k` tensor is written to memory, in the forward or
    the backward pass. Gradients reach ``q``, ``k``, ``v`` and the bias
    weights (not the positions, which are geometry).

    Args:
        q (Tensor): ``[nt, H, T, D]``; k, v: ``[nt, H, k, D]``.
        key_valid (Tensor, optional): ``[nt, k]``.
        geo (PairGeometry): positions and normals per tile (float32).
        weights (tuple): :math:`(\mathbf{A}, a, \mathbf{B}, b)` of shapes
            ``[H, 2]``, ``[H]``, ``[H, 2]``, ``[H]``.
        compiled (bool): use the compiled (fused) kernel; :obj:`False` runs
            PyTorch's unfused reference, for tests on CPU.
        kernel_options (dict, optional): FlexAttention tile options
            (``BLOCK_M``, ``BLOCK_N``, ``num_warps``, ``num_stages``);
            :obj:`None` uses
            :func:`~samsa_geo.nn.attention.config.flex_kernel_options`.
    """
    if flex_attention is None:  # pragma: no cover - older PyTorch
        raise RuntimeError('flex_attention needs PyTorch >= 2.5')
    A, a, Bw, b = weights
    # One captured tensor per coefficient (a score_mod may index a tensor
    # that requires gradients only once), with its own copy per tile, head
    # and query row [nt, H, T]: the backward kernel adds each pair's
    # gradient to its query row's slot, not all to one of H addresses
    # (measured on an H200: 16x faster for 16 x 1,024 tokens, k = 256).
    nt, H, T = q.shape[:3]

    def per_query(c: Tensor) -> Tensor:  # [H] -> [nt, H, T]
        return c.view(1, H, 1).expand(nt, H, T).contiguous()

    a, b = per_query(a), per_query(b)
    A0, A1 = per_query(A[:, 0]), per_query(A[:, 1])
    B0, B1 = per_query(Bw[:, 0]), per_query(Bw[:, 1])
    pos_q, pos_k, n_q, n_k = geo.pos_q, geo.pos_k, geo.normal_q, geo.normal_k
    P = pos_q.size(-1)

    def score_mod(score, t, h, i, j):
        diff = pos_q[t, i, 0] - pos_k[t, h, j, 0]
        dist = diff * diff
        for f in range(1, P):
            diff = pos_q[t, i, f] - pos_k[t, h, j, f]
            dist = dist + diff * diff
        scale = a[t, h, i] + A0[t, h, i] * dist
        bias = b[t, h, i] + B0[t, h, i] * dist
        if n_q is not None:
            ndot = n_q[t, i, 0] * n_k[t, h, j, 0]
            for f in range(1, P):
                ndot = ndot + n_q[t, i, f] * n_k[t, h, j, f]
            scale = scale + A1[t, h, i] * ndot
            bias = bias + B1[t, h, i] * ndot
        out = score * F.softplus(scale) + bias
        if key_valid is not None:
            out = torch.where(key_valid[t, j], out, float('-inf'))
        return out

    if not compiled:
        return flex_attention(q, k, v, score_mod=score_mod)
    if kernel_options is None:
        kernel_options = config.flex_kernel_options()
    # Inside a compiled model this is a graph break to the kernel compiled
    # on its own (Inductor cannot lower this score_mod inside a larger graph
    # on PyTorch 2.11).
    return _run_flex_kernel(q, k, v, score_mod, kernel_options)


#: Shapes that get a kernel specialised to them; later shapes share one
#: dynamic-shape kernel (Dynamo allows few recompilations per function).
STATIC_FLEX_SHAPES = 4
_flex_kernels: dict = {}
_static_shapes: set = set()


# Two functions with the same body: Dynamo keeps its compiled variants per
# code object, so the static kernels and the dynamic one need their own.
def _flex_static(q, k, v, score_mod, kernel_options):
    return flex_attention(q, k, v, score_mod=score_mod,
                          kernel_options=kernel_options)


def _flex_dynamic(q, k, v, score_mod, kernel_options):
    return flex_attention(q, k, v, score_mod=score_mod,
                          kernel_options=kernel_options)


@torch.compiler.disable
def _run_flex_kernel(q: Tensor, k: Tensor, v: Tensor, score_mod: Callable,
                     kernel_options: Optional[dict]) -> Tensor:
    key = (tuple(q.shape), tuple(k.shape), q.dtype, q.device)
    static = key in _static_shapes or \
        len(_static_shapes) < STATIC_FLEX_SHAPES
    if static:
        _static_shapes.add(key)
    name = 'static' if static else 'dynamic'
    if name not in _flex_kernels:
        fn = _flex_static if static else _flex_dynamic
        _flex_kernels[name] = torch.compile(fn, dynamic=not static)
    return _flex_kernels[name](q, k, v, score_mod, kernel_options)
