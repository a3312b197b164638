"""Which point group best explains a C1 map, and where its axes lie.

For each candidate group G the map ``V`` is compared with its symmetrised
version ``S_G V`` (the average of ``V`` over G's rotations, :func:`symmetrise`),
with G placed in the orientation, about the box centre, that makes them agree best:

    correlation(G) = <V, S_G V> / (|V| |S_G V|)

on the map low-passed and resampled to ``size`` voxels, its mean removed and a
soft sphere applied.  ``S_G`` is an orthogonal projection, so
``correlation(G)**2`` is the fraction of the map's variance that is G-invariant,
and ``correlation(G)**2 = mean_g c(g)`` with ``c(g) = <V, g V> / |V|^2``: the
search scores each candidate orientation by that mean over the group's
elements, and reports the correlation computed directly from ``S_G V``.

The search (coarse, then refined):

- ``Cn``: the n-fold axis over a half-sphere spiral of directions, then finer
  steps about the best few;
- ``Dn``: the best Cn axis, and the 2-fold axis perpendicular to it over
  ``[0, 180)`` degrees;
- ``T``, ``O``, ``I``: the best C3, C4, C5 axis as the group's 3-, 4- or 5-fold
  axis, the turn about it over one period, then a local search over all
  three angles.

The group reported as best explaining the map (:func:`choose_group`) rests on
the residual ``(1 - correlation**2) / (1 - 1/|G|)``: the variance that G
leaves unexplained, relative to what it leaves of a map with no symmetry
(white noise keeps ``1/|G|`` of its variance under ``S_G``).  A group the map
lacks leaves a residual near 1 whatever its order; a group it has, and each of
its subgroups, leaves only the floor set by noise and interpolation.  So the
chosen group is the largest whose residual is at most 0.1 and at most 3 times
the smallest residual among the candidates; none such means C1.  Measured on
the 5FUU density (pseudo-C3 core, asymmetric overall): smallest residual 0.27,
C1.  On that density made D7 and turned at random: C7 0.0016, D7 0.0017, C2
0.0028, C3 0.015, D8 0.013, T, O, I 0.07-0.09: D7.

Orientation: each fit carries ``Q``, the rotation from RELION's standard frame
of the group to the map's frame, so the group in the map is ``Q G Q^T`` and its
axes are ``Q`` times RELION's axes.  The map brought into RELION's standard
orientation is ``W(p) = V(Q p)``: the map seen at RELION Euler angles
``matrix_to_relion_euler(Q)`` (``rlnAngleRot, rlnAngleTilt, rlnAnglePsi``),
e.g. its projection at those angles looks down the group's z axis.
The axes pass through the box centre (voxel ``N // 2``): centre the map first.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

from ..align import downsample, rotate_volume
from ..forward.rotations import matrix_to_relion_euler
from ..fourier import soft_mask
from .groups import group_generators, parse_group, point_group, rotation_about, symmetrise

__all__ = ["GroupFit", "SymmetryReport", "find_symmetry", "choose_group", "DEFAULT_CANDIDATES"]

DEFAULT_CANDIDATES = tuple([f"C{n}" for n in range(2, 9)] + [f"D{n}" for n in range(2, 9)] + ["T", "O", "I"])
_FRACTIONS = sorted({(k / n) for n in range(2, 9) for k in range(1, n) if k / n <= 0.5})


@dataclass(frozen=True)
class GroupFit:
    """One candidate group in its best orientation.

    group:       name (``"D7"``).
    order:       ``|G|``.
    correlation: between the map and its G-symmetrised version (search size, masked).
    orientation: ``(3, 3)`` Q, RELION's standard frame of the group -> the map's frame.
    axes:        ``[(fold, (3,) unit vector (x, y, z) in the map's frame)]``: RELION's generating
                 axes of the group (Cn: the n-fold; Dn: the n-fold, then the 2-fold; T, O, I as in
                 :func:`group_generators`) placed by Q.
    euler:       RELION (rot, tilt, psi) in degrees of Q: the map seen at these angles is in
                 RELION's standard orientation for the group.
    """

    group: str
    order: int
    correlation: float
    orientation: np.ndarray
    axes: list
    euler: np.ndarray

    @property
    def residual(self) -> float:
        """``(1 - correlation**2) / (1 - 1/|G|)``: the map's variance that G does not explain, relative to
        what it leaves of a map with no symmetry at all (white noise keeps ``1/|G|`` of its variance).
        About 1 for a group the map lacks; the floor set by noise and interpolation for one it has."""
        if self.order == 1:
            return 0.0
        return max(0.0, 1 - self.correlation ** 2) / (1 - 1 / self.order)

    def as_dict(self) -> dict:
        return {"group": self.group, "order": self.order, "correlation": round(self.correlation, 4),
                "residual": round(self.residual, 5),
                "axes": [{"fold": f, "axis": [round(float(x), 4) for x in a]} for f, a in self.axes],
                "euler_rot_tilt_psi": [round(float(x), 2) for x in self.euler],
                "orientation": np.round(self.orientation, 6).tolist()}


@dataclass
class SymmetryReport:
    """Every candidate's fit, and the group chosen by :func:`choose_group`."""

    fits: list
    best: GroupFit
    max_residual: float
    factor: float
    size: int
    notes: list = field(default_factory=list)

    def as_dict(self) -> dict:
        return {"best": self.best.group, "search_size": self.size, "rule": self.rule(),
                "fits": [f.as_dict() for f in self.fits]}

    def rule(self) -> str:
        return (f"the largest group with residual <= {self.max_residual:g} and <= {self.factor:g} x the "
                f"smallest residual; else C1")

    def text(self) -> str:
        lines = [f"{'group':>5} {'order':>5} {'corr':>7} {'resid':>7}  {'rot':>7} {'tilt':>7} {'psi':>7}  "
                 f"axes (x, y, z)"]
        for f in self.fits:
            mark = "  <- best" if f is self.best else ""
            axes = "  ".join(f"{k}-fold ({a[0]:+.3f}, {a[1]:+.3f}, {a[2]:+.3f})" for k, a in f.axes[:2])
            euler = " ".join(f"{angle:7.1f}" for angle in f.euler)
            lines.append(f"{f.group:>5} {f.order:>5} {f.correlation:7.4f} {f.residual:7.4f}  {euler}  {axes}{mark}")
        lines.append(f"best explained by {self.best.group}: {self.rule()}")
        lines.append(f"corr: the map against its symmetrised self ({self.size}^3 voxels, masked); resid: "
                     f"(1 - corr^2) / (1 - 1/order); angles: RELION (rot, tilt, psi) at which the map is "
                     f"in RELION's standard orientation for the group")
        return "\n".join(lines + self.notes)


def _fibonacci_half_sphere(n: int) -> np.ndarray:
    """``(n, 3)`` near-uniform directions with z >= 0 (an axis and its opposite are the same axis)."""
    i = np.arange(n) + 0.5
    z = 1 - i / n
    phi = np.pi * (1 + 5 ** 0.5) * i
    r = np.sqrt(1 - z * z)
    return np.stack([r * np.cos(phi), r * np.sin(phi), z], 1)


def _frame_with_z(d: np.ndarray) -> np.ndarray:
    """A rotation Q with ``Q e_z = d``."""
    d = d / np.linalg.norm(d)
    helper = np.array([1.0, 0, 0]) if abs(d[0]) < 0.9 else np.array([0, 1.0, 0])
    x = np.cross(helper, d)
    x /= np.linalg.norm(x)
    return np.stack([x, np.cross(d, x), d], 1)


def _align_vector(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """A rotation taking unit vector ``a`` to unit vector ``b``."""
    return _frame_with_z(b) @ _frame_with_z(a).T


class _Scorer:
    """``c(R) = <V, R V> / |V|^2`` for batches of rotations, on the prepared (masked, mean-free) map."""

    def __init__(self, volume: torch.Tensor, batch: int = 48):
        self.v = volume
        self.norm2 = float((volume * volume).sum())
        self.batch = batch
        self.evaluated = 0

    def __call__(self, rotations: np.ndarray) -> np.ndarray:
        r = torch.as_tensor(np.asarray(rotations, dtype=np.float64).reshape(-1, 3, 3), dtype=self.v.dtype)
        out = []
        for i in range(0, len(r), self.batch):
            rot = rotate_volume(self.v, r[i:i + self.batch])
            out.append((rot * self.v).sum((1, 2, 3)) / self.norm2)
        self.evaluated += len(r)
        return torch.cat(out).numpy().astype(np.float64) if out else np.zeros(0)

    def group_score(self, orientations: np.ndarray, group: np.ndarray) -> np.ndarray:
        """Mean of c over the group's elements (identity counts 1), for each ``(K, 3, 3)`` orientation Q.

        ``c(g) = c(g^T)``, so each pair of mutually inverse elements is evaluated once.
        """
        index, weight = _inverse_pairs(group)
        q = np.asarray(orientations).reshape(-1, 3, 3)
        ops = q[:, None] @ group[None, index] @ q[:, None].transpose(0, 1, 3, 2)  # (K, P, 3, 3)
        c = self(ops.reshape(-1, 3, 3)).reshape(len(q), len(index))
        return (1 + c @ weight) / len(group)


def _inverse_pairs(group: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Non-identity elements up to inversion: their indices, and weight 2 (a pair) or 1 (an involution)."""
    index, weight = [], []
    for i in range(1, len(group)):
        j = int(np.abs(group - group[i].T).reshape(len(group), -1).max(1).argmin())
        if i <= j:
            index.append(i)
            weight.append(1.0 if i == j else 2.0)
    return np.array(index, dtype=int), np.array(weight)


def _prepare(volume, size: int, mask_radius: float | None) -> torch.Tensor:
    vol = torch.as_tensor(np.asarray(volume, dtype=np.float64))
    if vol.ndim != 3 or len(set(vol.shape)) != 1:
        raise ValueError(f"a cubic map is needed, got shape {tuple(vol.shape)}")
    n = vol.shape[0]
    small = downsample(vol, min(size, n)) if size < n else vol
    m = small.shape[0]
    radius = (0.45 * m) if mask_radius is None else mask_radius * m / n
    mask = soft_mask(m, radius, width=max(1.0, 0.06 * m), dtype=torch.float64)
    inside = mask > 0.5
    small = (small - small[inside].mean()) * mask
    return small.to(torch.float32)


def _local_rotations(rng, n: int, step: float) -> np.ndarray:
    """``n`` small rotations of about ``step`` radians (uniform in a ball of rotation vectors)."""
    vec = rng.standard_normal((n, 3))
    vec *= step * rng.uniform(0, 1, (n, 1)) ** (1 / 3) / np.linalg.norm(vec, axis=1, keepdims=True)
    from scipy.spatial.transform import Rotation

    return Rotation.from_rotvec(vec).as_matrix()


def _refine(scorer: _Scorer, q: np.ndarray, group: np.ndarray, rng, steps=(0.08, 0.04, 0.02, 0.01),
            n: int = 16) -> tuple[np.ndarray, float]:
    best_q, best = q, float(scorer.group_score(q, group)[0])
    for step in steps:
        cand = _local_rotations(rng, n, step) @ best_q
        s = scorer.group_score(cand, group)
        j = int(s.argmax())
        if s[j] > best:
            best_q, best = cand[j], float(s[j])
    return best_q, best


def _axis_scores(scorer: _Scorer, dirs: np.ndarray) -> dict:
    """``{fraction: (D,) c of the rotation by 2 pi fraction about each direction}``."""
    rots = np.stack([[rotation_about(d, 2 * np.pi * f) for f in _FRACTIONS] for d in dirs])  # (D, F, 3, 3)
    c = scorer(rots.reshape(-1, 3, 3)).reshape(len(dirs), len(_FRACTIONS))
    return {f: c[:, i] for i, f in enumerate(_FRACTIONS)}


def _cn_score(table: dict, n: int) -> np.ndarray:
    """Mean of c over C_n (c of a turn and of its inverse are equal)."""
    total = 1.0
    for k in range(1, n):
        f = min(k / n, 1 - k / n)
        total = total + table[min(table, key=lambda x: abs(x - f))]
    return total / n


def _search_axes(scorer: _Scorer, orders, rng, n_dirs: int) -> dict:
    """Best axis direction for each n in ``orders``: ``{n: (axis, score)}``."""
    dirs = _fibonacci_half_sphere(n_dirs)
    table = _axis_scores(scorer, dirs)
    spacing = 3.6 / np.sqrt(2 * n_dirs)
    best = {}
    for n in orders:
        s = _cn_score(table, n)
        starts = dirs[np.argsort(s)[::-1][:2]]
        cands = []
        for d in starts:
            group = point_group(f"C{n}")
            q, score = _refine(scorer, _frame_with_z(d), group, rng,
                               steps=(spacing, spacing / 2, spacing / 4, spacing / 8), n=12)
            cands.append((score, q[:, 2]))
        score, axis = max(cands, key=lambda t: t[0])
        best[n] = (axis / np.linalg.norm(axis), score)
    return best


def _fit(name: str, q: np.ndarray, prepared: torch.Tensor) -> GroupFit:
    group = point_group(name)
    ops = q @ group @ q.T
    vol = prepared.double()
    sym = torch.as_tensor(symmetrise(vol, ops))
    corr = float((sym * vol).sum() / (sym.norm() * vol.norm()).clamp(min=1e-30))
    axes = [(fold, q @ axis) for fold, axis in group_generators(name)]
    return GroupFit(name, len(group), corr, q, axes, matrix_to_relion_euler(q[None])[0])


def _is_subgroup(small: GroupFit, big: GroupFit, tolerance: float = 0.1) -> bool:
    """Whether ``small``'s operators, as placed in the map, are all (within ``tolerance``) operators of ``big``."""
    a = small.orientation @ point_group(small.group) @ small.orientation.T
    b = big.orientation @ point_group(big.group) @ big.orientation.T
    return all(np.abs(b - m).reshape(len(b), -1).max(1).min() < tolerance for m in a)


def _consistent(fits, max_residual: float, factor: float) -> list:
    nontrivial = [f for f in fits if f.order > 1]
    if not nontrivial:
        return []
    floor = min(f.residual for f in nontrivial)
    return [f for f in nontrivial if f.residual <= max_residual and f.residual <= factor * max(floor, 1e-6)]


def choose_group(fits, max_residual: float = 0.1, factor: float = 3.0) -> GroupFit:
    """The group that best explains the map: the largest consistent one, else C1.

    A group is consistent with the map when its residual (:attr:`GroupFit.residual`) is at most
    ``max_residual`` (it explains at least 90% of the variance a group it lacked would leave) and at
    most ``factor`` times the smallest residual of any candidate, which measures the floor that
    noise and interpolation set for a symmetry the map truly has (every subgroup of the map's group
    sits at that floor).  The largest consistent group wins; at equal order, the smaller residual.
    """
    passing = _consistent(fits, max_residual, factor)
    if not passing:
        return next(f for f in fits if f.order == 1)
    return max(passing, key=lambda f: (f.order, -f.residual))


def find_symmetry(volume, *, candidates=DEFAULT_CANDIDATES, size: int = 32, max_residual: float = 0.1,
                  factor: float = 3.0, mask_radius: float | None = None, n_dirs: int = 200,
                  seed: int = 0) -> SymmetryReport:
    """Fit each candidate group to ``volume`` and choose the one that best explains it.

    volume:      ``(N, N, N)`` map indexed ``[z, y, x]``, the particle centred on voxel ``N // 2``.
    candidates:  group names (default C2-C8, D2-D8, T, O, I); C1 is always added.
    size:        the map is Fourier-cropped to ``size`` voxels for the search (a low-pass).
    max_residual, factor: the rule of :func:`choose_group`.
    mask_radius: soft sphere radius in voxels of the input map (default 0.45 N).
    n_dirs:      directions on the half-sphere of the coarse axis search.
    Returns a :class:`SymmetryReport`, fits in candidate order after C1.
    """
    names = []
    for name in candidates:
        kind, n = parse_group(name)
        canon = f"{kind}{n}" if kind in "CD" else kind
        if canon != "C1" and canon not in names:
            names.append(canon)
    prepared = _prepare(volume, size, mask_radius)
    scorer = _Scorer(prepared)
    rng = np.random.default_rng(seed)
    needed = {parse_group(x)[1] for x in names if x[0] in "CD"}
    needed |= {3 for x in names if x == "T"} | {4 for x in names if x == "O"} | {5 for x in names if x == "I"}
    axes = _search_axes(scorer, sorted(needed), rng, n_dirs) if needed else {}
    fits = [GroupFit("C1", 1, 1.0, np.eye(3), [], np.zeros(3))]
    for name in names:
        kind, n = parse_group(name)
        group = point_group(name)
        if kind == "C":
            q = _frame_with_z(axes[n][0])
        elif kind == "D":
            # the 2-fold axis perpendicular to the n-fold: one turn of half a circle covers all
            frame = _frame_with_z(axes[n][0])
            turns = np.radians(np.arange(0, 180.0 / n, 2.0))
            cand = np.stack([frame @ rotation_about((0, 0, 1), t) for t in turns])
            s = scorer.group_score(cand, group)
            q, _ = _refine(scorer, cand[int(s.argmax())], group, rng, steps=(0.03, 0.015, 0.008))
        else:
            fold, axis = {"T": (3, (0, 0, 1)), "O": (4, (0, 0, 1)),
                          "I": (5, (1, 0, (1 + 5 ** 0.5) / 2))}[kind]
            axis = np.asarray(axis, dtype=np.float64) / np.linalg.norm(axis)
            target = axes[fold][0]
            q0 = _align_vector(axis, target)
            turns = np.radians(np.arange(0, 360.0 / fold, 3.0))
            cand = np.stack([rotation_about(target, t) @ q0 for t in turns])
            s = scorer.group_score(cand, group)
            q, _ = _refine(scorer, cand[int(s.argmax())], group, rng, steps=(0.04, 0.02, 0.01), n=12)
        fits.append(_fit(name, q, prepared))
    best = choose_group(fits, max_residual, factor)
    others = [f.group for f in _consistent(fits, max_residual, factor) if f is not best and not _is_subgroup(f, best)]
    notes = []
    if others:
        notes.append(f"note: {', '.join(others)} fit as well but are not subgroups of {best.group} as placed: the map "
                     f"is nearly cylindrical or spherical at this resolution and {best.group} rests on its order "
                     f"alone; a larger --size may separate them")
    return SymmetryReport(fits, best, max_residual, factor, prepared.shape[0], notes)


def symmetry_of_map_file(path, *, groups: str | None = None, size: int = 32) -> SymmetryReport:
    """``cryosgd symmetry``: read a map, check it, fit the candidate groups (comma-separated names)."""
    from ..io import InputError, read_map

    volume, _ = read_map(path)
    if volume.ndim != 3 or len(set(volume.shape)) != 1:
        raise InputError(path, f"needs a cubic 3D map, got shape {volume.shape}")
    if not np.all(np.isfinite(volume)) or float(np.ptp(volume)) == 0:
        raise InputError(path, "the map is constant or has NaN/Inf voxels")
    if size < 8:
        raise InputError(path, f"--size {size} is too small (at least 8)")
    candidates = DEFAULT_CANDIDATES if not groups else [g for g in groups.split(",") if g.strip()]
    for g in candidates:
        parse_group(g)  # InputError for a bad name
    return find_symmetry(volume, candidates=candidates, size=size)
