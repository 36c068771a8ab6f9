"""Every record carries its provenance: the commit (given with --commit or
git's) and whether the tree differs from it, and a re-run at another commit
keeps the older records."""
import json
import os
import os.path as osp
import re
import shutil
import subprocess
import sys

import pytest

ROOT = osp.abspath(osp.join(osp.dirname(__file__), '..', '..'))
BENCHMARKS = osp.join(ROOT, 'benchmarks')
sys.path.insert(0, BENCHMARKS)
import _common  # noqa: E402

needs_git = pytest.mark.skipif(shutil.which('git') is None,
                               reason='needs git')

#: Scripts that write records: each takes --commit.
RECORD_SCRIPTS = sorted(
    name for name in os.listdir(BENCHMARKS) if name.endswith('.py')
    and name not in ('_common.py', 'summarize.py')
    and re.search(r'write_records|add_to_results|provenance\(',
                  open(osp.join(BENCHMARKS, name)).read()))


@needs_git
def test_a_given_commit_is_recorded_with_dirty_from_git(tmp_path, git):
    head = git('rev-parse', 'HEAD')
    path = str(tmp_path)

    def fields(commit=None):
        return _common.commit_fields(commit, path)

    # Clean tree: git's commit, or the one given (also abbreviated).
    assert fields() == dict(commit=head, dirty=False)
    assert fields(head[:10]) == dict(commit=head[:10], dirty=False)
    (tmp_path / 'a.py').write_text('x = 2\n')
    # A changed tree: dirty, whether the commit is git's or given; the
    # given name is recorded as given.
    assert fields() == dict(commit=head + '-dirty', dirty=True)
    assert fields(head[:10]) == dict(commit=head[:10], dirty=True)
    # A commit git does not know (a copy over a stale .git): git cannot
    # tell, unless the name itself says -dirty.
    assert fields('not-a-commit') == dict(commit='not-a-commit', dirty=None)
    assert fields('0123abcd-dirty') == dict(commit='0123abcd-dirty',
                                            dirty=True)
    # Outside a checkout: nothing known but what was given.
    plain = tmp_path.parent / (tmp_path.name + '_plain')
    plain.mkdir()
    if subprocess.run(['git', 'rev-parse'], cwd=plain,
                      capture_output=True).returncode != 0:
        assert _common.commit_fields(None, str(plain)) == dict(
            commit=None, dirty=None)
        assert _common.commit_fields('abc1234', str(plain)) == dict(
            commit='abc1234', dirty=None)


@needs_git
def test_an_older_commit_of_the_checkout_is_compared_with_the_tree(
        tmp_path, git):
    first = git('rev-parse', 'HEAD')
    (tmp_path / 'a.py').write_text('x = 3\n')
    git('-c', 'user.name=t', '-c', 'user.email=t@t', 'commit', '-qam', 'b')
    # The tree is HEAD's, not the first commit's.
    assert _common.git_dirty(None, str(tmp_path)) is False
    assert _common.git_dirty(first, str(tmp_path)) is True
    assert _common.git_dirty('--output=x', str(tmp_path)) is None


def test_provenance_records_the_commit_and_dirty_outside_the_flags(
        monkeypatch):
    import argparse

    import torch
    monkeypatch.setattr(_common, 'git_dirty', lambda commit, path=None:
                        commit == 'abc')
    args = argparse.Namespace(tokens=8, commit='abc', out='/tmp/x.json')
    got = _common.provenance(torch.device('cpu'), args)
    assert got['commit'] == 'abc' and got['dirty'] is True
    assert 'commit' not in got['flags'] and got['flags']['tokens'] == 8
    # The command line's --commit, where the script does not pass it.
    monkeypatch.setattr(sys, 'argv', ['x.py', '--tokens', '8', '--commit',
                                      'abc', '--out', 'o.json', '--k=2'])
    got = _common.run_provenance()
    assert got['commit'] == 'abc' and got['dirty'] is True
    assert got['flags'] == '--tokens 8 --k=2'
    monkeypatch.setattr(sys, 'argv', ['x.py', '--commit=def'])
    assert _common.run_provenance()['commit'] == 'def'
    assert _common.run_provenance('ghi')['commit'] == 'ghi'
    # An empty COMMIT of the run scripts: git's.
    monkeypatch.setattr(_common, 'git_commit', lambda path=None: 'h-dirty')
    assert _common.commit_fields('') == dict(commit='h-dirty', dirty=True)


def test_records_of_another_commit_are_kept(tmp_path, monkeypatch):
    # The same command at a new commit adds its records; at the same
    # commit (a re-run) it replaces them; records without a commit are
    # never taken for the same run.
    path = str(tmp_path / 'results' / 'x.json')
    monkeypatch.setattr(sys, 'argv', ['x.py', '--device', 'cpu'])
    monkeypatch.setattr(_common, 'git_dirty', lambda commit, path=None:
                        False)

    def write(ms, commit, **extra):
        _common.write_records([dict(device='d', op='a', ms=ms, **extra)],
                              path, commit=commit)
        with open(path) as f:
            return [(r['commit'], r['ms']) for r in json.load(f)]

    os.makedirs(osp.dirname(path))
    with open(path, 'w') as f:  # a record of before: no commit
        json.dump([dict(device='d', op='a', ms=0.0, commit=None,
                        flags='--device cpu')], f)
    assert write(1.0, 'c1') == [(None, 0.0), ('c1', 1.0)]
    assert write(2.0, 'c2') == [(None, 0.0), ('c1', 1.0), ('c2', 2.0)]
    # A re-run at c1 replaces c1's record alone.
    assert write(3.0, 'c1') == [(None, 0.0), ('c2', 2.0), ('c1', 3.0)]
    # A dirty tree at c2 is not c2's run.
    assert write(4.0, 'c2', dirty=True) == [
        (None, 0.0), ('c2', 2.0), ('c1', 3.0), ('c2', 4.0)]
    # Other flags: another run, kept.
    monkeypatch.setattr(sys, 'argv', ['x.py', '--device', 'cpu', '--k', '2'])
    assert len(write(5.0, 'c1')) == 5
    # add_to_results' own keys (graph_scale, ddp) keep other commits too.
    _common.add_to_results(path, [dict(gpus=1, commit='c3')],
                           lambda r: r.get('gpus'))
    _common.add_to_results(path, [dict(gpus=1, commit='c4')],
                           lambda r: r.get('gpus'))
    with open(path) as f:
        assert [r['commit'] for r in json.load(f)
                if r.get('gpus')] == ['c3', 'c4']


def test_a_failed_write_leaves_the_result_file_as_it_was(tmp_path):
    # add_to_results writes beside the file and moves the new one over
    # it: a write that fails midway (here a value JSON cannot hold) leaves
    # the old file whole and no stray file.
    path = tmp_path / 'x.json'
    _common.add_to_results(str(path), [dict(op='a', commit='c1')],
                           lambda r: r['op'])
    before = path.read_text()
    with pytest.raises(TypeError):
        _common.add_to_results(str(path), [dict(op='b', commit='c1',
                                                ms={1.0})],
                               lambda r: r['op'])
    assert path.read_text() == before
    assert [p.name for p in tmp_path.iterdir()] == ['x.json']


def test_every_script_that_writes_records_takes_commit():
    # One interpreter: each script's --help.
    assert {'attention.py', 'points.py', 'graph_scale.py', 'flex_options.py',
            'ops.py', 'layer.py'} <= set(RECORD_SCRIPTS)
    code = (
        'import contextlib, io, runpy, sys\n'
        f'sys.path.insert(0, {BENCHMARKS!r})\n'
        f'for name in {RECORD_SCRIPTS!r}:\n'
        '    sys.argv = [name, "--help"]\n'
        '    out = io.StringIO()\n'
        '    with contextlib.redirect_stdout(out):\n'
        '        try:\n'
        f'            runpy.run_path({BENCHMARKS!r} + "/" + name,\n'
        '                           run_name="__main__")\n'
        '        except SystemExit:\n'
        '            pass\n'
        '    print(name, "--commit" in out.getvalue())\n')
    run = subprocess.run([sys.executable, '-c', code], cwd=ROOT,
                         capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-2000:]
    got = dict(line.split() for line in run.stdout.splitlines()
               if line.split()[0] in RECORD_SCRIPTS)
    assert got == {name: 'True' for name in RECORD_SCRIPTS}


STUB = '''#!{python}
"""Stands in for python3 / torchrun / nvidia-smi: logs its arguments; runs
a heredoc script (python3 -) with the real interpreter; an example run
writes a log.csv into its --out folder."""
import os, subprocess, sys
name = os.path.basename(sys.argv[0])
args = sys.argv[1:]
with open(os.environ['STUB_LOG'], 'a') as f:
    f.write(name + ' ' + ' '.join(args) + '\\n')
if name == 'python3' and args[:1] == ['-']:
    sys.exit(subprocess.run([{python!r}] + args).returncode)
if 'examples/modelnet40.py' in args:
    out = args[args.index('--out') + 1]
    os.makedirs(out, exist_ok=True)
    with open(os.path.join(out, 'log.csv'), 'w') as f:
        f.write('epoch,time,train_loss\\n1,2.5,3.0\\n2,2.0,2.5\\n')
'''


def stubbed_env(tmp_path):
    bin_dir = tmp_path / 'bin'
    bin_dir.mkdir()
    stub = bin_dir / 'python3'
    stub.write_text(STUB.format(python=sys.executable))
    stub.chmod(0o755)
    for name in ('torchrun', 'nvidia-smi'):
        os.symlink(stub, bin_dir / name)
    log = tmp_path / 'calls.log'
    return log, {**os.environ, 'PATH': f'{bin_dir}:{os.environ["PATH"]}',
                 'STUB_LOG': str(log), 'OUT': str(tmp_path / 'out'),
                 'LOGS': str(tmp_path / 'logs'), 'RUNS': str(tmp_path),
                 'COMMIT': 'c0ffee-test'}


def test_the_run_scripts_pass_the_commit_to_every_benchmark(tmp_path):
    # run_gpu.sh (every step but the GPU tests) and run_points_gpu.sh (all
    # its steps but the tests), python3 stubbed: every benchmark that
    # writes records gets --commit $COMMIT.
    log, env = stubbed_env(tmp_path)
    steps = ('attention,compiled,points,graph,ops,profile,layer,peers,scorer,'
             'launch')
    run = subprocess.run(['bash', 'benchmarks/run_gpu.sh'], cwd=ROOT,
                         env={**env, 'STEPS': steps}, capture_output=True,
                         text=True, timeout=120)
    # (Its status is that of its last step, off here: the stderr says.)
    assert run.stderr == '', run.stderr[-2000:]
    run = subprocess.run(['bash', 'benchmarks/run_points_gpu.sh'], cwd=ROOT,
                         env={**env, 'STEPS': 'kernels,compiled,pipelined,'
                              'graphs,eager'}, capture_output=True,
                         text=True, timeout=120)
    assert run.returncode == 0, run.stderr[-2000:]
    calls = [line.split() for line in log.read_text().splitlines()]
    scripts = [c for c in calls if c[0] == 'python3' and len(c) > 1
               and c[1].startswith('benchmarks/')]
    assert {osp.basename(c[1]) for c in scripts} >= {
        'attention.py', 'points.py', 'graph_scale.py', 'ops.py',
        'flex_options.py', 'scorer_kernel.py', 'layer.py', 'graph_step.py'}
    for c in scripts:
        if osp.basename(c[1]) in RECORD_SCRIPTS:
            assert c[c.index('--commit') + 1] == 'c0ffee-test', c
    # The bias kernels' records are written with it too.
    writes = [' '.join(c) for c in calls if c[:2] == ['python3', '-c']
              and 'write_records' in ' '.join(c)]
    assert writes and all("commit='c0ffee-test'" in w for w in writes)


def test_ddp_records_carry_the_runs_flags_and_commit(tmp_path):
    # run_ddp.sh, its trainings stubbed: each record's flags are its run's
    # (not the output path), its commit $COMMIT.
    log, env = stubbed_env(tmp_path)
    run = subprocess.run(['bash', 'benchmarks/run_ddp.sh'], cwd=ROOT,
                         env=env, capture_output=True, text=True,
                         timeout=120)
    assert run.returncode == 0, run.stderr[-2000:]
    with open(tmp_path / 'out' / 'ddp.json') as f:
        records = json.load(f)
    assert [(r['gpus'], r['batch_size_per_gpu']) for r in records] == [
        (1, 32), (2, 16), (2, 32)]
    for r in records:
        assert r['commit'] == 'c0ffee-test' and 'dirty' in r
        assert r['flags'].startswith('--root /tmp/mnbig/modelnet40_sample')
        assert r['flags'].endswith(f"--batch-size {r['batch_size_per_gpu']}")
        assert 'ddp.json' not in r['flags'] and r['device']
        assert r['epochs'][0]['time'] == 2.5
    assert records[1]['launcher'].startswith('torchrun')


def test_the_gpu_tests_step_runs_each_file_alone(tmp_path):
    # STEPS=tests, pytest stubbed: one pytest call per file of tests/gpu
    # (its GPU tests, -m gpu), then per op test file that runs its kernels
    # compiled on CUDA (its default selection), each under its own time
    # limit, and one entry per file in the log.
    log, env = stubbed_env(tmp_path)
    run = subprocess.run(['bash', 'benchmarks/run_gpu.sh'], cwd=ROOT,
                         env={**env, 'STEPS': 'tests', 'TEST_LIMIT': '60'},
                         capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr[-2000:]
    gpu = sorted(f'tests/gpu/{name}' for name in os.listdir(
        osp.join(ROOT, 'tests', 'gpu')) if name.startswith('test_')
        and name.endswith('.py'))
    calls = [line.split() for line in log.read_text().splitlines()]
    calls = [c for c in calls if c[:3] == ['python3', '-m', 'pytest']]
    files = [next(a for a in c if a.endswith('.py')) for c in calls]
    assert files[:len(gpu)] == gpu and len(gpu) > 5
    assert all(c[3:6] == ['-q', '-m', 'gpu'] for c in calls[:len(gpu)])
    ops = files[len(gpu):]
    assert 'tests/ops/test_triton.py' in ops
    for c, f in zip(calls[len(gpu):], ops):
        assert '-m' not in c[3:] and f.startswith('tests/ops/')
        # Each names a file whose tests run on CUDA where it is present.
        with open(osp.join(ROOT, f)) as fh:
            assert "'cuda' if torch.cuda.is_available()" in fh.read()
    files = gpu + ops
    entries = [line.split()[1] for line in
               (tmp_path / 'logs' / 'gpu_tests.log').read_text().splitlines()
               if line.startswith('=== ')]
    assert entries == files
