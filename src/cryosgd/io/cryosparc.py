"""cryoSPARC particle files (``.cs``: a numpy structured array).

Fields used: ``blob/path`` (bytes; the stack, relative to the cryoSPARC
project folder, here looked up beside the ``.cs`` file, then in its parent
folder, which is the project folder in cryoSPARC's own layout, then in the
working folder; a leading ``>`` is dropped), ``blob/idx`` (0-based),
``blob/psize_A``, ``blob/shape`` ``(ny, nx)``, ``ctf/df1_A``, ``ctf/df2_A``,
``ctf/df_angle_rad``, ``ctf/accel_kv``, ``ctf/cs_mm``, ``ctf/amp_contrast``,
``ctf/phase_shift_rad``, ``ctf/bfactor``, and for poses ``alignments3D/pose``,
``alignments3D/shift``, ``alignments3D/psize_A``.  ``df1``/``df2``/``df_angle``
are RELION's DefocusU/V/Angle (the angle already in radians).

Pose conversion.  ``alignments3D/pose`` is an axis-angle (rotation) vector
``w``.  With Rodrigues' formula ``exp([w]x)`` (the standard, right-handed
skew matrix ``[w]x``), cryoSPARC's pose is the rotation R of
:mod:`cryosgd.forward.rotations` itself::

    R = exp([w]x) = scipy Rotation.from_rotvec(w).as_matrix()

so RELION's matrix ``A = R.T`` and the Euler angles follow from
:func:`~cryosgd.forward.rotations.matrix_to_relion_euler`.  This rests on two
independent conversions that agree: pyem's ``csparc2star``
(``pyem/metadata/cryosparc2.py``) computes RELION's Euler angles as
``rot2euler(expmap(w))``, where pyem's ``expmap`` builds the *transposed*
skew matrix (so ``expmap(w) = exp([w]x).T``) and ``rot2euler`` inverts
RELION's ``Euler_angles2matrix`` (``A``); and cryoDRGN's
``parse_pose_csparc`` uses ``lie_tools.expmap(w).T`` (standard skew) where
its ``parse_pose_star`` uses ``R_from_relion(rot, tilt, psi)``, which equals
RELION's ``A``.

Shift conversion.  Both projects copy ``alignments3D/shift`` unchanged into
RELION's ``rlnOriginX/Y`` (pixels), which is our shift (:mod:`cryosgd.forward.shift`).
When ``alignments3D/psize_A`` differs from ``blob/psize_A`` the shift is
rescaled to image pixels (the shift in Å is kept).  The doubled shifts of
early cryoSPARC heterogeneous refinements (cryoDRGN's ``--hetrefine``) are
not handled.
"""
from __future__ import annotations

import os
import warnings
from pathlib import Path

import numpy as np
from scipy.spatial.transform import Rotation

from ..forward.ctf import CTFParams
from .errors import InputError
from .particles import ParticleSet, single_box, single_pixel_size

__all__ = ["read_cs", "DEFAULT_AMPLITUDE_CONTRAST"]

DEFAULT_AMPLITUDE_CONTRAST = 0.1


def _load(path: Path) -> np.ndarray:
    if not path.is_file():
        raise InputError(path, "no such file")
    with open(path, "rb") as f:
        if f.read(6) != b"\x93NUMPY":
            raise InputError(path, "not a readable cryoSPARC .cs file (not numpy .npy data)")
    try:
        records = np.load(path, allow_pickle=False)
    except (ValueError, OSError, EOFError) as err:
        raise InputError(path, f"not a readable cryoSPARC .cs file ({err})") from None
    if not isinstance(records, np.ndarray) or records.dtype.names is None or records.ndim != 1:
        raise InputError(path, "not a cryoSPARC .cs file (expected a 1D numpy structured array)")
    if len(records) == 0:
        raise InputError(path, "holds no particles")
    return records


def _find_stack(path: Path, name: str, require_images: bool) -> Path:
    candidates = [path.parent / name, path.parent.parent / name, Path.cwd() / name]
    found = next((c for c in candidates if c.exists()), None)
    if found is None:
        if require_images:
            raise InputError(path, f"image stack {candidates[0]} (from blob/path) does not exist")
        found = candidates[0]
    return Path(os.path.abspath(found))


def read_cs(path: str | os.PathLike, *, require_images: bool = True) -> ParticleSet:
    """Read a cryoSPARC ``.cs`` particle file into our conventions (module notes).

    With ``require_images`` the records must name their stacks (``blob/path``)
    and the stacks must exist; without it a metadata-only table is accepted.
    """
    path = Path(path)
    records = _load(path)
    fields = set(records.dtype.names)
    n = len(records)

    def column(name):
        values = np.asarray(records[name], dtype=np.float64)
        if not np.isfinite(values).all():
            raise InputError(path, f"field {name} has NaN or Inf values")
        return values

    def optional(name, default=0.0):
        return column(name) if name in fields else np.full(n, default)

    if "ctf/df1_A" not in fields:
        raise InputError(path, "no CTF fields (ctf/df1_A/ctf/df2_A)")
    for name, what in (("ctf/accel_kv", "voltage"), ("ctf/cs_mm", "spherical aberration")):
        if name not in fields:
            raise InputError(path, f"no {what} ({name})")
    if "ctf/amp_contrast" not in fields:
        warnings.warn(f"{path}: no amplitude contrast (ctf/amp_contrast); using "
                      f"{DEFAULT_AMPLITUDE_CONTRAST}", stacklevel=2)
    defocus_u = column("ctf/df1_A")
    ctf = CTFParams(
        defocus_u=defocus_u,
        defocus_v=column("ctf/df2_A") if "ctf/df2_A" in fields else defocus_u,
        defocus_angle=optional("ctf/df_angle_rad"),
        voltage=column("ctf/accel_kv"),
        cs=column("ctf/cs_mm"),
        amplitude_contrast=optional("ctf/amp_contrast", DEFAULT_AMPLITUDE_CONTRAST),
        phase_shift=optional("ctf/phase_shift_rad"),
        bfactor=optional("ctf/bfactor"),
    )

    size_field = next((f for f in ("blob/psize_A", "alignments3D/psize_A") if f in fields), None)
    if size_field is None:
        raise InputError(path, "no pixel size (blob/psize_A)")
    pixel_sizes = column(size_field)
    pixel_size = single_pixel_size(path, pixel_sizes, "particles")

    box = None
    if "blob/shape" in fields:
        shape = np.asarray(records["blob/shape"], dtype=np.int64).reshape(n, -1)
        if (shape[:, 0] != shape[:, -1]).any():
            bad = shape[shape[:, 0] != shape[:, -1]][0]
            raise InputError(path, f"images are {bad[-1]}x{bad[0]} pixels, not square")
        box = single_box(path, shape[:, 0], "particles")

    if "blob/path" in fields:
        names = [p.decode() if isinstance(p, bytes) else str(p) for p in records["blob/path"]]
        names = [p[1:] if p.startswith(">") else p for p in names]
        stacks = {name: _find_stack(path, name, require_images) for name in set(names)}
        image_files = [stacks[name] for name in names]
        image_index = (np.asarray(records["blob/idx"], dtype=np.int64) if "blob/idx" in fields
                       else np.zeros(n, dtype=np.int64))
    elif require_images:
        raise InputError(path, "no blob/path field (the particle images are not listed)")
    else:
        image_files, image_index = [], np.zeros(0, dtype=np.int64)

    rotations = shifts = None
    if "alignments3D/pose" in fields:
        rotations = Rotation.from_rotvec(column("alignments3D/pose").reshape(n, 3)).as_matrix()
        shifts = column("alignments3D/shift").reshape(n, 2) if "alignments3D/shift" in fields \
            else np.zeros((n, 2))  # pixels
        if "alignments3D/psize_A" in fields:
            shifts = shifts * (column("alignments3D/psize_A") / pixel_sizes)[:, None]
    return ParticleSet(path, image_files, image_index, pixel_size, box, ctf, rotations, shifts)
