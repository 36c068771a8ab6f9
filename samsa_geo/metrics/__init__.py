r"""The benchmarks' metrics, computed on a whole split's outputs."""
from .classification import (
    confusion_matrix,
    mean_class_accuracy,
    overall_accuracy,
)
from .segmentation import part_miou, shape_part_iou
from .average_precision import average_precision_multitask
from .mean_absolute_error import mean_absolute_error
from .macro_f1 import macro_f1
from .mrr import mrr

__all__ = [
    'overall_accuracy',
    'mean_class_accuracy',
    'confusion_matrix',
    'shape_part_iou',
    'part_miou',
    'average_precision_multitask',
    'mean_absolute_error',
    'macro_f1',
    'mrr',
]
