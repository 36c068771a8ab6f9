r"""Kernel launches with less host work than Triton's ``kernel[grid](...)``.

Each ``kernel[grid](*args, **meta)`` call of a Triton JIT function binds
the arguments, computes their specialisation (dtypes, 16-byte alignment
of pointers, integers equal to 1 or divisible by 16), hashes it into a
cache key, looks up the compiled kernel, checks the globals it read and
asks the driver for the current device and stream: 21-30 us of host
time per launch on H200 machines' hosts with Triton 3.6, against 7-8 us
for the compiled kernel's own launcher. Where a layer is bound by the
host (small sets, eager mode) that is a visible share of a call.

:class:`Launcher` keeps, per specialisation, the compiled kernel that
Triton's own call returned, and launches it directly the next time; what
it saves is Triton's binding less the cost of its own key
(``benchmarks/launch.py`` measures both). Its key is at least as fine as
Triton's specialisation, so the kernel it launches is the one Triton
would have chosen. Anything it does not recognise (an argument of another
type, launch hooks such as a profiler's, Triton's interpreter) goes
through Triton's call. Importing this module needs no Triton.
"""
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import torch
from torch import Tensor

from samsa_geo.ops._triton import INTERPRETED

#: Largest number of specialisations one :class:`Launcher` keeps (a new
#: one is launched through Triton's call once the cache is full).
MAX_ENTRIES = 256
_INT32 = 2**31
_INT64 = 2**63
#: The key of every float argument (Triton passes them as fp32 values).
_FLOAT = ('fp32', )
#: Triton's knobs module, once imported.
_knobs: Any = None


def arg_key(arg: Any) -> Any:
    r"""The part of Triton's specialisation that ``arg`` decides: a
    tensor's dtype and 16-byte alignment, an integer's type (32 or 64
    bits), whether it equals 1 and whether 16 divides it. Raises
    :class:`TypeError` for an argument of another kind."""
    return launch_key((arg, ))[0]


def launch_key(args: Sequence[Any]) -> List[Any]:
    r""":func:`arg_key` of every argument, written out in one expression:
    it runs on every launch, where a call per argument would cost several
    us."""
    return [(a == 1, a % 16 == 0, -_INT32 <= a < _INT32, a < _INT64)
            if type(a) is int else _FLOAT if type(a) is float
            else (a.dtype, a.data_ptr() % 16 == 0)
            if isinstance(a, Tensor) else _other_key(a) for a in args]


def _other_key(arg: Any) -> Any:
    if isinstance(arg, bool):
        return 'u1', arg
    raise TypeError(f"no launch key for an argument of type "
                    f"{type(arg).__name__}")


def hooks_unset() -> bool:
    """Whether Triton's launch enter and exit hooks (a profiler's, say)
    are unset: launches that bypass Triton's call would skip them."""
    global _knobs
    if _knobs is None:
        from triton import knobs
        _knobs = knobs
    runtime = _knobs.runtime
    return (_empty(runtime.launch_enter_hook)
            and _empty(runtime.launch_exit_hook))


def _empty(hook: Any) -> bool:
    # Triton 3.6 keeps None or a function, later versions a chain of
    # hooks (its list 'calls').
    return hook is None or getattr(hook, 'calls', None) == []


def current_stream() -> Tuple[int, int]:
    """The current CUDA device and the raw handle of its current stream:
    where Triton's own call launches."""
    device = torch.cuda.current_device()
    return device, torch._C._cuda_getCurrentRawStream(device)


class Launcher:
    r"""Launches the Triton JIT function :obj:`kernel` as
    ``kernel[grid](*args, **meta)`` does, with the host work of a
    specialisation seen before reduced to a key and the launch.

    Args:
        kernel: a :func:`triton.jit` function. Its parameters are passed
            as :obj:`args` (positional, in order) followed by :obj:`meta`
            (keywords: the remaining parameters, constexpr ones, then
            launch options such as ``num_warps``).
    """
    def __init__(self, kernel: Any):
        self.kernel = kernel
        self.names = tuple(kernel.arg_names)
        # key -> (launcher, kernel handle, packed metadata, constexprs)
        self.cache: Dict[Any, Tuple[Callable, Any, Any, Tuple]] = {}

    def __call__(self, grid: Sequence[int], *args: Any, **meta: Any) -> None:
        if INTERPRETED:  # Triton's interpreter compiles nothing
            self.kernel[tuple(grid)](*args, **meta)
            return
        device, stream = current_stream()
        try:
            key = (device, *meta.items(), *launch_key(args))
        except TypeError:
            key = None
        entry = self.cache.get(key) if key is not None else None
        if entry is not None and hooks_unset():
            run, function, packed, tail = entry
            g = tuple(grid) + (1, 1)
            # The launcher takes every parameter, constexpr ones too, in
            # the kernel's order.
            run(g[0], g[1], g[2], stream, function, packed, None, None,
                None, *args, *tail)
            return
        compiled = self.kernel[tuple(grid)](*args, **meta)
        if (key is not None and len(self.cache) < MAX_ENTRIES
                and self._launchable(compiled, args, meta)):
            tail = tuple(meta[name] for name in self.names[len(args):])
            self.cache[key] = (compiled.run, compiled.function,
                               compiled.packed_metadata, tail)

    def _launchable(self, compiled: Optional[Any], args: Tuple,
                    meta: Dict[str, Any]) -> bool:
        # A compiled kernel (not the interpreter's None), every parameter
        # given.
        return (hasattr(compiled, 'packed_metadata')
                and len(args) <= len(self.names)
                and all(name in meta for name in self.names[len(args):]))

    def __repr__(self) -> str:
        name = getattr(self.kernel, '__name__', repr(self.kernel))
        return f'{self.__class__.__name__}({name}, {len(self.cache)} kept)'
