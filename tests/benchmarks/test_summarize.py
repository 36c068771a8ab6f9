import importlib.util
import os.path as osp

import pytest

ROOT = osp.join(osp.dirname(__file__), '..', '..')


def load_summarize():
    spec = importlib.util.spec_from_file_location(
        'summarize', osp.join(ROOT, 'benchmarks', 'summarize.py'))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_flags_are_written_as_typed():
    # A record's parsed arguments become the command line that reproduces
    # them: switches alone where on, absent where off; --out left out.
    flag_text = load_summarize().flag_text
    flags = {'tokens': 65536, 'fp32_tokens': True, 'sweep': False,
             'commit': 'abc1234', 'out': '/tmp/x.json'}
    assert flag_text(flags) == '--tokens 65536 --fp32-tokens --commit abc1234'
    assert flag_text('--tokens 8 --out /tmp/y.json --heads 2') == \
        '--tokens 8 --heads 2'
    assert flag_text(None) == ''


def test_the_page_is_the_tables_of_the_committed_results():
    # docs/benchmarks.md holds what summarize.py writes from the results
    # committed beside it: no table edited by hand, none left stale.
    summarize = load_summarize()
    with open(summarize.DOC) as f:
        text = f.read()
    assert summarize.page(text) == text


def test_options_are_parsed_before_the_page_is_written(
        monkeypatch, tmp_path, capsys):
    # --help prints the usage and an unknown option is refused, both
    # without writing the page (it was rewritten for any argument).
    summarize = load_summarize()
    doc = tmp_path / 'benchmarks.md'
    doc.write_text('unchanged')
    monkeypatch.setattr(summarize, 'DOC', str(doc))
    for argv in (['--help'], ['--tables']):
        with pytest.raises(SystemExit):
            summarize.main(argv)
    assert doc.read_text() == 'unchanged'
    assert 'usage: ' in capsys.readouterr().out
