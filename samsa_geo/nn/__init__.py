from samsa_geo.nn.attention import ImportanceScorer, RelativeBias, SamsaAttention
from samsa_geo.nn.conv import SamsaConv

__all__ = ['SamsaAttention', 'SamsaConv', 'ImportanceScorer', 'RelativeBias']
