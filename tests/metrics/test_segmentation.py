import pytest
import torch

from samsa_geo.metrics import part_miou, shape_part_iou

# Category 0 has parts {0, 1}; category 1 has parts {2, 3, 4}.
PARTS = [[0, 1], [2, 3, 4]]


def test_single_shape_hand_computed():
    target = torch.tensor([0, 0, 0, 1, 1])
    pred = torch.tensor([0, 0, 1, 1, 1])
    # part 0: inter 2 / union 3; part 1: inter 2 / union 3.
    iou = shape_part_iou(pred, target, torch.tensor([0]), PARTS)
    assert iou.tolist() == pytest.approx([2 / 3])


def test_absent_part_counts_as_one():
    # Shape of category 1 using parts 2 and 3 only; part 4 absent in both.
    target = torch.tensor([2, 2, 3, 3])
    pred = torch.tensor([2, 3, 3, 3])
    # part 2: 1/2; part 3: 2/3; part 4: 1.
    iou = shape_part_iou(pred, target, torch.tensor([1]), PARTS)
    assert iou.tolist() == pytest.approx([(1 / 2 + 2 / 3 + 1) / 3])
    # A predicted part absent from the ground truth counts as IoU 0.
    iou = shape_part_iou(torch.tensor([2, 2, 4, 3]), target,
                         torch.tensor([1]), PARTS)
    assert iou.tolist() == pytest.approx([(1 + 1 / 2 + 0) / 3])


def test_batch_instance_and_class_miou():
    # Shapes: s0 cat 0 (IoU 2/3), s1 cat 0 (IoU 1), s2 cat 1 (IoU 13/18).
    target = torch.tensor([0, 0, 0, 1, 1, 0, 1, 2, 2, 3, 3])
    pred = torch.tensor([0, 0, 1, 1, 1, 0, 1, 2, 3, 3, 3])
    batch = torch.tensor([0, 0, 0, 0, 0, 1, 1, 2, 2, 2, 2])
    category = torch.tensor([0, 0, 1])
    ious = shape_part_iou(pred, target, category, PARTS, batch)
    assert ious.tolist() == pytest.approx([2 / 3, 1.0, 13 / 18])
    ins, cls = part_miou(pred, target, category, PARTS, batch)
    assert ins == pytest.approx((2 / 3 + 1 + 13 / 18) / 3)
    assert cls == pytest.approx(((2 / 3 + 1) / 2 + 13 / 18) / 2)
    # The dict forms give the same answer.
    named = {'Airplane': [0, 1], 'Bag': [2, 3, 4]}
    assert part_miou(pred, target, category, named, batch) == (ins, cls)
    keyed = {1: [2, 3, 4], 0: [0, 1]}
    assert part_miou(pred, target, category, keyed, batch) == (ins, cls)


def test_logits_restricted_to_category_parts():
    target = torch.tensor([0, 1, 2, 3])
    batch = torch.tensor([0, 0, 1, 1])
    category = torch.tensor([0, 1])
    # The global arg-max is part 4 everywhere, outside category 0's parts.
    logits = torch.full((4, 5), -1.0)
    logits[:, 4] = 10.
    logits[0, 0] = logits[1, 1] = logits[2, 2] = logits[3, 3] = 1.
    ious = shape_part_iou(logits, target, category, PARTS, batch)
    # Shape 0 is perfect after restriction; shape 1 predicts 4 everywhere.
    assert ious.tolist() == pytest.approx([1.0, (0 + 0 + 0) / 3])


def test_bad_input():
    with pytest.raises(ValueError, match="'category'"):
        shape_part_iou(torch.zeros(3), torch.zeros(3), torch.tensor([0, 1]),
                       PARTS)
    with pytest.raises(ValueError, match="'category'"):
        shape_part_iou(torch.zeros(3), torch.zeros(3), torch.tensor([5]),
                       PARTS)
    with pytest.raises(ValueError, match="'pred'"):
        shape_part_iou(torch.zeros(2), torch.zeros(3), torch.tensor([0]),
                       PARTS)


@pytest.mark.parametrize('fn', [shape_part_iou, part_miou])
def test_scores_need_a_column_per_part(fn):
    # Category 1's parts go up to label 4: 3 columns cannot score them.
    with pytest.raises(ValueError, match=r"'pred' scores to have shape "
                       r"\[4, P\] with P >= 5"):
        fn(torch.randn(4, 3), torch.tensor([2, 3, 4, 2]), torch.tensor([1]),
           PARTS)
    with pytest.raises(ValueError, match="'pred' to hold no NaN"):
        fn(torch.full((4, 5), float('nan')), torch.tensor([2, 3, 4, 2]),
           torch.tensor([1]), PARTS)
    # -inf marks a masked part: the scores give the labels they arg-max to
    # among the category's parts (2, 3, 4).
    scores = torch.randn(4, 5)
    scores[:, 3] = float('-inf')
    target = torch.tensor([2, 3, 4, 2])
    labels = scores[:, 2:].argmax(-1) + 2
    assert (labels != 3).all()
    assert torch.equal(torch.as_tensor(fn(scores, target, torch.tensor([1]),
                                          PARTS)),
                       torch.as_tensor(fn(labels, target, torch.tensor([1]),
                                          PARTS)))
    with pytest.raises(TypeError, match="'pred' to be an integer"):
        fn(torch.tensor([2., 3., 4., 2.]), torch.tensor([2, 3, 4, 2]),
           torch.tensor([1]), PARTS)


def test_parts_table_with_gaps():
    gaps = {0: [0, 1], 2: [2, 3, 4]}
    target = torch.tensor([0, 1, 2, 3])
    batch = torch.tensor([0, 0, 1, 1])
    # Categories 0 and 2 are scored as with the full table.
    ious = shape_part_iou(target, target, torch.tensor([0, 2]), gaps, batch)
    assert ious.tolist() == pytest.approx([1.0, (1 + 1 + 1) / 3])
    # Category 1 is not in the table (used to divide by zero).
    with pytest.raises(ValueError, match="'category_parts' to list the "
                       "parts of category 1"):
        part_miou(torch.tensor([0, 1]), torch.tensor([0, 1]),
                  torch.tensor([1]), gaps)
    with pytest.raises(ValueError, match="'category_parts'"):
        part_miou(torch.tensor([0, 1]), torch.tensor([0, 1]),
                  torch.tensor([0]), {-1: [0, 1], 0: [0, 1]})
    with pytest.raises(ValueError, match="'category_parts'"):
        part_miou(torch.tensor([0, 1]), torch.tensor([0, 1]),
                  torch.tensor([0]), [[0, -1]])


@pytest.mark.parametrize('label', [3, 7, -1])
def test_target_outside_category_raises(label):
    # Shape 0 is of category 0 (parts 0, 1): label 3 belongs to category 1,
    # 7 and -1 to none. They used to be ignored silently.
    target = torch.tensor([0, label, 2, 3])
    batch = torch.tensor([0, 0, 1, 1])
    with pytest.raises(ValueError, match=r"'target' to hold part labels of "
                       r"each shape's category \(point 1, of category 0"):
        part_miou(torch.tensor([0, 1, 2, 3]), target, torch.tensor([0, 1]),
                  PARTS, batch)
    with pytest.raises(TypeError, match="'target' to be an integer"):
        part_miou(torch.tensor([0, 1, 2, 3]), target.float(),
                  torch.tensor([0, 1]), PARTS, batch)
