r"""Compiling samsa_geo's Triton kernels for a GPU without one: the tests
check that the kernels which Triton's interpreter runs on a CPU also
compile to machine code, as their first launch on CUDA would."""
from typing import Any, Dict, List, Tuple

#: One kernel to compile: the :func:`triton.jit` function, the types of
#: its runtime arguments (``'*fp32'``, ``'i32'``, ...), its constexpr
#: values and its number of warps.
Kernel = Tuple[Any, Dict[str, str], Dict[str, Any], int]


def compile_for_sm90(kernels: List[Kernel], **options: Any) -> int:
    r"""Compiles every kernel of ``kernels`` for compute capability 9.0
    (H100, H200) and returns how many produced a cubin; ``options`` go to
    :func:`triton.compile` (``enable_fp_fusion=False``, say). Needs Triton
    without its interpreter (``TRITON_INTERPRET`` unset) and no GPU."""
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource
    target = GPUTarget('cuda', 90, 32)
    for fn, sig, const, warps in kernels:
        sig = dict(sig, **{name: 'constexpr' for name in const})
        compiled = triton.compile(
            ASTSource(fn=fn, signature=sig, constexprs=const),
            target=target, options=dict(options, num_warps=warps))
        assert compiled.asm['cubin'], fn
    return len(kernels)
