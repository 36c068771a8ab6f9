r"""A block product for samsa_geo's Triton kernels that also runs under
Triton's interpreter (``TRITON_INTERPRET=1``, the tests on a CPU), which
multiplies bfloat16 blocks wrongly. Importing this module needs Triton."""
import triton
import triton.language as tl


@triton.jit
def dot(a, b, PRECISION: tl.constexpr, UPCAST: tl.constexpr):
    r""":func:`triton.language.dot` of ``a`` and ``b`` with float32
    accumulation; ``UPCAST`` multiplies float32 copies of the operands
    (exact products of the same values: the interpreter's path for
    bfloat16 operands)."""
    if UPCAST:
        c = tl.dot(a.to(tl.float32), b.to(tl.float32),
                   input_precision=PRECISION)
    else:
        c = tl.dot(a, b, input_precision=PRECISION)
    return c
