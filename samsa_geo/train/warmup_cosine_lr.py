import math
from typing import List

from torch.optim import Optimizer
from torch.optim.lr_scheduler import LRScheduler

from samsa_geo.ops.validation import check_non_negative_int, check_positive_int


class WarmupCosineLR(LRScheduler):
    r"""Linear warm-up followed by cosine decay, stepped once per optimizer step.

    .. math::
        \eta_s =
        \begin{cases}
            \eta_{\max} \, \frac{s + 1}{W} & s < W \\
            \eta_{\min} + \frac{1}{2} (\eta_{\max} - \eta_{\min})
            \left(1 + \cos\left(\pi \frac{s - W}{\max(1, T - W)}\right)\right)
            & s \geq W
        \end{cases}

    where :math:`s` is the (zero-based) index of the step about to be taken,
    :math:`W` the number of warm-up steps, :math:`T` the total number of steps,
    :math:`\eta_{\max}` each parameter group's initial learning rate and
    :math:`\eta_{\min}` the final one.

    Args:
        optimizer (torch.optim.Optimizer): The wrapped optimizer.
        warmup_steps (int): Number of linear warm-up steps :math:`W`.
        total_steps (int): Total number of optimizer steps :math:`T`.
        min_lr (float, optional): Learning rate :math:`\eta_{\min}` that the
            cosine reaches at :math:`s = T`, one step after the last (step
            :math:`T - 1` still takes a rate above it). (default: :obj:`0.0`)
        last_epoch (int, optional): Index of the last step taken, :obj:`-1`
            for a fresh schedule. (default: :obj:`-1`)
    """
    def __init__(self, optimizer: Optimizer, warmup_steps: int,
                 total_steps: int, min_lr: float = 0.0,
                 last_epoch: int = -1) -> None:
        check_positive_int('total_steps', total_steps)
        check_non_negative_int('warmup_steps', warmup_steps)
        if warmup_steps > total_steps:
            raise ValueError(f"Expected 'warmup_steps' to be an int in "
                             f"[0, total_steps={total_steps}] "
                             f"(got {warmup_steps!r})")
        if min_lr < 0:
            raise ValueError(f"Expected 'min_lr' to be non-negative "
                             f"(got {min_lr})")
        self.warmup_steps = warmup_steps
        self.total_steps = total_steps
        self.min_lr = float(min_lr)
        super().__init__(optimizer, last_epoch)

    def lr_at(self, step: int, base_lr: float) -> float:
        r"""The learning rate of step :obj:`step` for a group starting at
        :obj:`base_lr`."""
        if step < self.warmup_steps:
            return base_lr * (step + 1) / self.warmup_steps
        span = max(1, self.total_steps - self.warmup_steps)
        progress = min(1.0, (step - self.warmup_steps) / span)
        return self.min_lr + 0.5 * (base_lr - self.min_lr) * (
            1.0 + math.cos(math.pi * progress))

    def get_lr(self) -> List[float]:
        return [self.lr_at(self.last_epoch, base) for base in self.base_lrs]

    def __repr__(self) -> str:
        return (f'{self.__class__.__name__}(warmup_steps={self.warmup_steps}, '
                f'total_steps={self.total_steps}, min_lr={self.min_lr})')
