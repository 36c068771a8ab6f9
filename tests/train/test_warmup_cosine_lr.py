import math

import pytest
import torch

from samsa_geo.train import WarmupCosineLR


def reference(step, base, warmup, total, min_lr):
    if step < warmup:
        return base * (step + 1) / warmup
    t = (step - warmup) / max(1, total - warmup)
    return min_lr + (base - min_lr) * (1 + math.cos(math.pi * t)) / 2


def optimizer(base=(1e-3, )):
    params = [torch.nn.Parameter(torch.zeros(1)) for _ in base]
    return torch.optim.AdamW([{'params': [p], 'lr': b}
                              for p, b in zip(params, base)])


def lrs(base=(1e-3, ), warmup=4, total=20, min_lr=0.0, steps=None):
    opt = optimizer(base)
    sched = WarmupCosineLR(opt, warmup, total, min_lr)
    seen = []
    for _ in range(total if steps is None else steps):
        seen.append([g['lr'] for g in opt.param_groups])  # lr of this step
        opt.step()
        sched.step()
    return seen, sched


@pytest.mark.parametrize('warmup,total,min_lr', [(4, 20, 0.0), (0, 10, 1e-5),
                                                 (5, 5, 0.0), (1, 7, 1e-4)])
def test_values_match_formula(warmup, total, min_lr):
    seen, _ = lrs((1e-3, 5e-2), warmup, total, min_lr)
    for step, values in enumerate(seen):
        for base, value in zip((1e-3, 5e-2), values):
            assert value == pytest.approx(
                reference(step, base, warmup, total, min_lr), rel=1e-12)


def test_shape_of_schedule():
    seen, _ = lrs(warmup=4, total=20, min_lr=1e-5)
    seen = [v[0] for v in seen]
    assert seen[:4] == pytest.approx([2.5e-4, 5e-4, 7.5e-4, 1e-3])
    assert seen[4] == pytest.approx(1e-3)  # cosine starts at the peak
    assert all(a >= b for a, b in zip(seen[4:], seen[5:]))  # non-increasing
    middle = 4 + (20 - 4) // 2
    assert seen[middle] == pytest.approx((1e-3 + 1e-5) / 2)
    assert seen[-1] > 1e-5 and seen[-1] == pytest.approx(
        reference(19, 1e-3, 4, 20, 1e-5))


def test_state_dict_round_trip():
    # Saved in the cosine phase, where every step changes the rate, and
    # loaded into a fresh scheduler as a resumed run does.
    base, min_lr = (1e-3, 5e-2), 1e-5
    _, sched = lrs(base, warmup=4, total=20, min_lr=min_lr, steps=7)
    opt = optimizer(base)
    other = WarmupCosineLR(opt, 4, 20, min_lr)
    assert other.get_last_lr() != sched.get_last_lr()
    other.load_state_dict(sched.state_dict())
    assert other.last_epoch == sched.last_epoch == 7
    assert other.get_last_lr() == sched.get_last_lr()
    assert sched.get_last_lr() == pytest.approx(
        [reference(7, b, 4, 20, min_lr) for b in base], rel=1e-12)
    # One more step on each: equal rates, set on both optimizers.
    for s in (sched, other):
        s.optimizer.step()
        s.step()
    assert other.get_last_lr() == sched.get_last_lr()
    assert sched.get_last_lr() == pytest.approx(
        [reference(8, b, 4, 20, min_lr) for b in base], rel=1e-12)
    assert [g['lr'] for g in opt.param_groups] == other.get_last_lr()
    assert [g['lr'] for g in sched.optimizer.param_groups] == \
        sched.get_last_lr()
    assert repr(other) == repr(sched) == (
        'WarmupCosineLR(warmup_steps=4, total_steps=20, min_lr=1e-05)')


@pytest.mark.parametrize('args,match', [((0, 0), "'total_steps'"),
                                        ((5, 4), "'warmup_steps'"),
                                        ((-1, 4), "'warmup_steps'")])
def test_bad_arguments(args, match):
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.1)
    with pytest.raises(ValueError, match=match):
        WarmupCosineLR(opt, *args)


@pytest.mark.parametrize('args, name', [((True, 4), 'warmup_steps'),
                                        ((False, 4), 'warmup_steps'),
                                        ((0, True), 'total_steps')])
def test_step_counts_must_not_be_bools(args, name):
    # isinstance(True, int) holds: total_steps=True was a one-step schedule.
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.1)
    with pytest.raises(TypeError) as info:
        WarmupCosineLR(opt, *args)
    assert str(info.value) == f"Expected '{name}' to be an int (got bool)"
