r"""CUDA graphs of a layer's training calls: the forward pass and its
backward pass, replayed behind one autograd node.

A training step of :class:`~samsa_geo.nn.SamsaConv` on sets of up to tens
of thousands of tokens is bound by the host even more than an inference
call: some forty operators forward and more backward, each dispatched and
launched from Python or the autograd engine. :class:`TrainingGraphReplay`
captures, per input signature, one graph of the forward pass and one of
its backward pass (gradients of the inputs that require them and of every
parameter, packed into one buffer per dtype), and runs a call as

1. a copy of each input into the graph's input buffer (none for inputs
   read in place, below), one replay of the forward graph and a copy of
   its output (an autograd node holds the graph), or, where the caller
   gives a ``finish`` step, that step run eagerly on the graph's outputs:
   its output is the call's own, no copy;
2. in the backward pass: a copy of the output's gradient into the graph's
   buffer (none where the finish step's backward pass wrote it there,
   below), one replay of the backward graph and a copy of the gradients:
   those of the inputs as they are, those of the parameters packed into
   one buffer per dtype and handed out as views, which autograd
   accumulates as any gradient (``.grad``, parameter hooks).

A finish step's backward node that has a ``grad_into`` attribute (as
:class:`~samsa_geo.ops._triton.batch_norm.ResidualBatchNorm`'s has) gets
the graph's gradient buffers there, and writes the gradients of its first
inputs into them: at 65,536 x 256 tokens the finish step saves the copy
of the output out and of its gradient in, each a pass over 64 MiB of
float32 values, and the inputs' own gradient buffers the pass that packing
them would make.

Unlike an inference graph, a training graph reads the parameters where
they live: an optimiser step or :meth:`~torch.nn.Module.load_state_dict`
changes them in place and the next replay computes with the new values;
only a parameter or buffer replaced by another tensor (a new storage)
drops the graph. Random numbers (dropout, the sampling noise) come from
PyTorch's generator, which advances at every replay as in eager calls.

Inputs that come back at the same addresses (a loop's tensors, which the
caching allocator hands the same blocks at every step) are read in place
where ``pin_inputs`` is set, as :class:`GraphReplay` reads them: the
graph captured after ``min_calls`` calls with the inputs at one place
reads them there, and the copy is saved (a pass over 64 MiB of float32
tokens at 65,536 x 256). A replay then holds its inputs until its
backward pass, as autograd holds the tensors an eager call saves: their
memory stays theirs, and a change in place in between raises as it does
for an eager call.

The activations a backward replay reads live in the memory the graphs
of one :class:`TrainingGraphReplay` share, so a forward replay must not
run while an earlier one, of any of its graphs, still awaits its
backward pass: such a call (a layer applied twice before one backward,
to inputs of one size or of two) runs eagerly. The backward graph reuses
the activations' memory as it goes, as an eager backward pass does, so
each forward replay takes one backward pass (a second one, through
``retain_graph=True``, raises). A signature is captured once
``min_calls`` eager calls of it have run their backward pass (which also
compiles the kernels both passes use). The capture reads the parameters
through new leaf tensors on their storage (:func:`aliased`), so the
backward pass it records never reaches the gradient nodes that eager
calls made on another stream.
"""
import contextlib
import weakref
from functools import partial
from typing import (
    Any,
    Callable,
    Dict,
    Hashable,
    Iterator,
    List,
    Optional,
    Sequence,
    Tuple,
)

import torch
from torch import Tensor
from torch.autograd.function import once_differentiable
from torch.nn import Module, Parameter

from samsa_geo.nn.conv._graph_replay import (
    GraphReplay,
    State,
    _base,
    _Pinned,
)

#: Where each gradient sits in the packed buffers: (buffer, offset, shape),
#: None for a target that gets no gradient.
Layout = List[Optional[Tuple[int, int, torch.Size]]]
#: Where a parameter lives: its module and its name there.
Slot = Tuple[Module, str]


class _Call:
    # One forward replay whose backward pass is still to come.
    __slots__ = ('done', '__weakref__')

    def __init__(self) -> None:
        self.done = False


class _TrainingGraph:
    # The two captured graphs of one signature and their buffers: the
    # input buffers, or, for a graph that reads its inputs in place, none
    # (pinned: how many inputs it reads there); the outputs and their
    # gradients' buffers; the inputs' gradients (None for an input without
    # one) and the parameters' packed ones. finished: the outputs go to a
    # finish step (as they are), else the one output is copied.
    __slots__ = ('forward', 'backward', 'inputs', 'pinned', 'outs',
                 'grad_outs', 'input_grads', 'packed', 'layout', 'stamp',
                 'finished')

    def __init__(self, forward: 'torch.cuda.CUDAGraph',
                 backward: 'torch.cuda.CUDAGraph', inputs: List[Tensor],
                 pinned: int, outs: List[Tensor], grad_outs: List[Tensor],
                 input_grads: List[Optional[Tensor]], packed: List[Tensor],
                 layout: Layout, stamp: Tuple, finished: bool):
        self.forward, self.backward = forward, backward
        self.inputs, self.pinned = inputs, pinned
        self.outs, self.grad_outs = outs, grad_outs
        self.input_grads, self.packed = input_grads, packed
        self.layout, self.stamp, self.finished = layout, stamp, finished

    def run_forward(self, inputs: Sequence[Tensor]) -> Tuple[Tensor, ...]:
        for buf, t in zip(self.inputs, inputs):
            buf.copy_(t)
        self.forward.replay()
        if self.finished:
            # New tensors on the buffers, for the finish step only (valid
            # until the next replay, which waits for this call's backward
            # pass).
            return tuple([t.detach() for t in self.outs])
        return (self.outs[0].clone(), )

    def run_backward(self, call: _Call, grads: Sequence[Optional[Tensor]],
                     ) -> List[Optional[Tensor]]:
        if call.done:
            raise RuntimeError(
                "A second backward pass reached a CUDA-graphed training "
                "call (of SamsaConv or SamsaGraphModel): its graph frees "
                "the activations as the first one runs (retain_graph=True "
                "does not keep them); "
                "sum the losses into one backward pass, or turn the "
                "graphs off with samsa_geo.nn.attention.config."
                "set_cuda_graphs(False)")
        # (A pending call's buffers are never overwritten: see
        # TrainingGraphReplay.__call__.)
        for buf, grad in zip(self.grad_outs, grads):
            if grad is None:
                buf.zero_()
            elif not same_view(grad, buf):  # else written there already
                buf.copy_(grad)
        self.backward.replay()
        call.done = True
        # Copies: the next replay overwrites the buffers, and .grad may
        # keep what it is handed.
        return ([None if g is None else g.clone() for g in self.input_grads]
                + unpack([t.clone() for t in self.packed], self.layout))


class _Replayed(torch.autograd.Function):
    # forward(graph, call, *inputs, *params) -> the graph's outputs;
    # backward replays the backward graph (call: this replay's record).
    @staticmethod
    def forward(ctx, graph: _TrainingGraph, call: _Call,
                *tensors: Tensor) -> Tuple[Tensor, ...]:
        outs = graph.run_forward(tensors)
        ctx.graph, ctx.call = graph, call
        ctx.set_materialize_grads(False)
        if graph.pinned:
            # The backward replay reads them where they are: held, and
            # checked for changes in place, as an eager call's.
            ctx.save_for_backward(*tensors[:graph.pinned])
        return outs

    @staticmethod
    @once_differentiable
    def backward(ctx, *grads: Optional[Tensor]):
        if ctx.graph.pinned:
            ctx.saved_tensors  # raises where one was changed in place
        return (None, None, *ctx.graph.run_backward(ctx.call, grads))


class TrainingGraphReplay(GraphReplay):
    r"""Captures and replays CUDA graphs of training calls
    ``fn(*inputs)``, a function of CUDA tensors and of ``params`` that
    returns one tensor, with their backward passes, keyed by the inputs'
    signature (shapes, strides, dtypes, which of them require gradients).

    Unlike :class:`GraphReplay`, a call always returns ``fn``'s output:
    replayed, or from an eager call of ``fn``.

    Args:
        max_graphs (int, optional): Graphs kept (each keeps the activations
            of one call); the least recently used one is dropped first.
            (default: :obj:`2`)
        min_calls (int, optional): Eager calls with one signature, each
            followed by its backward pass, before it is captured; doubled
            for each time its graph was dropped for another, as in
            :class:`GraphReplay`. (default: :obj:`2`)
        pin_inputs (bool, optional): Whether a signature whose inputs
            came back at the same addresses in the calls before its
            capture gets a graph that reads them there (a call with them
            elsewhere then gets another graph, which copies them).
            (default: :obj:`False`)
    """
    def __init__(self, max_graphs: int = 2, min_calls: int = 2,
                 pin_inputs: bool = False):
        super().__init__(max_graphs, min_calls)
        self.pin_inputs = pin_inputs
        # The last forward replay: while its backward pass is to come, no
        # other forward replay or capture may reuse the memory the graphs
        # share.
        self._call: Optional['weakref.ref[_Call]'] = None

    def clear(self) -> None:
        super().clear()
        self._call = None

    def __getstate__(self) -> Dict[str, Any]:
        return dict(super().__getstate__(), pin_inputs=self.pin_inputs)

    def __repr__(self) -> str:
        return (f'{self.__class__.__name__}(graphs={len(self)}, '
                f'max_graphs={self.max_graphs}, '
                f'min_calls={self.min_calls}, '
                f'pin_inputs={self.pin_inputs})')

    def __call__(self, fn: Callable[..., Tensor], inputs: Sequence[Tensor],
                 params: Sequence[Tensor], key: Hashable, state: State,
                 eligible: Callable[[], bool] = lambda: True,
                 slots: Optional[Callable[[], Sequence[Slot]]] = None,
                 finish: Optional[Callable[..., Tensor]] = None,
                 ) -> Tensor:
        r"""``fn(*inputs)`` (or ``finish(*fn(*inputs))``), replayed where
        its graph exists or can be captured now, else eagerly.

        ``fn``, ``inputs``, ``key`` and ``eligible`` are those of
        :meth:`GraphReplay.__call__`; ``params`` (Sequence[Tensor]) are
        the parameters ``fn`` reads, all requiring gradients, and
        ``state`` returns the tensors ``fn`` reads besides its inputs
        (parameters, buffers): a graph is dropped when one of them is
        replaced by another storage. ``slots`` returns the places of
        ``params`` in their modules, in the same order, if ``fn`` reads
        them there (asked at a capture only): the capture then reads them
        through new leaf tensors on the same storage (see
        :func:`aliased`). ``finish``, where given, is the call's last
        step, run eagerly on the outputs of ``fn`` (a tuple of tensors
        then), differentiable in them: its output is the call's (see the
        module's text).
        """
        run = fn if finish is None else \
            (lambda *args: finish(*fn(*args)))
        call = None if self._call is None else self._call()
        if call is not None and not call.done:
            # The graphs' memory holds activations still to be read
            # backward.
            return run(*inputs)
        # Which inputs require gradients selects the backward graph too.
        sig = (self._signature(key, inputs),
               tuple(t.requires_grad for t in inputs))
        where, name, graph = self._find(sig, inputs)
        if graph is not None and graph.stamp != tensor_pointers(state()):
            # A parameter or buffer was replaced: warm up and capture again.
            self._drop(name)
            self._seen.pop(sig, None)
            graph = None
        if graph is None:
            if self.pin_inputs:
                name = self._capture_name(sig, inputs, where)
            if sig in self._failed or self._seen.get(sig, 0) < \
                    self._calls_needed(sig):
                return self._eager(run, inputs, sig)
            if not eligible():
                self._remember(self._failed, sig, None)
                return run(*inputs)
            graph = self._capture_training(fn, inputs, params, name, state,
                                           slots, finish is not None)
            if graph is None:
                return run(*inputs)
        self._graphs.move_to_end(name)
        call = _Call()
        self._call = weakref.ref(call)
        outs = _Replayed.apply(graph, call, *inputs, *params)
        if finish is None:
            return outs[0]
        out = finish(*outs)
        node = out.grad_fn
        if hasattr(node, 'grad_into'):
            # Its backward pass writes the outputs' gradients where the
            # backward graph reads them.
            node.grad_into = graph.grad_outs
        return out

    def kept_keys(self) -> List[Hashable]:
        r"""The callers' keys of the graphs kept, the most recently used
        first."""
        # A signature is ((key, layout), which inputs require gradients).
        return [_base(name)[0][0] for name in reversed(self._graphs)]

    def _eager(self, fn: Callable[..., Tensor], inputs: Sequence[Tensor],
               sig: Hashable) -> Tensor:
        # An eager call, counted once its backward pass reaches it.
        out = fn(*inputs)
        if isinstance(out, Tensor) and out.requires_grad:
            out.register_hook(partial(self._backward_seen, sig))
        return out

    def _backward_seen(self, sig: Hashable, grad: Tensor) -> None:
        self._remember(self._seen, sig, self._seen.pop(sig, 0) + 1)

    def _capture_training(self, fn: Callable[..., Tensor],
                          inputs: Sequence[Tensor],
                          params: Sequence[Tensor], name: Hashable,
                          state: State,
                          slots: Optional[Callable[[], Sequence[Slot]]],
                          finished: bool) -> Optional[_TrainingGraph]:
        # The graph kept as name: a _Pinned one reads the inputs through
        # new leaves on their storage (and keeps none of them), another
        # copies them into its own buffers. finished: fn's outputs go to a
        # finish step.
        pin = isinstance(name, _Pinned)
        buffers = [(t.detach() if pin else t.detach().clone())
                   .requires_grad_(t.requires_grad) for t in inputs]
        device = buffers[0].device

        def capture_fn():
            with aliased(params,
                         None if slots is None else slots()) as leaves:
                grads = [t for t in buffers if t.requires_grad]
                return capture_training(fn, buffers, grads + leaves,
                                        self._pools.get(device), len(grads),
                                        finished)

        got = self._attempt(_base(name), device, capture_fn)
        if got is None:
            return None
        forward, backward, outs, grad_outs, own, packed, layout = got
        # Every input gets a gradient: None for those without one.
        own_grads = iter(own)
        input_grads = [next(own_grads) if t.requires_grad else None
                       for t in buffers]
        self._pools[device] = forward.pool()
        return self._keep(name, _TrainingGraph(
            forward, backward, [] if pin else buffers,
            len(buffers) if pin else 0, outs, grad_outs, input_grads,
            packed, layout, tensor_pointers(state()), finished))


def saved_tensor_hooks() -> bool:
    r"""Whether :class:`torch.autograd.graph.saved_tensors_hooks` are
    active."""
    return torch._C._autograd._top_saved_tensors_default_hooks(
        False) is not None


def autograd_allows_capture() -> bool:
    r"""Whether autograd's state lets a training call be captured:
    gradients on, outside a backward pass (a recomputation), no saved
    tensor hooks (checkpointing, offloading: they must see the tensors the
    eager call saves) and no anomaly detection."""
    return (torch.is_grad_enabled() and not torch.is_anomaly_enabled()
            and torch._C._current_graph_task_id() == -1
            and not saved_tensor_hooks())


@contextlib.contextmanager
def aliased(params: Sequence[Tensor], slots: Optional[Sequence[Slot]],
            ) -> Iterator[List[Tensor]]:
    r"""Within the block, each parameter ``params[i]`` at ``slots[i]`` is
    replaced in its module by a new leaf :class:`~torch.nn.Parameter` on
    the same storage; yields the new leaves (``params`` themselves where
    ``slots`` is :obj:`None`).

    Autograd keeps, per leaf tensor, the node that accumulates its
    gradient, with the CUDA stream that was current when the node was
    made, for as long as an autograd graph refers to it (such as the
    output of the last training step, still held by the training loop).
    A backward pass captured on the capture stream that reached such a
    node, made by an eager call on the default stream, would make the
    default stream wait on the capture, which CUDA refuses
    (``cudaErrorStreamCaptureImplicit``). New leaves get new nodes,
    made during the capture."""
    if slots is None:
        yield list(params)
        return
    old = [module._parameters[name] for module, name in slots]
    leaves = [Parameter(p.detach(), requires_grad=p.requires_grad)
              for p in old]
    try:
        for (module, name), leaf in zip(slots, leaves):
            module._parameters[name] = leaf
        yield leaves
    finally:
        for (module, name), p in zip(slots, old):
            module._parameters[name] = p


def tensor_pointers(tensors: Sequence[Optional[Tensor]]) -> tuple:
    r"""The data pointer of every tensor (:obj:`None` entries stay
    :obj:`None`): it changes when a tensor is replaced or moved, not when
    it is changed in place."""
    return tuple([None if t is None else t.data_ptr() for t in tensors])


def pack(grads: Sequence[Optional[Tensor]]) -> Tuple[List[Tensor], Layout]:
    r"""The gradients concatenated into one flat tensor per dtype, and
    where each one sits (:obj:`None` gradients take no room)."""
    groups: dict = {}
    layout: Layout = []
    for g in grads:
        if g is None:
            layout.append(None)
            continue
        group = groups.setdefault(g.dtype, [])
        offset = sum(t.numel() for t in group)
        layout.append((list(groups).index(g.dtype), offset, g.shape))
        group.append(g)
    # [sum of the group's numels] per dtype
    packed = [torch.cat([t.reshape(-1) for t in group])
              for group in groups.values()]
    return packed, layout


def unpack(packed: Sequence[Tensor],
           layout: Layout) -> List[Optional[Tensor]]:
    r"""The gradients :func:`pack` packed, as views of ``packed``."""
    # One split per buffer (its pieces in the order of their offsets, as
    # pack appends them), then a view each: one operator call fewer per
    # gradient than a slice and a view each.
    sizes: List[List[int]] = [[] for _ in packed]
    for slot in layout:
        if slot is not None:
            sizes[slot[0]].append(slot[2].numel())
    pieces = [iter(t.split_with_sizes(n)) for t, n in zip(packed, sizes)]
    return [None if slot is None else next(pieces[slot[0]]).view(slot[2])
            for slot in layout]


def same_view(a: Tensor, b: Tensor) -> bool:
    r"""Whether ``a`` and ``b`` view the same memory in the same way (data
    pointer, dtype, shape and strides)."""
    return (a.data_ptr() == b.data_ptr() and a.dtype == b.dtype
            and a.shape == b.shape and a.stride() == b.stride())


def capture_training(fn: Callable[..., Any], buffers: List[Tensor],
                     targets: List[Tensor],
                     pool: Optional[Tuple[int, int]], own: int = 0,
                     outputs: bool = False,
                     ) -> Tuple['torch.cuda.CUDAGraph',
                                'torch.cuda.CUDAGraph', List[Tensor],
                                List[Tensor], List[Optional[Tensor]],
                                List[Tensor], Layout]:
    r"""The CUDA graphs of ``fn(*buffers)`` (in memory pool ``pool``, a new
    one if :obj:`None`) and of its backward pass, with the outputs (one
    tensor, or with ``outputs`` the tuple of tensors ``fn`` returns), the
    buffers of their gradients, the gradients of the first ``own``
    targets as they are and those of the others packed (see
    :func:`pack`). As an eager backward pass without ``retain_graph``,
    the backward graph frees the activations as it goes (its own buffers
    reuse their memory), so it runs once per forward replay."""
    forward, backward = torch.cuda.CUDAGraph(), torch.cuda.CUDAGraph()
    with torch.cuda.device(buffers[0].device):
        with torch.cuda.graph(forward, pool=pool):
            outs = fn(*buffers)
        outs = outs if outputs else (outs, )
        if not (isinstance(outs, tuple) and outs and all(
                isinstance(t, Tensor) and t.requires_grad for t in outs)):
            raise TypeError(
                f"Expected the graphed function to return "
                f"{'a tuple of tensors' if outputs else 'a tensor'} that "
                f"require gradients (got {type(outs).__name__})")
        grad_outs = [torch.empty_like(t) for t in outs]
        # Outside autocast, as an eager backward pass runs (the call
        # itself may be inside an autocast region).
        with torch.cuda.graph(backward, pool=forward.pool()), \
                torch.autocast('cuda', enabled=False):
            grads = torch.autograd.grad(outs, targets, grad_outs,
                                        allow_unused=True)
            packed, layout = pack(grads[own:])
    # Detached: the autograd graph of the capture would hold its leaves,
    # which may share the storage of the caller's inputs.
    return (forward, backward, [t.detach() for t in outs], grad_outs,
            list(grads[:own]), packed, layout)
