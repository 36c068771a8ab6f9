from .positional_encoder import PositionalEncoder

__all__: list = [
    'PositionalEncoder',
]
