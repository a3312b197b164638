"""RELION 3.1 as a referee in the tests: finding and running it, and writing its input files.

The fixture :func:`relion_programs` is the one gate for every RELION test.  A
machine without ``relion_project`` skips those tests, unless the environment
variable ``CRYOSGD_REQUIRE_RELION`` is ``"1"`` (as in CI), where a missing
RELION is a failure: the agreement with RELION must never pass silently.

The STAR writer here is deliberately independent of :mod:`cryosgd.io`: RELION
reads the file, not our reader, so what RELION computes from it is a reference
that does not rest on the code under test.
"""
from __future__ import annotations

import os
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

__all__ = ["RelionPrograms", "relion_programs", "write_relion_star", "print_table"]

PROGRAMS = ("relion_project", "relion_reconstruct", "relion_star_printtable", "relion_star_handler")
INSTALL_HINT = "apt-get install -y relion"


@dataclass(frozen=True)
class RelionPrograms:
    """Absolute paths of the RELION programs the tests call, and a runner."""

    paths: dict

    def run(self, program: str, *args, cwd: Path | None = None, timeout: float = 300) -> str:
        """Run ``program args...`` (in ``cwd``); return stdout; fail with RELION's output on error."""
        cmd = [self.paths[program], *map(str, args)]
        done = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=timeout)
        if done.returncode != 0:
            pytest.fail(f"{' '.join(cmd)} exited with {done.returncode}:\n{done.stdout[-2000:]}\n"
                        f"{done.stderr[-2000:]}")
        return done.stdout


@pytest.fixture(scope="session")
def relion_programs() -> RelionPrograms:
    """The RELION 3.1 programs; skip (or fail, with ``CRYOSGD_REQUIRE_RELION=1``) if missing."""
    paths = {name: shutil.which(name) for name in PROGRAMS}
    missing = [name for name, path in paths.items() if path is None]
    if missing:
        message = f"RELION 3.1 not found ({', '.join(missing)} not on PATH): {INSTALL_HINT}"
        if os.environ.get("CRYOSGD_REQUIRE_RELION") == "1":
            pytest.fail(f"CRYOSGD_REQUIRE_RELION=1 but {message}", pytrace=False)
        pytest.skip(message)
    return RelionPrograms(paths)


def _loop(name: str, columns: dict) -> list[str]:
    lines = ["", "# version 30001", "", f"data_{name}", "", "loop_"]
    lines += [f"_{label} #{i}" for i, label in enumerate(columns, start=1)]
    cells = [[v if isinstance(v, str) else f"{v:.6f}" if isinstance(v, float) else str(v) for v in values]
             for values in columns.values()]
    lines += [" ".join(row) for row in zip(*cells)]
    return lines + [""]


def write_relion_star(path: Path, *, pixel_size: float, box: int, voltage: float, cs: float,
                      amplitude_contrast: float, particles: dict) -> None:
    """Write a RELION 3.1 particle STAR file: one optics group and a ``data_particles`` loop.

    pixel_size in Å, box in pixels, voltage in kV, cs in mm.  ``particles`` maps
    RELION labels (``rlnAngleRot``, ``rlnOriginXAngst``, ``rlnDefocusU``, ...) to
    ``(n,)`` sequences in RELION's units (degrees, Å); every particle is put in
    optics group 1.
    """
    optics = {"rlnOpticsGroupName": ["opticsGroup1"], "rlnOpticsGroup": [1], "rlnVoltage": [float(voltage)],
              "rlnSphericalAberration": [float(cs)], "rlnAmplitudeContrast": [float(amplitude_contrast)],
              "rlnImagePixelSize": [float(pixel_size)], "rlnImageSize": [int(box)],
              "rlnImageDimensionality": [2]}
    columns = {label: [v if isinstance(v, str) else float(v) for v in values]
               for label, values in particles.items()}
    n = len(next(iter(columns.values())))
    columns["rlnOpticsGroup"] = [1] * n
    Path(path).write_text("\n".join(_loop("optics", optics) + _loop("particles", columns)))


def print_table(relion: RelionPrograms, star: Path, block: str, *labels: str) -> np.ndarray:
    """``relion_star_printtable``: the ``labels`` columns of ``data_<block>`` as a float ``(rows, labels)`` array."""
    text = relion.run("relion_star_printtable", star, f"data_{block}", *labels)
    rows = [line.split() for line in text.splitlines() if line.strip()]
    return np.array(rows, dtype=np.float64).reshape(len(rows), len(labels))
