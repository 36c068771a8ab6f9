r"""CUDA graphs of a layer's inference calls, replayed for input signatures
that repeat.

An eager inference call of :class:`~samsa_geo.nn.SamsaConv` on sets of up
to tens of thousands of tokens is bound by the host: a dozen kernels, each
launched from Python, take longer to issue than the GPU takes to run them.
A CUDA graph issues the same kernels in one launch. :class:`GraphReplay`
keeps a few graphs per layer, one per input signature (shapes, strides,
dtypes, the caller's key), each captured once the signature has been seen
``min_calls`` times (twice as many for each time its graph was dropped to
make room for another: calls that cycle through more signatures than the
graphs kept would otherwise capture on every call), and replays them as

1. a copy of each input into the graph's own input buffer,
2. one replay,
3. a copy of the graph's output buffer (so that no two calls share an
   output), or, where the caller gives a ``finish`` step, that step run
   eagerly on the output buffers: it writes the call's output, and the
   copy's pass over it is saved.

Inputs that come back at the same addresses (the same tensors called
again, or the caching allocator handing a loop's tensors the same blocks
at every step) are read in place: where a signature's capturing call and
the ``min_calls`` calls without a graph before it had their inputs at the
same addresses, its graph reads the inputs where they are, and the copies
(a pass over each input; 64 MiB of float32 tokens at 65,536 x 256) are
saved. Such a graph keeps no reference to its inputs, so their memory is
freed and reused as usual: it is only replayed for a call whose inputs
are at those addresses, and alive, with the signature it was captured
for. A call of that signature with inputs elsewhere gets a graph that
copies them (captured at the first such call), and both count among
``max_graphs``.

Python does not run during a replay: a graph is only valid while every
tensor the call reads besides its inputs (the ``state``: parameters,
buffers, cached casts) is the one it was captured with, unchanged.
:class:`GraphReplay` stamps the state (storage pointer and version counter
of each tensor; in-place updates such as an optimiser step or
:meth:`~torch.nn.Module.load_state_dict` bump the counter) and drops a
graph whose stamp no longer matches; the next calls run eagerly and capture
again. The inputs are copied in before the stamp is checked, so that the
GPU copies while the host stamps (a dropped graph's buffers go unread).
The caller decides when a call may be graphed at all (no autograd,
no host synchronisation, no randomness, no hooks).

Building a call's full key and stamping its state take most of the
host's time before the replay (``benchmarks/count_ops.py --replay``, a
stand-in graph on one CPU thread: 36 us from the call to the replay's
launch where the replay waits for them, 8 us where it does not), and the
GPU idles meanwhile. :meth:`GraphReplay.speculate` therefore replays the
graph that served the last call first, where the call's inputs (layout
and addresses) and a cheap part of its key (a ``hint``) are the last
call's, and :meth:`GraphReplay.__call__` confirms that graph afterwards,
as it would choose one without it. Where it chooses otherwise (a
setting, a parameter or a cast changed), the speculative replay's output
is left unread and the call goes on as without it: the replay writes
nothing but the graphs' own buffers, and every graph holds the state
tensors it was captured with, so that it never reads freed memory.
"""
import gc
import warnings
from collections import OrderedDict
from typing import (
    Any,
    Callable,
    Dict,
    Hashable,
    List,
    NamedTuple,
    Optional,
    Sequence,
    Tuple,
    Union,
)

import torch
from torch import Tensor

from samsa_geo.nn.attention._stacked import tensor_stamp

#: What a graph reads besides its inputs.
State = Callable[[], Sequence[Optional[Tensor]]]


class _Pinned(NamedTuple):
    # The name of a graph that reads its inputs in place: the signature
    # and the inputs' addresses.
    sig: Hashable
    pointers: Tuple[int, ...]


def _pinned(sig: Hashable, inputs: Sequence[Tensor]) -> _Pinned:
    # The name of sig's graph that reads inputs where they are.
    return _Pinned(sig, tuple(t.data_ptr() for t in inputs))


def _base(name: Hashable) -> Hashable:
    # The signature of a graph's name.
    return name.sig if isinstance(name, _Pinned) else name


def _layout(inputs: Sequence[Tensor], where: bool) -> tuple:
    # The inputs' shapes, strides, dtypes and devices, or (where) their
    # addresses in place of the devices (CUDA's unified addressing gives
    # every device its own addresses).
    if where:
        return tuple([(t.shape, t.stride(), t.dtype, t.data_ptr())
                      for t in inputs])
    return tuple([(t.shape, t.stride(), t.dtype, t.device) for t in inputs])


class _Graph:
    # One captured call: the graph, its input buffers (none for a graph
    # that reads its inputs where they are), its output buffer (or
    # buffers, for a finish step), the stamp of the state it read and that
    # state (held: a speculative replay may read it after the caller has
    # let it go).
    __slots__ = ('graph', 'inputs', 'out', 'stamp', 'held')

    def __init__(self, graph: 'torch.cuda.CUDAGraph', inputs: List[Tensor],
                 out: Union[Tensor, Tuple[Tensor, ...]],
                 state: Sequence[Optional[Tensor]]):
        self.graph, self.inputs, self.out = graph, inputs, out
        self.held = tuple(state)
        self.stamp = tensor_stamp(self.held)

    def load(self, inputs: Sequence[Tensor]) -> None:
        # The call's inputs into the graph's input buffers.
        for buf, t in zip(self.inputs, inputs):
            buf.copy_(t)


class GraphReplay:
    r"""Captures and replays CUDA graphs of ``fn(*inputs)``, a function of
    CUDA tensors that returns one tensor, keyed by the inputs' signature.

    Args:
        max_graphs (int, optional): Graphs kept; the least recently used
            one is dropped first. (default: :obj:`4`)
        min_calls (int, optional): Calls with one signature before it is
            captured (eager ones, which also compile the kernels); doubled
            for each time its graph was dropped for another, up to
            :math:`2^{10}` times. (default: :obj:`2`)
    """
    def __init__(self, max_graphs: int = 4, min_calls: int = 2):
        if max_graphs < 1:
            raise ValueError(f"Expected 'max_graphs' to be at least 1 (got "
                             f"{max_graphs})")
        if min_calls < 1:
            raise ValueError(f"Expected 'min_calls' to be at least 1 (got "
                             f"{min_calls})")
        self.max_graphs = max_graphs
        self.min_calls = min_calls
        self._graphs: 'OrderedDict[Hashable, _Graph]' = OrderedDict()
        self._seen: 'OrderedDict[Hashable, int]' = OrderedDict()
        # How often each signature's graph was dropped for another.
        self._dropped: 'OrderedDict[Hashable, int]' = OrderedDict()
        # Signatures that may not be graphed, or whose capture failed.
        self._failed: 'OrderedDict[Hashable, None]' = OrderedDict()
        # Where each signature's last call without a graph had its inputs,
        # and how many such calls in a row had them there.
        self._last: 'OrderedDict[Hashable, Tuple[_Pinned, int]]' = \
            OrderedDict()
        # The graph replayed last (the most recently used).
        self._latest: Any = None
        # (hint, layout of the inputs, graph) of the last call that a graph
        # served, for speculate: the layout with the inputs' addresses for
        # a graph that reads them in place.
        self._fast: Optional[Tuple[Hashable, tuple, _Graph]] = None
        # The one that speculate replayed last.
        self._spent: Optional[Tuple[Hashable, tuple, _Graph]] = None
        # How many of the graphs read their inputs in place.
        self._in_place = 0
        self._pools: Dict[torch.device, Tuple[int, int]] = {}

    def __len__(self) -> int:
        return len(self._graphs)

    def clear(self) -> None:
        r"""Drops every graph and count (their memory is released once no
        output of theirs is referenced)."""
        self._graphs.clear()
        self._seen.clear()
        self._dropped.clear()
        self._failed.clear()
        self._last.clear()
        self._latest = None
        self._fast = self._spent = None
        self._in_place = 0
        self._pools.clear()

    # Graphs are device state: copies (copy.deepcopy, pickling, an EMA
    # model) start with none.
    def __getstate__(self) -> Dict[str, int]:
        return {'max_graphs': self.max_graphs, 'min_calls': self.min_calls}

    def __setstate__(self, state: Dict[str, int]) -> None:
        self.__init__(**state)

    def __call__(self, fn: Callable[..., Any], inputs: Sequence[Tensor],
                 key: Hashable, state: State,
                 eligible: Callable[[], bool] = lambda: True,
                 finish: Optional[Callable[..., Tensor]] = None,
                 hint: Hashable = None,
                 speculated: Optional[_Graph] = None,
                 ) -> Optional[Tensor]:
        r"""``fn(*inputs)`` (or ``finish(*fn(*inputs))``) by replaying its
        graph (captured first where the signature has been seen
        ``min_calls`` times before), or :obj:`None`: the caller runs this
        call eagerly.

        Args:
            fn (Callable): The call; it must launch the same kernels on
                the same buffers for every call of one signature, never
                synchronise with the host and return one new tensor (a
                tuple of tensors where ``finish`` is given).
            inputs (Sequence[Tensor]): The tensors that change between
                calls, on one CUDA device.
            key (Hashable): Whatever else selects the kernels (sizes the
                caller passes, autocast's state, options).
            state (Callable): The other tensors ``fn`` reads (:obj:`None`
                entries are skipped).
            eligible (Callable, optional): Whether the signature may be
                graphed; asked once, before its capture.
            finish (Callable, optional): The call's last step, run eagerly
                after each replay on ``fn``'s outputs (the graph's own
                buffers, valid until its next replay); it must return a
                new tensor. (default: :obj:`None`: the output is copied)
            hint (Hashable, optional): The part of ``key`` that the caller
                passes to :meth:`speculate`; :obj:`None`: the next call
                does not speculate. (default: :obj:`None`)
            speculated (optional): What :meth:`speculate` returned for
                this call: that graph's replay serves the call where this
                call chooses it. (default: :obj:`None`)
        """
        sig = self._signature(key, inputs)
        where, name, entry = self._find(sig, inputs)
        if entry is not None and entry.inputs and entry is not speculated:
            # The inputs' copies go first, so that the GPU runs them while
            # the host stamps the state (a stale graph leaves its input
            # buffers unread).
            entry.load(inputs)
        if entry is not None:
            if entry.stamp != tensor_stamp(state()):
                # The state changed: an eager call makes the casts it keeps
                # again, the next call captures again.
                self._drop(name)
                self._run(sig, where or _pinned(sig, inputs))
                return None
        else:
            name = self._capture_name(sig, inputs, where)
            if sig in self._failed or not self._count(sig):
                return None
            if not eligible():
                self._remember(self._failed, sig, None)
                return None
            entry = self._capture(fn, inputs, name, state, finish is not None)
            if entry is None:  # (else it reads the inputs)
                return None
        # (The identity check costs less than the name's hash and equality
        # in move_to_end.)
        if entry is not self._latest:
            self._graphs.move_to_end(name)
            self._latest = entry
        if entry is not speculated:
            entry.graph.replay()
            if hint is not None:
                self._fast = (hint, _layout(inputs, not entry.inputs), entry)
        elif hint is not None:  # the same hint and layout again
            self._fast = self._spent
        if finish is None:
            return entry.out.clone()
        return finish(*entry.out)

    def speculate(self, inputs: Sequence[Tensor],
                  hint: Hashable) -> Optional[_Graph]:
        r"""Replays the graph that served the last call, where that call
        passed the same ``hint`` and its inputs had the layout (shapes,
        strides, dtypes) and addresses of ``inputs``, and returns it
        (:obj:`None` where it replays nothing). The caller then passes it
        to :meth:`__call__` as ``speculated``, or runs the call eagerly:
        either way the replay's output goes unread unless
        :meth:`__call__` chooses that graph.

        A replay writes nothing outside the graphs' own buffers (an
        unconfirmed one costs GPU time and nothing else), and a graph
        holds every state tensor it reads. One speculation per confirmed
        replay: a call that is not served by a graph ends them until a
        later call is."""
        fast = self._fast
        if fast is None:
            return None
        self._fast = None
        entry = fast[2]
        # A graph that copies the inputs serves any addresses, unless a
        # graph that reads them in place might serve these ones.
        copies = bool(entry.inputs)
        if (fast[0] != hint or (copies and self._in_place)
                or fast[1] != _layout(inputs, not copies)):
            return None
        if copies:
            entry.load(inputs)
        entry.graph.replay()
        self._spent = fast
        return entry

    def _find(self, sig: Hashable, inputs: Sequence[Tensor],
              ) -> Tuple[Optional[_Pinned], Hashable, Any]:
        # (where, name, graph): the inputs' place (None where no graph
        # kept reads its inputs in place: not read), and the graph kept
        # for sig on these inputs with its name, one that reads them in
        # place first, else one that copies them (else None, named sig).
        where = None
        if self._in_place:
            where = _pinned(sig, inputs)
            entry = self._graphs.get(where)
            if entry is not None:
                return where, where, entry
        return where, sig, self._graphs.get(sig)

    def _capture_name(self, sig: Hashable, inputs: Sequence[Tensor],
                      where: Optional[_Pinned]) -> Hashable:
        # The name of a graph of sig captured at this call (one without a
        # graph; where: the inputs' place, if read already): where, to read
        # the inputs in place, if the min_calls graph-less calls before
        # this one had them there too, else sig, to copy them.
        where = where or _pinned(sig, inputs)
        return where if self._run(sig, where) > self.min_calls else sig

    def _run(self, sig: Hashable, where: '_Pinned') -> int:
        # How many calls of sig without a graph in a row, this one
        # included, had their inputs at where. (Replays leave it: it is
        # only read where no graph serves a call.)
        last, run = self._last.pop(sig, (None, 0))
        run = run + 1 if last == where else 1
        self._remember(self._last, sig, (where, run))
        return run

    @staticmethod
    def _signature(key: Hashable, inputs: Sequence[Tensor]) -> Hashable:
        # What selects a graph: the caller's key and the inputs' layout.
        return (key, _layout(inputs, False))

    def _count(self, sig: Hashable) -> bool:
        # Whether sig has now been seen often enough before this call.
        seen = self._seen.pop(sig, 0)
        self._remember(self._seen, sig, seen + 1)
        return seen >= self._calls_needed(sig)

    def _calls_needed(self, sig: Hashable) -> int:
        # min_calls, doubled for each time sig's graph was dropped for
        # another: a cycle of more signatures than max_graphs then
        # captures ever more rarely instead of on every call.
        return self.min_calls << min(self._dropped.get(sig, 0), 10)

    def _remember(self, history: 'OrderedDict[Hashable, Any]',
                  sig: Hashable, value: Any) -> None:
        # A bounded history: the oldest signatures are forgotten first.
        history[sig] = value
        while len(history) > 16 * self.max_graphs:
            history.popitem(last=False)

    def _capture(self, fn: Callable[..., Any], inputs: Sequence[Tensor],
                 name: Hashable, state: State,
                 outputs: bool = False) -> Optional[_Graph]:
        # The graph kept as name: a _Pinned one reads the inputs
        # themselves, another copies of them. outputs: fn returns a tuple
        # of tensors (for a finish step).
        pin = isinstance(name, _Pinned)
        buffers = list(inputs) if pin else [t.clone() for t in inputs]
        device = buffers[0].device
        got = self._attempt(
            _base(name), device,
            lambda: capture(fn, buffers, self._pools.get(device)))
        if got is None:
            return None
        graph, out = got
        if outputs:
            if not (isinstance(out, tuple)
                    and all(isinstance(t, Tensor) for t in out)):
                raise TypeError(f"Expected the graphed function to return a "
                                f"tuple of tensors for its finish step (got "
                                f"{type(out).__name__})")
        elif not isinstance(out, Tensor):
            raise TypeError(f"Expected the graphed function to return a "
                            f"tensor (got {type(out).__name__})")
        # The graphs of one device share their memory: they replay one at
        # a time, and each one's input and output buffers stay allocated.
        self._pools[device] = graph.pool()
        # (No reference to pinned inputs: their memory stays the caller's.)
        return self._keep(name, _Graph(graph, [] if pin else buffers, out,
                                       state()))

    def _keep(self, name: Hashable, entry: Any) -> Any:
        # A new graph, kept in place of the least recently used one, whose
        # signature then counts its calls again, towards twice as many.
        self._graphs[name] = entry
        self._in_place += isinstance(name, _Pinned)
        while len(self._graphs) > self.max_graphs:
            old = _base(self._drop(next(iter(self._graphs))))
            self._remember(self._dropped, old,
                           self._dropped.pop(old, 0) + 1)
            self._seen.pop(old, None)
        return entry

    def _drop(self, name: Hashable) -> Hashable:
        # Forgets the graph kept as name (its memory goes once no output
        # of it is referenced); returns name.
        entry = self._graphs.pop(name)
        if entry is self._latest:
            self._latest = None
        if self._fast is not None and self._fast[2] is entry:
            self._fast = None
        if self._spent is not None and self._spent[2] is entry:
            self._spent = None
        self._in_place -= isinstance(name, _Pinned)
        return name

    def _attempt(self, sig: Hashable, device: torch.device,
                 capture_fn: Callable[[], Any]) -> Any:
        # capture_fn() under the guards every capture needs, or None where
        # it failed (the signature then runs eagerly from now on).
        # Autocast keeps casts of parameters for the length of its region:
        # a graph must not read one made before the capture (it may be
        # freed when the region ends), and an eager call after it must not
        # read one made inside.
        torch.clear_autocast_cache()
        # No garbage collection during the capture: a collection there may
        # free a dead reference cycle that holds a CUDA graph (a layer that
        # has replayed is in one, through its ModuleTree's module list) or
        # a Triton kernel, and their destruction
        # is an operation not permitted while capturing, which invalidates
        # the capture. (torch.cuda.graph no longer collects before it
        # starts.) The cycles are collected after.
        collecting = gc.isenabled()
        gc.disable()
        try:
            with warnings.catch_warnings():
                # The eager calls before showed the call's warnings; one
                # turned into an error here would abort the capture midway.
                warnings.simplefilter('ignore')
                return capture_fn()
        except RuntimeError as err:
            # An operation not permitted while capturing.
            check_generator(device, err)
            self._remember(self._failed, sig, None)
            return None
        finally:
            if collecting:
                gc.enable()
            torch.clear_autocast_cache()

    def __repr__(self) -> str:
        return (f'{self.__class__.__name__}(graphs={len(self)}, '
                f'max_graphs={self.max_graphs}, '
                f'min_calls={self.min_calls})')


def check_generator(device: torch.device, err: BaseException) -> None:
    r"""Raises where the random number generator of ``device`` no longer
    works after the capture that raised ``err``: a capture that failed
    midway can leave it in capture mode, and every later random operation
    (dropout anywhere in the model) would fail without naming the cause."""
    try:
        torch.empty(1, device=device).uniform_()
    except RuntimeError as rng_err:
        raise RuntimeError(
            f"Capturing a call of SamsaConv as a CUDA graph failed ({err}) "
            f"and left the random number generator of {device} unusable "
            f"({rng_err}); turn the graphs off with samsa_geo.nn.attention."
            f"config.set_cuda_graphs(False)") from err


def capture(fn: Callable[..., Any], buffers: List[Tensor],
            pool: Optional[Tuple[int, int]],
            ) -> Tuple['torch.cuda.CUDAGraph', Any]:
    r"""The CUDA graph of ``fn(*buffers)`` (in memory pool ``pool``, a
    new one if :obj:`None`) and the output it writes."""
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.device(buffers[0].device):
        with torch.cuda.graph(graph, pool=pool):
            out = fn(*buffers)
    return graph, out
