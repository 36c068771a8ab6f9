from samsa_geo.nn.attention import ImportanceScorer, RelativeBias, SamsaAttention
from samsa_geo.nn.conv import SamsaConv, batch_hints

__all__ = ['SamsaAttention', 'SamsaConv', 'ImportanceScorer', 'RelativeBias',
           'batch_hints']
