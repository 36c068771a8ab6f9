import copy
import inspect
import os
from typing import Any, Dict, Optional, Type, TypeVar, Union

import torch

Model = TypeVar('Model', bound='Reloadable')


class _ConstructorSignature:
    # ``cls.__signature__``: the constructor's signature, which
    # inspect.signature, help() and the API docs show in place of
    # __new__'s (*args, **kwargs). None on an instance, whose signature
    # stays that of its forward call.
    def __get__(self, obj: Any, cls: type) -> Optional[inspect.Signature]:
        return None if obj is not None else cls.constructor_signature()


class Reloadable:
    r"""Mixin of the models that a checkpoint rebuilds: records the
    constructor's arguments (:attr:`init_kwargs`), which
    :class:`~samsa_geo.train.Trainer` saves with the weights under
    :obj:`"model_config"`, and rebuilds model and weights with
    :meth:`from_checkpoint`."""
    __signature__ = _ConstructorSignature()

    def __new__(cls, *args: Any, **kwargs: Any) -> Any:
        self = super().__new__(cls)
        try:
            bound = cls.constructor_signature().bind(*args, **kwargs)
        except TypeError:  # copy and pickle call __new__ without arguments
            return self
        bound.apply_defaults()
        # Set before Module.__init__, which leaves plain attributes alone. A
        # deep copy: the caller's dicts (attn_kwargs, ...) may change later.
        object.__setattr__(self, '_init_kwargs',
                           copy.deepcopy(dict(bound.arguments)))
        return self

    @classmethod
    def constructor_signature(cls) -> inspect.Signature:
        r"""The arguments the constructor takes (without ``self``), as
        :attr:`init_kwargs` records them."""
        sig = inspect.signature(cls.__init__)
        return sig.replace(parameters=list(sig.parameters.values())[1:],
                           return_annotation=inspect.Signature.empty)

    @property
    def init_kwargs(self) -> Dict[str, Any]:
        r"""The constructor's arguments, defaults included (plain Python
        values: a checkpoint stores them for
        :obj:`torch.load(weights_only=True)`), as they were at construction:
        a deep copy, so that later changes to the caller's arguments or to
        the returned dict leave what a checkpoint rebuilds unchanged."""
        return copy.deepcopy(self._init_kwargs)

    def model_config(self) -> Dict[str, Any]:
        r"""What a checkpoint stores to rebuild the model:
        :obj:`{"class": name, "kwargs": init_kwargs}`."""
        return {'class': type(self).__name__, 'kwargs': self.init_kwargs}

    @classmethod
    def from_checkpoint(cls: Type[Model],
                        path: Union[str, os.PathLike],
                        map_location: Union[str, torch.device] = 'cpu',
                        ) -> Model:
        r"""Rebuilds the model saved in a checkpoint of
        :class:`~samsa_geo.train.Trainer` (:obj:`best.pt`, :obj:`last.pt`):
        the constructor's arguments from :obj:`"model_config"`, then the
        weights. Returns the model in evaluation mode.

        Args:
            path (str): The checkpoint file.
            map_location (str or torch.device, optional): Where to put the
                weights. (default: :obj:`"cpu"`)
        """
        path = os.fspath(path)
        if not os.path.isfile(path):
            raise FileNotFoundError(f"Checkpoint '{path}' does not exist")
        state = torch.load(path, map_location=map_location,
                           weights_only=True)
        if not isinstance(state, dict) or 'model' not in state:
            raise ValueError(f"Expected '{path}' to be a checkpoint with "
                             f"'model' weights")
        config = state.get('model_config')
        if not isinstance(config, dict):
            raise ValueError(
                f"Checkpoint '{path}' carries no 'model_config' (constructor "
                f"arguments); build the model with its arguments and call "
                f"load_state_dict(state['model'])")
        if config.get('class') != cls.__name__:
            raise ValueError(f"Checkpoint '{path}' holds a "
                             f"{config.get('class')}, not a {cls.__name__}")
        model = cls(**config['kwargs'])
        model.load_state_dict(state['model'])
        return model.eval()
