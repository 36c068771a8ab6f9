r"""Attention of every query tile against its set's sampled keys: PyTorch's
fused SDPA kernels, the explicit path for the SFT options, and the fused
relative-bias kernels."""
from typing import Callable, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor

from samsa_geo.nn.attention import config
from samsa_geo.nn.attention._dispatch import (
    needs_grad,
    tile_kernels_take,
    triton_serves,
)
from samsa_geo.nn.attention._flex import PairGeometry, biased_flex_attention
from samsa_geo.nn.attention._ops import biased_attention_inference
from samsa_geo.nn.attention._similarity import dot_score
from samsa_geo.ops._utils import at_least_float32


def explicit_attention(
    q: Tensor, k: Tensor, v: Tensor, key_valid: Optional[Tensor],
    score_fn: Callable[[Tensor, Tensor], Tensor], normalization: str,
    leak: Optional[Tensor], bias_fn: Optional[Callable[[Tensor, int, int],
                                                       Tensor]],
    dropout: float, training: bool, max_elements: int = 1 << 26,
    weights: Optional[list] = None, key_bias: Optional[Tensor] = None,
) -> Tensor:
    r"""Attention with a general score function, relative bias and leaky
    normalisation, processed in chunks of tiles to bound memory. A list
    given as ``weights`` receives the attention weights ``[c, H, T, k]`` of
    every chunk.

    Args:
        q (Tensor): ``[nt, H, T, D]``; k, v: ``[nt, H, k, D]``.
        key_valid (Tensor, optional): ``[nt, k]``.
        leak (Tensor, optional): ``[nt, H, k]`` leak logits :math:`c_j`.
        bias_fn (callable, optional): ``(scores, start, end) -> scores``
            applying the relative bias to tiles ``start:end``.
        key_bias (Tensor, optional): ``[nt, k]`` float32 log-multiplicity
            :math:`\log c_j` of every key (:math:`-\infty`: masked), in
            place of ``key_valid``: key :math:`j` counts as :math:`c_j`
            equal keys (softmax logit :math:`+\log c_j`; leaky numerator
            and leak times :math:`c_j`).
    """
    nt, H, T, D = q.shape
    kk = k.size(2)
    per_tile_elems = H * T * kk * (D if score_fn is not dot_score else 1)
    step = max(1, max_elements // max(per_tile_elems, 1))
    # One chunk wherever it fits: under torch.compile with dynamic shapes
    # this is one guard (nt <= step) that every smaller layout meets, where
    # the loop's chunk count would be specialised (a recompilation per
    # number of sets and per largest set).
    chunks = [(0, nt)] if nt <= step else \
        [(s, min(nt, s + step)) for s in range(0, nt, step)]
    outs = []
    for s, e in chunks:
        a = score_fn(q[s:e], k[s:e])  # [c, H, T, k]
        if bias_fn is not None:
            a = bias_fn(a, s, e)
        a = a.to(at_least_float32(a.dtype))  # float64 stays
        mask = None if key_valid is None else \
            key_valid[s:e].view(e - s, 1, 1, kk)  # [c, k] -> [c, 1, 1, k]
        bias = None if key_bias is None else key_bias[s:e].view(-1, 1, 1, kk)
        if normalization == 'softmax':
            if bias is not None:
                a = a + bias
            elif mask is not None:
                a = a.masked_fill(~mask, float('-inf'))
            w = torch.softmax(a, dim=-1)
        else:  # leaky: ReLU(s) / (sum ReLU(s) + sum ReLU(c) + eps)
            a = F.relu(a)
            c = F.relu(leak[s:e].to(a.dtype)).unsqueeze(2)  # [c, H, 1, k]
            if bias is not None:
                a, c = a * bias.exp(), c * bias.exp()
            elif mask is not None:
                a = a.masked_fill(~mask, 0.0)
                c = c.masked_fill(~mask, 0.0)
            w = a / (a.sum(-1, keepdim=True) + c.sum(-1, keepdim=True) + 1e-6)
        w = F.dropout(w, p=dropout, training=training).to(v.dtype)
        if weights is not None:
            weights.append(w)
        outs.append(w @ v[s:e])  # [c, H, T, D]
    return torch.cat(outs, dim=0) if len(outs) > 1 else outs[0]


def sdpa_attention(q: Tensor, k: Tensor, v: Tensor,
                   key_valid: Optional[Tensor], dropout: float,
                   training: bool, key_bias: Optional[Tensor] = None
                   ) -> Tensor:
    """Dot-product softmax attention through PyTorch's fused kernels (in
    calls of at most :data:`MAX_GRID_Y` tiles: the flash and
    memory-efficient kernels put the batch on a CUDA grid axis), or
    samsa_geo's tile kernels where
    :func:`~samsa_geo.nn.attention.config.use_tile_attention` is on and
    they serve the call. A float ``key_bias`` ``[nt, k]`` (see
    :func:`explicit_attention`) is added to the logits in place of
    ``key_valid``."""
    if _tile_kernel_serves(q, k, v, dropout if training else 0.0):
        from samsa_geo.nn.attention._tile_attention_triton import (
            tile_attention_triton,
        )
        if key_bias is not None:
            bias = key_bias.float()
        elif key_valid is not None:  # [nt, k] -> 0 or -inf
            bias = torch.zeros(key_valid.shape, device=q.device).masked_fill_(
                ~key_valid, float('-inf'))
        else:
            bias = None
        return tile_attention_triton(q, k, v, bias)
    if q.size(0) > MAX_GRID_Y:
        return _in_tile_chunks(sdpa_attention, MAX_GRID_Y, q, k, v,
                               key_valid, dropout, training, key_bias)
    mask = None
    if key_bias is not None:  # [nt, k] -> [nt, 1, 1, k], additive
        mask = key_bias.to(q.dtype).view(key_bias.size(0), 1, 1, -1)
    elif key_valid is not None:
        mask = key_valid.view(key_valid.size(0), 1, 1, -1)  # [nt, 1, 1, k]
    return F.scaled_dot_product_attention(
        q, k, v, attn_mask=mask, dropout_p=dropout if training else 0.0)


def _tile_kernel_serves(q: Tensor, k: Tensor, v: Tensor,
                        dropout: float) -> bool:
    # Whether samsa_geo's tile attention kernels take the call
    # (config.use_tile_attention): CUDA calls of one dtype that the
    # kernels take (tile_kernels_take).
    return (config.use_tile_attention() and triton_serves(q.device)
            and q.dtype == k.dtype == v.dtype
            and tile_kernels_take(q.dtype, k.size(2), q.size(-1), dropout))


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
    if (not needs_grad(q, k, v, *weights)
            and config.bias_inference_kernel() == 'triton'
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
