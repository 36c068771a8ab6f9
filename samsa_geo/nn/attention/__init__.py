from samsa_geo.nn.attention import config
from samsa_geo.nn.attention.importance_scorer import ImportanceScorer
from samsa_geo.nn.attention.relative_bias import RelativeBias
from samsa_geo.nn.attention.samsa_attention import SamsaAttention

__all__ = ['SamsaAttention', 'ImportanceScorer', 'RelativeBias', 'config']
