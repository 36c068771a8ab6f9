r"""The switchboard of the geometry ops: which implementation
``backend='auto'`` means, and whether the ops check the values of their
inputs. Each setting has a getter, a setter for the whole process and a
context manager that restores the previous value on exit.

**Backend.** :func:`~samsa_geo.ops.fps`, :func:`~samsa_geo.ops.knn` and the
other ops take a keyword :obj:`backend`; its default :obj:`"auto"` resolves
to :func:`default_backend`: :obj:`"auto"` (the automatic choice:
:obj:`torch_cluster` when installed, else samsa_geo's Triton kernels on
CUDA where they apply, else pure PyTorch), :obj:`"compiled"`,
:obj:`"triton"` or :obj:`"torch"`. A default that an op does not offer
(:obj:`"triton"` for :func:`~samsa_geo.ops.radius` and
:func:`~samsa_geo.ops.scatter`) leaves that op on the automatic choice.
This reaches the ops called inside models:

.. code-block:: python

    from samsa_geo.ops import use_backend

    with use_backend('torch'):  # the pure-PyTorch fallbacks
        logits = model(pos, batch)

**Value checks.** Shape, dtype and device checks read only metadata and
always run. Checks of *values* (finite points, a sorted and non-negative
batch vector) read the tensors, which on a GPU makes the host wait for the
device. The ops run them by default, folded into a single device-to-host
read per call; a caller that validated its input once at its own entry,
such as a model's :meth:`forward`, turns them off around its inner calls
with :func:`value_checks`. Under :func:`torch.compile` the ops skip them
(a read of a value would break the graph).
"""
from contextlib import contextmanager
from typing import Iterator

#: Values of ``backend`` (and of :func:`default_backend`).
BACKENDS = ('auto', 'compiled', 'triton', 'torch')

_BACKEND = 'auto'
_VALUE_CHECKS = True


def default_backend() -> str:
    r"""What ``backend='auto'`` means (default :obj:`"auto"`)."""
    return _BACKEND


def set_default_backend(backend: str) -> None:
    r"""Sets what ``backend='auto'`` means for the whole process."""
    global _BACKEND
    if backend not in BACKENDS:
        raise ValueError(f"Expected 'backend' to be one of {BACKENDS} "
                         f"(got {backend!r})")
    _BACKEND = backend


@contextmanager
def use_backend(backend: str) -> Iterator[None]:
    r"""Context manager: ``backend='auto'`` means :obj:`backend` inside."""
    previous = _BACKEND
    set_default_backend(backend)
    try:
        yield
    finally:
        set_default_backend(previous)


def value_checks_enabled() -> bool:
    r"""Whether the geometry ops check the values of their inputs
    (default :obj:`True`)."""
    return _VALUE_CHECKS


def set_value_checks(enabled: bool) -> None:
    r"""Turns the value checks of the geometry ops on or off for the whole
    process."""
    global _VALUE_CHECKS
    if not isinstance(enabled, bool):
        raise TypeError(f"Expected 'enabled' to be a bool "
                        f"(got {type(enabled).__name__})")
    _VALUE_CHECKS = enabled


@contextmanager
def value_checks(enabled: bool) -> Iterator[None]:
    r"""Context manager that turns the value checks of the geometry ops on
    or off, and restores the previous setting on exit."""
    previous = _VALUE_CHECKS
    set_value_checks(enabled)
    try:
        yield
    finally:
        set_value_checks(previous)


__all__ = [
    'default_backend',
    'set_default_backend',
    'use_backend',
    'value_checks_enabled',
    'set_value_checks',
    'value_checks',
]
