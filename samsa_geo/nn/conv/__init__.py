from samsa_geo.nn.conv.samsa_conv import SamsaConv

__all__ = ['SamsaConv']
