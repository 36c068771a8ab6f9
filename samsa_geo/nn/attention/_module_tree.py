r"""A layer's submodules, with what a captured CUDA graph bakes in of them,
read on every call at a few microseconds of host time.

A replayed call of :class:`~samsa_geo.nn.SamsaConv` runs no Python, so the
host must check, before each replay, that nothing the graph baked in has
changed: the submodules, their parameters and buffers (the objects), their
scalar settings (``k``, ``tau``, ``eps``, dropout rates, ``training``, ...)
and whether a hook would have to run. Walking the tree and every module's
attributes for that took about 35 us per call on the H200 machine's host,
as long as the replay's own launches. :class:`ModuleTree` walks once and
then reads only what can change: the children of each module, the values of
the settings by name, the hook dictionaries, the parameter and buffer
dictionaries, with C-level iteration.

:class:`~samsa_geo.nn.SamsaAttention` and its scorer ask the same of their
own tree on every eager call: whether a hook is set on a layer whose
weights their fast paths read directly (then the layers are called as
modules).
"""
import weakref
from itertools import chain, islice
from operator import itemgetter
from typing import Any, Callable, Dict, List, Optional, Tuple

import torch
from torch import Tensor
from torch.nn import Module
from torch.nn.modules import module as nn_module

#: Attribute types a module's forward may read as constants; a public
#: attribute that holds ``None`` (an optional setting not set) counts too.
SETTING_TYPES = (bool, int, float, str)
_SETTING_VALUES = frozenset(SETTING_TYPES + (type(None), ))

try:
    from operator import call
except ImportError:  # Python 3.10
    def call(fn: Callable, *args: Any) -> Any:
        return fn(*args)

_HOOKS = ('_forward_hooks', '_forward_pre_hooks', '_backward_hooks',
          '_backward_pre_hooks')


def global_hooks() -> bool:
    r"""Whether a global module hook is registered (one would run around
    every module's call, as :meth:`Module._call_impl` checks)."""
    return bool(nn_module._global_forward_hooks
                or nn_module._global_forward_pre_hooks
                or nn_module._global_backward_hooks
                or nn_module._global_backward_pre_hooks)


def hooked(*modules: Module) -> bool:
    r"""Whether calling any of ``modules`` would run a hook: a global one
    or one of their own. (Written out: a layer asks it for every batch
    norm call, where a generator over the names cost several us.)"""
    if global_hooks():
        return True
    for m in modules:
        if (m._forward_hooks or m._forward_pre_hooks or m._backward_hooks
                or m._backward_pre_hooks):
            return True
    return False


#: The modules whose compiled calls ask :func:`traced_hooks`.
_TRACED_OWNERS: 'weakref.WeakSet[Module]' = weakref.WeakSet()


def trace_hooks_of(module: Module) -> None:
    r"""Registers ``module`` (at construction and when unpickled or
    copied) with :func:`traced_hooks`."""
    _TRACED_OWNERS.add(module)


@torch.compiler.assume_constant_result
def traced_hooks() -> bool:
    r"""For a :func:`torch.compile` trace: whether a hook is set, at trace
    time, on a submodule of a module registered with
    :func:`trace_hooks_of`, or a global one. The answer is a constant of
    the graph, as Dynamo treats module hooks by default
    (``skip_nnmodule_hook_guards``: a hook set later is seen once the
    function recompiles). It is computed outside the traced code, which
    (with the hook dictionaries read in it) made the compiled layer about
    0.5 ms slower per call on CUDA, and takes no module (Dynamo of
    PyTorch 2.11 passes only constants here). Conservative: a hook in
    one registered module sends every one compiled meanwhile to the
    path that calls its layers as modules."""
    if global_hooks():
        return True
    return any(hooked(*islice(m.modules(), 1, None))
               for m in list(_TRACED_OWNERS))


class ModuleTree:
    r"""The modules of a layer (the layer first, then its submodules
    breadth-first), their parameters, buffers and scalar settings, and
    whether a hook would run inside the layer's passes.

    :meth:`read` re-walks the tree only where a child was added, removed or
    replaced, or a module gained or lost an attribute; otherwise it reads
    the settings' current values by name. Parameters and buffers are read
    from the modules' own dictionaries on every call, so a replaced one is
    seen at once. Copies of a layer (:func:`copy.deepcopy`, pickling) start
    with an empty tree and walk their own modules.
    """
    def __init__(self) -> None:
        self.modules: List[Module] = []
        self._dicts: List[Dict[str, Any]] = []  # each module's __dict__
        self._lens: Tuple[int, ...] = ()
        self._child_dicts: List[Dict[str, Optional[Module]]] = []
        self._children: Tuple[tuple, ...] = ()
        self._getters: List[Callable[[Dict[str, Any]], tuple]] = []
        self._getter_dicts: List[Dict[str, Any]] = []
        self._param_dicts: List[Dict[str, Optional[Tensor]]] = []
        self._buffer_dicts: List[Dict[str, Optional[Tensor]]] = []
        self._hook_dicts: List[dict] = []

    # Module lists and dictionaries are the layer's: a copy walks its own.
    # (A state that is not empty, or __setstate__ would not be called.)
    def __getstate__(self) -> Dict[str, Any]:
        return {'walked': False}

    def __setstate__(self, state: Dict[str, Any]) -> None:
        self.__init__()

    def read(self, root: Module) -> 'ModuleTree':
        r"""Brings the tree up to date with ``root`` (walking it again
        where its structure changed) and returns it."""
        if not self.modules or self.modules[0] is not root or \
                tuple(map(len, self._dicts)) != self._lens or \
                tuple(map(tuple, map(dict.values,
                                     self._child_dicts))) != self._children:
            self._walk(root)
        return self

    def _walk(self, root: Module) -> None:
        modules = [root]
        i = 0
        while i < len(modules):
            modules.extend(m for m in modules[i]._modules.values()
                           if m is not None)
            i += 1
        self.modules = modules
        self._dicts = [m.__dict__ for m in modules]
        self._lens = tuple(map(len, self._dicts))
        self._child_dicts = [m._modules for m in modules]
        self._children = tuple(tuple(d.values()) for d in self._child_dicts)
        self._getters, self._getter_dicts = [], []
        for d in self._dicts:
            names = [name for name, v in d.items()
                     if type(v) in SETTING_TYPES
                     or (v is None and not name.startswith('_'))]
            if names:
                # itemgetter of two names or more returns a tuple.
                self._getters.append(itemgetter(*names, names[0]))
                self._getter_dicts.append(d)
        self._param_dicts = [m._parameters for m in modules]
        self._buffer_dicts = [m._buffers for m in modules]
        # The layer's own hooks run around its call, replayed or not.
        self._hook_dicts = [getattr(m, name) for m in modules[1:]
                            for name in _HOOKS]

    def settings(self) -> tuple:
        r"""The scalar attributes of every module, in a fixed order: a
        captured graph bakes them in, so a new value is a new key."""
        try:
            values = list(map(call, self._getters, self._getter_dicts))
        except KeyError:  # an attribute was replaced by another
            values = None
        if values is None or not set(map(type, chain.from_iterable(
                values))) <= _SETTING_VALUES:
            # A setting now holds another type: names are chosen again.
            self._walk(self.modules[0])
            values = list(map(call, self._getters, self._getter_dicts))
        return tuple(values)

    def params(self) -> List[Tensor]:
        r"""The parameters of every module (:obj:`None` ones left out)."""
        return [p for p in chain.from_iterable(
            map(dict.values, self._param_dicts)) if p is not None]

    def buffers(self) -> List[Tensor]:
        r"""The buffers of every module (:obj:`None` ones left out)."""
        return [b for b in chain.from_iterable(
            map(dict.values, self._buffer_dicts)) if b is not None]

    def hooked(self) -> bool:
        r"""Whether a hook would run inside the layer's forward or backward
        pass: a global module hook or one of a submodule."""
        return global_hooks() or any(self._hook_dicts)

    def hooked_in(self, root: Module) -> bool:
        r""":meth:`hooked` of ``root``'s tree, brought up to date, in eager
        calls; in a :func:`torch.compile` trace :func:`traced_hooks` (for a
        ``root`` registered with :func:`trace_hooks_of`), since the tree's
        own state would be guarded and recompile the graph after its first
        call."""
        if torch.compiler.is_compiling():
            return traced_hooks()
        return self.read(root).hooked()
