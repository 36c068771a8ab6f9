r"""What :class:`SamsaPointClassifier` and :class:`SamsaPointSegmenter`
share besides their :class:`SamsaPointBackbone`: the :meth:`small` preset,
the MLP head and the loading of state dicts of the flat layout (the
backbone's weights at the top level: ``convs.0...``)."""
import inspect
from typing import Any, Dict, List, Type, TypeVar

from torch.nn import GELU, Dropout, LayerNorm, Linear, Module, Sequential

from samsa_geo.nn.models._reloadable import Reloadable
from samsa_geo.nn.models.samsa_point_backbone import SamsaPointBackbone

Model = TypeVar('Model', bound='PointModel')

# Top-level modules of the backbone in checkpoints of the flat layout.
_FLAT_BACKBONE = ('lin_in.', 'encoder.', 'convs.')


class PointModel(Reloadable, Module):
    r"""Base of the point models: each holds a
    :class:`~samsa_geo.nn.models.SamsaPointBackbone` as ``backbone`` and a
    ``head``."""
    def __init__(self) -> None:
        super().__init__()
        self._register_load_state_dict_pre_hook(_nest_flat_backbone)

    def build_backbone(self) -> SamsaPointBackbone:
        r"""The backbone of the constructor's arguments that
        :class:`~samsa_geo.nn.models.SamsaPointBackbone` takes."""
        names = inspect.signature(SamsaPointBackbone).parameters
        return SamsaPointBackbone(**{
            name: value
            for name, value in self.init_kwargs.items() if name in names
        })

    @classmethod
    def small(cls: Type[Model], num_classes: int, **kwargs: Any) -> Model:
        r"""A CPU-friendly preset (:attr:`SMALL`): 64 channels, 2 layers, 4
        heads, :math:`k = 64`, 16 neighbours; ``kwargs`` override any
        argument of the model's constructor."""
        return cls(num_classes, **{**cls.SMALL, **kwargs})

    #: Hyper-parameters of the :meth:`small` preset.
    SMALL: Dict[str, Any] = dict(channels=64, num_layers=2, heads=4, k=64,
                                 num_neighbors=16)


def mlp_head(num_classes: int, in_channels: int, channels: int,
             dropout: float) -> Sequential:
    r"""The MLP head of the point models, from ``in_channels`` pooled
    and/or per-point features to ``num_classes`` logits."""
    if not isinstance(num_classes, int) or num_classes <= 0:
        raise ValueError(f"Expected 'num_classes' to be a positive int "
                         f"(got {num_classes!r})")
    return Sequential(
        LayerNorm(in_channels),
        Linear(in_channels, channels),
        GELU(),
        Dropout(dropout),
        Linear(channels, num_classes),
    )


def _nest_flat_backbone(state_dict: Dict[str, Any], prefix: str,
                        local_metadata: Dict[str, Any], strict: bool,
                        missing_keys: List[str], unexpected_keys: List[str],
                        error_msgs: List[str]) -> None:
    # Moves the backbone's weights of a flat-layout state dict
    # ('convs.0...') under 'backbone.' before loading.
    for key in list(state_dict):
        if not key.startswith(prefix):
            continue
        name = key[len(prefix):]
        if name.startswith(_FLAT_BACKBONE):
            state_dict[f'{prefix}backbone.{name}'] = state_dict.pop(key)
