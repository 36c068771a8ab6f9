from .average_precision import average_precision_multitask
from .mean_absolute_error import mean_absolute_error
from .macro_f1 import macro_f1
from .mrr import mrr

__all__: list = [
    'average_precision_multitask',
    'mean_absolute_error',
    'macro_f1',
    'mrr',
]
