"""What the commands write: a reconstruction's map, poses, log, plots and report; a comparison's
table and figures; projection matching's map, poses and log."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from .evaluate import compare_maps
from .fourier import resolution_A
from .io import ParticleSet, write_map, write_particles_star
from .reconstruct import Reconstruction
from .report import plot_compare_nll, plot_fsc, plot_montage, plot_nll, plot_views, write_log_csv, write_report

__all__ = ["reconstruct_and_write", "write_outputs", "write_class_outputs",
           "comparison_table", "write_comparison", "write_projmatch_outputs"]


def write_outputs(outdir: Path, rec: Reconstruction, particles: ParticleSet, *, poses=None,
                  reference: np.ndarray | None = None, reference_name: str = "") -> dict:
    """Write ``map.mrc``, ``particles.star`` (with ``poses``), ``log.csv``, PNGs and ``report.md``.

    Returns a summary dict (also written as ``summary.json``).  With several classes (a ``(K, N, N, N)``
    volume) see :func:`write_class_outputs`.
    """
    if rec.volume.ndim == 4:
        refs = reference if isinstance(reference, list) else ([] if reference is None else [reference])
        names = reference_name if isinstance(reference_name, list) else [reference_name] * len(refs)
        return write_class_outputs(outdir, rec, particles, poses=poses, references=refs, reference_names=names)
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


def comparison_table(rows: list[tuple[str, dict | None]], *, with_fsc: bool) -> str:
    """A Markdown table of ``(optimiser, summary)`` rows (``None``: the run diverged and wrote no map)."""
    lines = ["| method | learning rate | steps | gradient evals | final test NLL | wall s |",
             "|---|---|---|---|---|---|"]
    if with_fsc:
        lines[0] += " FSC 0.5 (Å) | FSC 0.143 (Å) |"
        lines[1] += "---|---|"
    for name, s in rows:
        if s is None:
            lines.append(f"| {name} | diverged: no map (see the warning) |" + " |" * (lines[1].count("|") - 3))
            continue
        line = (f"| {name} | {s['learning_rate']:.3g} | {s['steps']} | {s['gradients']} | "
                f"{s['final_test_nll']:.3f} | {s['wall_seconds']:.0f} |")
        if with_fsc:
            line += f" {s['fsc_0.5_A']:.1f} | {s['fsc_0.143_A']:.1f} |"
        lines.append(line)
    return "\n".join(lines)


def write_comparison(outdir: Path, title: str, rows: list[tuple[str, dict | None]], logs: dict, montage: dict,
                     snapshots: tuple, *, with_fsc: bool) -> str:
    """``nll.png`` (the paper's Figure 3), ``montage.png`` (Figure 4), ``table.md`` and ``report.md`` of a
    comparison; ``logs`` and ``montage`` map each optimiser to its log and its snapshots. Returns the table."""
    outdir = Path(outdir)
    plot_compare_nll(outdir / "nll.png", logs)
    plot_montage(outdir / "montage.png", montage, [f"{int(s) // 1000}K" for s in sorted(snapshots)] + ["final"])
    table = comparison_table(rows, with_fsc=with_fsc)
    (outdir / "table.md").write_text(table + "\n")
    write_report(outdir / "report.md", title,
                 [("Table", table), ("Test NLL against gradient evaluations (Figure 3)", "![nll](nll.png)"),
                  ("Densities at 5K, 50K gradients and final (Figure 4)", "![montage](montage.png)")])
    return table


def write_projmatch_outputs(outdir: Path, result, particles: ParticleSet) -> None:
    """``map.mrc``, ``particles.star`` (the matched poses), ``log.csv`` and ``slices.png`` of projection matching."""
    outdir = Path(outdir)
    outdir.mkdir(parents=True, exist_ok=True)
    write_map(outdir / "map.mrc", result.volume.astype(np.float32), particles.pixel_size)
    write_particles_star(outdir / "particles.star", particles.with_poses(result.rotations, result.shifts))
    write_log_csv(outdir / "log.csv", result.log, keys=list(result.log[0]))
    plot_views(outdir / "slices.png", {"projection matching": result.volume},
               title=f"{len(result.log)} iterations, band limit {result.log[-1]['resolution']:.1f} Å")


def reconstruct_and_write(particles: ParticleSet, outdir: Path, settings, *, reference: np.ndarray | None = None,
                          reference_name: str = "", assign: bool = True, progress=None,
                          pose_progress=None) -> tuple[dict, Reconstruction]:
    """:func:`~cryosgd.reconstruct.reconstruct` (resuming from ``outdir/checkpoint.pt``), each particle's
    pose (with ``assign``), and :func:`write_outputs` on the first process; ``(summary, Reconstruction)``
    (the summary is empty on the other processes of a distributed run)."""
    from .reconstruct import assign_poses, reconstruct
    from .runtime import parallel

    rec = reconstruct(particles, settings, checkpoint=Path(outdir) / "checkpoint.pt", progress=progress)
    if rec.volume.ndim == 4:  # several classes: each particle's class, and its pose in that class
        from .reconstruct.classes import assign_class_poses

        poses = assign_class_poses(particles, rec, progress=pose_progress) if assign else None
    else:
        poses = assign_poses(particles, rec.volume, rec, progress=pose_progress) if assign else None
    if not parallel.is_main():
        return {}, rec
    return write_outputs(outdir, rec, particles, poses=poses, reference=reference,
                         reference_name=reference_name), rec


def write_class_outputs(outdir: Path, rec: Reconstruction, particles: ParticleSet, *, poses=None,
                        references: list = (), reference_names: list = ()) -> dict:
    """The outputs of a run with K > 1 classes (``docs/classes.md``): ``map_class01.mrc`` ...,
    ``particles.star`` (each particle's pose in its class, ``rlnClassNumber`` and, as
    ``rlnMaxValueProbDistribution``, the posterior probability of that class), ``log.csv``, PNGs,
    ``summary.json`` (with the proportions) and ``report.md``; each reference map is matched to the
    class closest to it (FSC after alignment)."""
    from .report import plot_proportions

    outdir = Path(outdir)
    outdir.mkdir(parents=True, exist_ok=True)
    apix, k = rec.pixel_size, rec.volume.shape[0]
    names = [f"map_class{j + 1:02d}.mrc" for j in range(k)]
    for name, vol in zip(names, rec.volume):
        write_map(outdir / name, vol.astype(np.float32), apix)
    counts = [None] * k
    if poses is not None:
        rots, shifts, _, classes, post = poses
        counts = [int(np.sum(classes == j + 1)) for j in range(k)]
        write_particles_star(outdir / "particles.star", particles.with_poses(rots, shifts), extra_columns={
            "rlnClassNumber": classes, "rlnMaxValueProbDistribution": post[np.arange(len(classes)), classes - 1]})
    write_log_csv(outdir / "log.csv", rec.log)
    plot_nll(outdir / "nll.png", rec.log, title=f"{rec.settings.optimizer}, {k} classes: held-out images")
    plot_proportions(outdir / "proportions.png", rec.log, rec.reseeds)
    label = [f"class {j + 1} ({100 * rec.proportions[j]:.0f}%)" for j in range(k)]
    plot_views(outdir / "classes.png", dict(zip(label, rec.volume)))
    views = {f"{'final' if isinstance(t, str) else f'{t} grads'}, class {j + 1}": v[j]
             for t, v in rec.snapshots.items() for j in range(k)}
    plot_views(outdir / "snapshots.png", views)
    last = [r for r in rec.log if "test_nll" in r]
    resolution = resolution_A(rec.band_limit, particles.box, apix)
    summary = {
        "optimizer": rec.settings.optimizer, "classes": k, "proportions": list(rec.proportions),
        "particles_per_class": counts, "reseeded": rec.reseeds, "learning_rate": rec.learning_rate,
        "epochs": rec.settings.epochs, "steps": rec.log[-1]["step"] if rec.log else 0,
        "gradients": rec.log[-1]["gradients"] if rec.log else 0, "band_limit_px": rec.band_limit,
        "band_limit_resolution_A": resolution, "noise_std": rec.noise_std, "wall_seconds": rec.wall_time,
        "final_test_nll": last[-1]["test_nll"] if last else None, "pixel_size": apix, "box": particles.box,
        "particles": len(particles), "peak_memory_bytes": rec.peak_memory, "rejected_steps": len(rec.rejected),
    }
    rows = [f"| class {j + 1} | `{names[j]}` | {rec.proportions[j]:.3f} | {counts[j]} |" for j in range(k)]
    sections = [("Run", "\n".join(f"- {key}: {v}" for key, v in summary.items() if key != "proportions")),
                ("Classes", "| class | map | proportion | particles (most probable class) |\n|---|---|---|---|\n"
                 + "\n".join(rows) + "\n\n![classes](classes.png)"),
                ("Class proportions", _reseed_text(rec) + "\n\n![proportions](proportions.png)"),
                ("Divergence guard", _guard_text(rec)),
                ("Held-out negative log-likelihood (the mixture's)", "![test NLL](nll.png)"),
                ("Maps", "Each class at the snapshots.\n\n![maps](snapshots.png)")]
    matches = []
    for i, (ref, ref_name) in enumerate(zip(references, reference_names)):
        cmps = [compare_maps(v, ref, pixel_size=apix, align=True, map_name=names[j], reference_name=ref_name)
                for j, v in enumerate(rec.volume)]
        best = int(np.argmin([c.resolution_05 for c in cmps]))
        plot_fsc(outdir / f"fsc_reference{i + 1}.png", cmps[best], band_limit=rec.band_limit)
        matches.append({"reference": ref_name, "class": best + 1, "fsc_0.5_A": cmps[best].resolution_05,
                        "fsc_0.143_A": cmps[best].resolution_0143,
                        "fsc_0.5_A_each_class": [c.resolution_05 for c in cmps]})
        sections.append((f"Against {ref_name or f'reference {i + 1}'}",
                         f"Closest class: {best + 1}; FSC after alignment {cmps[best].resolution_05:.1f} Å at 0.5, "
                         f"{cmps[best].resolution_0143:.1f} Å at 0.143 (each class at 0.5: "
                         + ", ".join(f"{c.resolution_05:.1f} Å" for c in cmps)
                         + f").\n\n![FSC](fsc_reference{i + 1}.png)"))
    if matches:
        summary["references"] = matches
    write_report(outdir / "report.md", f"cryosgd reconstruction, {k} classes: {particles.source.name}", sections)
    (outdir / "summary.json").write_text(json.dumps(summary, indent=2, default=float))
    return summary


def _reseed_text(rec: Reconstruction) -> str:
    if not rec.reseeds:
        return "No class was re-seeded: no proportion fell below the collapse guard's threshold."
    return "\n".join([f"{len(rec.reseeds)} re-seeding(s) by the collapse guard:", ""] + [
        f"- step {r['step']}: class {r['class']} from class {r['from']}" for r in rec.reseeds])
