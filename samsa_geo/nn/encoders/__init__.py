from .positional_encoder import PositionalEncoder
from .categorical_encoder import CategoricalEncoder
from .graph_tokenizer import GraphTokenizer, GraphTokens
from .sft_point_encoder import SFTPointEncoder
from .ppf_point_encoder import PPFPointEncoder

__all__: list = [
    'PositionalEncoder',
    'CategoricalEncoder',
    'GraphTokenizer',
    'GraphTokens',
    'SFTPointEncoder',
    'PPFPointEncoder',
]
