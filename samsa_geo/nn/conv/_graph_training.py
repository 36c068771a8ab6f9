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
   its output (an autograd node holds the
   graph);
2. in the backward pass: a copy of the output's gradient into the graph's
   buffer, one replay of the backward graph and a copy of the packed
   gradients, handed out as views to the inputs and parameters, which
   autograd accumulates as any gradient (``.grad``, parameter hooks).

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
    # (pinned: how many inputs it reads there).
    __slots__ = ('forward', 'backward', 'inputs', 'pinned', 'out',
                 'grad_out', 'packed', 'layout', 'stamp')

    def __init__(self, forward: 'torch.cuda.CUDAGraph',
                 backward: 'torch.cuda.CUDAGraph', inputs: List[Tensor],
                 pinned: int, out: Tensor, grad_out: Tensor,
                 packed: List[Tensor], layout: Layout, stamp: Tuple):
        self.forward, self.backward = forward, backward
        self.inputs, self.pinned = inputs, pinned
        self.out, self.grad_out = out, grad_out
        self.packed, self.layout, self.stamp = packed, layout, stamp

    def run_forward(self, inputs: Sequence[Tensor]) -> Tensor:
        for buf, t in zip(self.inputs, inputs):
            buf.copy_(t)
        self.forward.replay()
        return self.out.clone()

    def run_backward(self, call: _Call,
                     grad: Tensor) -> List[Optional[Tensor]]:
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
        self.grad_out.copy_(grad)
        self.backward.replay()
        call.done = True
        # Copies: the next replay overwrites the packed buffers, and
        # .grad may keep what it is handed.
        return unpack([t.clone() for t in self.packed], self.layout)


class _Replayed(torch.autograd.Function):
    # forward(graph, call, *inputs, *params) -> the graph's output;
    # backward replays the backward graph (call: this replay's record).
    @staticmethod
    def forward(ctx, graph: _TrainingGraph, call: _Call,
                *tensors: Tensor) -> Tensor:
        out = graph.run_forward(tensors)
        ctx.graph, ctx.call = graph, call
        if graph.pinned:
            # The backward replay reads them where they are: held, and
            # checked for changes in place, as an eager call's.
            ctx.save_for_backward(*tensors[:graph.pinned])
        return out

    @staticmethod
    @once_differentiable
    def backward(ctx, grad: Tensor):
        if ctx.graph.pinned:
            ctx.saved_tensors  # raises where one was changed in place
        return (None, None, *ctx.graph.run_backward(ctx.call, grad))


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
                 ) -> Tensor:
        r"""``fn(*inputs)``, replayed where its graph exists or can be
        captured now, else eagerly.

        ``fn``, ``inputs``, ``key`` and ``eligible`` are those of
        :meth:`GraphReplay.__call__`; ``params`` (Sequence[Tensor]) are
        the parameters ``fn`` reads, all requiring gradients, and
        ``state`` returns the tensors ``fn`` reads besides its inputs
        (parameters, buffers): a graph is dropped when one of them is
        replaced by another storage. ``slots`` returns the places of
        ``params`` in their modules, in the same order, if ``fn`` reads
        them there (asked at a capture only): the capture then reads them
        through new leaf tensors on the same storage (see
        :func:`aliased`).
        """
        call = None if self._call is None else self._call()
        if call is not None and not call.done:
            # The graphs' memory holds activations still to be read
            # backward.
            return fn(*inputs)
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
                return self._eager(fn, inputs, sig)
            if not eligible():
                self._remember(self._failed, sig, None)
                return fn(*inputs)
            graph = self._capture_training(fn, inputs, params, name, state,
                                           slots)
            if graph is None:
                return fn(*inputs)
        self._graphs.move_to_end(name)
        call = _Call()
        self._call = weakref.ref(call)
        return _Replayed.apply(graph, call, *inputs, *params)

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
                          ) -> Optional[_TrainingGraph]:
        # The graph kept as name: a _Pinned one reads the inputs through
        # new leaves on their storage (and keeps none of them), another
        # copies them into its own buffers.
        pin = isinstance(name, _Pinned)
        buffers = [(t.detach() if pin else t.detach().clone())
                   .requires_grad_(t.requires_grad) for t in inputs]
        device = buffers[0].device

        def capture_fn():
            with aliased(params,
                         None if slots is None else slots()) as leaves:
                targets = [t for t in buffers if t.requires_grad] + leaves
                return capture_training(fn, buffers, targets,
                                        self._pools.get(device))

        got = self._attempt(_base(name), device, capture_fn)
        if got is None:
            return None
        forward, backward, out, grad_out, packed, layout = got
        # Every input gets a gradient slot: None for those without one.
        slots = iter(layout)
        layout = [next(slots) if t.requires_grad else None
                  for t in buffers] + list(slots)
        self._pools[device] = forward.pool()
        return self._keep(name, _TrainingGraph(
            forward, backward, [] if pin else buffers,
            len(buffers) if pin else 0, out, grad_out, packed, layout,
            tensor_pointers(state())))


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


def capture_training(fn: Callable[..., Tensor], buffers: List[Tensor],
                     targets: List[Tensor],
                     pool: Optional[Tuple[int, int]],
                     ) -> Tuple['torch.cuda.CUDAGraph',
                                'torch.cuda.CUDAGraph', Tensor, Tensor,
                                List[Tensor], Layout]:
    r"""The CUDA graphs of ``fn(*buffers)`` (in memory pool ``pool``, a new
    one if :obj:`None`) and of its backward pass, with the output, the
    output gradient's buffer, and the gradients of ``targets`` packed (see
    :func:`pack`). As an eager backward pass without ``retain_graph``,
    the backward graph frees the activations as it goes (its own buffers
    reuse their memory), so it runs once per forward replay."""
    forward, backward = torch.cuda.CUDAGraph(), torch.cuda.CUDAGraph()
    with torch.cuda.device(buffers[0].device):
        with torch.cuda.graph(forward, pool=pool):
            out = fn(*buffers)
        if not isinstance(out, Tensor) or not out.requires_grad:
            raise TypeError("Expected the graphed function to return a "
                            "tensor that requires gradients")
        grad_out = torch.empty_like(out)
        # Outside autocast, as an eager backward pass runs (the call
        # itself may be inside an autocast region).
        with torch.cuda.graph(backward, pool=forward.pool()), \
                torch.autocast('cuda', enabled=False):
            grads = torch.autograd.grad(out, targets, grad_out,
                                        allow_unused=True)
            packed, layout = pack(grads)
    # Detached: the autograd graph of the capture would hold its leaves,
    # which may share the storage of the caller's inputs.
    return forward, backward, out.detach(), grad_out, packed, layout
