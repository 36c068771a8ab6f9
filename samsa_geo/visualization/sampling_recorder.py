from dataclasses import dataclass
from typing import Any, Dict, List, Optional, Tuple, Type, Union

import torch
from torch import Tensor
from torch.utils.hooks import RemovableHandle

ModuleTypes = Union[Type[torch.nn.Module], Tuple[Type[torch.nn.Module], ...]]


@dataclass
class SamplingRecord:
    r"""What one call of a sampling attention layer attended to.

    Args:
        indices (torch.Tensor): Global token indices of shape
            :obj:`[num_graphs, heads, k_max]`; :obj:`-1` marks unused slots,
            values :obj:`< -1` mark learnable register tokens.
        pos (torch.Tensor or None): The :obj:`pos` the layer was called
            with, of shape :obj:`[N, D]`; :obj:`None` if the call had none
            or the recorder does not store inputs.
        batch (torch.Tensor or None): The batch vector the layer was called
            with, of shape :obj:`[N]`; :obj:`None` if the call had none or
            the recorder does not store inputs.
        num_tokens (int): Number of tokens :obj:`N` of the call.
    """
    indices: Tensor
    pos: Optional[Tensor]
    batch: Optional[Tensor]
    num_tokens: int

    @property
    def heads(self) -> int:
        return int(self.indices.size(1))


def _default_types() -> Tuple[Type[torch.nn.Module], ...]:
    # Imported here: visualization sits above nn, and nn must not be imported
    # when samsa_geo.visualization is merely imported.
    from samsa_geo.nn import SamsaAttention
    return (SamsaAttention, )


class SamplingRecorder:
    r"""Records the token indices that every SAMSA attention layer of a model
    sampled during forward passes, without touching the model's code.

    While the context is active, a forward pre-hook asks each matching layer
    for :obj:`return_indices=True`, and a forward hook stores the indices
    (detached, on CPU, keyed by the module name from
    :meth:`~torch.nn.Module.named_modules`) and hands the caller the plain
    output, so the model computes what it computes without recording but
    for the order of some sums: the indices come in score order, so a layer
    asked for them ranks each set's keys, and its output may differ in the
    last bits (about 1e-7 in float32).
    Hooks are removed on exit; outside the context there is no cost.

    .. code-block:: python

        with SamplingRecorder(model) as rec:
            out = model(data.pos, data.batch)
        rec.indices['backbone.convs.0.attn']  # [num_graphs, heads, k_max]

    Args:
        model (torch.nn.Module): The model to observe.
        module_types (type or tuple of types, optional): Classes to record.
            By default :class:`samsa_geo.nn.SamsaAttention` (and any module
            whose class is named :obj:`"SamsaAttention"`).
            (default: :obj:`None`)
        store_inputs (bool, optional): If set to :obj:`False`, :obj:`pos` and
            :obj:`batch` of each call are not kept. (default: :obj:`True`)
    """
    def __init__(
        self,
        model: torch.nn.Module,
        module_types: Optional[ModuleTypes] = None,
        store_inputs: bool = True,
    ) -> None:
        if not isinstance(model, torch.nn.Module):
            raise TypeError(f"Expected 'model' to be a torch.nn.Module "
                            f"(got {type(model).__name__})")
        self.model = model
        self.module_types = module_types
        self.store_inputs = store_inputs
        self.records: Dict[str, List[SamplingRecord]] = {}
        self._handles: List[RemovableHandle] = []
        # Per module: did the caller itself ask for indices? (stack: re-entry)
        self._caller_wants: Dict[int, List[bool]] = {}

    def _matches(self, module: torch.nn.Module) -> bool:
        types = self.module_types
        if types is None:
            types = _default_types()
            if type(module).__name__ == 'SamsaAttention':
                return True
        return isinstance(module, types)

    @property
    def module_names(self) -> List[str]:
        r"""Names of the observed layers, in :meth:`named_modules` order."""
        return [name for name, m in self.model.named_modules()
                if self._matches(m)]

    @property
    def indices(self) -> Dict[str, Tensor]:
        r"""Sampled indices of the last call of every recorded layer."""
        return {name: recs[-1].indices for name, recs in self.records.items()}

    def clear(self) -> None:
        r"""Forgets everything recorded so far."""
        self.records.clear()

    def __enter__(self) -> 'SamplingRecorder':
        if self._handles:
            raise RuntimeError("SamplingRecorder is already active")
        found = False
        for name, module in self.model.named_modules():
            if not self._matches(module):
                continue
            found = True
            self._handles.append(
                module.register_forward_pre_hook(self._pre_hook,
                                                 with_kwargs=True))
            self._handles.append(
                module.register_forward_hook(self._make_hook(name),
                                             with_kwargs=True))
        if not found:
            raise ValueError(
                f"Expected 'model' to contain at least one SamsaAttention "
                f"layer (got none in {type(self.model).__name__})")
        return self

    def __exit__(self, *exc: Any) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()
        self._caller_wants.clear()

    def _pre_hook(
        self,
        module: torch.nn.Module,
        args: Tuple[Any, ...],
        kwargs: Dict[str, Any],
    ) -> Tuple[Tuple[Any, ...], Dict[str, Any]]:
        wants = bool(kwargs.get('return_indices', False))
        self._caller_wants.setdefault(id(module), []).append(wants)
        kwargs = dict(kwargs)
        kwargs['return_indices'] = True
        return args, kwargs

    def _make_hook(self, name: str) -> Any:
        def hook(
            module: torch.nn.Module,
            args: Tuple[Any, ...],
            kwargs: Dict[str, Any],
            output: Any,
        ) -> Any:
            wants = self._caller_wants[id(module)].pop()
            if not (isinstance(output, tuple) and len(output) == 2):
                raise RuntimeError(
                    f"Expected '{name}' to return (out, indices) when called "
                    f"with return_indices=True (got {type(output).__name__})")
            out, indices = output
            x = args[0] if len(args) > 0 else kwargs.get('x')
            batch = args[1] if len(args) > 1 else kwargs.get('batch')
            pos = kwargs.get('pos')
            keep = self.store_inputs
            self.records.setdefault(name, []).append(
                SamplingRecord(
                    indices=indices.detach().cpu(),
                    pos=(pos.detach().cpu()
                         if keep and isinstance(pos, Tensor) else None),
                    batch=(batch.detach().cpu()
                           if keep and isinstance(batch, Tensor) else None),
                    num_tokens=int(x.size(0)) if isinstance(x, Tensor) else -1,
                ))
            return output if wants else out

        return hook

    def __repr__(self) -> str:
        return (f'{self.__class__.__name__}({type(self.model).__name__}, '
                f'recorded={list(self.records)})')


def record_sampling(
    model: torch.nn.Module,
    module_types: Optional[ModuleTypes] = None,
) -> SamplingRecorder:
    r"""Shortcut for :class:`SamplingRecorder`, to be used as
    :obj:`with record_sampling(model) as rec: ...`."""
    return SamplingRecorder(model, module_types=module_types)
