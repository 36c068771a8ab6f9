"""The argument checks of :class:`~samsa_geo.train.Trainer`."""
from typing import Any, Optional

from torch.nn import Module

_TASK_METHODS = ('training_step', 'eval_step', 'compute_metrics')


def check_trainer_arguments(model: Any, task: Any, epochs: Any, lr: float,
                            weight_decay: float, warmup_steps: Any,
                            clip_grad: Optional[float], amp: Optional[str],
                            monitor: Any, mode: str, resume: bool,
                            overwrite: bool, tie_break: Any = None) -> None:
    r"""Raises :class:`TypeError` or :class:`ValueError` naming the first
    argument of :class:`~samsa_geo.train.Trainer` that is out of range."""
    if not isinstance(model, Module):
        raise TypeError(f"Expected 'model' to be a torch.nn.Module "
                        f"(got {type(model).__name__})")
    for name in _TASK_METHODS:
        if not callable(getattr(task, name, None)):
            raise TypeError(f"Expected 'task' to define a method "
                            f"'{name}' (got {type(task).__name__})")
    # (name, check, what is expected), checked in this order.
    checks = [
        ('epochs', lambda: isinstance(epochs, int) and epochs >= 1,
         f"a positive int (got {epochs!r})"),
        ('lr', lambda: lr > 0, f"positive (got {lr})"),
        ('weight_decay', lambda: not weight_decay < 0,
         f"non-negative (got {weight_decay})"),
        ('warmup_steps',
         lambda: isinstance(warmup_steps, int) and warmup_steps >= 0,
         f"a non-negative int (got {warmup_steps!r})"),
        ('clip_grad', lambda: clip_grad is None or clip_grad > 0,
         f"positive or None (got {clip_grad})"),
        ('amp', lambda: amp in (None, 'bf16', 'fp16'),
         f"None, 'bf16' or 'fp16' (got {amp!r})"),
        ('mode', lambda: mode in ('min', 'max'),
         f"'min' or 'max' (got {mode!r})"),
    ]
    for name, valid, expected in checks:
        if not valid():
            raise ValueError(f"Expected '{name}' to be {expected}")
    if not isinstance(monitor, str) or not monitor.startswith('val_'):
        raise ValueError(f"Expected 'monitor' to name a validation metric "
                         f"starting with 'val_' (got {monitor!r})")
    if tie_break is not None and (not isinstance(tie_break, str)
                                  or not tie_break.startswith('val_')):
        raise ValueError(f"Expected 'tie_break' to be None or name a "
                         f"validation metric starting with 'val_' "
                         f"(got {tie_break!r})")
    if resume and overwrite:
        raise ValueError("Expected at most one of 'resume' and "
                         "'overwrite' (got both)")
