from .lrgb_fixtures import write_lrgb_raw

__all__: list = ['write_lrgb_raw']
