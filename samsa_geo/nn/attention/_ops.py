r"""samsa_geo's Triton inference kernels as PyTorch custom operators, so
that :func:`torch.compile` keeps them inside a model's graph (no graph
break: CUDA graphs capture the whole model). The kernels' modules (which
need Triton) are imported when an operator first runs."""
from typing import Optional, Tuple

import torch
from torch import Tensor


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
                     bias: Tensor, lin2_weight: Optional[Tensor] = None,
                     lin2_bias: Optional[Tensor] = None,
                     approximate: str = 'none') -> Tensor:
    r"""The importance scorer's tail in one kernel
    (:func:`~samsa_geo.nn.attention._score_triton.importance_score_triton`;
    with ``lin2_weight``, ``y`` is the MLP's hidden layer):
    ``[N, C]`` -> ``[N, H]`` float32."""
    from samsa_geo.nn.attention import _score_triton
    return _score_triton.importance_score_triton(
        y, x, ln_weight, ln_bias, eps, weight, bias, lin2_weight, lin2_bias,
        approximate)


@importance_score.register_fake
def _(y, x, ln_weight, ln_bias, eps, weight, bias, lin2_weight=None,
      lin2_bias=None, approximate='none'):
    return y.new_empty(y.size(0), weight.size(0), dtype=torch.float32)


def sampled_attention_kernels(
    q: Tensor, kv: Optional[Tensor], score: Tensor,
    reg_score: Optional[Tensor], reg_kv: Optional[Tensor],
    batch: Optional[Tensor], kb: Optional[Tensor], num_sets: int,
    max_size: int, k_max: int,
    kv_lin: Optional[Tuple[Tensor, Tensor, Tensor]] = None,
) -> Tuple[Tensor, Tensor]:
    r"""The fused inference path's launches: the segmented top-k (in
    chunks and a merge for sets beyond one block)
    (:func:`~samsa_geo.nn.attention._topk_triton.select_topk_triton`) and
    the gather-attention kernel
    (:func:`~samsa_geo.nn.attention._gather_attention_triton.gather_attention_triton`).

    ``q [N, H D]``, ``kv [N, 2 H D]``, ``score [N, H]`` -> the outputs
    ``[N, H D]`` and the selected ids ``[B, H, k_max]``; ``batch`` only
    for ragged sets, ``kb`` (the sets' own :math:`k_b`) only for a
    fractional :math:`k` of ragged sets. With ``kv_lin``, ``(x, weight,
    bias)`` of the keys' and values' projection in place of ``kv``, the
    selected rows alone are projected between the two kernels
    (:func:`~samsa_geo.nn.attention._sampling.project_rows`)."""
    from samsa_geo.nn.attention._gather_attention_triton import (
        gather_attention_triton,
    )
    from samsa_geo.nn.attention._sampling import project_rows
    from samsa_geo.nn.attention._topk_triton import select_topk_triton
    idx, bounds = select_topk_triton(
        score, reg_score, batch, num_sets, max_size, k_max, k_max, kb,
        with_bounds=True)
    if kv_lin is not None:  # unused slots (-1) project row 0, never read
        kv = project_rows(idx.clamp(min=0), *kv_lin)  # [B, H, k, 2D]
    out = gather_attention_triton(q, kv, reg_kv, idx, bounds, max_size)
    return out, idx


@torch.library.custom_op('samsa_geo::sampled_attention_inference',
                         mutates_args=())
def sampled_attention_inference(
    q: Tensor, kv: Tensor, score: Tensor, reg_score: Optional[Tensor],
    reg_kv: Optional[Tensor], batch: Optional[Tensor], kb: Optional[Tensor],
    num_sets: int, max_size: int, k_max: int,
) -> Tuple[Tensor, Tensor]:
    r""":func:`sampled_attention_kernels` as one operator."""
    return sampled_attention_kernels(q, kv, score, reg_score, reg_kv, batch,
                                     kb, num_sets, max_size, k_max)


@sampled_attention_inference.register_fake
def _(q, kv, score, reg_score, reg_kv, batch, kb, num_sets, max_size, k_max):
    out = q.new_empty(q.shape)  # contiguous, as the kernel writes it
    return out, q.new_empty(num_sets, score.size(1), k_max, dtype=torch.long)
