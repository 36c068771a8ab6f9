r"""What :class:`SamsaPointClassifier` and :class:`SamsaPointSegmenter`
share besides their :class:`SamsaPointBackbone`: the :meth:`small` preset,
the MLP head and the loading of state dicts of the flat layout (the
backbone's weights at the top level: ``convs.0...``)."""
import inspect
from typing import Any, Dict, List, Type, TypeVar

from torch.nn import GELU, Dropout, LayerNorm, Linear, Module, Sequential

from samsa_geo.nn.models._reloadable import Reloadable
from samsa_geo.nn.models.samsa_point_backbone import SamsaPointBackbone
from samsa_geo.ops.validation import check_number, check_positive_int

Model = TypeVar('Model', bound='PointModel')

# Top-level modules of the backbone in checkpoints of the flat layout.
_FLAT_BACKBONE = ('lin_in.', 'encoder.', 'convs.')


class PointModel(Reloadable, Module):
    r"""Base of the point models: each holds a
    :class:`~samsa_geo.nn.models.SamsaPointBackbone` as ``backbone`` and a
    ``head``. A model's constructor lists its own arguments and takes the
    backbone's as keyword arguments (``**backbone_kwargs``); its public
    signature (:meth:`constructor_signature`) holds both."""
    #: Backbone arguments whose default differs from
    #: :class:`~samsa_geo.nn.models.SamsaPointBackbone`'s.
    BACKBONE_DEFAULTS: Dict[str, Any] = {}

    def __init__(self) -> None:
        super().__init__()
        self._register_load_state_dict_pre_hook(_nest_flat_backbone)

    @classmethod
    def constructor_signature(cls) -> inspect.Signature:
        r"""The model's positional arguments, then the backbone's
        (keyword-only, with :attr:`BACKBONE_DEFAULTS`), then the model's
        keyword-only ones."""
        own = [p for p in super().constructor_signature().parameters.values()
               if p.kind != p.VAR_KEYWORD]
        backbone = [
            p.replace(kind=p.KEYWORD_ONLY,
                      default=cls.BACKBONE_DEFAULTS.get(p.name, p.default))
            for p in inspect.signature(SamsaPointBackbone).parameters.values()
        ]
        positional = [p for p in own if p.kind != p.KEYWORD_ONLY]
        keyword = [p for p in own if p.kind == p.KEYWORD_ONLY]
        return inspect.Signature(positional + backbone + keyword)

    def build_backbone(self,
                       backbone_kwargs: Dict[str, Any]) -> SamsaPointBackbone:
        r"""The backbone of ``backbone_kwargs`` over
        :attr:`BACKBONE_DEFAULTS`."""
        return SamsaPointBackbone(**{**self.BACKBONE_DEFAULTS,
                                     **backbone_kwargs})

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
    and/or per-point features to ``num_classes`` logits; ``dropout`` is
    the models' ``head_dropout``."""
    check_positive_int('num_classes', num_classes)
    check_number('head_dropout', dropout)
    if not 0.0 <= dropout < 1.0:  # also refuses NaN
        raise ValueError(f"Expected 'head_dropout' in [0, 1) "
                         f"(got {dropout})")
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
