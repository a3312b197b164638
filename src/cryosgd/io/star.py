"""RELION STAR particle files (3.0 and 3.1+), read and written.

Reading (through ``starfile``) accepts both layouts:

* RELION 3.0: one particle table with everything per row.  The pixel size is
  ``rlnImagePixelSize`` / ``rlnPixelSize`` (Å) or ``rlnDetectorPixelSize``
  (µm) * 1e4 / ``rlnMagnification``; origins ``rlnOriginX/Y`` are in pixels.
* RELION 3.1+: a ``data_optics`` table (``rlnVoltage``,
  ``rlnSphericalAberration``, ``rlnAmplitudeContrast``, ``rlnImagePixelSize``,
  ``rlnImageSize`` per optics group) joined to ``data_particles`` on
  ``rlnOpticsGroup``; origins ``rlnOriginX/YAngst`` are in Å.

Conversions into the project's conventions: ``rlnImageName`` ``k@stack`` ->
``(stack, k - 1)`` with the stack path relative to the STAR file's folder
(else to the working folder); ``rlnDefocusAngle`` and ``rlnPhaseShift``
degrees -> radians; ``rlnCtfBfactor`` -> ``bfactor`` (Å²); Euler angles
(rot, tilt, psi) -> rotations R via
:func:`~cryosgd.forward.rotations.relion_euler_to_matrix`; origins -> shifts
in pixels (RELION's origin is our shift, :mod:`cryosgd.forward.shift`).

Writing produces RELION 3.1 layout (``# version 30001`` before each block),
which RELION 3.1 itself reads.
"""
from __future__ import annotations

import os
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import starfile

from ..forward.ctf import CTFParams
from ..forward.rotations import matrix_to_relion_euler, relion_euler_to_matrix
from .errors import InputError
from .mrc import ImageStack, atomic_output
from .particles import ParticleSet, single_box, single_pixel_size

__all__ = ["read_particles_star", "write_particles_star"]

DEFAULT_AMPLITUDE_CONTRAST = 0.1


def _read_blocks(path: Path) -> dict:
    if not path.is_file():
        raise InputError(path, "no such file")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)  # pandas/starfile internals
            blocks = starfile.read(path, always_dict=True)
    except Exception as err:  # starfile raises many kinds on malformed text
        raise InputError(path, f"not a readable STAR file ({type(err).__name__}: {err})") from None
    return {name: pd.DataFrame([block]) if isinstance(block, dict) else block
            for name, block in blocks.items()}


def _particle_table(path: Path, blocks: dict) -> pd.DataFrame:
    """The particle table: ``data_particles``, else the first table with particle columns."""
    if isinstance(blocks.get("particles"), pd.DataFrame):
        return blocks["particles"]
    tables = [b for name, b in blocks.items() if name != "optics" and isinstance(b, pd.DataFrame)]
    for wanted in ("rlnImageName", "rlnDefocusU"):
        for table in tables:
            if wanted in table.columns:
                return table
    raise InputError(path, "no particle table found (no data block with rlnImageName or rlnDefocusU)")


class _Columns:
    """Per-particle column lookup: the particle table first, then its optics group."""

    def __init__(self, path: Path, table: pd.DataFrame, optics: pd.DataFrame | None):
        self.path, self.table, self.optics = path, table, optics
        self.row = None
        if optics is None:
            return
        if "rlnOpticsGroup" not in optics.columns:
            raise InputError(path, "the optics table has no rlnOpticsGroup column")
        groups = self.numbers(optics["rlnOpticsGroup"], "rlnOpticsGroup").astype(np.int64)
        if "rlnOpticsGroup" in table.columns:
            wanted = self.numbers(table["rlnOpticsGroup"], "rlnOpticsGroup").astype(np.int64)
        elif len(groups) == 1:
            wanted = np.full(len(table), groups[0])
        else:
            raise InputError(path, "the particle table has no rlnOpticsGroup column")
        self.row = pd.Index(groups).get_indexer(wanted)
        if (self.row < 0).any():
            missing = int(wanted[self.row < 0][0])
            raise InputError(path, f"particles refer to optics group {missing}, which the optics table lacks")

    def numbers(self, column: pd.Series, name: str) -> np.ndarray:
        values = pd.to_numeric(column, errors="coerce").to_numpy(dtype=np.float64)
        if not np.isfinite(values).all():
            raise InputError(self.path, f"column {name} has missing or non-numeric values")
        return values

    def get(self, name: str) -> np.ndarray | None:
        """``(n,)`` float64 values of column ``name``, or ``None`` if neither table has it."""
        if name in self.table.columns:
            return self.numbers(self.table[name], name)
        if self.optics is not None and name in self.optics.columns:
            return self.numbers(self.optics[name], name)[self.row]
        return None


def _pixel_sizes(columns: _Columns) -> np.ndarray | None:
    """``(n,)`` pixel sizes in Å from the STAR columns, or ``None``."""
    for name in ("rlnImagePixelSize", "rlnPixelSize"):
        sizes = columns.get(name)
        if sizes is not None:
            return sizes
    detector, magnification = columns.get("rlnDetectorPixelSize"), columns.get("rlnMagnification")
    if detector is not None and magnification is not None:
        with np.errstate(divide="ignore", invalid="ignore"):  # a zero magnification is refused as a size
            return detector * 1e4 / magnification  # µm -> Å, divided by the magnification
    return None


def _image_locations(path: Path, names: pd.Series, require_images: bool) -> tuple[list[Path], np.ndarray]:
    """``rlnImageName`` values ``k@stack`` -> (absolute stack paths, 0-based indices)."""
    text = names.astype(str).str.strip()
    has_at = text.str.contains("@", regex=False)
    split = text.str.split("@", n=1, expand=True)
    files = split[1].where(has_at, text) if split.shape[1] > 1 else text
    numbers = pd.to_numeric(split[0].where(has_at, "1"), errors="coerce")
    bad = numbers.isna() | (numbers < 1) | (numbers != numbers.round())
    if bad.any():
        raise InputError(path, f"bad rlnImageName '{text[bad].iloc[0]}' (expected k@stack with k >= 1)")
    resolved = {}
    for name in files.unique():
        candidate = path.parent / name
        if not candidate.exists() and (Path.cwd() / name).exists():
            candidate = Path.cwd() / name
        elif require_images and not candidate.exists():
            raise InputError(path, f"image stack {candidate} (from rlnImageName) does not exist")
        resolved[name] = Path(os.path.abspath(candidate))
    return [resolved[name] for name in files], numbers.to_numpy(dtype=np.int64) - 1


def read_particles_star(path: str | os.PathLike, *, require_images: bool = True) -> ParticleSet:
    """Read a RELION 3.0 or 3.1+ particle STAR file.

    With ``require_images`` the table must list images (``rlnImageName``) whose
    stacks exist; without it a metadata-only table (e.g. CTF parameters) is
    accepted.  The stacks' contents are checked by
    :meth:`ParticleSet.validate_images` (``load_particles`` calls it).
    """
    path = Path(path)
    blocks = _read_blocks(path)
    table = _particle_table(path, blocks).reset_index(drop=True)
    optics = blocks.get("optics") if isinstance(blocks.get("optics"), pd.DataFrame) else None
    columns = _Columns(path, table, optics)
    n = len(table)
    if n == 0:
        raise InputError(path, "the particle table is empty")
    groups = "optics groups" if optics is not None else "particles"

    if "rlnImageName" in table.columns:
        image_files, image_index = _image_locations(path, table["rlnImageName"], require_images)
    elif require_images:
        raise InputError(path, "no rlnImageName column (the particle images are not listed)")
    else:
        image_files, image_index = [], np.zeros(0, dtype=np.int64)

    ctf = _ctf(path, columns)
    sizes = _pixel_sizes(columns)
    if sizes is not None:
        pixel_size = single_pixel_size(path, sizes, groups)
    else:
        pixel_size = _pixel_size_from_stack(path, image_files)
        sizes = np.full(n, pixel_size)
    boxes = columns.get("rlnImageSize")
    box = None if boxes is None else single_box(path, boxes, groups)

    angles = [columns.get(f"rlnAngle{a}") for a in ("Rot", "Tilt", "Psi")]
    rotations = None if any(a is None for a in angles) else relion_euler_to_matrix(*angles)
    origin_angst = [columns.get("rlnOriginXAngst"), columns.get("rlnOriginYAngst")]
    origin_pixels = [columns.get("rlnOriginX"), columns.get("rlnOriginY")]
    if all(o is not None for o in origin_angst):
        shifts = np.stack(origin_angst, axis=1) / sizes[:, None]  # Å -> pixels
    elif all(o is not None for o in origin_pixels):
        shifts = np.stack(origin_pixels, axis=1)
    else:
        shifts = None if rotations is None else np.zeros((n, 2))
    return ParticleSet(path, image_files, image_index, pixel_size, box, ctf, rotations, shifts)


def _ctf(path: Path, columns: _Columns) -> CTFParams:
    defocus_u = columns.get("rlnDefocusU")
    if defocus_u is None:
        raise InputError(path, "no CTF columns (rlnDefocusU/rlnDefocusV)")
    defocus_v = columns.get("rlnDefocusV")
    voltage, cs = columns.get("rlnVoltage"), columns.get("rlnSphericalAberration")
    if voltage is None:
        raise InputError(path, "no voltage (rlnVoltage) in the particle or optics table")
    if cs is None:
        raise InputError(path, "no spherical aberration (rlnSphericalAberration) in the particle or optics table")
    amplitude_contrast = columns.get("rlnAmplitudeContrast")
    if amplitude_contrast is None:
        warnings.warn(f"{path}: no amplitude contrast (rlnAmplitudeContrast); using "
                      f"{DEFAULT_AMPLITUDE_CONTRAST}", stacklevel=3)
        amplitude_contrast = DEFAULT_AMPLITUDE_CONTRAST

    def optional(*names):
        values = (columns.get(name) for name in names)
        return next((v for v in values if v is not None), 0.0)

    return CTFParams(
        defocus_u=defocus_u,
        defocus_v=defocus_u if defocus_v is None else defocus_v,
        defocus_angle=np.deg2rad(optional("rlnDefocusAngle")),
        voltage=voltage,
        cs=cs,
        amplitude_contrast=amplitude_contrast,
        phase_shift=np.deg2rad(optional("rlnPhaseShift")),
        bfactor=optional("rlnCtfBfactor", "rlnCtfBFactor"),
    )


def _pixel_size_from_stack(path: Path, image_files: list[Path]) -> float:
    """Fall back on the first stack's MRC header when the STAR has no pixel size."""
    where = "rlnImagePixelSize, or rlnDetectorPixelSize and rlnMagnification"
    if not image_files or not image_files[0].is_file():
        raise InputError(path, f"no pixel size ({where})")
    with ImageStack(image_files[0]) as stack:
        if stack.voxel_size is None:
            raise InputError(path, f"no pixel size: none in the STAR file ({where}) and the MRC "
                                   f"header of {image_files[0].name} says 0")
        return stack.voxel_size


def _format(values) -> list[str]:
    values = np.asarray(values)
    if values.dtype.kind == "f":
        return list(np.char.mod("%.6f", values))
    if values.dtype.kind in "iub":
        return [str(int(v)) for v in values]
    strings = [str(v) for v in values]
    if any(not s or any(c.isspace() for c in s) for s in strings):
        raise ValueError("STAR values must be non-empty and free of whitespace")
    return strings


def _block(name: str, columns: dict) -> str:
    labels = "".join(f"_{label} #{i} \n" for i, label in enumerate(columns, start=1))
    cells = [_format(values) for values in columns.values()]
    rows = "".join(" ".join(row) + " \n" for row in zip(*cells))
    return f"\n# version 30001\n\ndata_{name}\n\nloop_ \n{labels}{rows}\n"


def _image_names(path: Path, particles: ParticleSet) -> list[str]:
    folder = Path(os.path.abspath(path.parent))
    names = {}
    for file in set(particles.image_files):
        try:
            names[file] = Path(os.path.relpath(file, folder)).as_posix()
        except ValueError:  # another drive
            names[file] = Path(file).as_posix()
    return [f"{k + 1:06d}@{names[f]}" for k, f in zip(particles.image_index, particles.image_files)]


def write_particles_star(path: str | os.PathLike, particles: ParticleSet,
                         extra_columns: dict | None = None) -> None:
    """Write ``particles`` as a RELION 3.1 STAR file (atomically).

    One optics group per distinct (voltage, Cs, amplitude contrast); stack
    paths relative to the STAR file's folder; poses as Euler angles (degrees)
    and ``rlnOriginX/YAngst`` (Å).  ``extra_columns`` maps further labels
    (e.g. ``"rlnLogLikeliContribution"``) to ``(n,)`` values.
    """
    path = Path(path)
    ctf, n = particles.ctf, len(particles)
    keys = np.round(np.stack([ctf.voltage, ctf.cs, ctf.amplitude_contrast], axis=1), 6)
    unique_keys, group_of = np.unique(keys, axis=0, return_inverse=True)
    group_of = group_of.reshape(-1) + 1
    g = len(unique_keys)
    optics = {
        "rlnOpticsGroupName": [f"opticsGroup{i}" for i in range(1, g + 1)],
        "rlnOpticsGroup": np.arange(1, g + 1),
        "rlnVoltage": unique_keys[:, 0],
        "rlnSphericalAberration": unique_keys[:, 1],
        "rlnAmplitudeContrast": unique_keys[:, 2],
        "rlnImagePixelSize": np.full(g, float(particles.pixel_size)),
    }
    if particles.box is not None:
        optics["rlnImageSize"] = np.full(g, int(particles.box))
    optics["rlnImageDimensionality"] = np.full(g, 2)

    rows = {}
    if particles.has_images:
        rows["rlnImageName"] = _image_names(path, particles)
    rows.update({
        "rlnDefocusU": ctf.defocus_u,
        "rlnDefocusV": ctf.defocus_v,
        "rlnDefocusAngle": np.rad2deg(ctf.defocus_angle),
        "rlnPhaseShift": np.rad2deg(ctf.phase_shift),
        "rlnCtfBfactor": ctf.bfactor,
        "rlnOpticsGroup": group_of,
    })
    if particles.rotations is not None:
        euler = matrix_to_relion_euler(particles.rotations)
        rows.update(rlnAngleRot=euler[:, 0], rlnAngleTilt=euler[:, 1], rlnAnglePsi=euler[:, 2])
    if particles.shifts is not None:
        origins = particles.shifts * particles.pixel_size  # pixels -> Å
        rows.update(rlnOriginXAngst=origins[:, 0], rlnOriginYAngst=origins[:, 1])
    for label, values in (extra_columns or {}).items():
        label = label.lstrip("_")
        if label in rows or len(values) != n:
            raise ValueError(f"extra column {label} clashes with a written column or has not {n} values")
        rows[label] = values

    text = _block("optics", optics) + _block("particles", rows)
    with atomic_output(path) as tmp:
        tmp.write_text(text.lstrip("\n"))
