import pytest
import torch


@pytest.fixture(autouse=True)
def _restore_determinism():
    # Trainer(deterministic=True) switches a process-wide flag; undo it so
    # tests elsewhere in the suite are unaffected.
    before = torch.are_deterministic_algorithms_enabled()
    yield
    torch.use_deterministic_algorithms(before)
