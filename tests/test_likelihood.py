"""The marginal-likelihood kernel against a naive reference, finite differences and brute force."""
import math

import numpy as np
import pytest
import torch

from cryosgd.forward.ctf import CTFParams, ctf_grid
from cryosgd.forward.slicing import extract_central_slices
from cryosgd.inference.likelihood import LikelihoodBatch, MarginalLikelihood, half_plane_frequencies
from cryosgd.inference.objective import Objective
from cryosgd.inference.prior import DensityPrior
from cryosgd.inference.quadrature import lebedev_directions
from cryosgd.inference.rotation_set import VARIANT_MATRICES, build_rotation_set
from cryosgd.io import InputError
from cryosgd.runtime.device import resolve_precision, tf32_products
from cryosgd.runtime.memory import available_bytes

SIGMA = 1.3


SHIFTS = {1: (np.zeros((1, 2)), np.ones(1)),  # no shift search: the single-product path
          3: (np.array([[0.0, 0.0], [1.0, 0.0], [0.0, -1.0]]), np.array([0.5, 0.25, 0.25]))}


def tiny_problem(n=12, band_limit=3.5, memory_budget=1 << 30, seed=0, n_shifts=3):
    d, w = lebedev_directions(7)
    rs = build_rotation_set(d, w, 8)
    shifts, sw = SHIFTS[n_shifts]
    kern = MarginalLikelihood(n, 2.0, band_limit, rs, shifts, sw, noise_std=SIGMA, dtype=torch.float64,
                              memory_budget=memory_budget)
    rng = np.random.default_rng(seed)
    vol = torch.tensor(rng.standard_normal((n, n, n))) * 0.1
    ctf = CTFParams.make(rng.uniform(5e3, 1e4, 4), rng.uniform(5e3, 1e4, 4), 0.3, 300, 2.7, 0.1)
    batch = kern.prepare(rng.standard_normal((4, n, n)), ctf)
    return kern, vol, batch, rs, shifts, sw


def naive_log_likelihood(kern, vol, batch, rs, shifts, sw):
    """Every rotation sliced directly, the squared error summed explicitly, autograd-able."""
    cube = kern.band.forward(vol)
    rots, weights = rs.all_rotations()
    fr = torch.tensor(kern.freqs)
    y = extract_central_slices(cube, torch.tensor(rots), fr, oversampling=2)          # (M, P)
    ph = torch.exp(2j * math.pi / kern.box * (torch.tensor(shifts) @ fr.T))          # (S, P)
    mu = ph[None, :, None, :] * batch.ctf[:, None, None, :] * y[None, None]
    err = (kern.weights * (batch.data[:, None, None, :] - mu).abs() ** 2).sum(-1)     # (B, S, M)
    logp = (torch.log(torch.tensor(sw))[None, :, None] + torch.log(torch.tensor(weights))[None, None, :]
            - err / (2 * SIGMA**2))
    const = -0.5 * kern.n_full * math.log(2 * math.pi * SIGMA**2)
    return torch.logsumexp(logp.reshape(len(batch), -1), dim=1) + const, logp


@pytest.mark.parametrize("n_shifts", [1, 3])
def test_marginal_likelihood_equals_brute_force_and_autograd(n_shifts):
    kern, vol, batch, rs, shifts, sw = tiny_problem(n_shifts=n_shifts)
    res = kern(vol, batch)
    v = vol.clone().requires_grad_(True)
    ref, logp = naive_log_likelihood(kern, v, batch, rs, shifts, sw)
    (-ref.sum()).backward()
    assert torch.allclose(res.log_likelihood, ref.detach(), rtol=0, atol=1e-10)
    assert float((res.gradient - v.grad).abs().max()) < 1e-10 * float(v.grad.abs().max())
    # the most probable pose and its probability
    rots, _ = rs.all_rotations()
    flat = logp.detach().reshape(len(batch), -1)
    best = flat.argmax(1)
    for b in range(len(batch)):
        s, m = divmod(int(best[b]), len(rots))
        assert np.allclose(res.best_rotation[b], rots[m])
        assert np.allclose(res.best_shift[b], shifts[s])
        assert math.isclose(res.best_probability[b], float(torch.exp(flat[b, best[b]] - torch.logsumexp(flat[b], 0))), rel_tol=1e-9)


def test_gradient_matches_finite_differences():
    kern, vol, batch, *_ = tiny_problem(seed=1)
    obj = Objective(kern, DensityPrior(0.3, 0.2), n_images=50)
    g = obj(vol, batch).gradient
    rng = np.random.default_rng(7)
    eps = 1e-6
    for _ in range(6):
        idx = tuple(int(i) for i in rng.integers(0, kern.box, 3))
        e = torch.zeros_like(vol)
        e[idx] = eps
        fd = (obj(vol + e, batch).value - obj(vol - e, batch).value) / (2 * eps)
        assert math.isclose(fd, float(g[idx]), rel_tol=1e-5, abs_tol=1e-9)


def test_objective_is_the_mean_over_the_minibatch_plus_the_prior_over_k():
    """The scale of the objective itself, against the naive per-image log-likelihoods.

    Learning-rate tuning absorbs a constant factor in the gradient, so a wrong 1/B (or a wrong
    divisor of a sum across processes) would pass every reconstruction test: it is pinned here.
    """
    kern, vol, batch, rs, shifts, sw = tiny_problem(seed=2)
    k = 50
    prior = DensityPrior(0.3, 0.2)
    obj = Objective(kern, prior, n_images=k)
    v = vol.clone().requires_grad_(True)
    per_image, _ = naive_log_likelihood(kern, v, batch, rs, shifts, sw)                     # (B,)
    expected = -per_image.mean() + prior.negative_log(v) / k
    expected.backward()
    got = obj(vol, batch)
    assert math.isclose(got.value, float(expected.detach()), rel_tol=1e-10)
    assert float((got.gradient - v.grad).abs().max()) < 1e-10 * float(v.grad.abs().max())
    # a process's share of a minibatch is divided by the whole minibatch's size
    share = LikelihoodBatch(batch.data[:2], batch.ctf[:2], batch.data_norm[:2])
    part = obj(vol, share, total=len(batch))
    per_image = per_image.detach()
    assert math.isclose(part.value, float(-per_image[:2].sum() / len(batch) + prior.negative_log(vol) / k),
                        rel_tol=1e-10)
    # the held-out NLL is the plain mean, with no prior
    assert math.isclose(obj.test_nll(vol, batch), float(-per_image.mean()), rel_tol=1e-10)


def _gaussian_blobs(n, positions, amplitudes, width):
    """A volume ``[z, y, x]`` of Gaussian blobs at ``positions`` (x, y, z) pixels from the centre, and its
    exact projection along the z axis of any rotation R (image pixel (x, y) integrates V(R @ (x, y, z)))."""
    c = np.arange(n) - n // 2
    z, y, x = np.meshgrid(c, c, c, indexing="ij")
    vol = sum(a * np.exp(-((x - p[0])**2 + (y - p[1])**2 + (z - p[2])**2) / (2 * width**2))
              for a, p in zip(amplitudes, positions))
    yy, xx = np.meshgrid(c, c, indexing="ij")

    def projection(rot):
        seen = positions @ rot  # rows: R^T p, the blobs in the image frame
        return sum(a * math.sqrt(2 * math.pi) * width * np.exp(-((xx - q[0])**2 + (yy - q[1])**2) / (2 * width**2))
                   for a, q in zip(amplitudes, seen))
    return vol, projection


def _centred_unitary_fft2(image):
    return np.fft.fftshift(np.fft.fft2(np.fft.ifftshift(image), norm="ortho"))


def _centred_unitary_ifft2(spectrum):
    return np.fft.fftshift(np.fft.ifft2(np.fft.ifftshift(spectrum), norm="ortho"))


def test_kernel_forward_model_matches_an_independent_projection():
    """The kernel's slices, times the CTF as the likelihood uses them, against exact projections.

    Independent of the kernel's band transform and slicing operator: the density is a sum of
    Gaussian blobs whose projections are Gaussians at the rotated positions (docs/conventions.md:
    R maps image to volume coordinates), transformed with numpy's FFT.  The blobs are placed
    asymmetrically, so a wrong sign (a conjugated slice), scale or axis cannot match.
    """
    n, band, apix = 32, 6.0, 3.0
    positions = np.array([[5.0, -2.0, 1.0], [-4.0, 3.0, -2.0], [1.0, 6.0, 4.0], [-2.0, -5.0, -5.0]])
    vol, projection = _gaussian_blobs(n, positions, [1.0, 0.7, 0.5, 0.3], 2.0)
    d, w = lebedev_directions(7)
    rs = build_rotation_set(d, w, 8)
    ctf = CTFParams.make(np.array([9000.0, 15000.0]), np.array([6000.0, 12000.0]), np.array([0.6, 2.0]), 300, 2.7,
                         0.1)
    grid_ctf = ctf_grid(ctf, n, apix).numpy()                                               # (2, N, N)
    kx, ky = (np.asarray(f, dtype=int) + n // 2 for f in half_plane_frequencies(band)[0].T)
    kern = MarginalLikelihood(n, apix, band, rs, noise_std=1.0, dtype=torch.float64)
    slices = kern.slices(torch.tensor(vol)).numpy()                                          # (Mb, P)
    # every base rotation, under both CTFs: the model c * y against the CTF-modulated projection's transform
    errors = []
    for m, rot in enumerate(rs.base):
        spectrum = _centred_unitary_fft2(projection(rot))
        for b in range(2):
            expected = (grid_ctf[b] * spectrum)[ky, kx]
            batch = kern.prepare(_centred_unitary_ifft2(grid_ctf[b] * spectrum).real[None], ctf[b])
            np.testing.assert_allclose(batch.data[0].numpy(), expected, rtol=0, atol=1e-10 * np.abs(expected).max())
            model = batch.ctf[0].numpy() * slices[m]
            errors.append(np.linalg.norm(model - expected) / np.linalg.norm(expected))
    # trilinear interpolation of the 2x oversampled transform: measured at most 3.8%
    assert max(errors) < 0.06, max(errors)
    # and through the likelihood: noise-free images seen with a rotation of each symmetry variant (all
    # rotations are variant-major) are assigned those rotations
    rots, _ = rs.all_rotations()
    mb = len(rs.base)
    pick = [v * mb + (7 * v + 3) % mb for v in range(8)]
    images = [_centred_unitary_ifft2(grid_ctf[j % 2] * _centred_unitary_fft2(projection(rots[m]))).real
              for j, m in enumerate(pick)]
    res = kern(torch.tensor(vol), kern.prepare(np.array(images), ctf[np.arange(len(pick)) % 2]), gradient=False)
    for j, m in enumerate(pick):
        assert np.allclose(res.best_rotation[j], rots[m]), m


@pytest.mark.parametrize("n_shifts", [1, 3])
def test_chunked_two_pass_equals_single_pass(n_shifts):
    """A memory budget too small for all scores forces rotation chunks and recomputation."""
    kern1, vol, batch, *_ = tiny_problem(n_shifts=n_shifts)
    kern2, *_ = tiny_problem(memory_budget=4 * 100 * 8 * n_shifts * 5, n_shifts=n_shifts)
    assert kern2.chunk < len(kern2.rotations.base)
    r1, r2 = kern1(vol, batch), kern2(vol, batch)
    assert torch.allclose(r1.log_likelihood, r2.log_likelihood, atol=1e-10)
    assert torch.allclose(r1.gradient, r2.gradient, atol=1e-10)


def test_half_plane_weights_count_the_full_disc():
    k, w = half_plane_frequencies(6.4)
    full = sum(1 for x in range(-7, 8) for y in range(-7, 8) if x * x + y * y <= 6.4**2)
    assert w.sum() == full
    assert len(k) == (full + 1) // 2


def test_symmetry_variants_cover_each_direction_and_angle_once():
    d, w = lebedev_directions(11)
    rs = build_rotation_set(d, w, 10)  # rounded up to 12 in-plane angles
    rots, weights = rs.all_rotations()
    assert len(rots) == len(d) * 12
    assert math.isclose(weights.sum(), 1.0, rel_tol=1e-12)
    # all distinct, all proper rotations, every direction 12 times
    assert np.allclose(np.linalg.det(rots), 1)
    flat = np.round(rots.reshape(len(rots), -1), 8)
    assert len(np.unique(flat, axis=0)) == len(rots)
    dirs = np.round(rots[:, :, 2], 8)
    _, counts = np.unique(dirs, axis=0, return_counts=True)
    assert len(counts) == len(d) and set(counts) == {12}
    assert np.allclose(np.abs(VARIANT_MATRICES[:, 2, 2]), 1)


def test_prior_gradient():
    prior = DensityPrior(0.03, 1e-4, shape=2.0)
    v = torch.tensor([1.5, -2.0, 0.5, -0.1], dtype=torch.float64, requires_grad=True)
    prior.negative_log(v).backward()
    assert torch.allclose(prior.gradient(v.detach()), v.grad)
    assert math.isclose(float(prior.negative_log(v.detach())), 0.03 * 2.0 + 1e-4 * (4.0 + 0.01))


def test_out_of_memory_halves_the_chunk_and_gives_the_same_result():
    """A device that runs out of memory gets a smaller rotation chunk and a retry, not a crash."""
    kern, vol, batch, *_ = tiny_problem()
    ref = kern(vol, batch)
    full = len(kern.rotations.base)
    evaluate = kern._evaluate

    def tight(*args):  # as if the device held only a quarter of the rotations' scores
        if kern.chunk > full // 4:
            raise torch.OutOfMemoryError("simulated")
        return evaluate(*args)

    kern._evaluate = tight
    with pytest.warns(UserWarning, match="rotation chunk reduced"):
        res = kern(vol, batch)
    assert kern.chunk <= full // 4
    assert torch.allclose(res.log_likelihood, ref.log_likelihood, atol=1e-10)
    assert torch.allclose(res.gradient, ref.gradient, atol=1e-10)


def test_default_budget_follows_the_memory_available():
    available = available_bytes()
    assert available is not None and available > 0  # Linux: /proc/meminfo (and any cgroup limit)
    kern, *_ = tiny_problem(memory_budget=None)
    assert kern.memory_budget == pytest.approx(max(256 << 20, available // 4), rel=0.1)


def test_precision_follows_the_device():
    cpu = torch.device("cpu")
    assert resolve_precision("auto", cpu) == (torch.float32, False)  # no TF32 on a CPU
    assert resolve_precision("float64", cpu) == (torch.float64, False)
    with pytest.raises(InputError, match="compute capability"):
        resolve_precision("tf32", cpu)


def test_tf32_products_are_scoped_to_the_kernel():
    matmul = torch.backends.cuda.matmul
    before = matmul.fp32_precision
    with tf32_products(True):
        assert matmul.fp32_precision == "tf32"
    assert matmul.fp32_precision == before


def test_denormals_are_flushed_inside_the_kernel_only():
    from cryosgd.runtime.device import flush_denormals

    tiny = torch.tensor([1e-39], dtype=torch.float32)  # a float32 denormal
    kern, vol, batch = tiny_problem()[:3]
    kern(vol, batch)
    assert float(tiny * 1.0) != 0.0  # after the kernel: the process's setting is left alone
    with flush_denormals():
        assert float(tiny * 1.0) == 0.0
        with flush_denormals():
            pass
        assert float(tiny * 1.0) == 0.0  # a nested block does not switch it off early
    assert float(tiny * 1.0) != 0.0
