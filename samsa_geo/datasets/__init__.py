from .freesolv import FreeSolv
from .lrgb import LRGB_TASKS, LRGBTask, lrgb_feature_normalization, lrgb_task

__all__: list = [
    'FreeSolv',
    'LRGB_TASKS',
    'LRGBTask',
    'lrgb_task',
    'lrgb_feature_normalization',
]
