r"""Exact attention of sets that keep all their candidates, in one padded
batch: every set is a row of :math:`n_{\max}` slots, the keys past a set's
size are masked, and one call of PyTorch's fused attention serves all sets.

It computes what the sampled path computes when every set keeps all its
tokens (:math:`k_b = n_b`, no registers) in its padded layout, the same
attention call on the same shapes, but with fewer operators per call: the
projected queries, keys and values are padded at once, no key ids are
built or gathered, and the padding index and key mask are built once per
``batch`` tensor and shared by every layer that reads it.

With :func:`~samsa_geo.nn.attention.config.use_packed_attention` on, a
ragged batch on CUDA skips the padding: samsa_geo's Triton kernels attend
every set on its packed rows (see
:func:`~samsa_geo.nn.attention._tile_attention_triton.packed_attention_triton`).
"""
from typing import Dict, Optional

import torch
import torch.nn.functional as F
from torch import Tensor

from samsa_geo.nn.attention import config
from samsa_geo.nn.attention._attend import MAX_GRID_Y
from samsa_geo.nn.attention._dispatch import (
    is_tracing,
    tile_kernels_take,
    triton_serves,
)
from samsa_geo.nn.attention._sets import set_offsets

#: Row alignment (elements) of an attention mask that PyTorch's
#: memory-efficient attention reads without padding a copy.
MASK_ALIGNMENT = 16


class DenseLayout:
    r"""The padded layout of :math:`B` sets of at most :math:`n_{\max}`
    tokens.

    Attributes:
        index (Tensor): :math:`(N)` slot
            :math:`b\,n_{\max} + (i - \mathrm{ptr}_b)` of every token.
        key_valid (Tensor): :math:`(B, n_{\max})` whether a slot holds a
            token (slot 0 of an empty set counts as one: an all-masked row
            would make the softmax NaN, and no query reads it).
        ptr (Tensor): :math:`(B + 1)` offsets of the sets' token rows.
    """
    def __init__(self, index: Tensor, key_valid: Tensor,
                 ptr: Tensor) -> None:
        self.index, self.key_valid, self.ptr = index, key_valid, ptr
        self._masks: Dict[torch.dtype, Tensor] = {}

    def key_bias(self, dtype: torch.dtype) -> Tensor:
        r"""The additive key mask :math:`(B, 1, 1, n_{\max})` of ``dtype``:
        :math:`0` on tokens, :math:`-\infty` past them (the values SDPA
        gives a boolean mask), made once per dtype, a view into rows
        padded to a multiple of :data:`MASK_ALIGNMENT` elements."""
        if dtype not in self._masks:
            B, n = self.key_valid.shape
            zero = torch.zeros((), dtype=dtype, device=self.index.device)
            mask = torch.where(self.key_valid, zero, float('-inf')).view(
                B, 1, 1, n)  # [B, n] -> [B, 1, 1, n]
            # Rows of a multiple of MASK_ALIGNMENT elements: the
            # memory-efficient attention kernel takes the mask as it is
            # instead of padding a copy in every layer's call.
            width = -(-n // MASK_ALIGNMENT) * MASK_ALIGNMENT
            self._masks[dtype] = F.pad(mask, (0, width - n))[..., :n]
        return self._masks[dtype]


def dense_layout(batch: Tensor, num_sets: int,
                 max_size: int) -> DenseLayout:
    r"""The :class:`DenseLayout` of a sorted ``batch`` vector, built on the
    device without a read-back. In eager mode it is cached on ``batch``
    (keyed by its version counter and the sizes), so that the layers of a
    model share it."""
    key = (batch._version, num_sets, max_size)
    cache = None if is_tracing() else getattr(batch, '_samsa_dense', None)
    if cache is not None and cache[0] == key:
        return cache[1]
    ptr = set_offsets(batch, num_sets)  # [B + 1]
    loc = torch.arange(batch.numel(), device=batch.device) - ptr[batch]
    size = (ptr[1:] - ptr[:-1]).clamp_(min=1)  # [B]
    slot = torch.arange(max_size, device=batch.device)
    layout = DenseLayout(batch * max_size + loc,
                         slot.view(1, -1) < size.view(-1, 1), ptr)
    if not is_tracing():
        try:
            batch._samsa_dense = (key, layout)
        except (AttributeError, RuntimeError):  # tensor subclasses
            pass
    return layout


def sets_attention(qkv: Tensor, layout: Optional[DenseLayout],
                   num_sets: int, max_size: int, heads: int,
                   dropout: float) -> Tensor:
    r"""Softmax attention of every set over all its own tokens.

    Args:
        qkv (Tensor): The tokens' stacked projection :math:`(N, 3C)`:
            queries, then keys and values (see :func:`dense_attention`).
        layout (DenseLayout, optional): The sets' padded layout;
            :obj:`None` where all :math:`B` sets hold :math:`n_{\max}`
            tokens (rows :math:`b\,n_{\max}` on).
        num_sets (int): :math:`B`.
        max_size (int): :math:`n_{\max}`.
        heads (int): :math:`H`.
        dropout (float): Dropout on the attention weights (0 in eval).

    Returns:
        Tensor: :math:`(N, C)`.
    """
    B, n, C = num_sets, max_size, qkv.size(1) // 3
    if layout is not None and _packed_kernel_serves(qkv, n, heads,
                                                    dropout):
        from samsa_geo.nn.attention._tile_attention_triton import (
            packed_attention_triton,
        )
        return packed_attention_triton(qkv, layout.ptr, heads, n)
    if layout is not None:
        qkv = to_padded(qkv, layout.index, B * n)  # [B * n, 3C]
    q, kv = qkv.view(B, n, 3 * C).split_with_sizes([C, 2 * C], -1)
    key_bias = None if layout is None else layout.key_bias(q.dtype)
    o = dense_attention(q, kv, key_bias, heads, dropout)
    o = o.view(B * n, C)  # [B, n, C] -> [B * n, C]
    if layout is not None:
        o = o.index_select(0, layout.index)  # [N, C]
    return o


def _packed_kernel_serves(qkv: Tensor, max_size: int, heads: int,
                          dropout: float) -> bool:
    # Whether samsa_geo's packed attention kernels take the call
    # (config.use_packed_attention): CUDA calls that the kernels take
    # (tile_kernels_take), the set's tokens as keys.
    return (config.use_packed_attention() and triton_serves(qkv.device)
            and tile_kernels_take(qkv.dtype, max_size,
                                  qkv.size(1) // (3 * heads), dropout))


def to_padded(x: Tensor, index: Tensor, rows: int) -> Tensor:
    r"""Token rows :math:`(N, F)` into ``rows`` padded slots
    :math:`(\mathrm{rows}, F)`, zero where no token sits."""
    out = x.new_zeros(rows, x.size(1))
    return out.index_copy_(0, index, x)


def dense_attention(q: Tensor, kv: Tensor, key_bias: Optional[Tensor],
                    heads: int, dropout: float) -> Tensor:
    r"""Softmax attention of every padded set over its own slots.

    Args:
        q (Tensor): Queries :math:`(B, n, H D)`.
        kv (Tensor): Keys and values :math:`(B, n, 2 H D)`, head :math:`h`
            in columns :math:`[2hD, 2(h+1)D)` as ``[k_h, v_h]``.
        key_bias (Tensor, optional): :math:`(B, 1, 1, n)` additive key
            mask (see :func:`dense_layout`); :obj:`None` where every slot
            holds a token.
        heads (int): :math:`H`.
        dropout (float): Dropout on the attention weights (0 in eval).

    Returns:
        Tensor: :math:`(B, n, H D)`.
    """
    B, n, C = q.shape
    H, D = heads, C // heads
    q = q.view(B, n, H, D).transpose(1, 2)  # [B, H, n, D]
    kv = kv.view(B, n, H, 2 * D).transpose(1, 2)  # [B, H, n, 2D]
    k, v = kv.split_with_sizes([D, D], -1)  # [B, H, n, D] each
    mask = key_bias
    if B > MAX_GRID_Y:  # the fused kernels put B on a CUDA grid axis
        o = torch.cat([
            F.scaled_dot_product_attention(
                q[s:s + MAX_GRID_Y], k[s:s + MAX_GRID_Y],
                v[s:s + MAX_GRID_Y],
                attn_mask=None if mask is None else mask[s:s + MAX_GRID_Y],
                dropout_p=dropout) for s in range(0, B, MAX_GRID_Y)], 0)
    else:
        o = F.scaled_dot_product_attention(q, k, v, attn_mask=mask,
                                           dropout_p=dropout)
    return o.transpose(1, 2).reshape(B, n, C)  # [B, H, n, D] -> [B, n, C]
