r"""The fused inference path of :class:`SamsaAttention`: selection, gather
and attention in two Triton kernel launches (three for sets beyond one
selection block).

From the projected queries, keys and values and the importance scores, the
sampled attention of every set and head is

1. one launch of the segmented top-:math:`k` kernel
   (:mod:`~samsa_geo.nn.attention._topk_triton`), which writes the
   ``[B, H, k]`` selected ids (two for larger sets: the top :math:`k` of
   every chunk, then their merge), and
2. one launch of the gather-attention kernel
   (:mod:`~samsa_geo.nn.attention._gather_attention_triton`), which reads
   the selected key and value rows by id and writes ``[N, H D]``.

Given the keys' and values' projection in place of their rows (calls
captured as CUDA graphs, with many tokens per selected row), the rows of
the selected ids alone are projected between the two
(:func:`~samsa_geo.nn.attention._sampling.project_rows`: a gather and a
batched GEMM of :math:`B H k` rows instead of :math:`N`).

The unfused path runs a top-:math:`k` with index arithmetic, a gather of
the rows, the query tiles, the attention and the reshapes back (a dozen
or more launches, each of which costs host time). Forward only, no
gradient, no Gumbel noise: the caller decides where it applies. Compiled
graphs hold the launches as the custom operator
``samsa_geo::sampled_attention_inference``; exported graphs keep the
unfused path. Importing this module needs no Triton; running it does.
"""
from typing import Optional, Tuple, Union

import torch
from torch import Tensor

from samsa_geo.nn.attention._dispatch import is_tracing
from samsa_geo.nn.attention._ops import (
    sampled_attention_inference,
    sampled_attention_kernels,
)
from samsa_geo.nn.attention._sets import SetInfo


def fused_sampled_attention(
    q: Tensor, kv: Optional[Tensor], score: Tensor,
    reg_score: Optional[Tensor], reg_kv: Optional[Tensor],
    batch: Optional[Tensor], info: SetInfo, k: Union[int, float],
    kv_lin: Optional[Tuple[Tensor, Tensor, Tensor]] = None,
) -> Tuple[Tensor, Tensor]:
    r"""Dot-product softmax attention of every token to the top
    :math:`k_b` candidates of its set, per head.

    Args:
        q (Tensor): ``[N, H D]`` queries; kv: ``[N, 2 H D]`` keys and
            values as ``[k_h, v_h]`` per head (column slices of one
            projection are fine), or :obj:`None` with ``kv_lin``.
        score (Tensor): ``[N, H]`` importance scores.
        reg_score (Tensor, optional): ``[R, H]`` register scores;
            reg_kv: ``[R, H, 2D]`` register keys and values.
        batch (Tensor, optional): ``[N]`` sorted set index per token.
        info (SetInfo): the sets, with a known ``max_size``.
        k (int or float): the layer's ``k``.
        kv_lin (Tuple[Tensor, Tensor, Tensor], optional): ``x [N, C]``,
            ``weight [2 H D, C]`` and ``bias [2 H D]`` of the keys' and
            values' projection, in place of ``kv``: the selected rows'
            alone are projected (untraced calls without registers).

    Returns:
        The ``[N, H D]`` outputs in ``q``'s dtype and the ``[B, H, k_max]``
        selected ids (tokens :math:`i`, registers :math:`-2 - r`, unused
        slots :math:`-1`) in candidate order.
    """
    ragged = batch is not None and not info.equal
    # k_b = min(k_max, n_b + R) for an int k and for equal sets; a
    # fractional k of ragged sets reads each set's own k_b.
    kb = info.k if ragged and isinstance(k, float) else None
    args = (q, kv, score, reg_score, reg_kv, batch if ragged else None, kb,
            info.num_sets, info.max_size, info.k_max)
    if is_tracing():  # compiled graphs hold the kernels as one operator
        return sampled_attention_inference(*args)
    # Eager calls launch the kernels directly: the operator's dispatch
    # costs host time.
    return sampled_attention_kernels(*args, kv_lin=kv_lin)


def order_by_score(idx: Tensor, score: Tensor,
                   reg_score: Optional[Tensor]) -> Tensor:
    r"""The ``[B, H, k]`` ids of :func:`fused_sampled_attention` in
    descending order of score (ties: candidate order), unused slots
    last: the order of the unfused path's ``return_indices``."""
    head = torch.arange(idx.size(1), device=idx.device).view(1, -1, 1)
    s = score[idx.clamp(min=0), head].float()  # [B, H, k]
    if reg_score is not None:
        r = (-2 - idx).clamp(min=0)  # register of ids -2 - r
        s = torch.where(idx <= -2, reg_score[r, head].float(), s)
    s = s.masked_fill(idx == -1, float('-inf'))
    order = s.sort(dim=-1, descending=True, stable=True).indices
    return idx.gather(-1, order)
