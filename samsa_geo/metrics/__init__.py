r"""Metrics of the point-cloud benchmarks."""
from .classification import (
    confusion_matrix,
    mean_class_accuracy,
    overall_accuracy,
)
from .segmentation import part_miou, shape_part_iou

__all__ = [
    'overall_accuracy',
    'mean_class_accuracy',
    'confusion_matrix',
    'shape_part_iou',
    'part_miou',
]
