"""Map comparison: Fourier shell correlation and resolution."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from .fourier import fft3c, resolution_A, shell_index

__all__ = ["fsc", "resolution_at", "MapComparison", "compare_maps"]


def fsc(a, b) -> np.ndarray:
    """Fourier shell correlation of two ``(N, N, N)`` maps, one value per shell 0 .. N//2."""
    a = torch.as_tensor(np.asarray(a), dtype=torch.float64)
    b = torch.as_tensor(np.asarray(b), dtype=torch.float64)
    fa, fb = fft3c(a), fft3c(b)
    n = a.shape[-1]
    shells = shell_index(n, 3).reshape(-1)
    nshell = n // 2 + 1
    keep = shells < nshell
    s = shells[keep]

    def acc(x):
        return torch.zeros(nshell, dtype=torch.float64).index_add_(0, s, x.reshape(-1)[keep])

    num = acc((fa * fb.conj()).real)
    den = torch.sqrt(acc(fa.abs() ** 2) * acc(fb.abs() ** 2))
    return (num / den.clamp(min=1e-300)).numpy()


def resolution_at(curve: np.ndarray, box: int, pixel_size: float, threshold: float) -> float:
    """Resolution (Å) where the FSC first falls below ``threshold`` (linear interpolation between shells)."""
    below = np.nonzero(curve[1:] < threshold)[0]
    if len(below) == 0:
        shell = len(curve) - 1.0
    else:
        i = below[0] + 1  # first shell below
        f0, f1 = curve[i - 1], curve[i]
        shell = (i - 1) + (f0 - threshold) / (f0 - f1) if f0 != f1 else float(i)
    return float(resolution_A(max(shell, 1e-9), box, pixel_size))


@dataclass
class MapComparison:
    curve: np.ndarray           # FSC per shell 0 .. N//2
    pixel_size: float           # Å
    box: int
    resolution_05: float        # Å at FSC 0.5
    resolution_0143: float      # Å at FSC 0.143
    alignment: object = None    # cryosgd.align.Alignment when aligned
    map_name: str = ""
    reference_name: str = ""

    def shell_resolution(self) -> np.ndarray:
        """Resolution (Å) of each shell (inf at the origin)."""
        with np.errstate(divide="ignore"):
            return self.box * self.pixel_size / np.arange(len(self.curve))

    def fsc_at_fraction(self, fraction_of_band: float, band_limit: float) -> float:
        """FSC at ``fraction_of_band * band_limit`` Fourier pixels (linear interpolation)."""
        x = fraction_of_band * band_limit
        return float(np.interp(x, np.arange(len(self.curve)), self.curve))

    def as_dict(self) -> dict:
        d = {"map": self.map_name, "reference": self.reference_name, "pixel_size": self.pixel_size,
             "box": self.box, "resolution_0.5": self.resolution_05, "resolution_0.143": self.resolution_0143,
             "fsc": [round(float(x), 5) for x in self.curve]}
        if self.alignment is not None:
            a = self.alignment
            d["alignment"] = {"rotation": np.round(a.rotation, 6).tolist(), "shift_px": np.round(a.shift, 3).tolist(),
                              "mirrored": bool(a.mirror), "correlation": round(float(a.correlation), 5)}
        return d

    def text(self) -> str:
        lines = [f"FSC {self.map_name} vs {self.reference_name} ({self.box} px, {self.pixel_size:g} Å/px)"]
        if self.alignment is not None:
            a = self.alignment
            lines.append(f"aligned: mirrored={a.mirror} shift={np.round(a.shift, 2).tolist()} px "
                         f"correlation={a.correlation:.3f}")
        lines.append(f"resolution at FSC 0.5: {self.resolution_05:.2f} Å; at 0.143: {self.resolution_0143:.2f} Å")
        lines.append("shell  resolution(Å)  FSC")
        for i, (r, f) in enumerate(zip(self.shell_resolution(), self.curve)):
            if i:
                lines.append(f"{i:5d}  {r:12.2f}  {f:6.3f}")
        return "\n".join(lines)


def compare_maps(volume, reference, *, pixel_size: float, align: bool = False, map_name: str = "",
                 reference_name: str = "") -> MapComparison:
    """FSC of ``volume`` against ``reference`` (optionally after :func:`cryosgd.align.align_maps`)."""
    vol = np.asarray(volume, dtype=np.float64)
    ref = np.asarray(reference, dtype=np.float64)
    if vol.shape != ref.shape or len(set(vol.shape)) != 1:
        from .io import InputError

        raise InputError(map_name or "map", f"shape {vol.shape} does not match the reference {ref.shape} "
                                            "(both must be the same cube)")
    alignment = None
    if align:
        from .align import align_maps, apply_alignment

        alignment = align_maps(vol, ref)
        vol = apply_alignment(vol, alignment)
    curve = fsc(vol, ref)
    n = ref.shape[-1]
    return MapComparison(curve, pixel_size, n, resolution_at(curve, n, pixel_size, 0.5),
                         resolution_at(curve, n, pixel_size, 0.143), alignment, str(map_name), str(reference_name))
