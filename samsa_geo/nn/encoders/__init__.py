from .positional_encoder import PositionalEncoder
from .categorical_encoder import CategoricalEncoder
from .graph_tokenizer import GraphTokenizer, GraphTokens

__all__: list = [
    'PositionalEncoder',
    'CategoricalEncoder',
    'GraphTokenizer',
    'GraphTokens',
]
