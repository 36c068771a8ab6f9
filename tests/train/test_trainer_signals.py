import os
import os.path as osp
import signal
import subprocess
import sys
import time

import torch

sys.path.insert(0, osp.dirname(__file__))
from _train_toy import ROOT, TOY, fit_toy  # noqa: E402

from samsa_geo.train import load_checkpoint  # noqa: E402


def test_sigterm_leaves_loadable_checkpoint_and_resume_continues(tmp_path, capsys):
    out = tmp_path / 'run'
    env = {**os.environ, 'PYTHONPATH': ROOT}
    args = [sys.executable, TOY, str(out), '--epochs', '5']
    proc = subprocess.Popen(args + ['--sleep', '0.05'], cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    try:
        deadline = time.time() + 120
        log = out / 'log.csv'
        while time.time() < deadline and proc.poll() is None:
            if log.exists() and len(log.read_text().splitlines()) >= 2:
                break  # epoch 1 done; now in the middle of epoch 2
            time.sleep(0.05)
        time.sleep(0.12)
        proc.send_signal(signal.SIGTERM)
        _, stderr = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 128 + signal.SIGTERM, stderr[-2000:]
    assert 'Received SIGTERM' in stderr
    state = load_checkpoint(out / 'last.pt')
    steps = state['steps_per_epoch']
    assert state['global_step'] == state['epoch'] * steps + state['step_in_epoch']
    assert 0 < state['global_step'] < 5 * steps
    assert not (out / 'final_weights.pt').exists()

    # Resume (in this process) and compare with a run never interrupted.
    fit_toy(str(out), epochs=5, resume=True)
    assert 'Resuming from' in capsys.readouterr().out
    rows = (out / 'log.csv').read_text().splitlines()[1:]
    assert [int(r.split(',')[0]) for r in rows] == [1, 2, 3, 4, 5]

    fit_toy(str(tmp_path / 'ref'), epochs=5)
    ref = torch.load(tmp_path / 'ref' / 'final_weights.pt')
    got = torch.load(out / 'final_weights.pt')
    torch.testing.assert_close(got, ref, rtol=0, atol=1e-6)
