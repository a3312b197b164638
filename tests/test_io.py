"""Round trips through the file formats, and real files (tests/data, and ../shared/data where it is present)."""
from __future__ import annotations

import subprocess

import mrcfile
import numpy as np
import pytest
from scipy.spatial.transform import Rotation

from cryosgd.forward.ctf import CTFParams
from cryosgd.forward.rotations import matrix_to_relion_euler, random_rotations, relion_euler_to_matrix
from cryosgd.io import (
    ImageStack,
    InputError,
    ParticleSet,
    load_particles,
    read_cs,
    read_map,
    read_particles_star,
    write_map,
    write_particles_star,
    write_stack,
)

# --- MRC ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("shape", [(5, 6, 7), (8, 8, 8), (9, 9, 9)])
def test_map_round_trip(tmp_path, shape):
    rng = np.random.default_rng(0)
    volume = rng.standard_normal(shape).astype(np.float32)
    path = tmp_path / "map.mrc"
    write_map(path, volume, 1.338)
    back, voxel_size = read_map(path)
    assert back.dtype == np.float32 and back.shape == shape
    np.testing.assert_array_equal(back, volume)
    assert voxel_size == pytest.approx(1.338, rel=1e-6)
    with mrcfile.open(path) as mrc:  # strict: our own files validate
        assert mrc.header.mode == 2
        assert tuple(mrc.header.origin.item()) == (0.0, 0.0, 0.0)
        assert float(mrc.header.dmean) == pytest.approx(volume.mean(), abs=1e-5)
        assert float(mrc.header.dmax) == pytest.approx(volume.max())
    assert sorted(p.name for p in tmp_path.iterdir()) == ["map.mrc"]  # no temporary left


def test_write_map_accepts_tensor(tmp_path):
    torch = pytest.importorskip("torch")
    volume = torch.arange(27, dtype=torch.float64).reshape(3, 3, 3)
    write_map(tmp_path / "t.mrc", volume, 2.0)
    back, voxel_size = read_map(tmp_path / "t.mrc")
    np.testing.assert_array_equal(back, volume.numpy().astype(np.float32))
    assert voxel_size == 2.0


def test_read_real_maps(shared_data):
    ribosome, size = read_map(shared_data / "map_70S_ribosome_aspire" / "clean70SRibosome_vol_65p.mrc")
    assert ribosome.shape == (65, 65, 65) and size is None  # header voxel size 0
    assert ribosome.max() == pytest.approx(7.4e-4, rel=0.05)
    # fails strict validation and is not a cube
    emd, size = read_map(shared_data / "map_emd3400_zehni2020" / "emd_3400_86.mrc")
    assert emd.shape == (84, 68, 90) and size == pytest.approx(2.867, abs=1e-3)
    assert emd.min() >= 0 and emd.max() == pytest.approx(0.576, abs=1e-3)


@pytest.mark.parametrize("box", [16, 17])
def test_stack_round_trip(tmp_path, box):
    rng = np.random.default_rng(1)
    images = rng.standard_normal((6, box, box)).astype(np.float32)
    path = tmp_path / "s.mrcs"
    write_stack(path, images, 2.5)
    with mrcfile.open(path) as mrc:
        assert mrc.is_image_stack() and mrc.header.ispg == 0 and mrc.header.mode == 2
    with ImageStack(path) as stack:
        assert stack.shape == (6, box, box) and len(stack) == 6
        assert stack.voxel_size == pytest.approx(2.5)
        got = stack.read([4, 0, 4])
        assert got.dtype == np.float32 and got.shape == (3, box, box)
        np.testing.assert_array_equal(got, images[[4, 0, 4]])


def test_single_image_is_a_stack_of_one(tmp_path):
    image = np.arange(64, dtype=np.float32).reshape(8, 8)
    with mrcfile.new(tmp_path / "one.mrc") as mrc:
        mrc.set_data(image)
    with ImageStack(tmp_path / "one.mrc") as stack:
        assert stack.shape == (1, 8, 8) and stack.voxel_size is None
        np.testing.assert_array_equal(stack.read([0])[0], image)


# --- STAR round trip ------------------------------------------------------------------------------


def _synthetic_set(tmp_path, n=9, box=12, pixel_size=1.7, poses=True):
    rng = np.random.default_rng(2)
    images = rng.standard_normal((n, box, box)).astype(np.float32)
    (tmp_path / "stacks").mkdir()
    write_stack(tmp_path / "stacks" / "a.mrcs", images[:5], pixel_size)
    write_stack(tmp_path / "stacks" / "b.mrcs", images[5:], pixel_size)
    files = [tmp_path / "stacks" / "a.mrcs"] * 5 + [tmp_path / "stacks" / "b.mrcs"] * (n - 5)
    index = np.r_[np.arange(5), np.arange(n - 5)]
    ctf = CTFParams(
        defocus_u=rng.uniform(8000, 30000, n),
        defocus_v=rng.uniform(8000, 30000, n),
        defocus_angle=rng.uniform(-np.pi / 2, np.pi / 2, n),
        voltage=np.where(np.arange(n) < 4, 300.0, 200.0),
        cs=2.7,
        amplitude_contrast=np.where(np.arange(n) < 4, 0.1, 0.07),
        phase_shift=rng.uniform(0, np.pi / 2, n),
        bfactor=rng.uniform(0, 50, n),
    )
    rotations = random_rotations(n, rng) if poses else None
    shifts = rng.uniform(-5, 5, (n, 2)) if poses else None
    return ParticleSet(tmp_path / "src.star", files, index, pixel_size, box, ctf, rotations, shifts), images


def test_star_round_trip(tmp_path):
    particles, images = _synthetic_set(tmp_path)
    (tmp_path / "out").mkdir()
    out = tmp_path / "out" / "particles.star"
    write_particles_star(out, particles, extra_columns={"rlnRandomSubset": np.arange(9) % 2 + 1})
    text = out.read_text()
    lines = text.splitlines()
    assert lines[0] == "# version 30001"
    blocks = [i for i, line in enumerate(lines) if line.startswith("data_")]
    assert [lines[i] for i in blocks] == ["data_optics", "data_particles"]
    assert all(lines[i - 2] == "# version 30001" for i in blocks)
    assert "000003@../stacks/a.mrcs" in text  # relative to the STAR file's folder, 1-based
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["particles.star"]

    back = load_particles(out)
    assert len(back) == 9 and back.box == 12
    assert back.pixel_size == pytest.approx(particles.pixel_size, rel=1e-6)
    for name in ("defocus_u", "defocus_v", "defocus_angle", "voltage", "cs", "amplitude_contrast",
                 "phase_shift", "bfactor"):
        np.testing.assert_allclose(getattr(back.ctf, name), getattr(particles.ctf, name), rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(back.rotations, particles.rotations, atol=1e-4)
    np.testing.assert_allclose(back.shifts, particles.shifts, atol=1e-4)
    assert back.image_files == particles.image_files
    np.testing.assert_array_equal(back.image_index, particles.image_index)
    np.testing.assert_array_equal(back.read_images([8, 0, 5]), images[[8, 0, 5]])


def test_star_round_trip_keeps_gimbal_lock_poses(tmp_path):
    """Rotations survive the trip through Euler angles, tilt 0 and 180 included."""
    particles, _ = _synthetic_set(tmp_path, n=6)
    euler = np.array([[10.0, 0.0, 30.0], [-120.0, 180.0, 45.0], [0.0, 90.0, 0.0],
                      [179.0, 1e-3, -179.0], [33.0, 66.0, 99.0], [-45.0, 135.0, -90.0]])
    rotations = relion_euler_to_matrix(*euler.T)
    write_particles_star(tmp_path / "p.star", particles.with_poses(rotations, np.zeros((6, 2))))
    back = read_particles_star(tmp_path / "p.star")
    np.testing.assert_allclose(back.rotations, rotations, atol=1e-6)
    np.testing.assert_allclose(relion_euler_to_matrix(*matrix_to_relion_euler(rotations).T), rotations, atol=1e-12)


def test_metadata_only_round_trip(tmp_path):
    particles, _ = _synthetic_set(tmp_path, poses=False)
    meta = ParticleSet(particles.source, [], [], particles.pixel_size, None, particles.ctf)
    write_particles_star(tmp_path / "m.star", meta)
    back = read_particles_star(tmp_path / "m.star", require_images=False)
    assert len(back) == 9 and back.box is None and back.rotations is None and not back.has_images
    np.testing.assert_allclose(back.ctf.defocus_u, particles.ctf.defocus_u, rtol=1e-9)


def test_subset_and_with_poses(tmp_path):
    particles, images = _synthetic_set(tmp_path)
    part = particles.subset([7, 2])
    assert len(part) == 2 and part.ctf.defocus_u[0] == particles.ctf.defocus_u[7]
    np.testing.assert_array_equal(part.read_images([0, 1]), images[[7, 2]])
    np.testing.assert_array_equal(part.shifts, particles.shifts[[7, 2]])
    masked = particles.subset(particles.ctf.voltage == 200.0)
    assert len(masked) == 5
    posed = particles.with_poses(np.broadcast_to(np.eye(3), (9, 3, 3)), np.ones((9, 2)))
    assert posed.shifts[3, 1] == 1.0 and particles.shifts[3, 1] != 1.0  # original untouched


@pytest.mark.relion
def test_relion_reads_written_star(tmp_path, relion_programs):
    particles, _ = _synthetic_set(tmp_path)
    out = tmp_path / "relion.star"
    write_particles_star(out, particles)
    run = subprocess.run(["relion_star_printtable", str(out), "data_particles", "rlnImageName",
                          "rlnAngleTilt"], capture_output=True, text=True, check=True)
    rows = run.stdout.split("\n")
    assert rows[0].split()[0] == "000001@stacks/a.mrcs" and rows[5].split()[0] == "000001@stacks/b.mrcs"
    tilt = matrix_to_relion_euler(particles.rotations)[:, 1]
    np.testing.assert_allclose([float(r.split()[1]) for r in rows[:9]], tilt, atol=1e-5)
    run = subprocess.run(["relion_star_printtable", str(out), "data_optics", "rlnVoltage"],
                         capture_output=True, text=True, check=True)
    assert sorted(float(v) for v in run.stdout.split()) == [200.0, 300.0]


# --- real files -----------------------------------------------------------------------------------


def test_aspire_relion30(shared_data):
    folder = shared_data / "aspire_experimental_particles"
    particles = load_particles(folder / "sample_relion_data.star")  # header voxel size 0: silent
    assert len(particles) == 17 and particles.box == 200
    assert particles.pixel_size == pytest.approx(5.0 * 1e4 / 37369.207031, rel=1e-9)
    assert particles.pixel_size == pytest.approx(1.338, abs=1e-4)
    with ImageStack(folder / "sample.mrcs") as stack:
        assert stack.voxel_size is None
    ctf = particles.ctf
    assert ctf.defocus_u[0] == pytest.approx(21186.804688) and ctf.defocus_v[16] == pytest.approx(21363.109375)
    assert ctf.defocus_angle[5] == pytest.approx(np.deg2rad(7.476096))
    assert set(ctf.voltage) == {300.0} and set(ctf.cs) == {2.7} and set(ctf.amplitude_contrast) == {0.1}
    np.testing.assert_allclose(particles.rotations[0],
                               relion_euler_to_matrix(109.186640, 122.200343, 71.118492)[0], atol=1e-12)
    np.testing.assert_allclose(particles.shifts[5], [0.4496, 0.9496])  # rlnOriginX/Y, pixels
    images = particles.read_images(np.arange(17))
    assert images.shape == (17, 200, 200) and images.dtype == np.float32
    assert images.std() == pytest.approx(1.0, abs=0.05)


def test_aspire_relion31_two_optics_groups(shared_data):
    folder = shared_data / "aspire_experimental_particles"
    new = load_particles(folder / "sample_particles_relion31.star")
    old = load_particles(folder / "sample_relion_data.star")
    # group 1 (particles 1-8) is at 300 kV, group 2 (9-17) at 200 kV; both say 1.4 Å/px
    np.testing.assert_array_equal(new.ctf.voltage, [300.0] * 8 + [200.0] * 9)
    assert new.pixel_size == 1.4 and new.box == 200  # box from the stack: no rlnImageSize
    # Its row 15 repeats row 14's pose (a parser test file); the other rows carry the 3.0
    # file's poses, with the 3.0 rlnOriginX/Y numbers as rlnOriginX/YAngst, so / 1.4 in pixels.
    same = np.r_[0:14, 15:17]
    np.testing.assert_allclose(new.shifts[same], old.shifts[same] / 1.4, rtol=1e-12)
    np.testing.assert_allclose(new.shifts[0], [0.1996 / 1.4, 0.1996 / 1.4])
    np.testing.assert_allclose(new.rotations[same], old.rotations[same], atol=1e-12)
    np.testing.assert_allclose(new.rotations[14], old.rotations[13], atol=1e-12)
    np.testing.assert_allclose(new.ctf.defocus_u, old.ctf.defocus_u)
    np.testing.assert_array_equal(new.read_images([16, 0]), old.read_images([16, 0]))


def test_empiar10076_star_and_cs_agree(shared_data):
    folder = shared_data / "cryodrgn_real_particles"
    star = load_particles(folder / "empiar_10076_7.star")
    cs = load_particles(folder / "empiar_10076_7.cs")
    assert len(star) == len(cs) == 7 and star.box == cs.box == 320
    assert star.pixel_size == pytest.approx(1.31, abs=1e-4) and cs.pixel_size == pytest.approx(1.31, abs=1e-4)
    np.testing.assert_allclose(cs.ctf.defocus_u, star.ctf.defocus_u, atol=1.0)
    np.testing.assert_allclose(cs.ctf.defocus_v, star.ctf.defocus_v, atol=1.0)
    np.testing.assert_allclose(cs.ctf.defocus_angle, star.ctf.defocus_angle, atol=1e-6)
    assert star.ctf.defocus_angle[0] == pytest.approx(np.deg2rad(5.28))
    np.testing.assert_allclose(cs.ctf.amplitude_contrast, 0.07, rtol=1e-6)
    assert star.rotations is None and cs.rotations is None
    assert cs.image_files == star.image_files
    np.testing.assert_array_equal(cs.image_index, star.image_index)
    np.testing.assert_array_equal(cs.read_images([6, 3]), star.read_images([6, 3]))


def test_relion31_header_pixel_size_loses(shared_data):
    folder = shared_data / "cryodrgn_real_particles"
    with pytest.warns(UserWarning, match=r"MRC header pixel size 1 Å disagrees .* using 2\.806 Å"):
        particles = load_particles(folder / "relion31.star")
    assert particles.pixel_size == 2.806 and particles.box == 256
    assert set(particles.ctf.cs) == {0.01}
    np.testing.assert_allclose(particles.shifts[0], np.array([0.019324, -0.64686]) / 2.806)
    np.testing.assert_allclose(particles.rotations[3],
                               relion_euler_to_matrix(160.041375, 85.685244, 131.553672)[0], atol=1e-12)
    assert particles.ctf.defocus_angle[0] == pytest.approx(np.deg2rad(-160.39))
    assert particles.read_images([4]).shape == (1, 256, 256)


def test_relion31_six_optics_groups(shared_data):
    path = shared_data / "cryodrgn_real_particles" / "relion31.6opticsgroups.star"
    # groups 2 and 5 are at 1.24 Å/px, the others at 1.25: within 1%, so merged with a warning
    with pytest.warns(UserWarning, match=r"pixel sizes 1\.24, 1\.25 Å, within 1%; using the most common, 1\.25"):
        particles = load_particles(path, require_images=False)
    assert len(particles) == 139 and particles.pixel_size == 1.25 and particles.box == 196
    assert set(particles.ctf.voltage) == {200.0}
    assert np.count_nonzero(particles.ctf.cs == 2.6) == 7  # group 4 alone has Cs 2.6, 7 particles
    assert particles.ctf.defocus_u[0] == pytest.approx(10352.805929)
    assert particles.image_files[1].name == "0027_shiny.mrcs" and particles.image_index[1] == 278
    # group 6 (1.25 Å/px): OriginXAngst 13.284554
    assert particles.shifts[0, 0] == pytest.approx(13.284554 / 1.25)
    assert particles.rotations.shape == (139, 3, 3)
    with pytest.raises(InputError, match="0003_shiny.mrcs .* does not exist"):
        load_particles(path)  # the images are not included


def test_apoferritin_ctf_table(test_data):
    path = test_data / "empiar10026_ctf.star"
    with pytest.warns(UserWarning, match="no amplitude contrast"):
        particles = load_particles(path, require_images=False)
    assert len(particles) == 483 and not particles.has_images and particles.box is None
    assert particles.pixel_size == pytest.approx(14e4 / 104089, rel=1e-6)
    assert set(particles.ctf.amplitude_contrast) == {0.1}
    assert particles.ctf.defocus_u.min() == pytest.approx(15701.679688)
    assert particles.ctf.defocus_u.max() == pytest.approx(36112.148438)
    assert particles.ctf.defocus_angle[0] == pytest.approx(np.deg2rad(46.83))
    assert particles.rotations is None and particles.shifts is None


def test_cryosparc_refinement_table(shared_data):
    path = shared_data / "ctf_metadata_real" / "cryosparc_P12_J24_001_particles.cs"
    particles = read_cs(path, require_images=False)
    records = np.load(path)
    assert len(particles) == 2019 and particles.pixel_size == pytest.approx(2.95) and particles.box == 180
    assert set(particles.ctf.voltage) == {200.0} and set(particles.ctf.cs) == {2.0}
    np.testing.assert_allclose(particles.ctf.amplitude_contrast, 0.07, rtol=1e-6)
    assert particles.ctf.defocus_u[0] == pytest.approx(45591.37, abs=0.01)
    assert particles.ctf.defocus_angle[0] == pytest.approx(-1.3636448)
    r = particles.rotations
    np.testing.assert_allclose(r @ r.transpose(0, 2, 1), np.broadcast_to(np.eye(3), r.shape), atol=1e-6)
    np.testing.assert_allclose(r[0], Rotation.from_rotvec(records["alignments3D/pose"][0]).as_matrix(), atol=1e-6)
    np.testing.assert_allclose(particles.shifts[0], [11.334375, -1.828125])
    assert particles.image_files[0].name.endswith("_particles.mrc") and particles.image_index[0] == 0
    with pytest.raises(InputError, match=r"image stack .*J19/extract/.* \(from blob/path\) does not exist"):
        load_particles(path)  # the images are not included


def _write_cs(path, fields: dict):
    n = len(next(iter(fields.values())))
    dtype = [(name, np.asarray(v).dtype, np.asarray(v).shape[1:]) for name, v in fields.items()]
    records = np.zeros(n, dtype=dtype)
    for name, values in fields.items():
        records[name] = values
    with open(path, "wb") as f:  # cryoSPARC writes plain .npy content under a .cs name
        np.save(f, records)


def test_cryosparc_pose_convention(tmp_path):
    """Single-axis poses worked by hand from pyem's csparc2star.

    pyem turns an axis-angle w into RELION's matrix A with
    ``I + sin(t) K + (1 - cos(t)) K^2``, K the transposed skew matrix of w/t,
    then reads the Euler angles off A.  For w = (0, 0, t) this gives
    A = [[c, s, 0], [-s, c, 0], [0, 0, 1]], RELION's matrix for rot = t (tilt = psi = 0);
    for w = (0, t, 0) it gives A = [[c, 0, -s], [0, 1, 0], [s, 0, c]], RELION's
    matrix for tilt = t.  A rotation about one axis tells R from R.T by the sign of t.
    """
    t1, t2 = 0.3, 0.5
    _write_cs(tmp_path / "p.cs", {
        "ctf/df1_A": [1e4, 1e4, 1e4], "ctf/df2_A": [1e4, 1e4, 1e4], "ctf/accel_kv": [300.0] * 3,
        "ctf/cs_mm": [2.7] * 3, "ctf/amp_contrast": [0.1] * 3, "blob/psize_A": [2.0] * 3,
        "alignments3D/pose": np.array([[0, 0, t1], [0, t2, 0], [0, 0, 0]], dtype=np.float32),
        "alignments3D/shift": np.array([[1.5, -2.0], [0, 0], [0, 0]], dtype=np.float32),
        "alignments3D/psize_A": [4.0] * 3,
    })
    particles = read_cs(tmp_path / "p.cs", require_images=False)
    expected = relion_euler_to_matrix([np.rad2deg(t1), 0, 0], [0, np.rad2deg(t2), 0], [0, 0, 0])
    np.testing.assert_allclose(particles.rotations, expected, atol=1e-6)
    np.testing.assert_allclose(matrix_to_relion_euler(particles.rotations[1:2])[0], [0, np.rad2deg(t2), 0], atol=1e-4)
    # shifts are in pixels of the alignment (4 Å) and come back in image pixels (2 Å)
    np.testing.assert_allclose(particles.shifts[0], [3.0, -4.0])
