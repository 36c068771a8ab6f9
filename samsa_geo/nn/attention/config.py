r"""One public configuration of the attention's kernel choices and checks
(and of the graph model's local GINE kernels).

Every switch has a getter (``use_*`` / ``is_*``), a setter (``set_*``) and a
keyword of the :func:`attention_config` context manager, which restores the
previous values on exit::

    from samsa_geo.nn.attention import config

    config.set_debug(True)                 # value checks on every call
    with config.attention_config(fused_bias=False):
        out = attn(x, batch, pos=pos)      # explicit relative-bias path

The values are module state read at call time: a model compiled with
:func:`torch.compile` keeps the values it was traced with.
"""
from contextlib import contextmanager
from typing import Iterator, Optional

import torch

_BIAS_KERNELS = ('triton', 'flex')

_debug = False
_fused_bias = True
_fused_scorer = True
_fused_inference = True
_sampled_rows = True
_fused_relax = True
_tile_attention = False
_packed_attention = False
_fused_gine = False
_stacked_casts = False
_cuda_graphs = True
_bias_inference_kernel = 'triton'
_flex_kernel_options: Optional[dict] = None


def is_debug() -> bool:
    r"""Whether value checks that read the device run on every call:
    finite tokens and positions, a sorted ``batch`` and the ``num_graphs``
    / ``max_num_nodes`` hints. On CUDA each check stalls the host until the
    GPU catches up, so they are off by default there; on the CPU they
    always run (they cost no stall)."""
    return _debug


def set_debug(flag: bool) -> None:
    global _debug
    _debug = bool(flag)


def checks_values(device) -> bool:
    r"""Whether value checks run for tensors on ``device``: always on the
    CPU, on other devices in debug mode (see :func:`is_debug`), and never
    while :func:`torch.compile`, :func:`torch.export` or a TorchScript
    trace (ONNX export) records the call, where no value can be read
    back."""
    return ((_debug or getattr(device, 'type', device) == 'cpu')
            and not (torch.compiler.is_compiling()
                     or torch.jit.is_tracing()))


def use_fused_bias() -> bool:
    r"""Whether the relative bias runs fused into one kernel on CUDA (dot
    scores, softmax, no attention dropout): samsa_geo's Triton kernel in
    inference, FlexAttention when gradients are needed. :obj:`False`
    always takes the explicit chunked path."""
    return _fused_bias


def set_fused_bias(flag: bool) -> None:
    global _fused_bias
    _fused_bias = bool(flag)


def use_fused_scorer() -> bool:
    r"""Whether the importance scorer's tail (residual, LayerNorm,
    projection) runs as one Triton kernel on CUDA, in inference and in
    eager training, whose backward is then one more kernel."""
    return _fused_scorer


def set_fused_scorer(flag: bool) -> None:
    global _fused_scorer
    _fused_scorer = bool(flag)


def use_fused_inference() -> bool:
    r"""Whether inference on CUDA runs the fused path where it applies:
    the per-set top-:math:`k` selection and the attention over the
    selected rows as two Triton kernels, three for sets beyond one
    selection block (dot scores, softmax, no relative
    bias, no Gumbel noise, sets of at most
    :data:`~samsa_geo.nn.attention._dispatch.FUSED_MAX_SET_SIZE` tokens
    that :func:`~samsa_geo.nn.attention._dispatch.selection_chunks` admits,
    ``max_num_nodes`` known, no gradient, not exported;
    compiled graphs hold the kernels as one custom operator).
    On by default (the GPU tests compare it with the unfused path in
    float32 and bfloat16); :obj:`False` takes the unfused path."""
    return _fused_inference


def set_fused_inference(flag: bool) -> None:
    global _fused_inference
    _fused_inference = bool(flag)


def use_sampled_rows() -> bool:
    r"""Whether a call with many tokens per sampled row projects the keys
    and values of the selected rows alone, after the selection, instead
    of those of every token: the fused inference path in calls captured
    as CUDA graphs (:class:`~samsa_geo.nn.SamsaConv`'s replayed calls)
    from
    :data:`~samsa_geo.nn.attention._dispatch.FUSED_SAMPLED_ROWS_MIN_TOKENS`
    tokens, the general path from
    :data:`~samsa_geo.nn.attention._dispatch.SAMPLED_ROWS_MIN_TOKENS` in
    evaluation and
    :data:`~samsa_geo.nn.attention._dispatch.TRAINING_SAMPLED_ROWS_MIN_TOKENS`
    in training,
    where the rows of every set and head are at most half the tokens
    (no registers, no summary key). The two projections differ by the
    rounding of their matrix products.
    On by default; :obj:`False` projects every token's keys and values in
    the stacked GEMM."""
    return _sampled_rows


def set_sampled_rows(flag: bool) -> None:
    global _sampled_rows
    _sampled_rows = bool(flag)


def use_fused_relax() -> bool:
    r"""Whether the score gradient of the training relaxation runs as one
    Triton kernel on CUDA (eager calls); :obj:`False` runs the PyTorch
    formula (a batched matmul and pair-tensor operations)."""
    return _fused_relax


def set_fused_relax(flag: bool) -> None:
    global _fused_relax
    _fused_relax = bool(flag)


def use_tile_attention() -> bool:
    r"""Whether the general path's dot-product softmax attention of query
    tiles over their keys runs samsa_geo's Triton kernels on CUDA
    (forward, and a backward of two kernels; eager calls without
    attention dropout, at most
    :data:`~samsa_geo.nn.attention._dispatch.TILE_ATTENTION_MAX_KEYS`
    keys) instead of PyTorch's SDPA. Off by default: the kernels are
    checked against float64 autograd on a CPU (Triton's interpreter) and
    against SDPA on the GPU, and on the H200 the layer is slower with
    them (1 x 262,144 tokens of 256 channels, bf16: forward 3.65 against
    1.85 ms, training step 12.26 against 7.60; ``benchmarks/layer.py
    --ab tile_attention``, 37bd99f)."""
    return _tile_attention


def set_tile_attention(flag: bool) -> None:
    global _tile_attention
    _tile_attention = bool(flag)


def use_packed_attention() -> bool:
    r"""Whether sets that keep all their tokens (the exact path of
    :mod:`~samsa_geo.nn.attention._dense`, ragged batches of small graphs)
    attend on their packed token rows with samsa_geo's Triton kernels on
    CUDA (eager calls without attention dropout, sets of at most
    :data:`~samsa_geo.nn.attention._dispatch.TILE_ATTENTION_MAX_KEYS`
    tokens): one launch forward and two backward, where PyTorch's SDPA
    needs the rows padded to :math:`[B, n_{\max}]` slots and read back,
    and their gradients concatenated. Off by default: the kernels are
    checked against float64 autograd on a CPU (Triton's interpreter) and
    against the padded SDPA on the GPU, and on the H200 they save no time
    on a small-graph training epoch (118.3 against 116.1 ms;
    ``benchmarks/graph_step.py --ab packed_attention``, 37bd99f)."""
    return _packed_attention


def set_packed_attention(flag: bool) -> None:
    global _packed_attention
    _packed_attention = bool(flag)


def use_fused_gine() -> bool:
    r"""Whether the local GINE branch of
    :class:`~samsa_geo.nn.models.SamsaGraphModel` forms and sums its messages
    with samsa_geo's Triton kernels on CUDA
    (:func:`~samsa_geo.ops.gine_aggregate` with ``backend='auto'``): two
    launches forward and two backward where PyTorch's operators make
    five and about a dozen. Off by default: on the H200 a training epoch
    of the small-graph model took 140.7 ms with them against 137.9
    without (``benchmarks/graph_step.py --ab fused_gine``, 85c0e62)."""
    return _fused_gine


def set_fused_gine(flag: bool) -> None:
    global _fused_gine
    _fused_gine = bool(flag)


def use_cuda_graphs() -> bool:
    r"""Whether :class:`~samsa_geo.nn.SamsaConv` replays CUDA graphs of
    its calls on CUDA, in inference and in training. A call is graphed
    when the layer has no local ``conv``, a batch or layer norm (or
    none), no hooks, the sizes ``num_graphs`` and ``max_num_nodes`` where
    it gets a batch vector, and at most
    :data:`~samsa_geo.nn.conv.samsa_conv.CUDA_GRAPH_MAX_ELEMENTS` input
    values, and is not traced: inside a model compiled with
    :func:`torch.compile` the layer is part of the compiled graph and
    replays none of its own (``mode='reduce-overhead'`` gives the compiled
    graph CUDA graphs of the compiler's; in default mode the compiled
    forward at 32 x 1,024 tokens took 3.2x the eager, graphed one on an
    H100, docs/benchmarks.md).

    - Inference (no gradient, the fused path): a signature (shapes,
      strides, dtypes, the batch's sizes, autocast's state, the layer's
      settings) seen twice is captured at its third call; a graph is kept
      while the parameters, buffers and kept casts are unchanged (see
      :class:`~samsa_geo.nn.conv._graph_replay.GraphReplay`). Up to four
      graphs per layer. A call whose inputs and cheap key (sizes,
      autocast, inference mode) are the last call's replays that call's
      graph before checking the rest; where the check then chooses
      otherwise (a setting, a parameter or a hook changed), that replay's
      output goes unread and the call runs as it would have: one replay's
      GPU time is lost.
    - Training (every parameter requires a gradient; the attention with
      hard sampling, dot scores and softmax, and without relative bias,
      summary key, registers or scorer norm, the paths the GPU tests
      compare with eager steps): a signature whose backward pass has run
      twice is captured with its backward pass; the
      graphs read the parameters where they live, so optimiser steps do
      not drop them (see
      :class:`~samsa_geo.nn.conv._graph_training.TrainingGraphReplay`).
      Up to two graphs per layer, each keeping one call's activations. A
      call made while the layer's previous replay still awaits its
      backward pass runs eagerly, whatever its shapes (the layer's graphs
      share their memory).
    - The least recently used graph is dropped for a new one, and its
      signature then needs twice as many calls before its next capture
      (up to :math:`2^{10}` times): batches that cycle through more
      shapes than the graphs kept (batches of graphs of varying sizes)
      run mostly eagerly, with the graphs kept replayed, instead of
      capturing on every call.

    A replay issues the layer's kernels in one launch per pass, plus
    copies of the inputs in and of the outputs out; an inference replay
    runs the layer's last step (its residual sum and norm) after the
    graph, into the call's own output, in place of that copy. Replays
    read inputs in place, without copies, where the graph is captured at
    the addresses the signature's calls before it had (the same tensors
    called again; a loop that makes new tensors every step gets other
    addresses, and copies); a training replay then holds its inputs until
    its backward pass, and one changed in place meanwhile raises there,
    as for an eager call. An inference replay from
    :data:`~samsa_geo.nn.attention._dispatch.FUSED_SAMPLED_ROWS_MIN_TOKENS`
    tokens projects the keys and values of the selected rows alone (see
    :func:`use_sampled_rows`), and differs from an eager call by the
    rounding of that projection. On by default (the GPU tests compare
    replays with eager calls); :obj:`False` runs every
    call eagerly, as calls of one layer from several threads or streams
    at once need (they would share the graph's buffers)."""
    return _cuda_graphs


def set_cuda_graphs(flag: bool) -> None:
    global _cuda_graphs
    _cuda_graphs = bool(flag)


def use_stacked_casts() -> bool:
    r"""Whether, under autocast and where gradients flow (eager calls),
    the parameters of the attention's linear layers and of
    :class:`~samsa_geo.nn.SamsaConv`'s MLP are cast in one go: one
    concatenation, one cast and one autograd node instead of one cast and
    one node per tensor, forward and backward (fewer kernel launches, more
    Python). :obj:`False`, the default, leaves the casts to autocast: on
    the H200 a bf16 training step of ``SamsaConv(256, heads=8, k=256)``
    was not faster with the switch on (docs/benchmarks.md). The values
    and gradients are the same either way."""
    return _stacked_casts


def set_stacked_casts(flag: bool) -> None:
    global _stacked_casts
    _stacked_casts = bool(flag)


def bias_inference_kernel() -> str:
    r"""The relative-bias kernel when no gradient is needed:
    :obj:`"triton"` (samsa_geo's forward kernel) or :obj:`"flex"`
    (FlexAttention, which also serves every call that needs gradients)."""
    return _bias_inference_kernel


def set_bias_inference_kernel(name: str) -> None:
    global _bias_inference_kernel
    if name not in _BIAS_KERNELS:
        raise ValueError(f"Expected 'name' to be one of {_BIAS_KERNELS} "
                         f"(got {name!r})")
    _bias_inference_kernel = name


def flex_kernel_options() -> Optional[dict]:
    r"""FlexAttention tile options of the relative-bias kernel
    (``BLOCK_M``, ``BLOCK_N``, ``num_warps``, ``num_stages``);
    :obj:`None` uses FlexAttention's defaults for the device."""
    return _flex_kernel_options


def set_flex_kernel_options(options: Optional[dict]) -> None:
    global _flex_kernel_options
    if options is not None and not isinstance(options, dict):
        raise TypeError(f"Expected 'options' to be a dict or None "
                        f"(got {type(options).__name__})")
    _flex_kernel_options = None if options is None else dict(options)


def snapshot() -> tuple:
    r"""Every switch's value, as a hashable tuple (a key for what a
    captured graph has baked in). It reads the values directly: a layer
    asks for it before every replay."""
    flex = _flex_kernel_options
    return (_debug, _fused_bias, _fused_scorer, _fused_inference,
            _sampled_rows, _fused_relax, _tile_attention, _packed_attention,
            _fused_gine, _stacked_casts, _cuda_graphs, _bias_inference_kernel,
            None if flex is None else repr(sorted(flex.items())))


_SETTERS = {
    'debug': (is_debug, set_debug),
    'fused_bias': (use_fused_bias, set_fused_bias),
    'fused_scorer': (use_fused_scorer, set_fused_scorer),
    'fused_inference': (use_fused_inference, set_fused_inference),
    'sampled_rows': (use_sampled_rows, set_sampled_rows),
    'fused_relax': (use_fused_relax, set_fused_relax),
    'tile_attention': (use_tile_attention, set_tile_attention),
    'packed_attention': (use_packed_attention, set_packed_attention),
    'fused_gine': (use_fused_gine, set_fused_gine),
    'stacked_casts': (use_stacked_casts, set_stacked_casts),
    'cuda_graphs': (use_cuda_graphs, set_cuda_graphs),
    'bias_inference_kernel': (bias_inference_kernel,
                              set_bias_inference_kernel),
    'flex_kernel_options': (flex_kernel_options, set_flex_kernel_options),
}


@contextmanager
def attention_config(**kwargs) -> Iterator[None]:
    r"""Sets the given switches (``debug``, ``fused_bias``,
    ``fused_scorer``, ``fused_inference``, ``sampled_rows``,
    ``fused_relax``,
    ``tile_attention``, ``packed_attention``, ``fused_gine``,
    ``stacked_casts``, ``cuda_graphs``, ``bias_inference_kernel``,
    ``flex_kernel_options``)
    inside a ``with`` block and restores them afterwards."""
    unknown = set(kwargs) - set(_SETTERS)
    if unknown:
        raise TypeError(f"Unknown attention_config switches {sorted(unknown)}"
                        f" (expected some of {sorted(_SETTERS)})")
    old = {name: _SETTERS[name][0]() for name in kwargs}
    try:
        for name, value in kwargs.items():
            _SETTERS[name][1](value)
        yield
    finally:
        for name, value in old.items():
            _SETTERS[name][1](value)
