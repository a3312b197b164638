"""Volumes to start from: densities from atomic models or maps, and the paper's random spheres."""
from __future__ import annotations

import math
import warnings
from pathlib import Path

import numpy as np
from scipy import ndimage

__all__ = ["density_from_model", "resample_map", "random_spheres", "MODEL_SUFFIXES"]

MODEL_SUFFIXES = (".pdb", ".ent", ".cif", ".mmcif", ".pdb.gz", ".ent.gz", ".cif.gz", ".mmcif.gz")


def density_from_model(path: str | Path, box: int, pixel_size: float, *, resolution: float | None = None) -> np.ndarray:
    """Electron-scattering density of an atomic model (PDB/mmCIF) on a ``(box,)*3`` grid.

    The model's centroid is placed at the box centre (voxel ``box // 2``).
    The atoms are blurred (an isotropic B-factor added to each) so that the
    density falls to 1% at ``resolution`` (Å; default Nyquist, ``2 * pixel_size``):
    sampled on the grid, it is then band-limited rather than aliased.
    Returns float32 indexed [z, y, x].
    """
    import gemmi

    st = gemmi.read_structure(str(path))
    st.remove_hydrogens()
    st.remove_ligands_and_waters()
    model = st[0]
    pos = np.array([a.pos.tolist() for ch in model for res in ch for a in res])
    if len(pos) == 0:
        raise ValueError("the model has no atoms")
    move = gemmi.Position(*(np.full(3, (box // 2) * pixel_size) - pos.mean(0)))
    for ch in model:
        for res in ch:
            for atom in res:
                atom.pos = atom.pos + move
    length = box * pixel_size
    cell = gemmi.UnitCell(length, length, length, 90, 90, 90)
    calc = gemmi.DensityCalculatorE()
    d = resolution if resolution else 2 * pixel_size
    calc.d_min = d
    calc.blur = 4 * math.log(100) * d**2  # exp(-B s^2 / 4) = 0.01 at s = 1/d
    calc.grid.set_unit_cell(cell)
    calc.grid.spacegroup = gemmi.SpaceGroup("P 1")
    calc.grid.set_size(box, box, box)
    calc.add_model_density_to_grid(model)
    calc.grid.symmetrize_sum()
    return np.array(calc.grid, copy=True).transpose(2, 1, 0).astype(np.float32)  # gemmi is [x, y, z]


def resample_map(volume: np.ndarray, voxel_size: float | None, box: int, pixel_size: float) -> np.ndarray:
    """Resample a map (any cuboid, indexed [z, y, x]) to a centred ``(box,)*3`` grid of ``pixel_size`` Å.

    A map without a voxel size is taken to be at ``pixel_size`` already.
    """
    vol = np.asarray(volume, dtype=np.float64)
    if voxel_size is None:
        warnings.warn(f"the map has no voxel size; taking it to be {pixel_size} Å", stacklevel=2)
        voxel_size = pixel_size
    zoom = voxel_size / pixel_size
    if abs(zoom - 1) > 1e-6:
        if zoom < 1:  # anti-alias before shrinking
            vol = ndimage.gaussian_filter(vol, 0.5 / zoom, mode="constant")
        # linear: a spline would ring (negative density) at the edges of a thresholded map
        vol = ndimage.zoom(vol, zoom, order=1, mode="grid-constant", grid_mode=True)
    out = np.zeros((box,) * 3)
    src, dst = [], []
    for n in vol.shape:
        # centre voxel n // 2 of the source lands on box // 2
        lo_src = max(0, n // 2 - box // 2)
        lo_dst = max(0, box // 2 - n // 2)
        length = min(n - lo_src, box - lo_dst)
        src.append(slice(lo_src, lo_src + length))
        dst.append(slice(lo_dst, lo_dst + length))
    out[tuple(dst)] = vol[tuple(src)]
    return out.astype(np.float32)


def random_spheres(box: int, rng: np.random.Generator, *, n_spheres: int = 20, radius: float | None = None,
                   sphere_radius: tuple[float, float] | None = None) -> np.ndarray:
    """The paper's random initial density: a seeded sum of random solid spheres.

    Centres are uniform in a ball of radius ``radius`` pixels (default ``box / 4``)
    about the box centre; sphere radii are uniform in ``sphere_radius`` pixels
    (default ``(box / 16, box / 8)``).  Edges are softened by one pixel.  The sum
    is scaled to maximum 1.  Returns float32 ``(box,)*3`` [z, y, x].
    """
    radius = box / 4 if radius is None else radius
    lo, hi = sphere_radius or (box / 16, box / 8)
    grid = np.mgrid[:box, :box, :box].astype(np.float64) - box // 2  # (z, y, x)
    vol = np.zeros((box,) * 3)
    for _ in range(n_spheres):
        d = rng.standard_normal(3)
        centre = d / np.linalg.norm(d) * radius * rng.uniform() ** (1 / 3)
        r = rng.uniform(lo, hi)
        dist = np.sqrt(sum((grid[i] - centre[i]) ** 2 for i in range(3)))
        vol += np.clip(r + 0.5 - dist, 0, 1)
    return (vol / vol.max()).astype(np.float32)
