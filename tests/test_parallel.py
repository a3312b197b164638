"""Data parallelism on torch.distributed (gloo): the objective and the map of one process; a dead rank is survivable."""
import datetime
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import cryosgd.reconstruct
from cryosgd.cli import main as cli
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


# one process's share of a minibatch of 7 images; run alone, or as process RANK of WORLD_SIZE
SHARE = """
import sys

import numpy as np
import torch

from cryosgd.runtime import parallel
from cryosgd.forward.ctf import CTFParams
from cryosgd.inference.likelihood import MarginalLikelihood
from cryosgd.inference.objective import Objective
from cryosgd.inference.prior import DensityPrior
from cryosgd.inference.quadrature import lebedev_directions
from cryosgd.inference.rotation_set import build_rotation_set

parallel.init_from_environment("cpu")
d, w = lebedev_directions(7)
kern = MarginalLikelihood(16, 3.0, 4.0, build_rotation_set(d, w, 8), noise_std=1.3, dtype=torch.float64)
rng = np.random.default_rng(0)
volume = torch.tensor(rng.standard_normal((16, 16, 16))) * 0.1
images = rng.standard_normal((7, 16, 16))
ctf = CTFParams.make(rng.uniform(5e3, 1e4, 7), rng.uniform(5e3, 1e4, 7), 0.3, 300, 2.7, 0.1)
mine = parallel.shard(np.arange(7))
out = Objective(kern, DensityPrior(0.3, 0.2), n_images=50)(volume, kern.prepare(images[mine], ctf[mine]), total=7)
torch.save({"share": len(mine), "value": out.value, "gradient": out.gradient}, f"{sys.argv[1]}.{parallel.rank()}")
"""


def test_two_processes_compute_the_objective_of_one(tmp_path):
    """The all-reduced minibatch objective and gradient, not only a map after learning-rate tuning
    (which would absorb a gradient off by a constant factor, such as a wrong divisor of the sum)."""
    script = tmp_path / "share.py"
    script.write_text(SHARE)
    # the rendezvous store is held here, on a port the system picks, for the whole test (as --nproc
    # holds it): no other run can take the port between choosing it and binding it
    store = torch.distributed.TCPStore("127.0.0.1", 0, 2, True, datetime.timedelta(minutes=5),
                                       wait_for_workers=False)
    dist = {"WORLD_SIZE": "2", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(store.port),
            "TORCHELASTIC_USE_AGENT_STORE": "True"}
    procs = [subprocess.Popen([sys.executable, str(script), str(tmp_path / "one")], env=ENV)]
    procs += [subprocess.Popen([sys.executable, str(script), str(tmp_path / "two")],
                               env={**ENV, **dist, "RANK": str(r), "LOCAL_RANK": str(r)}) for r in range(2)]
    assert [p.wait(timeout=300) for p in procs] == [0, 0, 0]
    one = torch.load(tmp_path / "one.0")
    two = [torch.load(tmp_path / f"two.{r}") for r in range(2)]
    assert one["share"] == 7 and [t["share"] for t in two] == [4, 3]
    for t in two:  # every process holds the whole minibatch's objective
        assert t["value"] == pytest.approx(one["value"], rel=1e-12)
        assert float((t["gradient"] - one["gradient"]).abs().max()) < 1e-10 * float(one["gradient"].abs().max())


def test_two_processes_give_the_same_map_as_one(small_set, tmp_path):
    # the learning rate is pinned (near the tuned 0.32): tuning would hide a gradient off by a constant factor
    common = ["reconstruct", small_set.particles, "--epochs", "0.5", "--resolution", "24", "--seed", "2",
              "--learning-rate", "0.3", "--device", "cpu", "--max-shift", "0"]  # a centred set
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


# a stand-in for `cryosgd.runtime.launch._spawned` that kills process 1 of the run right after its all-reduced
# gradient of step FAULT_STEP: process 0 has then written the checkpoint of the step before
# (it joined that all-reduce after writing it) and cannot write another (that takes a collective)
FAULT = """
import os
import signal

import cryosgd.runtime.launch
from cryosgd.inference.objective import Objective

STEP = int(os.environ["FAULT_STEP"])


def spawned(index, main, argv, world, port, errors):
    if index == 1:
        evaluate, calls = Objective.__call__, []

        def dying(self, *args, **kw):
            out = evaluate(self, *args, **kw)
            calls.append(1)
            if len(calls) == STEP:  # one objective evaluation per step (CM, no tuning)
                os.kill(os.getpid(), signal.SIGKILL)
            return out

        Objective.__call__ = dying
    cryosgd.runtime.launch._spawned(index, main, argv, world, port, errors)
"""


def test_the_launcher_shows_the_first_cause_not_the_lost_connection_that_follows():
    from cryosgd.runtime.launch import _cause

    lost = (3, "cryosgd: error: a process of the distributed run failed or timed out (Connection reset by peer)")
    # process 1 was killed; process 0 saw its connection drop and reported that (the order is a race)
    code, line = _cause({0: lost}, [3, -9], "resume")
    assert code == 3 and "process 1 of 2 exited with code -9 (SIGKILL)" in line
    # a process the launcher stopped after the first failure (SIGTERM) is not a cause
    assert _cause({1: lost}, [-15, 3], "resume") == lost
    # a process's own error comes before a killed one's
    bad = (2, "cryosgd: error: particles.star: no such file")
    assert _cause({1: bad, 0: lost}, [3, 2, -9], "resume") == bad
    assert _cause({}, [0, 0], "resume") is None


def test_a_killed_rank_ends_the_run_cleanly_and_it_resumes_with_another_count(small_set, tmp_path, monkeypatch):
    out = tmp_path / "run"
    # 33 steps of CM (11 per epoch): killed in step 22, resumed across the centring step 25
    args = ["reconstruct", str(small_set.particles), "-o", str(out), "--epochs", "3", "--resolution", "24",
            "--optimizer", "cm", "--learning-rate", "0.3", "--checkpoint-every", "0", "--device", "cpu",
            "--max-shift", "0"]
    (tmp_path / "faulty.py").write_text(FAULT)
    env = {**ENV, "FAULT_STEP": "22",
           "PYTHONPATH": os.pathsep.join([str(tmp_path)] + [p for p in [os.environ.get("PYTHONPATH")] if p])}
    driver = ("import sys, cryosgd.cli, cryosgd.runtime.launch, faulty; "
              "cryosgd.runtime.launch._spawned = faulty.spawned; "
              "sys.exit(cryosgd.cli.main(sys.argv[1:]))")
    killed = subprocess.run([sys.executable, "-c", driver, *args, "--nproc", "2"], env=env, capture_output=True,
                            text=True, timeout=900)
    err = killed.stderr
    assert killed.returncode == 3, err
    lines = [ln for ln in err.strip().splitlines() if ln.startswith("cryosgd:")]
    assert lines and "checkpoint is intact" in lines[-1], err
    assert "exited with code" in lines[-1], err  # killed (or ended by the other's death), not an exception
    assert "Traceback" not in err
    ckpt = out / "checkpoint.pt"
    state = torch.load(ckpt, weights_only=False)  # intact, readable, of the last step both processes finished
    assert state["step"] == 21
    # resumed in one process: it starts at the saved step, keeps the saved rows, and runs to the end
    done = []
    run = cryosgd.reconstruct.reconstruct

    def recording(*a, progress=None, **kw):
        def both(d, total, row):
            done.append(d)
            progress(d, total, row)
        return run(*a, progress=both, **kw)

    monkeypatch.setattr(cryosgd.reconstruct, "reconstruct", recording)
    monkeypatch.setenv("CRYOSGD_QUIET", "1")
    assert cli([*args, "--nproc", "1"]) == 0
    assert done == list(range(22, 34))
    final = torch.load(ckpt, weights_only=False)
    assert final["step"] == 33 and final["log"][:21] == state["log"]
    vol, _ = read_map(out / "map.mrc")
    assert np.isfinite(vol).all() and vol.max() > 0
