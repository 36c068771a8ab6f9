import pytest
import torch

from samsa_geo.nn.encoders import PositionalEncoder


@pytest.mark.parametrize('sign_invariant', [False, True])
@pytest.mark.parametrize('num_layers', [1, 2])
@pytest.mark.parametrize('batch_norm', [False, True])
def test_positional_encoder(sign_invariant, num_layers, batch_norm):
    enc = PositionalEncoder(8, 32, num_layers=num_layers, batch_norm=batch_norm,
                            sign_invariant=sign_invariant)
    assert repr(enc) == (f'PositionalEncoder(8, 32, num_layers={num_layers}, '
                         f'sign_invariant={sign_invariant})')
    pe = torch.randn(50, 8)
    out = enc(pe)
    assert out.shape == (50, 32)
    out.square().sum().backward()
    for p in enc.parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all()

    enc.eval()
    perm = torch.randperm(50)
    assert torch.allclose(enc(pe[perm]), enc(pe)[perm], atol=1e-6)


@pytest.mark.parametrize('training', [False, True])
def test_sign_invariance(training):
    enc = PositionalEncoder(6, 16, num_layers=2, sign_invariant=True)
    enc.train(training)
    pe = torch.randn(40, 6)
    base = enc(pe)
    for _ in range(5):
        sign = torch.randint(0, 2, (6, )) * 2 - 1
        assert torch.allclose(enc(pe * sign), base, atol=1e-6)

    plain = PositionalEncoder(6, 16, num_layers=2).eval()
    sign = torch.tensor([-1, 1, 1, 1, 1, 1])
    assert not torch.allclose(plain(pe * sign), plain(pe), atol=1e-3)


def test_errors():
    with pytest.raises(ValueError, match="'in_channels'"):
        PositionalEncoder(0, 4)
    with pytest.raises(ValueError, match=r"Expected 'pe' to have shape \[N, 8\]"):
        PositionalEncoder(8, 4)(torch.randn(3, 5))


@pytest.mark.parametrize('name, value', [
    ('batch_norm', 'no'), ('batch_norm', None), ('sign_invariant', 'no'),
    ('sign_invariant', 1),
])
def test_flags_must_be_bools(name, value):
    with pytest.raises(TypeError) as info:
        PositionalEncoder(4, 8, **{name: value})
    assert str(info.value) == (f"Expected '{name}' to be a bool "
                               f"(got {value!r})")
