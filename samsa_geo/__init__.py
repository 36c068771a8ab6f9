"""samsa_geo: SAMSA sampling self-attention for graphs and point clouds."""
__version__ = '0.1.0'

__all__ = ['__version__']
