import pytest
import torch

from samsa_geo.metrics import (
    confusion_matrix,
    mean_class_accuracy,
    overall_accuracy,
)

# 7 samples, 3 classes. Class 0: 3 samples (2 right), class 1: 1 (1 right),
# class 2: 3 (1 right).
TARGET = torch.tensor([0, 0, 0, 1, 2, 2, 2])
PRED = torch.tensor([0, 0, 2, 1, 2, 0, 1])


def test_confusion_matrix():
    expected = torch.tensor([[2, 0, 1], [0, 1, 0], [1, 1, 1]])
    assert torch.equal(confusion_matrix(PRED, TARGET), expected)
    mat = confusion_matrix(PRED, TARGET, num_classes=5)
    assert mat.shape == (5, 5) and torch.equal(mat[:3, :3], expected)
    assert int(mat.sum()) == 7
    logits = torch.nn.functional.one_hot(PRED, 3).float() * 5 - 1
    assert torch.equal(confusion_matrix(logits, TARGET), expected)


def test_accuracies():
    assert overall_accuracy(PRED, TARGET) == pytest.approx(4 / 7)
    # (2/3 + 1/1 + 1/3) / 3
    assert mean_class_accuracy(PRED, TARGET) == pytest.approx(2 / 3)
    # Classes absent from the target do not count.
    assert mean_class_accuracy(PRED, TARGET, num_classes=10) == pytest.approx(
        2 / 3)
    assert overall_accuracy(TARGET, TARGET) == 1.0
    assert mean_class_accuracy(TARGET, TARGET) == 1.0


def test_bad_input():
    with pytest.raises(ValueError, match="'pred'"):
        overall_accuracy(PRED[:3], TARGET)
    with pytest.raises(ValueError, match="'target'"):
        confusion_matrix(PRED, TARGET, num_classes=2)
    with pytest.raises(ValueError, match="'target'"):
        overall_accuracy(PRED, TARGET.view(7, 1))
