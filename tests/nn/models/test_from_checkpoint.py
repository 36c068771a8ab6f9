import copy

import pytest
import torch
import torch.nn.functional as F
from torch_geometric.data import Batch, Data

from samsa_geo.nn.models import (
    SamsaGraphModel,
    SamsaPointClassifier,
    SamsaPointSegmenter,
)
from samsa_geo.train import Trainer


def clouds(num=4, n=40):
    gen = torch.Generator().manual_seed(0)
    return [Data(pos=torch.randn(n, 3, generator=gen),
                 y=torch.tensor([i % 3]), category=torch.tensor([i % 2]),
                 part=torch.randint(4, (n, ), generator=gen))
            for i in range(num)]


class CloudClassification:
    def training_step(self, model, batch):
        return F.cross_entropy(model(batch.pos, batch.batch), batch.y)

    def eval_step(self, model, batch):
        logits = model(batch.pos, batch.batch)
        return {'loss': F.cross_entropy(logits, batch.y, reduction='none')}

    def compute_metrics(self, outputs):
        return {'loss': outputs['loss'].mean().item()}


def test_trainer_checkpoint_rebuilds_the_model(tmp_path):
    """A Trainer checkpoint carries the constructor arguments:
    from_checkpoint rebuilds the same model with the trained weights."""
    model = SamsaPointClassifier.small(3, k=16, num_layers=1,
                                       attn_kwargs={'num_registers': 2})
    batch = Batch.from_data_list(clouds())
    trainer = Trainer(model, CloudClassification(), out_dir=str(tmp_path),
                      epochs=1, lr=1e-2, progress=False, tensorboard=False,
                      monitor='val_loss', mode='min')
    trainer.fit([batch], [batch])
    state = torch.load(tmp_path / 'last.pt', weights_only=True)
    assert state['model_config'] == {'class': 'SamsaPointClassifier',
                                     'kwargs': model.init_kwargs}
    assert model.init_kwargs['k'] == 16
    assert model.init_kwargs['attn_kwargs'] == {'num_registers': 2}

    loaded = SamsaPointClassifier.from_checkpoint(tmp_path / 'last.pt')
    assert not loaded.training
    assert repr(loaded) == repr(model)
    model.eval()
    with torch.no_grad():
        assert torch.equal(loaded(batch.pos, batch.batch),
                           model(batch.pos, batch.batch))


@pytest.mark.parametrize('cls,args,kwargs', [
    (SamsaPointSegmenter, (4, ), dict(num_categories=2, channels=32,
                                      num_layers=1, heads=2, k=8)),
    (SamsaGraphModel, (5, 16, 2, 2), dict(edge_dim=3, heads=2, k=4,
                                          pe='rw', pe_channels=8)),
])
def test_from_checkpoint(tmp_path, cls, args, kwargs):
    model = cls(*args, **kwargs)
    path = tmp_path / 'model.pt'
    torch.save({'model': model.state_dict(),
                'model_config': model.model_config()}, path)
    loaded = cls.from_checkpoint(path)
    assert loaded.init_kwargs == model.init_kwargs
    assert repr(loaded) == repr(model)
    for (name, a), b in zip(model.state_dict().items(),
                            loaded.state_dict().values()):
        assert torch.equal(a, b), name
    # copies keep the record; pickling and deepcopy call __new__ bare.
    assert copy.deepcopy(model).init_kwargs == model.init_kwargs


def test_from_checkpoint_errors(tmp_path):
    model = SamsaPointClassifier.small(3)
    with pytest.raises(FileNotFoundError, match='does not exist'):
        SamsaPointClassifier.from_checkpoint(tmp_path / 'missing.pt')
    torch.save({'model': model.state_dict()}, tmp_path / 'bare.pt')
    with pytest.raises(ValueError, match="no 'model_config'"):
        SamsaPointClassifier.from_checkpoint(tmp_path / 'bare.pt')
    torch.save({'model': model.state_dict(),
                'model_config': model.model_config()}, tmp_path / 'c.pt')
    with pytest.raises(ValueError, match='holds a SamsaPointClassifier, '
                       'not a SamsaPointSegmenter'):
        SamsaPointSegmenter.from_checkpoint(tmp_path / 'c.pt')


@pytest.mark.parametrize('cls', [SamsaPointClassifier, SamsaPointSegmenter])
def test_flat_layout_state_dict_loads(cls, tmp_path):
    """Checkpoints whose backbone weights sit at the top level ('convs.0.',
    'lin_in.', 'encoder.') load into the composed model, strictly."""
    torch.manual_seed(0)
    model = cls.small(5, encoder='ppf', num_layers=1).eval()
    flat = {key[len('backbone.'):] if key.startswith('backbone.') else key:
            value for key, value in model.state_dict().items()}
    assert any(key.startswith('convs.0.') for key in flat)
    assert any(key.startswith('encoder.') for key in flat)
    torch.save({'model': flat, 'model_config': model.model_config()},
               tmp_path / 'old.pt')
    loaded = cls.from_checkpoint(tmp_path / 'old.pt')
    fresh = cls.small(5, encoder='ppf', num_layers=1)
    fresh.load_state_dict(flat)
    for other in (loaded, fresh):
        for key, value in model.state_dict().items():
            assert torch.equal(other.state_dict()[key], value), key


@pytest.mark.parametrize('cls,args,kwargs,name', [
    (SamsaPointClassifier, (3, ), dict(channels=32, num_layers=1, heads=2,
                                       k=8), 'attn_kwargs'),
    (SamsaGraphModel, (5, 16, 2, 2), dict(edge_dim=3, heads=2, k=4, pe='rw',
                                          pe_channels=8), 'pe_kwargs'),
])
def test_init_kwargs_are_kept_as_built(tmp_path, cls, args, kwargs, name):
    # The record is a deep copy: changing the caller's dict after
    # construction, or the returned one, leaves what a checkpoint rebuilds.
    options = {'attn_kwargs': {'num_registers': 2},
               'pe_kwargs': {'num_layers': 2}}[name]
    model = cls(*args, **kwargs, **{name: options}).eval()
    options[next(iter(options))] = 4
    options['extra'] = True
    first = model.init_kwargs
    first[name]['extra'] = True
    first[name].clear()
    expected = {'attn_kwargs': {'num_registers': 2},
                'pe_kwargs': {'num_layers': 2}}[name]
    assert model.init_kwargs[name] == expected
    assert model.model_config()['kwargs'][name] == expected
    path = tmp_path / 'model.pt'
    torch.save({'model': model.state_dict(),
                'model_config': model.model_config()}, path)
    loaded = cls.from_checkpoint(path)  # load_state_dict checks the shapes
    assert loaded.init_kwargs[name] == expected
    assert repr(loaded) == repr(model)
