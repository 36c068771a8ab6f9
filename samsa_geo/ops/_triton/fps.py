r"""Farthest point sampling on the GPU, written in Triton.

One program samples one example. Every step updates each point's squared
distance to the sampled set with the last sample,

.. math::
    d_j \leftarrow \min\left(d_j, \Vert \mathbf{x}_j -
    \mathbf{x}_{s_{i-1}} \Vert^2\right),

and picks the arg-max :math:`s_i` (the first on ties). Examples of up to
:obj:`REGISTER_POINTS` points keep their distances in registers for all
steps (coordinates are re-read each step, from cache); larger ones stream
blocks of points, with the distances in a scratch buffer. Distances are
computed in float32 as
:math:`((x_0 - c_0)^2 + (x_1 - c_1)^2) + (x_2 - c_2)^2` without fused
multiply-adds, the arithmetic of the pure-PyTorch path, so both pick the
same points.

Importing this module needs Triton.
"""
import torch
import triton
import triton.language as tl
from torch import Tensor

from samsa_geo.ops._triton import INTERPRETED
from samsa_geo.ops._triton.launch import Launcher

#: Largest example whose distances stay in registers across all steps.
REGISTER_POINTS = 4096
#: Points per block of the streaming variant.
STREAM_BLOCK = 2048


@triton.jit
def _sq_dist(pos, n_pad, lane, mask, c0, c1, c2, F: tl.constexpr):
    # pos: this example's first point (scalar pointer); lane: int32 offsets.
    d = tl.load(pos + lane, mask=mask, other=0.0) - c0
    d = d * d
    if F > 1:
        e = tl.load(pos + n_pad + lane, mask=mask, other=0.0) - c1
        d = d + e * e
    if F > 2:
        e = tl.load(pos + 2 * n_pad + lane, mask=mask, other=0.0) - c2
        d = d + e * e
    return d


@triton.jit
def _centre(pos, n_pad, i, F: tl.constexpr):
    c0 = tl.load(pos + i)
    c1 = c0 * 0.0
    c2 = c0 * 0.0
    if F > 1:
        c1 = tl.load(pos + n_pad + i)
    if F > 2:
        c2 = tl.load(pos + 2 * n_pad + i)
    return c0, c1, c2


@triton.jit
def _fps_kernel(pos, n_pad, ptr, start, num_samples, offset, scratch, out,
                F: tl.constexpr, BLOCK: tl.constexpr,
                IN_REGISTERS: tl.constexpr):
    b = tl.program_id(0)
    n0 = tl.load(ptr + b)
    n = (tl.load(ptr + b + 1) - n0).to(tl.int32)
    s = tl.load(num_samples + b).to(tl.int32)
    out = out + tl.load(offset + b)
    pos = pos + n0  # this example's points, local indices from here on
    scratch = scratch + n0
    if s > 0:
        cur = tl.load(start + b).to(tl.int32)
        tl.store(out, n0 + cur)
        lane = tl.arange(0, BLOCK)
        if IN_REGISTERS:
            mask = lane < n
            # Padding lanes hold -1 so that they never win the arg-max.
            dist = tl.where(mask, float('inf'), -1.0)
            for i in range(1, s):
                c0, c1, c2 = _centre(pos, n_pad, cur, F)
                d = _sq_dist(pos, n_pad, lane, mask, c0, c1, c2, F)
                dist = tl.where(mask, tl.minimum(dist, d), -1.0)
                cur = tl.argmax(dist, axis=0, tie_break_left=True)
                tl.store(out + i, n0 + cur)
        else:
            for i in range(1, s):
                c0, c1, c2 = _centre(pos, n_pad, cur, F)
                # Per lane, the largest distance over the blocks and its
                # first index; then one arg-max over the lanes.
                best_v = tl.full([BLOCK], -1.0, tl.float32)
                best_i = lane
                for b0 in range(0, n, BLOCK):
                    idx = b0 + lane
                    mask = idx < n
                    d = _sq_dist(pos, n_pad, idx, mask, c0, c1, c2, F)
                    if i > 1:
                        d = tl.minimum(tl.load(scratch + idx, mask=mask), d)
                    tl.store(scratch + idx, d, mask=mask)
                    better = mask & (d > best_v)  # ties keep the earlier
                    best_v = tl.where(better, d, best_v)
                    best_i = tl.where(better, idx, best_i)
                top = tl.max(best_v, axis=0)
                cur = tl.min(tl.where(best_v == top, best_i, n), axis=0)
                tl.store(out + i, n0 + cur)


_launch_fps = Launcher(_fps_kernel)


def fps_triton(src: Tensor, ptr: Tensor, start: Tensor,
               num_samples: Tensor, max_points: int, total: int) -> Tensor:
    r"""Farthest point sampling of every example.

    Args:
        src (Tensor): Points :obj:`[N, F]` float32, :math:`F \le 3`.
        ptr (Tensor): Example boundaries :obj:`[B + 1]`.
        start (Tensor): Local index of every example's first sample
            :obj:`[B]`.
        num_samples (Tensor): Samples per example :obj:`[B]`.
        max_points (int): Points of the largest example.
        total (int): Sum of :obj:`num_samples`.

    Returns:
        Global indices :obj:`[total]`, in sampling order, by example.
    """
    num_examples = ptr.numel() - 1
    out = torch.empty(total, dtype=torch.long, device=src.device)
    if total == 0:
        return out
    pos = src.float().t().contiguous()  # [F, N]
    offset = torch.cumsum(num_samples, 0) - num_samples
    in_registers = max_points <= REGISTER_POINTS
    if in_registers:
        block = max(triton.next_power_of_2(max_points), 16)
        scratch = pos  # never read
    else:
        block = STREAM_BLOCK
        scratch = torch.empty(src.size(0), dtype=torch.float32,
                              device=src.device)
    num_warps = 1 if INTERPRETED else (16 if block >= 2048 else 8
                                       if block >= 512 else 4)
    _launch_fps(
        (num_examples, ),
        pos, pos.size(1), ptr, start, num_samples, offset, scratch, out,
        F=src.size(1), BLOCK=block, IN_REGISTERS=in_registers,
        num_warps=num_warps, enable_fp_fusion=False)
    return out
