"""What the commands write: a reconstruction's map, poses, log, plots and report; a comparison's
table and figures; projection matching's map, poses and log."""
from __future__ import annotations

import json
import time
import warnings
from pathlib import Path

import numpy as np

from .evaluate import compare_maps
from .fourier import resolution_A
from .io import ParticleSet, write_map, write_particles_star
from .reconstruct import Reconstruction
from .reconstruct.dataset import particle_diameter_px
from .reconstruct.halves import half_map_resolution
from .report import (
    plot_compare_nll,
    plot_fsc,
    plot_fsc_curves,
    plot_montage,
    plot_nll,
    plot_views,
    write_log_csv,
    write_report,
)

__all__ = ["reconstruct_and_write", "write_outputs", "write_gold_standard_outputs", "write_class_outputs",
           "diagnose_run", "comparison_table", "write_comparison", "write_projmatch_outputs"]


def diagnose_run(rec: Reconstruction, box: int, *, baselines=None, gold_standard_A: float | None = None):
    """The failure warnings (:func:`cryosgd.reconstruct.diagnose`) of a finished run's map."""
    from .reconstruct import diagnose

    radius = 0.5 * particle_diameter_px(box, rec.pixel_size, rec.settings.particle_diameter)
    if baselines is None:
        baselines = [rec.baseline] if rec.baseline else []
    band_A = resolution_A(rec.band_limit, box, rec.pixel_size)
    return diagnose(rec.volume, pixel_size=rec.pixel_size, band_limit_A=band_A, radius_px=radius, baselines=baselines,
                    gold_standard_A=gold_standard_A)


def write_outputs(outdir: Path, rec: Reconstruction, particles: ParticleSet, *, poses=None,
                  reference: np.ndarray | None = None, reference_name: str = "", diagnosis=None,
                  extra_summary: dict | None = None, extra_sections=(), star_columns: dict | None = None) -> dict:
    """Write ``map.mrc``, ``particles.star`` (with ``poses``), ``log.csv``, PNGs and ``report.md``.

    ``diagnosis``: the failure warnings (default: :func:`diagnose_run`), each also issued as a Python
    warning (the command line prints one line each).  ``extra_summary``, ``extra_sections`` and
    ``star_columns`` add to summary.json, report.md and particles.star.
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
        write_particles_star(outdir / "particles.star", particles.with_poses(rots, shifts), star_columns)
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
        "symmetry": rec.settings.symmetry,
    }
    summary.update(extra_summary or {})
    diagnosis = diagnose_run(rec, particles.box) if diagnosis is None else diagnosis
    summary.update({"warnings": list(diagnosis.warnings), "diagnostics": diagnosis.metrics,
                    "sphere_baseline": rec.baseline})
    for line in diagnosis.warnings:
        warnings.warn(line, stacklevel=2)
    run_keys = [k for k in summary if k not in ("warnings", "diagnostics", "sphere_baseline")]
    sections = [("Run", "\n".join(f"- {k}: {summary[k]}" for k in run_keys)),
                ("Warnings", _warnings_text(diagnosis, rec.baseline)),
                ("Divergence guard", _guard_text(rec)),
                ("Held-out negative log-likelihood", "![test NLL](nll.png)"),
                ("Map", "Central slices and projections of the density at the snapshots.\n\n"
                        "![map](snapshots.png)")] + list(extra_sections)
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


def _warnings_text(diagnosis, baseline: dict) -> str:
    lines = ([f"- {w}" for w in diagnosis.warnings] if diagnosis.warnings else
             ["None: no detector found the map probably wrong."])
    lines += ["", "The detectors' numbers (thresholds in `cryosgd.reconstruct.diagnostics.THRESHOLDS`):", ""]
    lines += [f"- {k}: {v:.4g}" if isinstance(v, float) else f"- {k}: {v}" for k, v in diagnosis.metrics.items()]
    if baseline:
        lines.append(f"- held-out NLL: map {baseline['map_test_nll']:.3f}, best-scaled uniform sphere "
                     f"{baseline['sphere_test_nll']:.3f}, empty map {baseline['empty_test_nll']:.3f} nats/image")
    return "\n".join(lines)


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
    (the summary is empty on the other processes of a distributed run).  ``map.mrc`` is written as
    soon as the map is made, before the poses (a full pass over the particles: 40 s of a 153 s run
    at 64 px and 15 Å), so that it can be opened while they are assigned."""
    from .reconstruct import reconstruct
    from .runtime import parallel

    if getattr(settings, "gold_standard", False):
        from .reconstruct import gold_standard

        staged = None if progress is None else (lambda stage, done, total, info: progress(done, total, info))
        gs = gold_standard(particles, settings, checkpoint_dir=outdir, progress=staged)
        rec = gs.combined()
        poses, _ = _map_then_poses(outdir, rec, particles, assign, pose_progress)
        if not parallel.is_main():
            return {}, rec
        return write_gold_standard_outputs(outdir, gs, particles, poses=poses, reference=reference,
                                           reference_name=reference_name), rec
    rec = reconstruct(particles, settings, checkpoint=Path(outdir) / "checkpoint.pt", progress=progress)
    extra = {}
    if rec.volume.ndim == 4:  # several classes: each particle's class, and its pose in that class
        from .reconstruct.classes import assign_class_poses

        poses = assign_class_poses(particles, rec, progress=pose_progress) if assign else None
    else:
        poses, extra = _map_then_poses(outdir, rec, particles, assign, pose_progress)
    if not parallel.is_main():
        return {}, rec
    return write_outputs(outdir, rec, particles, poses=poses, reference=reference,
                         reference_name=reference_name, extra_summary=extra), rec


def _map_then_poses(outdir: Path, rec: Reconstruction, particles: ParticleSet, assign: bool, progress):
    """With ``assign``: ``map.mrc`` now (:func:`write_outputs` writes it again, the same), then each
    particle's pose; ``(poses, {"pose_assignment_seconds": ...})``, or ``(None, {})`` without."""
    from .reconstruct import assign_poses
    from .runtime import parallel

    if not assign:
        return None, {}
    if parallel.is_main():
        Path(outdir).mkdir(parents=True, exist_ok=True)
        write_map(Path(outdir) / "map.mrc", rec.volume.astype(np.float32), particles.pixel_size)
    t0 = time.time()
    poses = assign_poses(particles, rec.volume, rec, progress=progress)
    return poses, {"pose_assignment_seconds": time.time() - t0}


def write_gold_standard_outputs(outdir: Path, gs, particles: ParticleSet, *, poses=None,
                                reference: np.ndarray | None = None, reference_name: str = "") -> dict:
    """A gold-standard run's outputs (:class:`cryosgd.reconstruct.GoldStandard`): ``map_half1.mrc``,
    ``map_half2.mrc`` (half 2 aligned onto half 1), ``fsc_halves.png`` (the half maps' FSC, and with a
    reference the map's FSC against it), ``half_sets.csv`` (each particle's half, also ``rlnRandomSubset``
    in particles.star), and everything :func:`write_outputs` writes for the average map."""
    outdir = Path(outdir)
    outdir.mkdir(parents=True, exist_ok=True)
    apix, box = particles.pixel_size, particles.box
    rec = gs.combined()
    write_map(outdir / "map_half1.mrc", gs.half1.volume.astype(np.float32), apix)
    write_map(outdir / "map_half2.mrc", gs.half2_aligned.astype(np.float32), apix)
    _write_half_sets(outdir / "half_sets.csv", gs.labels)
    corrected = gs.curve_null is not None
    half = "half 1 vs half 2 (masked; 0.143 within the band)"
    curves, resolutions = {half: gs.curve}, {half: gs.resolution}
    if corrected:
        half = "half 1 vs half 2, corrected by noise substitution (0.143 within the band)"
        measured = "half 1 vs half 2, measured"
        randomised = f"halves of images with random phases beyond {resolution_A(gs.null_band_px, box, apix):.1f} Å"
        curves = {half: gs.curve, measured: gs.curve_measured, randomised: gs.curve_null}
        resolutions = {half: gs.resolution, randomised: None,
                       measured: half_map_resolution(gs.curve_measured, rec.band_limit, box, apix)}
    if reference is not None:
        curves["map vs reference (aligned; 0.143)"] = compare_maps(rec.volume, reference, pixel_size=apix,
                                                                   align=True).curve
    plot_fsc_curves(outdir / "fsc_halves.png", curves, box=box, pixel_size=apix, band_limit=rec.band_limit,
                    resolutions=resolutions)
    band_A = resolution_A(rec.band_limit, box, apix)
    a = gs.alignment
    extra = {"gold_standard_resolution_A": gs.resolution,
             "gold_standard_mask": f"soft sphere of the particle diameter ({2 * gs.mask_radius_px:.1f} px), "
                                   "raised-cosine edge 3 px; FSC 0.143 read within the band limit",
             "gold_standard_mask_radius_px": gs.mask_radius_px,
             "half_sets": {"seed": rec.settings.seed,
                           "sizes": [int((gs.labels == 1).sum()), int((gs.labels == 2).sum())]},
             "half_alignment": {"mirrored": bool(a.mirror), "shift_px": np.round(a.shift, 3).tolist(),
                                "correlation": round(float(a.correlation), 4)},
             "start_band_limit_resolution_A": resolution_A(gs.start.band_limit, box, apix),
             "noise_substitution": corrected,
             "half_final_test_nll": [gs.half1.baseline.get("map_test_nll"), gs.half2.baseline.get("map_test_nll")]}
    if corrected:
        extra["gold_standard_measured_resolution_A"] = resolutions[measured]
        extra["noise_substitution_band_A"] = resolution_A(gs.null_band_px, box, apix)
    sizes = extra["half_sets"]["sizes"]
    text = (f"The particles were split at random (seed {rec.settings.seed}) into halves of {sizes[0]} and "
            f"{sizes[1]}; both halves continued from one shared start reconstructed from all particles at "
            f"{extra['start_band_limit_resolution_A']:.1f} Å and low-passed there. Half 2 was aligned onto "
            f"half 1 (mirrored: {a.mirror}, shift {np.round(a.shift, 2).tolist()} px, "
            f"correlation {a.correlation:.3f}). "
            f"FSC between the half maps under a soft spherical mask of the particle's diameter "
            f"({2 * gs.mask_radius_px:.1f} px): **{gs.resolution:.1f} Å at 0.143** (band limit {band_A:.1f} Å). ")
    if corrected:
        text += (f"That FSC is corrected by noise substitution: the halves were reconstructed again from the same "
                 f"start on copies of their images with random phases beyond "
                 f"{extra['noise_substitution_band_A']:.1f} Å, and FSC_true = (FSC - FSC_random) / "
                 f"(1 - FSC_random) there; uncorrected, the half maps agree to "
                 f"{extra['gold_standard_measured_resolution_A']:.1f} Å. ")
    text += "map.mrc is the average of the aligned halves.\n\n![half-map FSC](fsc_halves.png)"
    diagnosis = diagnose_run(rec, box, baselines=[b for b in (gs.half1.baseline, gs.half2.baseline) if b],
                             gold_standard_A=gs.resolution)
    return write_outputs(outdir, rec, particles, poses=poses, reference=reference, reference_name=reference_name,
                         diagnosis=diagnosis, extra_summary=extra, extra_sections=[("Gold standard", text)],
                         star_columns={"rlnRandomSubset": gs.labels})


def _write_half_sets(path: Path, labels: np.ndarray) -> None:
    import os

    tmp = path.with_name(f".{path.name}.part")
    tmp.write_text("index,half\n" + "".join(f"{i},{int(h)}\n" for i, h in enumerate(labels)))
    os.replace(tmp, path)
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
