"""Data parallelism on torch.distributed (gloo): same map as one process; a dead rank is survivable."""
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from cryosgd.evaluate import fsc
from cryosgd.io import read_map
from cryosgd.simulation import simulate_dataset

DEMO = Path(__file__).resolve().parents[1] / "src" / "cryosgd" / "data" / "demo_5fuu_64px_3A.mrc"
ENV = {**os.environ, "CRYOSGD_QUIET": "1"}


@pytest.fixture(scope="module")
def small_set(tmp_path_factory):
    out = tmp_path_factory.mktemp("par")
    paths, _ = simulate_dataset(DEMO, out, n=1200, box=64, pixel_size=3.0, snr=0.05, seed=21)
    return paths


def run_cli(*args, **kw):
    return subprocess.run([sys.executable, "-m", "cryosgd", *map(str, args)], env=ENV, capture_output=True,
                          text=True, **kw)


def test_two_processes_give_the_same_map_as_one(small_set, tmp_path):
    common = ["reconstruct", small_set.particles, "--epochs", "0.5", "--resolution", "24", "--seed", "2",
              "--device", "cpu"]
    one = run_cli(*common, "-o", tmp_path / "one", "--nproc", "1")
    assert one.returncode == 0, one.stderr
    two = run_cli(*common, "-o", tmp_path / "two", "--nproc", "2")
    assert two.returncode == 0, two.stderr
    a, _ = read_map(tmp_path / "one" / "map.mrc")
    b, _ = read_map(tmp_path / "two" / "map.mrc")
    curve = fsc(a, b)
    print("FSC 1 vs 2 processes:", np.round(curve, 4))
    assert curve[1:].min() >= 0.99
    assert np.abs(a - b).max() <= 1e-3 * np.abs(a).max()
    # the run reports its memory: the peak holds at least the slicing operator, and a rotation chunk
    summary = json.loads((tmp_path / "one" / "summary.json").read_text())
    assert 0 < summary["slicing_operator_bytes"] < summary["peak_memory_bytes"]
    assert summary["rotation_chunk"] > 0


def test_a_killed_rank_ends_the_run_cleanly_and_it_resumes_with_another_count(small_set, tmp_path):
    out = tmp_path / "run"
    cmd = [sys.executable, "-m", "cryosgd", "reconstruct", str(small_set.particles), "-o", str(out), "--epochs",
           "6", "--resolution", "24", "--nproc", "2", "--checkpoint-every", "0", "--device", "cpu"]
    proc = subprocess.Popen(cmd, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    ckpt = out / "checkpoint.pt"
    deadline = time.time() + 600
    while not ckpt.is_file() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.5)
    assert ckpt.is_file(), "no checkpoint appeared"
    time.sleep(2)
    children = [int(p) for p in Path(f"/proc/{proc.pid}/task/{proc.pid}/children").read_text().split()]
    workers = [c for c in children if "spawn_main" in Path(f"/proc/{c}/cmdline").read_text()]
    assert len(workers) == 2
    os.kill(workers[-1], signal.SIGKILL)
    _, err = proc.communicate(timeout=600)
    assert proc.returncode == 3
    lines = [ln for ln in err.strip().splitlines() if ln.startswith("cryosgd:")]
    assert lines and "checkpoint is intact" in lines[-1], err
    assert "Traceback" not in err
    state = torch.load(ckpt, weights_only=False)  # intact, readable
    assert state["step"] >= 1
    resumed = run_cli("reconstruct", small_set.particles, "-o", out, "--epochs", "6", "--resolution", "24",
                      "--nproc", "1", "--checkpoint-every", "0", "--device", "cpu")
    assert resumed.returncode == 0, resumed.stderr
    final = torch.load(ckpt, weights_only=False)
    assert final["step"] > state["step"]
    vol, _ = read_map(out / "map.mrc")
    assert np.isfinite(vol).all() and vol.max() > 0
