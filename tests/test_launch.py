"""Starting several processes: --nproc and torchrun start reliably and a failure keeps its first error line."""
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import starfile

from cryosgd.io import write_stack
from cryosgd.simulation import simulate_dataset

DEMO = Path(__file__).resolve().parents[1] / "src" / "cryosgd" / "data" / "demo_5fuu_64px_3A.mrc"
ENV = {**os.environ, "CRYOSGD_QUIET": "1"}


def zero_pixel_size_set(folder: Path) -> Path:
    write_stack(folder / "s.mrcs", np.random.default_rng(0).standard_normal((200, 32, 32)).astype(np.float32), 2.0)
    table = pd.DataFrame({"rlnImageName": [f"{i + 1}@s.mrcs" for i in range(200)], "rlnVoltage": 300.0,
                          "rlnSphericalAberration": 2.7, "rlnAmplitudeContrast": 0.1, "rlnDefocusU": 15000.0,
                          "rlnDefocusV": 15000.0, "rlnImagePixelSize": 0.0})
    starfile.write({"particles": table}, folder / "p.star")
    return folder / "p.star"


def test_nproc_bad_input_is_one_line(tmp_path):
    star = zero_pixel_size_set(tmp_path)
    proc = subprocess.run([sys.executable, "-m", "cryosgd", "reconstruct", star, "-o", tmp_path / "run", "--nproc",
                           "2", "--device", "cpu"], env=ENV, capture_output=True, text=True)
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("cryosgd: error: ") and "pixel size 0" in lines[0], proc.stderr
    assert not (tmp_path / "run").exists()


@pytest.mark.skipif(shutil.which("torchrun") is None, reason="torchrun is not on the PATH")
def test_torchrun_failure_summary_keeps_the_error_line(tmp_path):
    star = zero_pixel_size_set(tmp_path)
    proc = subprocess.run(["torchrun", "--standalone", "--nproc-per-node", "2", "-m", "cryosgd", "reconstruct", star,
                           "-o", tmp_path / "run", "--device", "cpu"], env=ENV, capture_output=True, text=True)
    assert proc.returncode != 0
    summary = proc.stderr[proc.stderr.index("Root Cause"):]  # torchrun's ChildFailedError report
    assert "traceback : cryosgd: error: " in summary and "pixel size 0" in summary, proc.stderr
    assert not (tmp_path / "run").exists()


def test_overlapping_nproc_runs_do_not_collide(tmp_path):
    paths, _ = simulate_dataset(DEMO, tmp_path / "data", n=240, box=32, pixel_size=6.0, snr=0.05, seed=4)
    cmd = [sys.executable, "-m", "cryosgd", "reconstruct", str(paths.particles), "--nproc", "2", "--epochs", "0.5",
           "--learning-rate", "0.5", "--test-size", "20", "--resolution", "48", "--device", "cpu",
           "--max-shift", "0"]
    runs = [subprocess.Popen(cmd + ["-o", str(tmp_path / f"run{i}")], env=ENV, stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True) for i in range(3)]
    for run in runs:
        _, err = run.communicate(timeout=600)
        assert run.returncode == 0, err
    for i in range(3):
        assert (tmp_path / f"run{i}" / "map.mrc").is_file()
