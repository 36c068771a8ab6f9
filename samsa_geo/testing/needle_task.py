r"""The needle task: does the importance scorer learn which token matters?

Every set holds ``num_tokens`` random tokens
:math:`[m_i \Vert \mathrm{onehot}(a_i) \Vert \boldsymbol{\epsilon}_i]`
with an answer :math:`a_i \in \{0, \dots, C - 1\}` and Gaussian noise
:math:`\boldsymbol{\epsilon}_i`. Exactly one token, the *needle*, has the
marker :math:`m_i = 1`; the label of the set is the needle's answer. Every
other token carries an answer too, so a model that samples :math:`k` keys
at random is right only when the needle happens to be among them
(:math:`k / n`). The model is :class:`~samsa_geo.nn.SamsaAttention`, mean
pooling over the set and a two-layer MLP: the label is reachable only
through the sampled keys, so the scorer must rank the needle into its
top :math:`k`.
"""
from dataclasses import dataclass
from typing import Any, Dict, List, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.nn import GELU, Linear, Module, Sequential

from samsa_geo.nn.attention import SamsaAttention


def needle_sets(
    num_sets: int,
    num_tokens: int = 128,
    num_classes: int = 4,
    noise_channels: int = 8,
    generator: Optional[torch.Generator] = None,
) -> Tuple[Tensor, Tensor, Tensor, Tensor]:
    r"""Draws ``num_sets`` sets of the needle task.

    Returns:
        ``x`` :math:`(B n, 1 + C + F)`, ``batch`` :math:`(B n)`, the labels
        :math:`(B)` and the needle's position in its set :math:`(B)`.
    """
    B, n = num_sets, num_tokens
    answer = torch.randint(0, num_classes, (B, n), generator=generator)
    noise = torch.randn(B, n, noise_channels, generator=generator)
    needle = torch.randint(0, n, (B, ), generator=generator)
    marker = torch.zeros(B, n, 1)
    rows = torch.arange(B)
    marker[rows, needle, 0] = 1.0
    x = torch.cat([marker, F.one_hot(answer, num_classes).float(), noise],
                  dim=-1)  # [B, n, 1 + C + F]
    batch = rows.repeat_interleave(n)
    return x.view(B * n, -1), batch, answer[rows, needle], needle


class NeedleModel(Module):
    r"""Linear tokens, one :class:`~samsa_geo.nn.SamsaAttention`, mean
    pooling per set and a two-layer MLP."""
    def __init__(self, in_channels: int, channels: int, num_classes: int,
                 **attn_kwargs: Any) -> None:
        super().__init__()
        self.lin_in = Linear(in_channels, channels)
        self.attn = SamsaAttention(channels, **attn_kwargs)
        self.mlp = Sequential(Linear(channels, channels), GELU(),
                              Linear(channels, num_classes))

    def forward(self, x: Tensor, batch: Tensor, num_sets: int,
                num_tokens: int) -> Tensor:
        h = self.attn(self.lin_in(x), batch, num_graphs=num_sets,
                      max_num_nodes=num_tokens)
        return self.mlp(h.view(num_sets, num_tokens, -1).mean(1))  # [B, C]

    @torch.no_grad()
    def needle_recall(self, x: Tensor, needle: Tensor, num_sets: int,
                      num_tokens: int) -> float:
        r"""Fraction of (set, head) rankings whose clean top :math:`k`
        holds the needle (chance: :math:`k / n`)."""
        score = self.attn.scorer(self.lin_in(x))  # [B n, H]
        score = score.view(num_sets, num_tokens, -1)  # [B, n, H]
        k = min(int(self.attn.k), num_tokens)
        top = score.topk(k, dim=1).indices  # [B, k, H]
        return (top == needle.view(-1, 1, 1)).any(1).float().mean().item()


@dataclass
class NeedleResult:
    r"""Outcome of :func:`train_needle`.

    Attributes:
        steps (int, optional): First evaluated step at which the accuracy
            reached the target; :obj:`None` if it never did.
        accuracy (float): Last evaluated accuracy.
        recall (float): Needle recall of the scorer at that evaluation
            (NaN for full attention).
        losses (List[float]): Training loss of every step.
    """
    steps: Optional[int]
    accuracy: float
    recall: float
    losses: List[float]


def train_needle(
    seed: int,
    sampling: str = 'hard',
    steps: int = 1000,
    num_tokens: int = 128,
    k: int = 4,
    channels: int = 32,
    heads: int = 1,
    num_classes: int = 4,
    noise_channels: int = 8,
    batch_size: int = 16,
    lr: float = 3e-3,
    target: float = 0.95,
    eval_every: int = 50,
    num_eval: int = 256,
    teacher_steps: int = 0,
    attn_kwargs: Optional[Dict[str, Any]] = None,
) -> NeedleResult:
    r"""Trains a :class:`NeedleModel` with Adam on fresh sets every step
    and evaluates (clean top-:math:`k`, evaluation mode) every
    ``eval_every`` steps on ``num_eval`` fixed sets; stops at ``target``
    accuracy. Deterministic for a given ``seed``.

    For the first ``teacher_steps`` steps the scorer's output is replaced
    by the marker (the needle always sampled, no gradient to the scorer),
    so the rest of the model learns to read the needle first; the steps
    after it measure the scorer alone. Evaluation starts after them."""
    torch.manual_seed(seed)
    train_gen = torch.Generator().manual_seed(10_000 + seed)
    eval_gen = torch.Generator().manual_seed(0)
    xe, be, ye, needle = needle_sets(num_eval, num_tokens, num_classes,
                                     noise_channels, eval_gen)
    model = NeedleModel(1 + num_classes + noise_channels, channels,
                        num_classes, heads=heads, k=k, sampling=sampling,
                        **(attn_kwargs or {}))
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    acc = recall = 0.0
    losses: List[float] = []
    for step in range(1, steps + 1):
        model.train()
        x, batch, y, _ = needle_sets(batch_size, num_tokens, num_classes,
                                     noise_channels, train_gen)
        hook = None
        if step <= teacher_steps:
            marker = x[:, :1]  # [B n, 1]
            hook = model.attn.scorer.register_forward_hook(
                lambda module, args, out: 10.0 * marker.expand_as(out))
        loss = F.cross_entropy(model(x, batch, batch_size, num_tokens), y)
        if hook is not None:
            hook.remove()
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
        if step <= teacher_steps or (step % eval_every and step != steps):
            continue
        model.eval()
        with torch.no_grad():
            pred = model(xe, be, num_eval, num_tokens).argmax(-1)
        acc = (pred == ye).float().mean().item()
        recall = (model.needle_recall(xe, needle, num_eval, num_tokens)
                  if model.attn.scorer is not None else float('nan'))
        if acc >= target:
            return NeedleResult(step, acc, recall, losses)
    return NeedleResult(None, acc, recall, losses)
