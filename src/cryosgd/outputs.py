"""What ``cryosgd reconstruct`` writes: map, poses, log, plots and report."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from .evaluate import compare_maps
from .fourier import resolution_A
from .io import ParticleSet, write_map, write_particles_star
from .report import plot_fsc, plot_nll, plot_views, write_log_csv, write_report
from .reconstruct import Reconstruction

__all__ = ["write_outputs"]


def write_outputs(outdir: Path, rec: Reconstruction, particles: ParticleSet, *, poses=None,
                  reference: np.ndarray | None = None, reference_name: str = "") -> dict:
    """Write ``map.mrc``, ``particles.star`` (with ``poses``), ``log.csv``, PNGs and ``report.md``.

    Returns a summary dict (also written as ``summary.json``).
    """
    outdir = Path(outdir)
    outdir.mkdir(parents=True, exist_ok=True)
    apix = rec.pixel_size
    write_map(outdir / "map.mrc", rec.volume.astype(np.float32), apix)
    if poses is not None:
        rots, shifts, _ = poses
        write_particles_star(outdir / "particles.star", particles.with_poses(rots, shifts))
    write_log_csv(outdir / "log.csv", rec.log)
    plot_nll(outdir / "nll.png", rec.log, title=f"{rec.settings.optimizer}: held-out images")
    views = {k if isinstance(k, str) else f"{k} grads": v for k, v in rec.snapshots.items()}
    plot_views(outdir / "snapshots.png", views)
    last = [r for r in rec.log if "test_nll" in r]
    resolution = resolution_A(rec.band_limit, particles.box, apix)
    summary = {
        "optimizer": rec.settings.optimizer, "learning_rate": rec.learning_rate, "epochs": rec.settings.epochs,
        "steps": rec.log[-1]["step"] if rec.log else 0, "gradients": rec.log[-1]["gradients"] if rec.log else 0,
        "band_limit_px": rec.band_limit, "band_limit_resolution_A": resolution, "noise_std": rec.noise_std,
        "wall_seconds": rec.wall_time, "final_test_nll": last[-1]["test_nll"] if last else None,
        "pixel_size": apix, "box": particles.box, "particles": len(particles),
        "peak_memory_bytes": rec.peak_memory, "rotation_chunk": rec.chunk,
        "slicing_operator_bytes": rec.operator_bytes, "rejected_steps": len(rec.rejected),
    }
    sections = [("Run", "\n".join(f"- {k}: {v}" for k, v in summary.items())),
                ("Divergence guard", _guard_text(rec)),
                ("Held-out negative log-likelihood", "![test NLL](nll.png)"),
                ("Map", "Central slices and projections of the density at the snapshots.\n\n"
                        "![map](snapshots.png)")]
    if reference is not None:
        cmp = compare_maps(rec.volume, reference, pixel_size=apix, align=True, map_name="map.mrc",
                           reference_name=reference_name)
        plot_fsc(outdir / "fsc.png", cmp, band_limit=rec.band_limit)
        from .align import apply_alignment

        aligned = apply_alignment(rec.volume, cmp.alignment)
        plot_views(outdir / "aligned.png", {"reconstruction (aligned)": aligned, "reference": reference})
        summary.update({"fsc_0.5_A": cmp.resolution_05, "fsc_0.143_A": cmp.resolution_0143,
                        "fsc_at_0.8_band": cmp.fsc_at_fraction(0.8, rec.band_limit)})
        sections.append(("Against the reference", f"FSC after alignment (rotation, shift, hand): "
                         f"{cmp.resolution_05:.1f} Å at 0.5, {cmp.resolution_0143:.1f} Å at 0.143; "
                         f"FSC {summary['fsc_at_0.8_band']:.2f} at 80% of the band limit "
                         f"({resolution / 0.8:.1f} Å).\n\n![FSC](fsc.png)\n\n![aligned](aligned.png)"))
    write_report(outdir / "report.md", f"cryosgd reconstruction: {particles.source.name}", sections)
    (outdir / "summary.json").write_text(json.dumps(summary, indent=2, default=float))
    return summary


def _guard_text(rec: Reconstruction) -> str:
    if not rec.rejected:
        return "No step was rejected: the minibatch objective never jumped above its running level."
    lines = [f"{len(rec.rejected)} step(s) rejected and the learning rate halved each time (now "
             f"{rec.learning_rate:.3g}); `rejected` in log.csv marks them:", ""]
    lines += [f"- step {r['step']}: {r['what']}" for r in rec.rejected]
    return "\n".join(lines)
