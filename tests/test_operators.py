"""The training operators and their adjoints: <A x, y> = <x, A^T y>, checked directly.

The band transform (volume -> oversampled Fourier cube, :mod:`cryosgd.forward.bandvolume`) and the
sparse slicing pair (cube -> central slices of every base rotation, :mod:`cryosgd.forward.sparse_slicing`)
are what every training step applies forward and, for the gradient, transposed.  Autograd is not used
here: each adjoint is the hand-written one the kernel calls, checked against the forward map with random
vectors in float64, on odd and even boxes.
"""
import pytest
import torch
from scipy.spatial.transform import Rotation

from cryosgd.forward.bandvolume import BandTransform
from cryosgd.forward.sparse_slicing import SparseSlicing
from cryosgd.inference.likelihood import half_plane_frequencies

F64 = torch.float64


def inner(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a * b).sum())


@pytest.mark.parametrize("box, band_limit", [(16, 4.0), (17, 5.5), (24, 7.0)])
def test_band_transform_adjoint(box, band_limit):
    gen = torch.Generator().manual_seed(box)
    band = BandTransform(box, band_limit, dtype=F64)
    volume = torch.randn((box,) * 3, generator=gen, dtype=F64)
    # a cube that is itself Hermitian (as the forward map's output always is): the adjoint is taken for
    # the real inner product on (re, im) pairs, and any cube is a valid argument
    cube = torch.randn((band.size,) * 3 + (2,), generator=gen, dtype=F64)
    lhs = inner(band.forward_pairs(volume), cube)
    rhs = inner(volume, band.adjoint_pairs(cube))
    assert lhs == pytest.approx(rhs, rel=1e-12)
    # and the forward map is the centred FFT at integer frequencies (the normalisation the docs state)
    from cryosgd.forward.interp import grid_correction
    from cryosgd.fourier import fft3c

    full = fft3c(volume / grid_correction(box, 2 * box, "trilinear").to(F64))
    h, c = band.half, box // 2
    got = band.forward(volume)[h - 4:h + 5:2, h - 4:h + 5:2, h - 4:h + 5:2]  # every other sample: integers
    want = full[c - 2:c + 3, c - 2:c + 3, c - 2:c + 3]
    torch.testing.assert_close(got, want, rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("kernel", ["trilinear", "lanczos"])
def test_sparse_slicing_adjoint(kernel):
    gen = torch.Generator().manual_seed(3)
    freqs, _ = half_plane_frequencies(5.0)
    rotations = torch.as_tensor(Rotation.random(7, random_state=1).as_matrix())
    size = 2 * 13 + 1
    slicing = SparseSlicing(rotations, torch.as_tensor(freqs), 2, size, kernel, F64, "cpu")
    cube = torch.randn((size,) * 3 + (2,), generator=gen, dtype=F64)
    slices = torch.randn(7, len(freqs), 2, generator=gen, dtype=F64)
    assert slicing.forward_pairs(cube).shape == slices.shape
    lhs = inner(slicing.forward_pairs(cube), slices)
    rhs = inner(cube, slicing.adjoint_pairs(slices))
    assert lhs == pytest.approx(rhs, rel=1e-12)
    # the transpose is a second matrix built by sorting: it must be exactly the first one transposed
    dense, dense_t = slicing.matrix.to_dense(), slicing.matrix_t.to_dense()
    torch.testing.assert_close(dense_t, dense.T, rtol=0, atol=0)
    assert slicing.nbytes > 0


def test_trilinear_corners_match_the_taps_and_have_an_adjoint():
    """The compact trilinear path (lower corner + fractions) interpolates exactly as the 8 taps of
    ``interpolation_taps`` do, and its scatter is the gather's adjoint."""
    from cryosgd.forward.interp import (
        interpolation_taps,
        trilinear_corners,
        trilinear_gather_planes,
        trilinear_scatter_planes,
    )

    size, gen = 21, torch.Generator().manual_seed(3)
    coords = (torch.rand((3, 5, 40), generator=gen, dtype=torch.float64) - 0.5) * 2 * (size // 2 - 2)
    planes = torch.randn((2, size ** 3), generator=gen, dtype=torch.float64)      # real, imaginary parts
    idx, w = interpolation_taps(coords.permute(1, 2, 0), size, "trilinear")
    expected = (planes[:, idx] * w).sum(-1)                                     # (2, 5, 40)
    base, frac = trilinear_corners(coords, size)
    got = trilinear_gather_planes(planes, base, frac, size)
    assert torch.allclose(got, expected, atol=1e-12)
    y = torch.randn(got.shape, generator=gen, dtype=torch.float64)
    back = trilinear_scatter_planes(y, base, frac, size, torch.zeros_like(planes))
    assert abs(float((got * y).sum()) - float((planes * back).sum())) < 1e-9 * float(got.abs().sum())


@pytest.mark.parametrize("kernel", ["trilinear", "lanczos"])
def test_candidate_slicing_matches_the_sparse_operator_and_has_an_adjoint(kernel):
    """The pruned search's slices of chosen rotations equal the stored operator's, and its adjoint is one."""
    from cryosgd.forward.candidate_slicing import CandidateSlicing

    freqs, _ = half_plane_frequencies(5.0)
    band = BandTransform(24, 5.0, oversampling=2, kernel=kernel, dtype=torch.float64)
    rots = torch.as_tensor(Rotation.random(12, random_state=4).as_matrix())
    cube = torch.randn((band.size,) * 3 + (2,), generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    dense = SparseSlicing(rots, torch.as_tensor(freqs), 2, band.size, kernel, torch.float64, "cpu")
    chosen = torch.tensor([7, 2, 11])
    cand = CandidateSlicing(rots.numpy(), freqs, band.size, 2, kernel, dtype=torch.float64)
    y = cand.forward(cube, chosen)
    assert torch.allclose(y, dense.forward_pairs(cube)[chosen].permute(2, 0, 1), atol=1e-10)
    g = torch.randn(y.shape, generator=torch.Generator().manual_seed(6), dtype=torch.float64)
    back = cand.adjoint(g, chosen)
    assert abs(float((y * g).sum()) - float((cube.reshape(-1, 2) * back).sum())) < 1e-9 * float(y.abs().sum())
    # the corners kept from forward(keep=True) give that adjoint bit for bit, in blocks too; another
    # index, or a second adjoint, computes its own
    cand.block = 2
    back = cand.adjoint(g, chosen)
    assert torch.equal(cand.forward(cube, chosen, keep=True), y)
    assert torch.equal(cand.adjoint(g, chosen), back)
    other = torch.tensor([1, 3, 5])
    cand.forward(cube, chosen, keep=True)
    assert torch.allclose(cand.adjoint(g, other), CandidateSlicing(rots.numpy(), freqs, band.size, 2, kernel,
                                                                  dtype=torch.float64).adjoint(g, other))
    assert cand._kept is None
