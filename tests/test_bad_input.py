"""Bad input files raise InputError: one line, naming the file at fault."""
from __future__ import annotations

import os
import warnings

import mrcfile
import numpy as np
import pandas as pd
import pytest
import starfile

import cryosgd.io.mrc
from cryosgd.io import ImageStack, InputError, load_particles, read_cs, read_map, write_map, write_stack


def _error(call, *args, **kwargs) -> InputError:
    with pytest.raises(InputError) as info:
        call(*args, **kwargs)
    message = str(info.value)
    assert "\n" not in message and message.startswith(f"{info.value.path}: ")
    return info.value


def _stack(path, n=10, box=16, voxel_size=0.0, images=None):
    """An MRC stack of ``n`` random images written with plain mrcfile (voxel size 0 allowed)."""
    data = np.random.default_rng(0).standard_normal((n, box, box)).astype(np.float32) if images is None else images
    with warnings.catch_warnings(), mrcfile.new(path, overwrite=True) as mrc:
        warnings.simplefilter("ignore", RuntimeWarning)  # mrcfile warns of NaN/Inf data
        mrc.set_data(data)
        mrc.set_image_stack()
        mrc.voxel_size = voxel_size
    return path


def _star(path, n=3, stack="s.mrcs", indices=None, ctf=True, pixel_size: float | None = 1.5, **extra):
    """A RELION 3.0-style particle STAR file."""
    indices = np.arange(1, n + 1) if indices is None else np.asarray(indices)
    table = {"rlnImageName": [f"{k:06d}@{stack}" for k in indices],
             "rlnVoltage": [300.0] * n, "rlnSphericalAberration": [2.7] * n,
             "rlnAmplitudeContrast": [0.1] * n}
    if ctf:
        table.update(rlnDefocusU=[15000.0] * n, rlnDefocusV=[14000.0] * n, rlnDefocusAngle=[30.0] * n)
    if pixel_size is not None:
        table["rlnImagePixelSize"] = [pixel_size] * n
    table.update(extra)
    starfile.write({"particles_30": pd.DataFrame(table)}, path)
    return path


def test_missing_files(tmp_path):
    for call in (load_particles, read_map, ImageStack, read_cs):
        err = _error(call, tmp_path / "nope.file")
        assert err.path == str(tmp_path / "nope.file") and err.problem == "no such file"
    assert str(_error(load_particles, tmp_path / "gone.star")) == f"{tmp_path / 'gone.star'}: no such file"


def test_missing_stack_named_with_its_star(tmp_path):
    star = _star(tmp_path / "p.star", stack="missing.mrcs")
    err = _error(load_particles, star)
    assert err.path == str(star) and str(tmp_path / "missing.mrcs") in err.problem


def test_unreadable_files(tmp_path):
    (tmp_path / "text.mrc").write_text("this is not an MRC file\n")
    assert "not a readable MRC file" in _error(ImageStack, tmp_path / "text.mrc").problem
    truncated = _stack(tmp_path / "t.mrcs", n=10)
    truncated.write_bytes(truncated.read_bytes()[:1024 + 5 * 16 * 16 * 4])
    assert "not a readable MRC file" in _error(ImageStack, truncated).problem
    (tmp_path / "x.cs").write_bytes(b"\x00garbage" * 20)
    assert "not a readable cryoSPARC" in _error(read_cs, tmp_path / "x.cs").problem
    (tmp_path / "notes.star").write_text("just some words\n")
    assert "no particle table" in _error(load_particles, tmp_path / "notes.star").problem
    (tmp_path / "p.txt").write_text("1 2 3\n")
    assert "unknown particle file type" in _error(load_particles, tmp_path / "p.txt").problem


def test_star_without_ctf_columns(tmp_path):
    _stack(tmp_path / "s.mrcs")
    err = _error(load_particles, _star(tmp_path / "p.star", ctf=False))
    assert err.path == str(tmp_path / "p.star") and err.problem == "no CTF columns (rlnDefocusU/rlnDefocusV)"


def test_star_without_voltage_or_images(tmp_path):
    _stack(tmp_path / "s.mrcs")
    table = starfile.read(_star(tmp_path / "p.star"))
    starfile.write(table.drop(columns="rlnVoltage"), tmp_path / "nov.star")
    assert "rlnVoltage" in _error(load_particles, tmp_path / "nov.star").problem
    starfile.write(table.drop(columns="rlnImageName"), tmp_path / "noimg.star")
    assert "no rlnImageName" in _error(load_particles, tmp_path / "noimg.star").problem
    assert len(load_particles(tmp_path / "noimg.star", require_images=False)) == 3


def test_index_beyond_stack(tmp_path):
    stack = _stack(tmp_path / "s.mrcs", n=10)
    with ImageStack(stack) as images:
        err = _error(images.read, [3, 11])
    assert err.path == str(stack) and err.problem == "image 12 requested but the stack holds 10"


def test_star_and_stack_counts_disagree(tmp_path):
    _stack(tmp_path / "s.mrcs", n=10)
    star = _star(tmp_path / "p.star", n=3, indices=[1, 5, 12])
    err = _error(load_particles, star)
    assert err.path == str(star) and err.problem == f"STAR file lists image 12 of {tmp_path / 's.mrcs'} but that stack holds 10"


def test_non_square_images(tmp_path):
    with mrcfile.new(tmp_path / "r.mrcs") as mrc:
        mrc.set_data(np.zeros((4, 180, 200), dtype=np.float32))
    err = _error(ImageStack, tmp_path / "r.mrcs")
    assert err.path == str(tmp_path / "r.mrcs") and err.problem == "images are 200x180 pixels, not square"
    _star(tmp_path / "p.star", stack="r.mrcs")
    assert _error(load_particles, tmp_path / "p.star").path == str(tmp_path / "r.mrcs")


def test_volume_given_as_stack(tmp_path):
    write_map(tmp_path / "v.mrc", np.zeros((32, 32, 32), dtype=np.float32), 2.0)
    assert "holds a 3D volume (32x32x32)" in _error(ImageStack, tmp_path / "v.mrc").problem
    with mrcfile.new(tmp_path / "vs.mrc") as mrc:  # a stack of volumes: 4D data
        mrc.set_data(np.zeros((2, 8, 8, 8), dtype=np.float32))
    assert "not a stack of 2D images" in _error(ImageStack, tmp_path / "vs.mrc").problem
    assert "not a 3D map" in _error(read_map, tmp_path / "vs.mrc").problem


@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_non_finite_pixels(tmp_path, bad):
    images = np.ones((5, 16, 16), dtype=np.float32)
    images[2, 7, 3] = bad
    _stack(tmp_path / "s.mrcs", images=images)
    particles = load_particles(_star(tmp_path / "p.star", n=5))
    np.testing.assert_array_equal(particles.read_images([0, 4]), 1.0)
    err = _error(particles.read_images, [1, 2])
    assert err.path == str(tmp_path / "s.mrcs") and err.problem == "image 3 has NaN or Inf pixels"


def test_pixel_size_nowhere(tmp_path):
    _stack(tmp_path / "s.mrcs", voxel_size=0.0)
    err = _error(load_particles, _star(tmp_path / "p.star", pixel_size=None))
    assert err.path == str(tmp_path / "p.star") and "no pixel size" in err.problem and "s.mrcs" in err.problem


def test_pixel_size_from_header_when_star_has_none(tmp_path):
    _stack(tmp_path / "s.mrcs", voxel_size=1.7)
    assert load_particles(_star(tmp_path / "p.star", pixel_size=None)).pixel_size == pytest.approx(1.7)


def test_header_pixel_size_zero_is_silent(tmp_path):
    _stack(tmp_path / "s.mrcs", voxel_size=0.0)
    assert load_particles(_star(tmp_path / "p.star", pixel_size=1.5)).pixel_size == 1.5  # warnings are errors


def test_header_pixel_size_within_one_percent_is_silent(tmp_path):
    _stack(tmp_path / "s.mrcs", voxel_size=1.51)
    assert load_particles(_star(tmp_path / "p.star", pixel_size=1.5)).pixel_size == 1.5


def test_header_pixel_size_disagreeing_warns(tmp_path):
    _stack(tmp_path / "s.mrcs", voxel_size=1.0)
    with pytest.warns(UserWarning, match=r"s\.mrcs: MRC header pixel size 1 Å disagrees with p\.star \(1\.5 Å\)"):
        particles = load_particles(_star(tmp_path / "p.star", pixel_size=1.5))
    assert particles.pixel_size == 1.5


def test_optics_groups_with_different_pixel_sizes(tmp_path):
    _stack(tmp_path / "s.mrcs")
    optics = pd.DataFrame({"rlnOpticsGroup": [1, 2], "rlnOpticsGroupName": ["a", "b"],
                           "rlnVoltage": [300.0, 300.0], "rlnSphericalAberration": [2.7, 2.7],
                           "rlnAmplitudeContrast": [0.1, 0.1], "rlnImagePixelSize": [1.0, 1.2]})
    particles = pd.DataFrame({"rlnImageName": ["1@s.mrcs", "2@s.mrcs"], "rlnOpticsGroup": [1, 2],
                              "rlnDefocusU": [1e4, 1e4], "rlnDefocusV": [1e4, 1e4]})
    starfile.write({"optics": optics, "particles": particles}, tmp_path / "p.star")
    err = _error(load_particles, tmp_path / "p.star")
    assert err.problem == "optics groups have different pixel sizes (1, 1.2 Å); this set must be split"
    particles["rlnOpticsGroup"] = [1, 3]
    starfile.write({"optics": optics, "particles": particles}, tmp_path / "q.star")
    assert "optics group 3" in _error(load_particles, tmp_path / "q.star").problem


def test_failed_write_leaves_no_file(tmp_path, monkeypatch):
    target = tmp_path / "map.mrc"
    write_map(target, np.ones((4, 4, 4), dtype=np.float32), 1.0)
    before = target.read_bytes()
    real_new = mrcfile.new

    def failing_new(path, *args, **kwargs):
        with real_new(path, *args, **kwargs) as mrc:  # something reaches the disk first
            mrc.set_data(np.ones((2, 2, 2), dtype=np.float32))
        raise OSError("disk full")

    monkeypatch.setattr(cryosgd.io.mrc.mrcfile, "new", failing_new)
    with pytest.raises(OSError, match="disk full"):
        write_map(target, np.zeros((8, 8, 8), dtype=np.float32), 2.0)
    with pytest.raises(OSError, match="disk full"):
        write_stack(tmp_path / "new.mrcs", np.zeros((2, 8, 8), dtype=np.float32), 2.0)
    assert sorted(os.listdir(tmp_path)) == ["map.mrc"]  # no temporary, no new.mrcs
    assert target.read_bytes() == before  # the old map is untouched
