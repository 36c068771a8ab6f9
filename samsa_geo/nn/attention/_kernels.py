r"""Attention of every token against its own set's sampled keys.

Queries are laid out in *tiles*: a tile holds up to ``T`` consecutive
queries of one set. The padded layout is the special case of one tile per
set (``T = n_max``); the packed layout bounds the padding to ``T - 1``
queries per set, so batches with very uneven set sizes never pay for
``B * n_max`` queries. Keys are gathered once per tile, so memory stays
:math:`O(N \cdot C + \text{tiles} \cdot k \cdot C)`.
"""
import math
from dataclasses import dataclass
from typing import Callable, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor

from samsa_geo.nn.attention._ops import (
    biased_attention_inference,
    needs_grad,
    triton_serves,
)
from samsa_geo.nn.attention._sets import SetInfo

try:
    from torch.nn.attention.flex_attention import flex_attention
except ImportError:  # pragma: no cover - older PyTorch
    flex_attention = None

_SQRT_PI_INV = 1.0 / math.sqrt(math.pi)
_MAXOUT_STD = math.sqrt(1.0 - 1.0 / math.pi)


@dataclass
class Tiles:
    r"""Query layout.

    Attributes:
        num_tiles (int): number of tiles.
        size (int): :math:`T`, queries per tile.
        tile_set (Tensor, optional): ``[num_tiles]`` set of each tile, or
            ``None`` when tile ``t`` is set ``t``.
        shared (bool): all tiles belong to one set (keys are broadcast).
        index (Tensor, optional): ``[N]`` flat slot ``tile * T + pos`` of
            each token, or ``None`` when the layout is a plain reshape.
    """
    num_tiles: int
    size: int
    tile_set: Optional[Tensor]
    index: Optional[Tensor]
    shared: bool = False


def make_tiles(info: SetInfo, batch: Optional[Tensor], num_tokens: int,
               packed: bool, tile_size: int) -> Tiles:
    B, n_max = info.num_sets, info.max_size
    packed = packed and tile_size < n_max
    if not packed and (batch is None or B * n_max == num_tokens):
        # Equal-size sets: the padded layout is a reshape.
        return Tiles(B, n_max, None, None)
    T = tile_size
    if batch is None:  # one set cut into tiles that share its keys
        num_tiles = -(-num_tokens // T)
        index = None if num_tiles * T == num_tokens else \
            torch.arange(num_tokens, device=info.ptr.device)
        return Tiles(num_tiles, T, None, index, shared=True)
    loc = torch.arange(num_tokens, device=batch.device) - info.ptr[batch]
    if not packed:
        return Tiles(B, n_max, None, batch * n_max + loc)
    per_set = (info.size + T - 1) // T  # [B]
    tile_ptr = torch.cumsum(per_set, 0) - per_set
    num_tiles = int(per_set.sum())
    tile_set = torch.repeat_interleave(
        torch.arange(B, device=batch.device), per_set, output_size=num_tiles)
    index = (tile_ptr[batch] + loc // T) * T + loc % T
    return Tiles(num_tiles, T, tile_set, index)


def to_tiles(t: Tensor, tiles: Tiles) -> Tensor:
    """``[N, H, F]`` token rows -> ``[num_tiles, H, T, F]``."""
    N, H, Fd = t.shape
    if tiles.index is None:
        return t.view(tiles.num_tiles, tiles.size, H, Fd).transpose(1, 2)
    out = t.new_zeros(tiles.num_tiles * tiles.size, H, Fd)
    out[tiles.index] = t
    # [num_tiles * T, H, F] -> [num_tiles, H, T, F]
    return out.view(tiles.num_tiles, tiles.size, H, Fd).transpose(1, 2)


def from_tiles(t: Tensor, tiles: Tiles) -> Tensor:
    """``[num_tiles, H, T, F]`` -> ``[N, H, F]`` token rows."""
    nt, H, T, Fd = t.shape
    flat = t.transpose(1, 2).reshape(nt * T, H, Fd)  # [num_tiles * T, H, F]
    if tiles.index is None:
        return flat
    return flat[tiles.index]


def per_tile(t: Tensor, tiles: Tiles) -> Tensor:
    """Per-set tensor ``[B, ...]`` -> per-tile ``[num_tiles, ...]``."""
    if tiles.shared:  # one set: broadcast, no copy (backward is a sum)
        return t.expand(tiles.num_tiles, *t.shape[1:])
    return t if tiles.tile_set is None else t[tiles.tile_set]


def maxout_score(q: Tensor, k: Tensor) -> Tensor:
    r"""SFT maxout score
    :math:`\sum_d (\max(q_d, k_d) - 1/\sqrt{\pi}) / \sqrt{1 - 1/\pi} /
    \sqrt{D}`: ``q [..., T, D]``, ``k [..., k, D]`` -> ``[..., T, k]``."""
    D = q.size(-1)
    m = torch.maximum(q.unsqueeze(-2), k.unsqueeze(-3))  # [..., T, k, D]
    return (m.sum(-1) - D * _SQRT_PI_INV) / (_MAXOUT_STD * math.sqrt(D))


def lily_score(q: Tensor, k: Tensor) -> Tensor:
    r"""SFT "lily" score
    :math:`\sum_d (|q_d + k_d| - |q_d - k_d|) / \sqrt{D}`."""
    D = q.size(-1)
    qe, ke = q.unsqueeze(-2), k.unsqueeze(-3)  # [..., T, 1, D], [..., 1, k, D]
    return ((qe + ke).abs() - (qe - ke).abs()).sum(-1) / math.sqrt(D)


def dot_score(q: Tensor, k: Tensor) -> Tensor:
    return q @ k.transpose(-1, -2) / math.sqrt(q.size(-1))


SCORES: dict = {'dot': dot_score, 'maxout': maxout_score, 'lily': lily_score}


def explicit_attention(
    q: Tensor, k: Tensor, v: Tensor, key_valid: Optional[Tensor],
    score_fn: Callable[[Tensor, Tensor], Tensor], normalization: str,
    leak: Optional[Tensor], bias_fn: Optional[Callable[[Tensor, int, int],
                                                       Tensor]],
    dropout: float, training: bool, max_elements: int = 1 << 26,
) -> Tensor:
    r"""Attention with a general score function, relative bias and leaky
    normalisation, processed in chunks of tiles to bound memory.

    Args:
        q (Tensor): ``[nt, H, T, D]``; k, v: ``[nt, H, k, D]``.
        key_valid (Tensor, optional): ``[nt, k]``.
        leak (Tensor, optional): ``[nt, H, k]`` leak logits :math:`c_j`.
        bias_fn (callable, optional): ``(scores, start, end) -> scores``
            applying the relative bias to tiles ``start:end``.
    """
    nt, H, T, D = q.shape
    kk = k.size(2)
    per_tile_elems = H * T * kk * (D if score_fn is not dot_score else 1)
    step = max(1, max_elements // max(per_tile_elems, 1))
    outs = []
    for s in range(0, nt, step):
        e = min(nt, s + step)
        a = score_fn(q[s:e], k[s:e])  # [c, H, T, k]
        if bias_fn is not None:
            a = bias_fn(a, s, e)
        a = a.float()
        mask = None if key_valid is None else key_valid[s:e].view(e - s, 1, 1, kk)
        if normalization == 'softmax':
            if mask is not None:
                a = a.masked_fill(~mask, float('-inf'))
            w = torch.softmax(a, dim=-1)
        else:  # leaky: ReLU(s) / (sum ReLU(s) + sum ReLU(c) + eps)
            a = F.relu(a)
            c = F.relu(leak[s:e].float()).unsqueeze(2)  # [c, H, 1, k]
            if mask is not None:
                a = a.masked_fill(~mask, 0.0)
                c = c.masked_fill(~mask, 0.0)
            w = a / (a.sum(-1, keepdim=True) + c.sum(-1, keepdim=True) + 1e-6)
        w = F.dropout(w, p=dropout, training=training).to(v.dtype)
        outs.append(w @ v[s:e])  # [c, H, T, D]
    return torch.cat(outs, dim=0) if len(outs) > 1 else outs[0]


def sdpa_attention(q: Tensor, k: Tensor, v: Tensor,
                   key_valid: Optional[Tensor], dropout: float,
                   training: bool) -> Tensor:
    """Dot-product softmax attention through PyTorch's fused kernels (in
    calls of at most :data:`MAX_GRID_Y` tiles: the flash and
    memory-efficient kernels put the batch on a CUDA grid axis)."""
    if q.size(0) > MAX_GRID_Y:
        return _in_tile_chunks(sdpa_attention, MAX_GRID_Y, q, k, v,
                               key_valid, dropout, training)
    mask = None
    if key_valid is not None:
        mask = key_valid.view(key_valid.size(0), 1, 1, -1)  # [nt, 1, 1, k]
    return F.scaled_dot_product_attention(
        q, k, v, attn_mask=mask, dropout_p=dropout if training else 0.0)


#: Most blocks along a CUDA grid's second and third axes, where fused
#: attention kernels put the batch of tiles (PyTorch's SDPA, FlexAttention)
#: or tiles x heads (samsa_geo's kernel): larger batches run in several
#: calls.
MAX_GRID_Y = 65535


def _in_tile_chunks(fn: Callable, step: int, *args) -> Tensor:
    """``fn(*args)`` in calls over ``step`` tiles at a time: tensor and
    :class:`PairGeometry` arguments are sliced along their first (tile)
    dimension, the others passed as they are; outputs are concatenated."""
    def part(a, s):
        if isinstance(a, Tensor):
            return a[s:s + step]
        return a.slice(s, s + step) if isinstance(a, PairGeometry) else a

    nt = args[0].size(0)
    return torch.cat([fn(*(part(a, s) for a in args))
                      for s in range(0, nt, step)], dim=0)


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
            :obj:`None` uses :data:`FLEX_KERNEL_OPTIONS`.
    """
    if flex_attention is None:  # pragma: no cover - older PyTorch
        raise RuntimeError('flex_attention needs PyTorch >= 2.5')
    A, a, Bw, b = weights
    # One captured tensor per coefficient: a score_mod may index a tensor
    # that requires gradients only once.
    A0, A1 = A[:, 0].contiguous(), A[:, 1].contiguous()  # [H] each
    B0, B1 = Bw[:, 0].contiguous(), Bw[:, 1].contiguous()  # [H] each
    pos_q, pos_k, n_q, n_k = geo.pos_q, geo.pos_k, geo.normal_q, geo.normal_k
    P = pos_q.size(-1)

    def score_mod(score, t, h, i, j):
        diff = pos_q[t, i, 0] - pos_k[t, h, j, 0]
        dist = diff * diff
        for f in range(1, P):
            diff = pos_q[t, i, f] - pos_k[t, h, j, f]
            dist = dist + diff * diff
        scale = a[h] + A0[h] * dist
        bias = b[h] + B0[h] * dist
        if n_q is not None:
            ndot = n_q[t, i, 0] * n_k[t, h, j, 0]
            for f in range(1, P):
                ndot = ndot + n_q[t, i, f] * n_k[t, h, j, f]
            scale = scale + A1[h] * ndot
            bias = bias + B1[h] * ndot
        out = score * F.softplus(scale) + bias
        if key_valid is not None:
            out = torch.where(key_valid[t, j], out, float('-inf'))
        return out

    if not compiled:
        return flex_attention(q, k, v, score_mod=score_mod)
    if kernel_options is None:
        kernel_options = FLEX_KERNEL_OPTIONS
    # Inside a compiled model this is a graph break to the kernel compiled
    # on its own (Inductor cannot lower this score_mod inside a larger graph
    # on PyTorch 2.11).
    return _run_flex_kernel(q, k, v, score_mod, kernel_options)


#: Kernel of the relative bias when no gradient is needed: ``'triton'``
#: (:mod:`~samsa_geo.nn.attention._bias_triton`, forward only) or
#: ``'flex'`` (FlexAttention, also used whenever gradients are needed).
INFERENCE_KERNEL = 'triton'


def biased_attention(
    q: Tensor, k: Tensor, v: Tensor, key_valid: Optional[Tensor],
    geo: PairGeometry, weights: Tuple[Tensor, Tensor, Tensor, Tensor],
) -> Tensor:
    r"""The relative-bias attention of :func:`biased_flex_attention` (same
    arguments) through the fastest fused kernel for the call: samsa_geo's
    Triton forward kernel when no gradient is needed (inference), else
    FlexAttention, whose backward pass is generated. Both kernels put
    tiles (and heads) on a CUDA grid axis limited to 65,535 blocks, so
    batches with more tiles run in several calls."""
    step = max(1, MAX_GRID_Y // q.size(1))  # tiles x heads per call
    if q.size(0) > step:
        return _in_tile_chunks(biased_attention, step, q, k, v, key_valid,
                               geo, weights)
    if (not needs_grad(q, k, v, *weights) and INFERENCE_KERNEL == 'triton'
            and geo.pos_q.size(-1) <= 3):
        return _run_triton_kernel(q, k, v, key_valid, geo, weights)
    return biased_flex_attention(q, k, v, key_valid, geo, weights)


def _run_triton_kernel(q: Tensor, k: Tensor, v: Tensor,
                       key_valid: Optional[Tensor], geo: PairGeometry,
                       weights: Tuple[Tensor, Tensor, Tensor, Tensor],
                       ) -> Tensor:
    out = biased_attention_inference(
        q, k, v, key_valid, geo.pos_q, geo.pos_k, geo.normal_q,
        geo.normal_k, *weights)
    return out.transpose(1, 2)  # [nt, T, H, D] -> [nt, H, T, D]


#: Tile options of the fused relative-bias kernel (:obj:`None`:
#: FlexAttention's defaults for the device).
FLEX_KERNEL_OPTIONS: Optional[dict] = None
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
