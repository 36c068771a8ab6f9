import os.path as osp
import shutil
import sys

import pytest
import torch

sys.path.insert(0, osp.join(osp.dirname(__file__), '..', '..', 'benchmarks'))
from _common import git_commit, measure, parse_sizes  # noqa: E402


def test_measure_times_each_call_and_leaves_memory_to_cuda():
    calls = []
    got = measure(lambda: calls.append(1), torch.device('cpu'), warmup=2,
                  repeat=5)
    assert len(calls) == 7 and got['repeats'] == 5
    assert got['ms'] >= 0.0
    # Memory is counted on CUDA only: peak, first peak and what the
    # warm-up left allocated.
    assert got['peak_mb'] is None and got['first_peak_mb'] is None
    assert got['held_mb'] is None


def test_sizes_are_parsed_as_sets_by_tokens():
    got = parse_sizes('32x1024,,1x65536')
    assert got == [(32, 1024), (1, 65536)]
    with pytest.raises(ValueError, match="'BxN'.*'32-1024'"):
        parse_sizes('32-1024')


@pytest.mark.skipif(shutil.which('git') is None, reason='needs git')
def test_commit_is_marked_dirty_where_the_tree_differs(tmp_path, git):
    # A tree copied over an older checkout must not be recorded as that
    # checkout's commit.
    head = git('rev-parse', 'HEAD')
    assert git_commit(str(tmp_path)) == head
    (tmp_path / 'a.py').write_text('x = 2\n')
    assert git_commit(str(tmp_path)) == head + '-dirty'
    assert git_commit(str(tmp_path / 'nowhere')) is None
