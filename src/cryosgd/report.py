"""Plots and a short Markdown report of a reconstruction or a comparison.

Every figure is a PNG written atomically.  Figures are built with matplotlib's object API
(:class:`matplotlib.figure.Figure`), not pyplot, so no backend is switched or chosen for the
process: a notebook's own backend stays as it was, and nothing needs a display.
"""
from __future__ import annotations

import csv
import os
from pathlib import Path

import numpy as np

__all__ = ["map_views", "plot_nll", "plot_fsc", "plot_fsc_curves",
           "plot_views", "plot_montage", "write_log_csv", "write_report",
           "plot_compare_nll"]


def _subplots(nrows: int = 1, ncols: int = 1, *, figsize, squeeze: bool = True):
    """A new figure and its axes, outside pyplot (``Figure.subplots`` takes the same layout arguments)."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=figsize)
    return fig, fig.subplots(nrows, ncols, squeeze=squeeze)


def _save(fig, path: Path) -> None:
    path = Path(path)
    tmp = path.with_name(f".{path.name}.part.png")
    fig.savefig(tmp, dpi=110, bbox_inches="tight")
    os.replace(tmp, path)


def map_views(volume: np.ndarray) -> list[tuple[str, np.ndarray]]:
    """Central slices and projections along z, y and x of a ``(N, N, N)`` [z, y, x] map."""
    v = np.asarray(volume, dtype=np.float64)
    c = v.shape[0] // 2
    return [("slice z", v[c]), ("slice y", v[:, c]), ("slice x", v[:, :, c]),
            ("proj z", v.sum(0)), ("proj y", v.sum(1)), ("proj x", v.sum(2))]


def plot_views(path, maps: dict, title: str = "") -> None:
    """One row per map (name -> volume): central slices and projections."""
    rows = len(maps)
    fig, axes = _subplots(rows, 6, figsize=(12, 2.1 * rows + 0.4), squeeze=False)
    for r, (name, vol) in enumerate(maps.items()):
        for c, (label, img) in enumerate(map_views(vol)):
            ax = axes[r, c]
            ax.imshow(img, cmap="gray", origin="lower")
            ax.set_xticks([])
            ax.set_yticks([])
            if r == 0:
                ax.set_title(label, fontsize=9)
            if c == 0:
                ax.set_ylabel(name, fontsize=9)
    if title:
        fig.suptitle(title)
    _save(fig, path)


def plot_montage(path, rows: dict, columns: list[str]) -> None:
    """Figure-4-style montage: ``rows[method][column] -> volume``, shown as z projections."""
    fig, axes = _subplots(len(rows), len(columns), figsize=(1.9 * len(columns) + 0.6, 1.9 * len(rows) + 0.4),
                             squeeze=False)
    for r, (method, snaps) in enumerate(rows.items()):
        for c, col in enumerate(columns):
            ax = axes[r, c]
            ax.set_xticks([])
            ax.set_yticks([])
            vol = snaps.get(col)
            if vol is not None:
                ax.imshow(np.asarray(vol).sum(0), cmap="gray", origin="lower")
            if r == 0:
                ax.set_title(col, fontsize=9)
            if c == 0:
                ax.set_ylabel(method, fontsize=9)
    _save(fig, path)


def plot_nll(path, log: list[dict], title: str = "") -> None:
    """Test NLL (nats per image) against per-image gradient evaluations."""
    pts = [(r["gradients"], r["test_nll"], r.get("band_limit")) for r in log if "test_nll" in r]
    fig, ax = _subplots(figsize=(6, 4))
    bands = list(dict.fromkeys(b for _, _, b in pts))
    for band in bands:  # each band limit scores other coefficients: one line per marching stage
        x, y = zip(*[(g, v) for g, v, b in pts if b == band])
        ax.plot(x, y, marker=".", label=None if band is None or len(bands) == 1 else f"band limit {band:.1f} px")
    if pts:
        ax.set_xscale("log")
    if len(bands) > 1:
        ax.legend(fontsize=8)
    ax.set_xlabel("gradient evaluations (images)")
    ax.set_ylabel("test negative log-likelihood (nats/image)")
    ax.set_title(title or "held-out images")
    ax.grid(alpha=0.3)
    _save(fig, path)


def plot_compare_nll(path, logs: dict[str, list[dict]]) -> None:
    """Figure-3-style: test NLL of several methods, full run (log x) and a zoom on the final 30%."""
    fig, (a1, a2) = _subplots(1, 2, figsize=(12, 4.2))
    ends = []
    for name, log in logs.items():
        pts = [(r["gradients"], r["test_nll"]) for r in log if "test_nll" in r]
        if not pts:
            continue
        x, y = map(np.asarray, zip(*pts))
        a1.plot(x, y, label=name)
        ends.append((x, y, name))
    a1.set_xscale("log")
    a1.set_xlabel("gradient evaluations (images)")
    a1.set_ylabel("test NLL (nats/image)")
    a1.legend()
    a1.grid(alpha=0.3)
    if ends:
        xmax = max(x.max() for x, _, _ in ends)
        lo = 0.7 * xmax
        vals = []
        for x, y, name in ends:
            keep = x >= lo
            a2.plot(x[keep], y[keep], label=name, marker=".")
            vals.extend(y[keep])
        if vals:
            pad = 0.05 * (max(vals) - min(vals) + 1e-9)
            a2.set_ylim(min(vals) - pad, max(vals) + pad)
    a2.set_title("zoom: final 30%")
    a2.set_xlabel("gradient evaluations (images)")
    a2.grid(alpha=0.3)
    _save(fig, path)


def plot_proportions(path, log: list[dict], reseeds: list = ()) -> None:
    """The class proportions (running estimates) against the step, re-seedings marked."""
    pts = [(r["step"], r["proportions"]) for r in log if "proportions" in r]
    fig, ax = _subplots(figsize=(6, 4))
    if pts:
        steps, props = zip(*pts)
        for j, column in enumerate(np.array(props).T):
            ax.plot(steps, column, label=f"class {j + 1}")
        ax.legend()
    for r in reseeds:
        ax.axvline(r["step"], color="grey", ls=":")
    ax.set_xlabel("step")
    ax.set_ylabel("proportion")
    ax.set_ylim(0, 1)
    _save(fig, path)


def plot_fsc(path, comparison, band_limit: float | None = None) -> None:
    """FSC against a reference with the 0.5 and 0.143 lines (and the band limit used)."""
    curve = comparison.curve
    freq = np.arange(len(curve)) / (comparison.box * comparison.pixel_size)  # 1/Å
    fig, ax = _subplots(figsize=(6, 4))
    ax.plot(freq, curve, marker=".")
    for t in (0.5, 0.143):
        ax.axhline(t, color="gray", ls="--", lw=0.8)
    if band_limit:
        ax.axvline(band_limit / (comparison.box * comparison.pixel_size), color="C3", lw=0.8, label="band limit")
        ax.legend()
    ax.set_xlabel("spatial frequency (1/Å)")
    ax.set_ylabel("FSC")
    ax.set_title(f"FSC: {comparison.resolution_05:.1f} Å at 0.5, {comparison.resolution_0143:.1f} Å at 0.143")
    ax.set_ylim(-0.1, 1.05)
    ax.grid(alpha=0.3)
    _save(fig, path)


def plot_fsc_curves(path, curves: dict, *, box: int, pixel_size: float, band_limit: float | None = None,
                    resolutions: dict | None = None) -> None:
    """Several FSC curves (name -> per-shell values 0 .. N//2) on one plot, with the 0.5 and 0.143 lines
    and each curve's resolution in its label: ``resolutions[name]`` (Å) where given (``None``: no
    resolution, for a curve that is not read as one), else where it first falls below 0.143."""
    from .evaluate import resolution_at

    fig, ax = _subplots(figsize=(6, 4))
    freq = None
    for name, curve in curves.items():
        freq = np.arange(len(curve)) / (box * pixel_size)  # 1/Å
        res = (resolutions or {}).get(name, resolution_at(curve, box, pixel_size, 0.143))
        label = name if res is None else f"{name}: {res:.1f} Å"
        ax.plot(freq, curve, marker=".", label=label)
    for t in (0.5, 0.143):
        ax.axhline(t, color="gray", ls="--", lw=0.8)
    if band_limit:
        ax.axvline(band_limit / (box * pixel_size), color="C3", lw=0.8, label="band limit")
    ax.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.15))  # below: curves fill the axes
    ax.set_xlabel("spatial frequency (1/Å)")
    ax.set_ylabel("FSC")
    ax.set_ylim(min([-0.1] + [float(np.min(c)) - 0.05 for c in curves.values()]), 1.05)
    ax.grid(alpha=0.3)
    _save(fig, path)


LOG_COLUMNS = ["step", "gradients", "epoch", "band_limit", "value", "test_nll", "learning_rate", "rejected", "seconds"]


def write_log_csv(path, log: list[dict], keys: list[str] | None = None) -> None:
    """A log's rows as CSV, written atomically: ``keys`` (default: a reconstruction's columns)."""
    keys = LOG_COLUMNS if keys is None else keys
    path = Path(path)
    tmp = path.with_name(f".{path.name}.part")
    with open(tmp, "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=keys, extrasaction="ignore")
        w.writeheader()
        for row in log:
            w.writerow(row)
    os.replace(tmp, path)


def write_report(path, title: str, sections: list[tuple[str, str]]) -> None:
    """A Markdown report: ``sections`` are (heading, Markdown body) pairs."""
    path = Path(path)
    text = [f"# {title}", ""]
    for heading, body in sections:
        text += [f"## {heading}", "", body.rstrip(), ""]
    tmp = path.with_name(f".{path.name}.part")
    tmp.write_text("\n".join(text))
    os.replace(tmp, path)
