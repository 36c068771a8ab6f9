"""The argument checks of :class:`~samsa_geo.train.Trainer`."""
import argparse
import os
from collections.abc import Mapping
from typing import Any, Optional

from torch.nn import Module

from samsa_geo.ops.validation import check_number

_TASK_METHODS = ('training_step', 'eval_step', 'compute_metrics')


def _is_int(value: Any) -> bool:
    # An int that is not a bool (True would pass as 1 epoch).
    return isinstance(value, int) and not isinstance(value, bool)


def check_trainer_arguments(model: Any, task: Any, out_dir: Any, epochs: Any,
                            lr: Any, weight_decay: Any, warmup_steps: Any,
                            min_lr: Any, clip_grad: Any, amp: Optional[str],
                            monitor: Any, mode: str, resume: bool,
                            overwrite: bool, tie_break: Any = None,
                            config: Any = None) -> None:
    r"""Raises :class:`TypeError` or :class:`ValueError` naming the first
    argument of :class:`~samsa_geo.train.Trainer` that is of the wrong type
    or out of range."""
    if not isinstance(model, Module):
        raise TypeError(f"Expected 'model' to be a torch.nn.Module "
                        f"(got {type(model).__name__})")
    for name in _TASK_METHODS:
        if not callable(getattr(task, name, None)):
            raise TypeError(f"Expected 'task' to define a method "
                            f"'{name}' (got {type(task).__name__})")
    if not isinstance(out_dir, (str, os.PathLike)):
        raise TypeError(f"Expected 'out_dir' to be a str or os.PathLike "
                        f"(got {type(out_dir).__name__})")
    # Real, finite numbers (TypeError or ValueError naming the argument);
    # their ranges are checked below.
    for name, value in (('lr', lr), ('weight_decay', weight_decay),
                        ('min_lr', min_lr)):
        check_number(name, value, finite=True)
    if clip_grad is not None:
        check_number('clip_grad', clip_grad, finite=True)
    # (name, check, what is expected), checked in this order.
    checks = [
        ('epochs', lambda: _is_int(epochs) and epochs >= 1,
         f"a positive int (got {epochs!r})"),
        ('lr', lambda: lr > 0, f"positive (got {lr})"),
        ('weight_decay', lambda: weight_decay >= 0,
         f"non-negative (got {weight_decay})"),
        ('warmup_steps', lambda: _is_int(warmup_steps) and warmup_steps >= 0,
         f"a non-negative int (got {warmup_steps!r})"),
        ('min_lr', lambda: 0 <= min_lr <= lr,
         f"in [0, lr={lr}] (got {min_lr})"),
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
    if config is not None and not isinstance(config, (argparse.Namespace,
                                                      Mapping)):
        raise TypeError(f"Expected 'config' to be None, a dict or an "
                        f"argparse.Namespace (got {type(config).__name__})")
