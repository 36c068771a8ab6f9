from .crafted_payload import CraftedPayload
from .lrgb_fixtures import write_lrgb_raw

__all__: list = ['CraftedPayload', 'write_lrgb_raw']
