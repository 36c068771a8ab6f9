import pytest
import torch

from samsa_geo.metrics import (
    confusion_matrix,
    macro_f1,
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


@pytest.mark.parametrize('metric', [overall_accuracy, mean_class_accuracy,
                                    confusion_matrix, macro_f1])
@pytest.mark.parametrize('pred, error, match', [
    # One score column: the arg-max would be class 0 everywhere.
    (torch.rand(7, 1), ValueError, r"'pred' scores to have shape \[N, C\] "
     r"with C >= 2"),
    # Probabilities [N] would be truncated to labels by .long().
    (torch.rand(7), TypeError, "'pred' to be integer labels"),
    (torch.ones(7, 3, dtype=torch.long), TypeError, "'pred' scores"),
    (torch.zeros(7, 2, 2), ValueError, "'pred' to have shape"),
])
def test_pred_labels_or_scores(metric, pred, error, match):
    with pytest.raises(error, match=match):
        metric(pred, TARGET)


@pytest.mark.parametrize('metric', [overall_accuracy, mean_class_accuracy,
                                    confusion_matrix, macro_f1])
@pytest.mark.parametrize('bad', [float('nan'), float('inf')])
def test_non_finite_scores(metric, bad):
    logits = torch.randn(7, 3)
    logits[4, 1] = bad
    with pytest.raises(ValueError, match="'pred' to hold no NaN and no "
                                         r"\+inf"):
        metric(logits, TARGET)


@pytest.mark.parametrize('metric', [overall_accuracy, mean_class_accuracy,
                                    confusion_matrix, macro_f1])
def test_masked_scores_are_accepted(metric):
    # -inf marks a masked class: the arg-max skips it.
    logits = torch.randn(7, 3)
    masked = logits.clone()
    masked[:, 2] = float('-inf')
    labels = logits[:, :2].argmax(-1)
    want = metric(labels, TARGET, 3) if metric is not overall_accuracy \
        else metric(labels, TARGET)
    got = metric(masked, TARGET, 3) if metric is not overall_accuracy \
        else metric(masked, TARGET)
    assert torch.equal(torch.as_tensor(got), torch.as_tensor(want))


@pytest.mark.parametrize('metric', [overall_accuracy, mean_class_accuracy,
                                    confusion_matrix, macro_f1])
def test_label_ranges_checked_alike(metric):
    # Ignore labels (-1, -100) are no class: every metric refuses them
    # instead of counting them as misses.
    for ignore in (-1, -100):
        target = TARGET.clone()
        target[0] = ignore
        with pytest.raises(ValueError, match=r"'target' labels in \[0, "):
            metric(PRED, target)
        pred = PRED.clone()
        pred[0] = ignore
        with pytest.raises(ValueError, match=r"'pred' labels in \[0, "):
            metric(pred, TARGET)
    # A target class without a score column.
    with pytest.raises(ValueError, match=r"'target' labels in \[0, 2\)"):
        metric(torch.randn(7, 2), TARGET)
    with pytest.raises(TypeError, match="'target' to be an integer"):
        metric(PRED, TARGET.float())


def test_scores_keep_results():
    logits = torch.nn.functional.one_hot(PRED, 3).float() * 5 - 1
    assert overall_accuracy(logits, TARGET) == pytest.approx(4 / 7)
    # Labels beyond the largest one seen (num_classes inferred) are fine.
    assert confusion_matrix(torch.randn(7, 10), TARGET).shape[0] <= 10
    assert confusion_matrix(PRED.int(), TARGET.int()).dtype == torch.long
    empty = torch.zeros(0, dtype=torch.long)
    assert confusion_matrix(empty, empty).shape == (0, 0)
    with pytest.raises(TypeError, match="'num_classes'"):
        confusion_matrix(PRED, TARGET, num_classes=3.0)
