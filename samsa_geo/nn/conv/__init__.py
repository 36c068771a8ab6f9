from samsa_geo.nn.conv.batch_hints import batch_hints
from samsa_geo.nn.conv.samsa_conv import SamsaConv

__all__ = ['SamsaConv', 'batch_hints']
