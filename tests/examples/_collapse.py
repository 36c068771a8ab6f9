"""The preset tests' check of a run's per-epoch curve: it leaves chance and
never falls back towards it."""


def assert_no_collapse(values, chance, rise, margin):
    """``values``: one score per epoch, lower is better (a training loss, a
    validation error). Fails when an epoch is ``rise`` or more above the
    best epoch before it (the run fell back towards ``chance``, the score
    of a model that learned nothing), or when the last epoch is not at
    least ``margin`` below ``chance`` (the run never left it)."""
    best = values[0]
    for epoch, value in enumerate(values[1:], start=2):
        assert value < best + rise, (epoch, values)
        best = min(best, value)
    assert values[-1] < chance - margin, values
