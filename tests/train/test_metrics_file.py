import json
import os

from samsa_geo.train._metrics_file import MetricsFile


def test_evaluations_name_their_checkpoint_and_go_stale(tmp_path):
    out_dir = str(tmp_path)
    metrics = MetricsFile(out_dir)
    assert metrics.read() == {}
    metrics.record_evaluation({'test_acc': 0.5}, 'test',
                              os.path.join(out_dir, 'best.pt'))
    metrics.record_evaluation({'train_acc': 0.9}, 'train',
                              os.path.join(out_dir, 'last.pt'))
    metrics.record_evaluation({'ood_acc': 0.1}, 'ood', None)
    elsewhere = str(tmp_path.parent / 'other.pt')
    metrics.record_evaluation({'ext_acc': 0.2}, 'ext', elsewhere)
    assert metrics.read()['checkpoint'] == {'test': 'best.pt',
                                            'train': 'last.pt', 'ood': None,
                                            'ext': elsewhere}

    # An epoch replaces last.pt: the 'train' results go; without a new
    # best, the 'test' results stay.
    metrics.record_epoch({'val_acc': 0.7}, improved=False, best_epoch=1)
    summary = metrics.read()
    assert 'train_acc' not in summary and 'train' not in summary['checkpoint']
    assert summary['test_acc'] == 0.5
    assert summary['val_acc'] == 0.7 and summary['best_epoch'] == 1
    metrics.record_epoch({'val_acc': 0.8}, improved=True, best_epoch=2)
    summary = metrics.read()
    assert 'test_acc' not in summary
    assert summary['ood_acc'] == 0.1 and summary['ext_acc'] == 0.2
    assert summary['val_acc'] == 0.8 and summary['best_epoch'] == 2


def test_unreadable_file_reads_as_empty(tmp_path):
    metrics = MetricsFile(str(tmp_path))
    with open(metrics.path, 'w') as f:
        f.write('{not json')
    assert metrics.read() == {}
    metrics.update({'num_params': 12})
    with open(metrics.path) as f:
        assert json.load(f) == {'num_params': 12}
