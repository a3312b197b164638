"""The command line as a user meets it: bad input ends with one line, exit 2, no traceback, no output."""
import json
import os
import subprocess
import sys
import warnings
from importlib.metadata import version

import mrcfile
import numpy as np
import pandas as pd
import pytest
import starfile

from cryosgd.evaluate import fsc
from cryosgd.io import load_particles, read_map

ENV = {**os.environ, "CRYOSGD_QUIET": "1"}


def cryosgd(*args, cwd=None):
    return subprocess.run([sys.executable, "-m", "cryosgd", *map(str, args)], env=ENV, capture_output=True,
                          text=True, cwd=cwd)


def assert_user_error(proc, *names):
    assert proc.returncode == 2, proc.stderr
    lines = [ln for ln in proc.stderr.strip().splitlines() if ln]
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("cryosgd: error: ")
    assert "Traceback" not in proc.stderr
    for name in names:
        assert name in lines[0]


def write_star(path, stack, n, *, ctf=True, pixel_size=2.0, box=32):
    rows = {"rlnImageName": [f"{i + 1}@{stack}" for i in range(n)], "rlnOpticsGroup": [1] * n}
    if ctf:
        rows.update(rlnDefocusU=[15000.0] * n, rlnDefocusV=[15000.0] * n, rlnDefocusAngle=[0.0] * n)
    optics = pd.DataFrame({"rlnOpticsGroupName": ["g1"], "rlnOpticsGroup": [1], "rlnVoltage": [300.0],
                           "rlnSphericalAberration": [2.7], "rlnAmplitudeContrast": [0.1],
                           "rlnImagePixelSize": [pixel_size], "rlnImageSize": [box], "rlnImageDimensionality": [2]})
    starfile.write({"optics": optics, "particles": pd.DataFrame(rows)}, path, overwrite=True)


def write_stack(path, images):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # header statistics of a stack holding NaN
        with mrcfile.new(path, overwrite=True) as m:
            m.set_data(images.astype(np.float32))
            m.set_image_stack()


def test_missing_file(tmp_path):
    proc = cryosgd("backproject", tmp_path / "nope.star", "-o", tmp_path / "out.mrc")
    assert_user_error(proc, "nope.star", "no such file")
    assert not (tmp_path / "out.mrc").exists()


def test_star_without_ctf(tmp_path):
    write_stack(tmp_path / "s.mrcs", np.random.default_rng(0).standard_normal((200, 32, 32)))
    write_star(tmp_path / "p.star", "s.mrcs", 200, ctf=False)
    proc = cryosgd("reconstruct", tmp_path / "p.star", "-o", tmp_path / "run")
    assert_user_error(proc, "p.star", "CTF")
    assert not (tmp_path / "run" / "map.mrc").exists()


def test_index_beyond_stack_and_nan_pixels(tmp_path):
    imgs = np.random.default_rng(0).standard_normal((150, 32, 32))
    write_stack(tmp_path / "s.mrcs", imgs)
    write_star(tmp_path / "p.star", "s.mrcs", 160)
    assert_user_error(cryosgd("reconstruct", tmp_path / "p.star", "-o", tmp_path / "run"), "s.mrcs")
    imgs[17, 3, 3] = np.nan
    write_stack(tmp_path / "s.mrcs", imgs)
    write_star(tmp_path / "p.star", "s.mrcs", 150)
    proc = cryosgd("reconstruct", tmp_path / "p.star", "-o", tmp_path / "run")
    assert_user_error(proc, "NaN")
    assert not (tmp_path / "run" / "map.mrc").exists()


def test_not_a_map_and_mismatched_maps(tmp_path):
    (tmp_path / "bad.mrc").write_text("not a map")
    assert_user_error(cryosgd("simulate", tmp_path / "bad.mrc", "-o", tmp_path / "sim"), "bad.mrc")
    assert not (tmp_path / "sim" / "particles.mrcs").exists()
    for name, n in (("a.mrc", 16), ("b.mrc", 18)):
        with mrcfile.new(tmp_path / name) as m:
            m.set_data(np.zeros((n, n, n), np.float32))
    assert_user_error(cryosgd("fsc", tmp_path / "a.mrc", tmp_path / "b.mrc"), "a.mrc")


def test_resolution_beyond_nyquist_or_beyond_the_quadrature(tmp_path):
    write_stack(tmp_path / "s.mrcs", np.random.default_rng(0).standard_normal((200, 64, 64)))
    write_star(tmp_path / "p.star", "s.mrcs", 200, box=64)  # 64 px at 2 Å/pixel: Nyquist 4 Å
    proc = cryosgd("reconstruct", tmp_path / "p.star", "-o", tmp_path / "run", "--resolution", "3")
    assert_user_error(proc, "p.star", "Nyquist")
    # 4.5 Å at 64 px (28 Fourier pixels) needs an angular step finer than the largest Lebedev rule offers
    proc = cryosgd("reconstruct", tmp_path / "p.star", "-o", tmp_path / "run", "--resolution", "4.5")
    assert_user_error(proc, "p.star", "Lebedev")
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("pixel_size", [0.0, -2.0])
def test_pixel_size_zero_or_negative(tmp_path, pixel_size):
    write_stack(tmp_path / "s.mrcs", np.random.default_rng(0).standard_normal((200, 32, 32)))
    write_star(tmp_path / "p.star", "s.mrcs", 200, pixel_size=pixel_size)
    for extra in ((), ("--resolution", "20")):
        proc = cryosgd("reconstruct", tmp_path / "p.star", "-o", tmp_path / "run", *extra)
        assert_user_error(proc, "p.star", f"pixel size {pixel_size:g} Å", "not a positive number")
        assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("box", [32, 42])
def test_resolution_at_nyquist_on_a_small_box(tmp_path, box):
    # 2 Å/pixel: Nyquist is 4 Å, a band limit of box / 2, one frequency beyond what the images hold
    write_stack(tmp_path / "s.mrcs", np.random.default_rng(0).standard_normal((200, box, box)))
    write_star(tmp_path / "p.star", "s.mrcs", 200, box=box)
    for resolution in ("4", "0", "-37"):
        proc = cryosgd("reconstruct", tmp_path / "p.star", "-o", tmp_path / "run", "--resolution", resolution)
        assert_user_error(proc, "p.star", f"--resolution {float(resolution):g} Å")
        assert not (tmp_path / "run").exists()


def test_every_learning_rate_diverging_is_one_line(tmp_path, monkeypatch, capsys):
    """When no candidate rate lowers the NLL the user gets one line, not the tuner's RuntimeError."""
    import cryosgd.reconstruct
    from cryosgd.cli import main

    real = cryosgd.reconstruct.tuning.tune_learning_rate

    def absurd_rates(name, factory, params, *, candidates, **kw):  # every candidate 1e8 times too large
        return real(name, factory, params, candidates=[1e8 * c for c in candidates], **kw)

    monkeypatch.setattr(cryosgd.reconstruct.tuning, "tune_learning_rate", absurd_rates)
    monkeypatch.setenv("CRYOSGD_QUIET", "1")
    write_stack(tmp_path / "s.mrcs", np.random.default_rng(0).standard_normal((200, 32, 32)))
    write_star(tmp_path / "p.star", "s.mrcs", 200)
    code = main(["reconstruct", str(tmp_path / "p.star"), "-o", str(tmp_path / "run"), "--epochs", "0.1",
                 "--device", "cpu", "--resolution", "48"])
    err = capsys.readouterr().err
    assert code == 2, err
    lines = [ln for ln in err.strip().splitlines() if ln]
    assert len(lines) == 1 and lines[0].startswith("cryosgd: error: ") and "p.star" in lines[0], err
    assert "--learning-rate" in lines[0] and "Traceback" not in err
    assert not (tmp_path / "run").exists()


def test_unknown_optimiser_is_refused_by_the_parser(tmp_path):
    proc = cryosgd("reconstruct", "x.star", "-o", tmp_path, "--optimizer", "adam")
    assert proc.returncode == 2 and "invalid choice" in proc.stderr and "Traceback" not in proc.stderr


def write_cryosparc_ctf_table(path, star):
    """A cryoSPARC ``.cs`` CTF table (fields as cryoSPARC writes them) holding the rows of a RELION STAR table."""
    with pytest.warns(UserWarning, match="no amplitude contrast"):
        table = load_particles(star, require_images=False).ctf
    fields = [("uid", "<u8"), ("blob/psize_A", "<f4"), ("ctf/accel_kv", "<f4"), ("ctf/cs_mm", "<f4"), ("ctf/amp_contrast", "<f4"),
              ("ctf/df1_A", "<f4"), ("ctf/df2_A", "<f4"), ("ctf/df_angle_rad", "<f4"),
              ("ctf/phase_shift_rad", "<f4")]
    records = np.zeros(len(table.defocus_u), dtype=fields)
    records["uid"] = np.arange(len(records))
    records["blob/psize_A"] = 1.345  # the table's 14 µm detector pixel at 104,089x
    records["ctf/accel_kv"], records["ctf/cs_mm"] = table.voltage, table.cs
    records["ctf/amp_contrast"] = 0.07
    records["ctf/df1_A"], records["ctf/df2_A"] = table.defocus_u, table.defocus_v
    records["ctf/df_angle_rad"] = table.defocus_angle
    with open(path, "wb") as fh:  # np.save would add ".npy" to the name
        np.save(fh, records)


def test_simulate_from_model_with_cryosparc_ctfs_then_backproject(tmp_path, test_data):
    """simulate (mmCIF model, CTFs from a .cs table) -> backproject with the true poses recovers the truth."""
    out = tmp_path / "sim"
    write_cryosparc_ctf_table(tmp_path / "ctf.cs", test_data / "empiar10026_ctf.star")
    proc = cryosgd("simulate", test_data / "8zpm.cif.gz", "-o", out, "-n", "600", "--box", "48",
                   "--apix", "4", "--snr", "5", "--shift-sigma", "1.5", "--ctf-from", tmp_path / "ctf.cs")
    assert proc.returncode == 0, proc.stderr
    truth, apix = read_map(out / "truth.mrc")
    assert apix == pytest.approx(4.0)
    assert cryosgd("backproject", out / "truth.star", "-o", tmp_path / "bp.mrc").returncode == 0
    rec, apix2 = read_map(tmp_path / "bp.mrc")
    assert apix2 == pytest.approx(4.0)
    curve = fsc(rec, truth)
    assert curve[1:13].min() > 0.9, np.round(curve, 3)
    proc = cryosgd("fsc", tmp_path / "bp.mrc", out / "truth.mrc", "--json")
    report = json.loads(proc.stdout)
    assert report["resolution_0.143"] < 12.0


def test_version_is_the_installed_distribution():
    proc = cryosgd("--version")
    assert proc.returncode == 0
    assert proc.stdout.strip() == f"cryosgd {version('cryosgd')}"
