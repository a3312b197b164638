"""Pruned pose search against exhaustive search on the same volume and minibatch.

Images: the bundled 5FUU density at 32 px and 6 Å/pixel, projected with CTFs and shifts of
sigma 1.5 px (off-centre), white noise.  Band limit 8 Fourier pixels (24 Å), shifts within 3 px.
"""
from pathlib import Path

import numpy as np
import pytest
import torch

from cryosgd.baselines.projmatch import rotation_angle
from cryosgd.forward.ctf import CTFParams
from cryosgd.forward.density import random_spheres
from cryosgd.forward.simulate import draw_ctfs, simulate_particles
from cryosgd.fourier import band_limit_px
from cryosgd.inference import search as search_module
from cryosgd.inference.quadrature import choose_quadrature
from cryosgd.inference.rotation_set import VARIANT_MATRICES, rotation_parents, rotation_set_for_band, variant_tables
from cryosgd.inference.search import PrunedLikelihood
from cryosgd.io import load_particles
from cryosgd.reconstruct import Settings, build_kernel
from cryosgd.reconstruct.schedule import POSE_SEARCH
from cryosgd.simulation import load_source_volume

DEMO = Path(__file__).resolve().parents[1] / "src" / "cryosgd" / "data" / "demo_5fuu_64px_3A.mrc"
BOX, APIX, BAND, MAX_SHIFT, N = 32, 6.0, 8.0, 3.0, 12


@pytest.fixture(scope="module")
def problem():
    truth = load_source_volume(DEMO, BOX, APIX)
    rng = np.random.default_rng(0)
    ctf = CTFParams.make(rng.uniform(1e4, 2.5e4, N), None, 0.0, 300.0, 2.7, 0.1)
    sim = simulate_particles(truth, N, pixel_size=APIX, snr=1.0, ctf=ctf, shift_sigma=1.5, rng=rng)
    start = random_spheres(BOX, np.random.default_rng(1), radius=0.2 * BOX)
    start *= truth.std() / start.std()
    exhaustive = build_kernel(BAND, BOX, APIX,
                              Settings(max_shift=MAX_SHIFT, precision="float64", search="exhaustive"))
    vols = {"truth": torch.as_tensor(truth, dtype=torch.float64), "random": torch.as_tensor(start, dtype=torch.float64)}
    refs = {k: exhaustive(v, exhaustive.prepare(sim.images, ctf)) for k, v in vols.items()}
    return sim.images, ctf, vols, refs


def pruned(**kw):
    """No caps: this small problem's coarse posteriors are broad (thousands of coarse rotations)."""
    kw = {"max_rotations": None, "max_shifts": None, "dense_above": 2.0, **kw}
    return PrunedLikelihood(BOX, APIX, BAND, max_shift=MAX_SHIFT, dtype=torch.float64, **kw)


def rel(a, b):
    return float((a - b).norm() / b.norm())


def test_variant_tables_compose_the_symmetries():
    mult, solve = variant_tables()
    for u in range(8):
        for v in range(8):
            assert np.allclose(VARIANT_MATRICES[u] @ VARIANT_MATRICES[v], VARIANT_MATRICES[mult[u, v]])
            assert np.allclose(VARIANT_MATRICES[u] @ VARIANT_MATRICES[solve[u, v]], VARIANT_MATRICES[v])


def test_parents_are_nearest_rotations():
    fine, coarse = (rotation_set_for_band(r, choose_quadrature(r, BOX).n_inplane) for r in (8.0, 4.0))
    u, c = rotation_parents(fine.base[:50], coarse, k=1)
    rots, _ = coarse.all_rotations()
    # geodesic distance via the trace: the parent has the largest trace(R_f^T R_c)
    tr = np.einsum("fij,cij->fc", fine.base[:50], rots)
    assert np.allclose(tr[np.arange(50), u[:, 0] * len(coarse.base) + c[:, 0]], tr.max(1))
    # the fine quadrature's spacing: every fine rotation lies within 1.2 coarse steps of its parent
    angle = np.degrees(np.arccos(np.clip((tr.max(1) - 1) / 2, -1, 1)))
    assert angle.max() < 1.2 * np.degrees(np.arctan(1 / 4.0))


def test_keep_all_equals_exhaustive_in_float64(problem):
    images, ctf, vols, refs = problem
    kern = pruned(min_rotations=10**9, min_shifts=10**9)
    for name in ("truth", "random"):
        res = kern(vols[name], kern.prepare(images, ctf))
        ref = refs[name]
        assert kern.last_stats["fine_poses"] == kern.last_stats["exhaustive_poses"]
        assert torch.allclose(res.log_likelihood, ref.log_likelihood, rtol=0, atol=1e-9)
        assert rel(res.gradient, ref.gradient) < 1e-10
        assert np.allclose(res.best_rotation, ref.best_rotation) and np.allclose(res.best_shift, ref.best_shift)
        assert np.allclose(res.best_probability, ref.best_probability, atol=1e-10)


@pytest.mark.parametrize("block_bytes", [search_module.BLOCK_BYTES, 1 << 16])
def test_coarse_marginals_are_log_sums_of_the_coarse_scores(problem, block_bytes, monkeypatch):
    """The coarse level's rotation and shift marginals, made in cache-sized blocks (one, or several of
    images and of rotations) with each rotation's own stabiliser, are the log-sum-exp of the coarse
    kernel's scores over shifts and over rotations."""
    monkeypatch.setattr(search_module, "BLOCK_BYTES", block_bytes)
    images, ctf, vols, _ = problem
    kern = pruned()
    batch = kern.prepare(images, ctf).coarse
    for name in ("truth", "random"):
        rot, shift = kern.coarse_marginals(vols[name], batch)
        scores, _, _ = kern.coarse._score_function(batch, kern.coarse.slices_pairs(vols[name]))
        mc = len(kern.coarse.rotations.base)
        sc = scores(0, mc).view(mc, N, 8, len(kern.coarse.shifts))                     # (C, B, 8, S)
        assert torch.allclose(rot, torch.logsumexp(sc, 3).permute(1, 2, 0), rtol=0, atol=1e-9)
        assert torch.allclose(shift, torch.logsumexp(sc, (0, 2)), rtol=0, atol=1e-9)


def test_keep_counts_order_only_as_far_as_needed():
    """The kept prefixes (counts and their entries) are those of a full ordering, for rows whose mass
    sits on a few entries, on many, and on more than the first ordering looks at."""
    from cryosgd.inference.pose_tree import keep_count

    gen = torch.Generator().manual_seed(8)
    k = 4000
    for width in (0.5, 5.0, 50.0):     # nats: sharp to broad
        logm = torch.randn((6, k), generator=gen, dtype=torch.float64) * width
        logm[0] = torch.randn(k, generator=gen, dtype=torch.float64) * 0.01   # flat: needs everything
        for lo, hi in ((8, 512), (32, 512), (2, 16)):
            order, count = keep_count(logm, 1e-3, lo, hi)
            p = torch.softmax(logm, 1)
            full = torch.sort(p, 1, descending=True)
            want = ((full.values.cumsum(1) < 1 - 1e-3).sum(1) + 1).clamp(min=lo, max=hi)
            assert torch.equal(count, want)
            for row in range(len(logm)):
                n = int(count[row])
                assert torch.equal(order[row, :n].sort().values, full.indices[row, :n].sort().values)


def test_the_coarse_cube_is_the_centre_of_the_full_band_cube(problem):
    """A call makes the full band's cube once and cuts the coarse level's from its centre: the same
    numbers as the coarse level's own band transform."""
    _, _, vols, _ = problem
    kern = pruned()
    own = kern.coarse.band.forward_pairs(vols["random"])
    cut = kern.coarse_cube(kern.frame.band.forward_pairs(vols["random"]))
    assert cut.shape == own.shape and kern.frame.band.size > own.shape[0]
    assert torch.allclose(cut, own, rtol=0, atol=1e-12 * float(own.abs().max()))


@pytest.mark.parametrize("name, max_nats, max_grad", [("truth", 0.01, 2e-3), ("random", 0.05, 1e-2)])
def test_pruned_agrees_with_exhaustive(problem, name, max_nats, max_grad):
    """Default pruning (epsilon 1e-3, 2 neighbours, at least 32 coarse rotations): log-likelihoods never above exhaustive (a
    truncated sum), at most ``max_nats`` below; gradient within ``max_grad`` (relative); same MAP pose."""
    images, ctf, vols, refs = problem
    kern = pruned()
    res = kern(vols[name], kern.prepare(images, ctf))
    ref = refs[name]
    diff = (res.log_likelihood - ref.log_likelihood).numpy()
    assert diff.max() <= 1e-9
    assert diff.min() >= -max_nats
    assert rel(res.gradient, ref.gradient) < max_grad
    assert np.allclose(res.best_rotation, ref.best_rotation)
    assert kern.last_stats["fine_poses"] < 0.6 * kern.last_stats["exhaustive_poses"]


def test_partition_without_dilation_loses_mass(problem):
    """With each fine pose in its nearest coarse cell only, the truth's sharp fine posteriors fall
    outside the kept cells more often: the dilation is what keeps the error small."""
    images, ctf, vols, refs = problem
    kern = pruned(neighbours=1)
    res = kern(vols["truth"], kern.prepare(images, ctf))
    diff = (res.log_likelihood - refs["truth"].log_likelihood).numpy()
    assert diff.max() <= 1e-9
    assert diff.min() < -0.01  # the default (2 neighbours) stays within 0.01 nats


def test_caps_bound_the_candidates_and_only_lose_mass(problem):
    images, ctf, vols, refs = problem
    kern = pruned(max_rotations=64, max_shifts=4)
    res = kern(vols["random"], kern.prepare(images, ctf))
    stats = kern.last_stats
    assert stats["kept_rotations"] <= 64 and stats["kept_shifts"] <= 4 and stats["rotation_cap_hits"] == N
    assert stats["fine_poses"] < 0.05 * stats["exhaustive_poses"]
    diff = (res.log_likelihood - refs["random"].log_likelihood).numpy()
    assert diff.max() <= 1e-9 and diff.min() < -0.01


def test_dense_fallback_is_the_exhaustive_kernel(problem):
    images, ctf, vols, refs = problem
    kern = PrunedLikelihood(BOX, APIX, BAND, max_shift=MAX_SHIFT, dtype=torch.float64, dense_above=0.0)
    res = kern(vols["random"], kern.prepare(images, ctf))
    assert kern.last_stats["dense"]
    assert torch.allclose(res.log_likelihood, refs["random"].log_likelihood, rtol=0, atol=1e-9)


def test_a_call_split_over_threads_is_the_same_sum(problem):
    """Three groups of four images in threads: each image's log-likelihood, best pose and the pose
    counts as in one call, the gradient the same sum (another order); groups that fall back to the
    exhaustive kernel merge too; the intra-op thread count is restored."""
    images, ctf, vols, refs = problem
    threads = torch.get_num_threads()
    whole, split = pruned(workers=1), pruned(workers=3, min_group=1)
    weights = torch.linspace(0.5, 1.5, N, dtype=torch.float64)
    for name in ("truth", "random"):
        a = whole(vols[name], whole.prepare(images, ctf), image_weights=weights)
        b = split(vols[name], split.prepare(images, ctf), image_weights=weights)
        assert torch.allclose(a.log_likelihood, b.log_likelihood, rtol=0, atol=1e-10)
        assert rel(b.gradient, a.gradient) < 1e-12
        assert np.allclose(a.best_rotation, b.best_rotation) and np.allclose(a.best_shift, b.best_shift)
        assert np.allclose(a.best_probability, b.best_probability, atol=1e-12)
        for key in ("fine_poses", "coarse_poses", "exhaustive_poses"):
            assert whole.last_stats[key] == split.last_stats[key]
        for key in ("kept_rotations", "fine_shifts", "evaluated_fraction"):   # means of float32 counts
            assert whole.last_stats[key] == pytest.approx(split.last_stats[key], rel=1e-6)
    assert torch.get_num_threads() == threads and not split.last_stats["dense"]
    dense = pruned(workers=3, min_group=1, dense_above=0.0)
    res = dense(vols["random"], dense.prepare(images, ctf))
    assert dense.last_stats["dense"]
    assert torch.allclose(res.log_likelihood, refs["random"].log_likelihood, rtol=0, atol=1e-9)
    assert rel(res.gradient, refs["random"].gradient) < 1e-10


def test_search_setting_chooses_the_kernel():
    """``--search pruned`` builds the pruned estimator, ``exhaustive`` (the paper's) the reference; ``auto``
    (the default) chooses by the poses per image (tests/test_settings.py)."""
    assert Settings().search == "auto" and Settings.paper().search == "exhaustive"
    assert isinstance(build_kernel(6.0, 32, 6.0, Settings(max_shift=2.0, precision="float64", search="pruned")),
                      PrunedLikelihood)
    assert not isinstance(build_kernel(6.0, 32, 6.0, Settings(max_shift=2.0, precision="float64", search="exhaustive")),
                          PrunedLikelihood)


@pytest.mark.slow
def test_pruned_reconstruction_matches_exhaustive_on_off_centre_particles(tmp_path):
    """End to end on off-centre particles (shifts of σ = 1.5 px, searched to 3 px): the map that pruned
    search recovers from random spheres scores as the exhaustive one does against the truth."""
    from cryosgd.evaluate import compare_maps
    from cryosgd.io import load_particles, read_map
    from cryosgd.reconstruct import reconstruct
    from cryosgd.simulation import simulate_dataset

    paths, _ = simulate_dataset(DEMO, tmp_path, n=1500, box=32, pixel_size=6.0, snr=0.1, shift_sigma=1.5, seed=4)
    particles, truth = load_particles(paths.particles), read_map(paths.volume)[0]
    scores = {}
    for search in ("exhaustive", "pruned"):
        rec = reconstruct(particles, Settings(search=search, max_shift=3.0, resolution=24.0, epochs=2.0,
                                              learning_rate=0.3, evaluations=4, seed=1))
        cmp = compare_maps(rec.volume, truth, pixel_size=6.0, align=True)
        scores[search] = cmp.fsc_at_fraction(0.8, rec.band_limit)
        print(f"{search}: FSC {scores[search]:.3f} at 80% of the band, {rec.wall_time:.0f} s")
    assert scores["exhaustive"] >= 0.5, scores
    assert scores["pruned"] >= scores["exhaustive"] - 0.05, scores


@pytest.mark.filterwarnings("ignore:.*no amplitude contrast")   # the shipped CTF table has none: 0.1
def test_the_pose_pass_search_is_as_accurate_as_trainings(test_data):
    """The pose pass keeps fewer candidates (``POSE_SEARCH``: 8 coarse rotations and 2 coarse shifts, each
    fine pose the child of its nearest coarse one, coarse shifts 4 fine steps apart): at the end-to-end
    geometry (64 px, 3.5 Å/px, 15 Å, shifts within 6.4 px; 5FUU from its atomic model, SNR 0.05, real
    CTFs, shifts of sigma 3 px) its poses under the true map are as close to the true ones as those of
    training's search (at most one image in 100 fewer within 10 degrees)."""
    box, apix, band, n = 64, 3.5, band_limit_px(15.0, 64, 3.5), 200
    truth = load_source_volume(test_data / "5fuu.pdb.gz", box, apix)
    rng = np.random.default_rng(5)
    ctf = draw_ctfs(n, rng, table=load_particles(test_data / "empiar10026_ctf.star", require_images=False).ctf)
    sim = simulate_particles(truth, n, pixel_size=apix, snr=0.05, ctf=ctf, shift_sigma=3.0, rng=rng)
    vol = torch.as_tensor(truth, dtype=torch.float32)
    within = {}
    for poses_only in (False, True):
        kern = build_kernel(band, box, apix, Settings(), poses_only=poses_only)
        assert isinstance(kern, PrunedLikelihood)
        assert kern.min_rotations == (POSE_SEARCH["min_rotations"] if poses_only else 32)
        rots = np.concatenate([kern(vol, kern.prepare(sim.images[a:a + 100], sim.ctf[a:a + 100]), gradient=False,
                                    poses=True).best_rotation for a in range(0, n, 100)])
        within[poses_only] = float(np.mean(rotation_angle(rots, sim.rotations) < 10))
    assert within[False] > 0.8
    assert within[True] >= within[False] - 0.01
