"""Invariants of the forward model: Fourier slice theorem, adjoints, conventions."""
import math

import numpy as np
import pytest
import torch

from cryosgd.forward.ctf import CTFParams, compute_ctf, ctf_grid, electron_wavelength
from cryosgd.forward.interp import KERNELS
from cryosgd.forward.project import project
from cryosgd.forward.rotations import matrix_to_relion_euler, random_rotations, relion_euler_to_matrix
from cryosgd.forward.shift import phase_shifts, shift_spectra
from cryosgd.forward.slicing import extract_central_slices, insert_central_slices
from cryosgd.fourier import fft2c, fft3c, fft3c_adjoint, ifft2c, ifft3c

F64 = torch.float64


def gaussian_blobs(n, centres, sigma):
    """Volume (n,n,n) [z,y,x] and an analytic projector for a sum of Gaussians (pixels)."""
    z, y, x = np.mgrid[:n, :n, :n] - n // 2
    vol = sum(np.exp(-((x - c[0]) ** 2 + (y - c[1]) ** 2 + (z - c[2]) ** 2) / (2 * sigma**2)) for c in centres)

    def projection(rot):
        yy, xx = np.mgrid[:n, :n] - n // 2
        out = np.zeros((n, n))
        for c in centres:
            ci = rot.T @ np.asarray(c)  # the blob centre in image coordinates
            out += math.sqrt(2 * math.pi) * sigma * np.exp(-((xx - ci[0]) ** 2 + (yy - ci[1]) ** 2) / (2 * sigma**2))
        return out

    return torch.tensor(vol, dtype=F64), projection


@pytest.mark.parametrize("n", [16, 17])
def test_fft_round_trips_and_unitary_2d(n):
    rng = np.random.default_rng(0)
    img = torch.tensor(rng.standard_normal((3, n, n)))
    assert torch.allclose(ifft2c(fft2c(img)).real, img, atol=1e-12)
    assert math.isclose(float((fft2c(img).abs() ** 2).sum()), float((img**2).sum()), rel_tol=1e-12)
    vol = torch.tensor(rng.standard_normal((n, n, n)))
    assert torch.allclose(ifft3c(fft3c(vol)).real, vol, atol=1e-12)
    u = torch.tensor(rng.standard_normal((n, n, n)) + 1j * rng.standard_normal((n, n, n)))
    lhs = (fft3c(vol.to(torch.complex128)).conj() * u).sum()
    rhs = (vol.to(torch.complex128).conj() * fft3c_adjoint(u)).sum()
    assert abs(complex(lhs) - complex(rhs)) < 1e-9 * abs(complex(lhs))


@pytest.mark.parametrize("n", [16, 17])
def test_fourier_slice_theorem_on_grid(n):
    """The kz = 0 plane of fft3c(V) is fft2c of the z-projection, to rounding (float64)."""
    rng = np.random.default_rng(1)
    vol = torch.tensor(rng.standard_normal((n, n, n)))
    assert torch.allclose(fft3c(vol)[n // 2], fft2c(vol.sum(0)), atol=1e-12)


@pytest.mark.parametrize("n", [32, 33])
@pytest.mark.parametrize("kernel,tol", [("trilinear", 0.015), ("lanczos", 0.006)])
def test_fourier_slice_theorem_any_rotation(n, kernel, tol):
    """Projections by slicing (2x oversampled, grid-corrected) match analytic line integrals.

    Tolerance: max error relative to the peak, 1.5% (trilinear) and 0.6% (Lanczos, a=3).
    """
    rng = np.random.default_rng(2)
    centres = [rng.uniform(-n / 6, n / 6, 3) for _ in range(5)]
    vol, analytic = gaussian_blobs(n, centres, 1.5)
    rots = random_rotations(6, rng)
    images = project(vol, rots, kernel=kernel).numpy()
    for img, rot in zip(images, rots):
        ref = analytic(rot)
        assert np.abs(img - ref).max() / ref.max() < tol


@pytest.mark.parametrize("kernel", list(KERNELS))
@pytest.mark.parametrize("size", [10, 11])
def test_slicing_adjoint(kernel, size):
    rng = np.random.default_rng(3)
    spec = torch.tensor(rng.standard_normal((size,) * 3) + 1j * rng.standard_normal((size,) * 3))
    rots = torch.tensor(random_rotations(5, rng))
    freqs = torch.tensor(rng.uniform(-3, 3, (20, 2)))
    u = torch.tensor(rng.standard_normal((5, 20)) + 1j * rng.standard_normal((5, 20)))
    pv = extract_central_slices(spec, rots, freqs, oversampling=1.3, kernel=kernel)
    ptu = insert_central_slices(u, rots, freqs, size, oversampling=1.3, kernel=kernel)
    lhs, rhs = complex((pv.conj() * u).sum()), complex((spec.conj() * ptu).sum())
    assert abs(lhs - rhs) < 1e-10 * abs(lhs)


def test_ctf_and_shift_adjoints():
    rng = np.random.default_rng(4)
    n = 12
    ctf = CTFParams.make([12000.0, 20000.0], [11000.0, 19000.0], [0.3, 1.2])
    c = ctf_grid(ctf, n, 1.5)
    v = torch.tensor(rng.standard_normal((2, n, n)) + 1j * rng.standard_normal((2, n, n)))
    u = torch.tensor(rng.standard_normal((2, n, n)) + 1j * rng.standard_normal((2, n, n)))
    assert abs(complex(((c * v).conj() * u).sum()) - complex((v.conj() * (c * u)).sum())) < 1e-10
    t = torch.tensor([[1.5, -2.0], [0.25, 3.0]])
    sv, stu = shift_spectra(v, t), shift_spectra(u, -t)
    assert abs(complex((sv.conj() * u).sum()) - complex((v.conj() * stu).sum())) < 1e-10


def test_shift_moves_a_delta_against_the_origin():
    """Origin offset t puts the particle centre at box//2 - t (RELION's rlnOriginX/Y)."""
    n = 16
    img = torch.zeros(1, n, n, dtype=F64)
    img[0, n // 2, n // 2] = 1
    out = ifft2c(shift_spectra(fft2c(img), torch.tensor([[3.0, -2.0]], dtype=F64))).real[0]
    y, x = np.unravel_index(int(out.argmax()), out.shape)
    assert (x, y) == (n // 2 - 3, n // 2 + 2)
    freqs = torch.tensor([[1.0, 0.0], [0.0, 2.0]], dtype=F64)
    ph = phase_shifts(freqs, torch.tensor([[1.0, 1.0]], dtype=F64), n)
    assert torch.allclose(ph.angle(), torch.tensor([[2 * math.pi / n, 4 * math.pi / n]], dtype=F64))


def test_rotation_conventions():
    """R's third column is the beam direction; Euler angles round-trip; tilt 90 rot 0 looks along x."""
    rng = np.random.default_rng(5)
    ang = np.stack([rng.uniform(-180, 180, 20), rng.uniform(1, 179, 20), rng.uniform(-180, 180, 20)], 1)
    r = relion_euler_to_matrix(*ang.T)
    back = relion_euler_to_matrix(*matrix_to_relion_euler(r).T)
    assert np.allclose(r, back, atol=1e-10)
    r0 = relion_euler_to_matrix(0.0, 90.0, 0.0)[0]
    assert np.allclose(r0[:, 2], [1, 0, 0], atol=1e-12)
    rots = random_rotations(20000, rng)
    assert abs(np.mean(np.trace(rots, axis1=1, axis2=2))) < 0.03  # Haar: E[trace] = 0


def test_ctf_values():
    """Wavelength at 300 kV, CTF at DC (= amplitude contrast) and its first zero."""
    assert math.isclose(electron_wavelength(300.0), 0.019687, rel_tol=1e-4)
    ctf = CTFParams.make(20000.0, amplitude_contrast=0.07)
    freqs = torch.tensor([[0.0, 0.0]], dtype=F64)
    assert math.isclose(float(compute_ctf(ctf, freqs, 1.0)[0, 0]), 0.07, rel_tol=1e-12)
    from cryosgd.forward.ctf import ctf_first_zero

    s0 = ctf_first_zero(20000.0, 300.0, 2.7, 0.07)
    val = compute_ctf(ctf, torch.tensor([[s0 * 1.0, 0.0]], dtype=F64), 1.0)
    assert abs(float(val)) < 1e-9


def test_apply_alignment_shift_moves_content_by_t():
    """An alignment's shift t (x, y, z) moves the map's content by +t pixels (here: integer, so a roll)."""
    from cryosgd.align import Alignment, apply_alignment
    from cryosgd.forward.density import random_spheres

    volume = random_spheres(20, np.random.default_rng(0), n_spheres=6)
    moved = apply_alignment(volume, Alignment(np.eye(3), np.array([2.0, -1.0, 3.0]), False, 1.0))
    np.testing.assert_allclose(moved, np.roll(volume, (3, -1, 2), axis=(0, 1, 2)), atol=1e-9)
