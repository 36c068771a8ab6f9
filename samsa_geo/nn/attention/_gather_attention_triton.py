r"""Sampled attention of the inference path, written in Triton: the keys
and values are gathered by index inside the kernel.

One program handles ``BLOCK_M`` queries of one set :math:`b` and head
:math:`h`, and streams the set's selected candidates
:math:`\mathcal{S}_{b,h}` (``[B, H, k]`` ids from
:mod:`~samsa_geo.nn.attention._topk_triton`) in blocks of ``BLOCK_N``:
token rows are read from the projected keys and values, register rows
from the learned register table, and

.. math::
    \mathbf{o}_i^{(h)} = \sum_{j \in \mathcal{S}_{b,h}}
    \mathrm{softmax}_j\left(\frac{\mathbf{q}_i^{(h)\top}
    \mathbf{k}_j^{(h)}}{\sqrt{D}}\right) \mathbf{v}_j^{(h)}

is accumulated with an online softmax (base 2, float32). The output is
written token-major, ``[N, H D]``, as the output projection reads it: no
padded layout, no gathered copy of the keys and values, no tiles.

The keys and values are either every token's (``[N, 2 H D]``, read at
the selected ids) or the selected candidates' alone (``[B, H, k, 2D]``,
projected after the selection, read slot by slot): see
:func:`gather_attention_triton`.

Forward only, no gradient. Importing this module needs Triton.
"""
import math
from typing import Optional

import torch
import triton
import triton.language as tl
from torch import Tensor

from samsa_geo.ops._triton import INTERPRETED
from samsa_geo.ops._triton.dot import dot
from samsa_geo.ops._triton.launch import Launcher

_LOG2E = 1.0 / math.log(2.0)
#: A fixed ``{'BLOCK_M', 'BLOCK_N', 'num_warps', 'num_stages'}``
#: (:obj:`None`: :func:`default_config`).
KERNEL_CONFIG: Optional[dict] = None
# Triton's interpreter (``TRITON_INTERPRET=1``; tests on CPU) runs one
# small configuration.
_INTERPRET_CONFIG = {'BLOCK_M': 16, 'BLOCK_N': 16}


@triton.jit
def _gather_attention_fwd(
    Q, KV, REG, IDX, BOUNDS, OUT,
    sq_n, skv_b, skv_h, skv_n, sr_r, sr_h, si_b, si_h, so_n,
    K_MAX, D, n_equal, sm_scale,
    H: tl.constexpr, HAS_REG: tl.constexpr, EQUAL: tl.constexpr,
    ROWS: tl.constexpr, BLOCK_D: tl.constexpr, PRECISION: tl.constexpr,
    UPCAST: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
):
    # ROWS: KV holds the selected rows, [B, H, K_MAX, 2D] with strides
    # (skv_b, skv_h, skv_n), read in slot order; else every token's
    # [N, 2 H D] rows (row stride skv_n), read at the selected ids.
    b = tl.program_id(0) // H
    h = tl.program_id(0) % H
    if EQUAL:  # set b starts at b * n
        bounds = b.to(tl.int64) * n_equal + tl.arange(0, 2) * n_equal
    else:  # [B, 2] (start, end), found by the selection kernel
        bounds = tl.load(BOUNDS + 2 * b + tl.arange(0, 2))
    start = tl.min(bounds)
    end = tl.max(bounds)
    first = start + tl.program_id(1) * BLOCK_M
    rows = first + tl.arange(0, BLOCK_M)  # int64 token rows
    offs_d = tl.arange(0, BLOCK_D)
    mask_m = rows < end
    mask_d = offs_d < D
    q = tl.load(Q + rows[:, None] * sq_n + h * D + offs_d[None, :],
                mask=mask_m[:, None] & mask_d[None, :], other=0.0)
    ids_base = IDX + b.to(tl.int64) * si_b + h * si_h
    if ROWS:  # set b's and head h's [K_MAX, 2D] rows as [k_h, v_h]
        k_col = KV + b.to(tl.int64) * skv_b + h * skv_h + offs_d
    else:  # head h's [k_h, v_h] block of a token's row
        k_col = KV + h * 2 * D + offs_d
    r_col = REG + h * sr_h + offs_d

    m_i = tl.full([BLOCK_M], float('-inf'), tl.float32)
    l_i = tl.zeros([BLOCK_M], tl.float32)
    acc = tl.zeros([BLOCK_M, BLOCK_D], tl.float32)
    # Query blocks past the end of their set (sets shorter than the
    # largest) skip the keys.
    num_keys = tl.where(first < end, K_MAX, 0)
    for start_n in range(0, num_keys, BLOCK_N):
        offs_n = start_n + tl.arange(0, BLOCK_N)
        ids = tl.load(ids_base + offs_n, mask=offs_n < K_MAX, other=-1)
        is_tok = ids >= 0
        tok_mask = is_tok[:, None] & mask_d[None, :]
        if ROWS:
            row = offs_n[:, None].to(tl.int64) * skv_n
        else:
            row = tl.where(is_tok, ids, 0)[:, None] * skv_n
        k = tl.load(k_col[None, :] + row, mask=tok_mask, other=0.0)
        v = tl.load(k_col[None, :] + D + row, mask=tok_mask, other=0.0)
        if HAS_REG:  # ids -2 - r: register r
            is_reg = ids <= -2
            reg_mask = is_reg[:, None] & mask_d[None, :]
            reg = tl.where(is_reg, -2 - ids, 0)[:, None] * sr_r
            k += tl.load(r_col[None, :] + reg, mask=reg_mask,
                         other=0.0).to(k.dtype)
            v += tl.load(r_col[None, :] + D + reg, mask=reg_mask,
                         other=0.0).to(v.dtype)
        # Scaled logits and the unused slots' -inf in one multiply-add.
        # (The scale applied inside the exponent with the shift instead,
        # and no mask where a block holds no unused slot, made the kernel
        # 17 % slower at 1 x 65,536 on an H100, 0.129 against 0.110 ms:
        # gather_attention_kernel.py, commit bbfc91c.)
        key_bias = tl.where(ids != -1, 0.0, float('-inf'))
        z = dot(q, tl.trans(k), PRECISION, UPCAST) * sm_scale \
            + key_bias[None, :]

        m_new = tl.maximum(m_i, tl.max(z, 1))
        m_use = tl.where(m_new == float('-inf'), 0.0, m_new)
        alpha = tl.exp2(m_i - m_use)
        p = tl.exp2(z - m_use[:, None])
        l_i = l_i * alpha + tl.sum(p, 1)
        acc = acc * alpha[:, None] + dot(p.to(v.dtype), v, PRECISION,
                                         UPCAST)
        m_i = m_new

    # A query without any key (not produced: every non-empty set keeps
    # one) gives zeros.
    acc = acc / tl.where(l_i == 0.0, 1.0, l_i)[:, None]
    tl.store(OUT + rows[:, None] * so_n + h * D + offs_d[None, :],
             acc.to(OUT.dtype.element_ty),
             mask=mask_m[:, None] & mask_d[None, :])


_launch_gather_attention = Launcher(_gather_attention_fwd)


def default_config(D: int, max_size: int, k_max: int = 64) -> dict:
    """Queries and keys per block, warps and stages for head width ``D``,
    largest set ``max_size`` and ``k_max`` candidates per set.

    On an H200 (bf16, 8 heads of 32, 256 candidates; 32 x 1,024 to
    1 x 262,144 tokens), blocks of 128 queries and 128 keys with 4 warps
    and 2 stages ran fastest of 3 x 3 x 2 x 3 measured configurations,
    10-13 % faster than 64 x 64
    (``benchmarks/gather_attention_kernel.py``). Narrow heads only: a
    ``[128, D]`` float32 accumulator of wider heads would leave the
    registers."""
    narrow = D <= 64
    block_m = 32 if max_size <= 32 else 64
    if narrow and max_size >= 512:
        block_m = 128
    block_n = (128 if k_max >= 128 else 64) if narrow else 32
    return {'BLOCK_M': block_m, 'BLOCK_N': block_n, 'num_warps': 4,
            'num_stages': 2}


def gather_attention_triton(q: Tensor, kv: Tensor,
                            reg_kv: Optional[Tensor], idx: Tensor,
                            bounds: Optional[Tensor], max_size: int,
                            ) -> Tensor:
    r"""Attention of every token to its set's selected candidates, one
    kernel launch.

    Args:
        q (Tensor): ``[N, H D]`` queries, unit stride along the columns
            (a column slice of the fused projection, say).
        kv (Tensor): ``[N, 2 H D]`` keys and values of every token, head
            :math:`h` in columns :math:`2hD .. 2(h+1)D` as
            ``[k_h, v_h]``; or ``[B, H, k, 2D]`` those of the selected
            candidates alone, in the slots of ``idx`` (tokens only: no
            registers; the rows of unused slots are not read).
        reg_kv (Tensor, optional): ``[R, H, 2D]`` register keys and values
            (cast to ``q``'s dtype).
        idx (Tensor): ``[B, H, k]`` candidate ids (tokens :math:`i`,
            registers :math:`-2 - r`, unused :math:`-1`).
        bounds (Tensor, optional): ``[B, 2]`` (start, end) of every set;
            :obj:`None` where every set holds ``max_size`` tokens.
        max_size (int): :math:`n_{\max}`.

    Returns:
        ``[N, H D]`` in ``q``'s dtype.
    """
    N, C = q.shape
    B, H, K = idx.shape
    D = C // H
    out = torch.empty_like(q, memory_format=torch.contiguous_format)
    if N == 0 or B == 0:
        return out
    if q.stride(1) != 1 or kv.stride(-1) != 1:
        raise ValueError("Expected 'q' and 'kv' with unit column stride")
    has_reg = reg_kv is not None and reg_kv.size(0) > 0
    rows = kv.dim() == 4
    if rows and (tuple(kv.shape) != (B, H, K, 2 * D) or has_reg):
        raise ValueError(f"Expected the selected rows 'kv' of shape "
                         f"{[B, H, K, 2 * D]} and no registers (got "
                         f"{list(kv.shape)}, registers: {has_reg})")
    # [B, H, k, 2D] strides of the selected rows, or a token row's.
    skv = kv.stride()[:3] if rows else (0, 0, kv.stride(0))
    reg = reg_kv if has_reg else kv  # never read without registers
    sr = (reg.stride(0), reg.stride(1)) if has_reg else (0, 0)
    config = KERNEL_CONFIG or default_config(D, max_size, K)
    upcast = False
    if INTERPRETED:
        config = _INTERPRET_CONFIG
        upcast = q.dtype == torch.bfloat16
    grid = (B * H, triton.cdiv(max_size, config['BLOCK_M']))
    _launch_gather_attention(
        grid, q, kv, reg, idx, idx if bounds is None else bounds, out,
        q.stride(0), *skv, *sr, idx.stride(0), idx.stride(1),
        out.stride(0), K, D, max_size, _LOG2E / math.sqrt(D),
        H=H, HAS_REG=has_reg, EQUAL=bounds is None, ROWS=rows,
        BLOCK_D=max(16, triton.next_power_of_2(D)),
        PRECISION='ieee' if q.dtype == torch.float32 else 'tf32',
        UPCAST=upcast, **config)
    return out
