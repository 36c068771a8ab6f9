r"""Compiling samsa_geo's Triton kernels for a GPU without one: the tests
check that the kernels which Triton's interpreter runs on a CPU also
compile to machine code, as their first launch on CUDA would, and fit an
H100 / H200's shared memory.

:func:`recorded_launches` catches the launches that samsa_geo's code
makes (through :class:`~samsa_geo.ops._triton.launch.Launcher`) on CPU
tensors without running them; :func:`launched_kernels` turns them into
the argument types, specialisation and constexprs that the same launch
on CUDA would compile, for :func:`compile_for_sm90`.
"""
import contextlib
from typing import Any, Dict, Iterator, List, Tuple

import torch

#: One kernel to compile: the :func:`triton.jit` function, the types of
#: its runtime arguments (``'*fp32'``, ``'i32'``, ...), its constexpr
#: values and its number of warps; optionally a fifth item, the indices
#: of the arguments that Triton would know to be divisible by 16.
Kernel = Tuple[Any, ...]

#: Shared memory one block may use on compute capability 9.0 (H100,
#: H200), in bytes.
SM90_SHARED_MEMORY = 232448

#: A recorded launch: the kernel, its positional arguments and its
#: keywords (constexprs and launch options).
Launch = Tuple[Any, Tuple[Any, ...], Dict[str, Any]]

_TYPES = {torch.float32: 'fp32', torch.float16: 'fp16',
          torch.bfloat16: 'bf16', torch.float64: 'fp64',
          torch.int64: 'i64', torch.int32: 'i32', torch.int16: 'i16',
          torch.int8: 'i8', torch.uint8: 'u8', torch.bool: 'i1'}
_OPTIONS = ('num_warps', 'num_stages', 'num_ctas')


@contextlib.contextmanager
def recorded_launches(run: bool = False) -> Iterator[List[Launch]]:
    r"""Within the block, every :class:`Launcher` call is recorded in the
    list it yields.

    Args:
        run (bool, optional): If :obj:`False`, the launches are recorded
            instead of run (outputs stay as allocated): the code under test
            may run on CPU tensors without Triton's interpreter. If
            :obj:`True`, each also runs, outside any active
            :class:`~torch.utils._python_dispatch.TorchDispatchMode` (an
            operator counter then leaves out what the interpreter runs).
            (default: :obj:`False`)
    """
    from torch.utils._python_dispatch import _disable_current_modes

    from samsa_geo.ops._triton.launch import Launcher
    launches: List[Launch] = []
    call = Launcher.__call__

    def record(self: Launcher, grid: Any, *args: Any, **meta: Any) -> None:
        launches.append((self.kernel, args, meta))
        if run:
            with _disable_current_modes():
                call(self, grid, *args, **meta)

    Launcher.__call__ = record  # type: ignore[method-assign]
    try:
        yield launches
    finally:
        Launcher.__call__ = call  # type: ignore[method-assign]


def launched_kernels(launches: List[Launch]) -> List[Kernel]:
    r"""The distinct kernels that ``launches`` would compile on CUDA: the
    arguments' types as Triton reads them (a tensor's dtype, a 32- or
    64-bit integer, a float as fp32), its divisibility by 16 (a pointer's
    address or an integer), an integer equal to 1 as a constexpr; of the
    integers the kernel does not specialise on (its ``do_not_specialize``),
    the type alone."""
    kernels: Dict[Any, Kernel] = {}
    for fn, args, meta in launches:
        sig: Dict[str, str] = {}
        const = {k: v for k, v in meta.items() if k not in _OPTIONS}
        divisible = []
        generic = unspecialised(fn)
        for i, (name, a) in enumerate(zip(fn.arg_names, args)):
            if isinstance(a, torch.Tensor):
                sig[name] = '*' + _TYPES[a.dtype]
                if a.data_ptr() % 16 == 0:
                    divisible.append(i)
            elif isinstance(a, bool):
                sig[name] = 'i1'
            elif isinstance(a, int):
                if a == 1 and name not in generic:
                    const[name] = 1
                    continue
                sig[name] = 'i32' if -2**31 <= a < 2**31 else 'i64'
                if a % 16 == 0 and name not in generic:
                    divisible.append(i)
            elif isinstance(a, float):
                sig[name] = 'fp32'
            else:
                raise TypeError(f"no Triton type for argument '{name}' of "
                                f"type {type(a).__name__}")
        warps, stages = meta.get('num_warps', 4), meta.get('num_stages')
        key = (fn, tuple(sorted(sig.items())), tuple(sorted(
            (k, repr(v)) for k, v in const.items())), tuple(divisible),
            warps, stages)
        kernels[key] = (fn, sig, const, warps, divisible, stages)
    return list(kernels.values())


def unspecialised(fn: Any) -> Tuple[str, ...]:
    r"""The names of the parameters that the :func:`triton.jit` function
    ``fn`` does not specialise on (its ``do_not_specialize``, given as
    names or positions)."""
    names = fn.arg_names
    return tuple(names[a] if isinstance(a, int) else a
                 for a in getattr(fn, 'do_not_specialize', ()) or ())


def compile_for_sm90(kernels: List[Kernel], **options: Any) -> int:
    r"""Compiles every kernel of ``kernels`` for compute capability 9.0
    (H100, H200), checks that it produced a cubin and that a block needs
    at most :data:`SM90_SHARED_MEMORY` bytes of shared memory, and
    returns how many it compiled; ``options`` go to
    :func:`triton.compile` (``enable_fp_fusion=False``, say). Needs
    Triton without its interpreter (``TRITON_INTERPRET`` unset) and no
    GPU."""
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource
    target = GPUTarget('cuda', 90, 32)
    for fn, sig, const, warps, *rest in kernels:
        divisible = rest[0] if rest else ()
        stages = rest[1] if len(rest) > 1 else None
        attrs = {(i, ): [['tt.divisibility', 16]] for i in divisible}
        sig = dict(sig, **{name: 'constexpr' for name in const})
        opts = dict(options, num_warps=warps)
        if stages is not None:
            opts['num_stages'] = stages
        compiled = triton.compile(
            ASTSource(fn=fn, signature=sig, constexprs=const, attrs=attrs),
            target=target, options=opts)
        assert compiled.asm['cubin'], fn
        shared = compiled.metadata.shared
        assert shared <= SM90_SHARED_MEMORY, (
            f"{fn.__name__} with {const} needs {shared} bytes of shared "
            f"memory, more than the {SM90_SHARED_MEMORY} of sm90")
    return len(kernels)
