"""Summary statistics of an MA-V split: counts, failures, frames, bytes, quality histograms."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

import numpy as np

from mava import schema
from mava.schema import Col
from mava.folder import SplitDir
from mava.state import SplitState, Vouched, inspect_split, tar_problems, tar_sizes, vouched_manifest

BINS = np.linspace(0.0, 1.0, 11)


@dataclass
class SplitStats:
    split: str
    shards: int
    samples: int
    ok: int
    failed: int
    failures: dict[str, int]
    videos: int
    frames: int
    tar_bytes: int          # sum of the finished shards' tar sizes
    sample_bytes: int       # sum of manifest tar_size of ok rows
    matters: dict[str, int]
    sources: dict[str, int]
    quality: dict[str, np.ndarray] = field(default_factory=dict)  # column -> values of ok rows
    done: int = 0                   # finished shards (readable done markers)
    planned: int | None = None      # plan size from run.json (None: not recorded or unreadable)
    unreadable: list[str] = field(default_factory=list)  # "path: reason": files that cannot be read or are
    #                                 not what their done marker vouches for, and duplicate keys
    warnings: list[str] = field(default_factory=list)    # why the split is not a finished one (unfinished shards, no run.json)


def compute(split_dir: str | SplitDir | SplitState) -> SplitStats:
    """Summarise the finished shards of a split (:mod:`mava.state`): rows of the manifests their done
    markers vouch for, each key once. Unreadable manifests, markers and run.json, tars that are not the
    size their marker records, and duplicate keys are listed in ``unreadable``; unfinished shards are
    left out and named in ``warnings``. Raises :class:`~mava.state.NotASplit` for a path that is not a
    split."""
    st = split_dir if isinstance(split_dir, SplitState) else inspect_split(split_dir)
    return summarise(st, vouched_manifest(st))


def summarise(st: SplitState, v: Vouched) -> SplitStats:
    """:func:`compute` from an inspected split and its vouched rows."""
    t = v.table.to_pydict()
    status = t[Col.STATUS]
    ok = [i for i, s in enumerate(status) if s == schema.STATUS_OK]
    failed = [i for i, s in enumerate(status) if s != schema.STATUS_OK]
    sizes = tar_sizes(st)
    tar_bytes = sum(sizes.get(s, 0) for s in st.finished)
    quality = {c: np.array([t[c][i] for i in ok if t[c][i] is not None], dtype=np.float64) for c in schema.QUALITY_COLUMNS}
    return SplitStats(
        split=st.split, shards=len(set(t[Col.SHARD])), samples=len(status), ok=len(ok), failed=len(failed),
        failures=dict(Counter(t[Col.ERROR_TYPE][i] or "unknown" for i in failed).most_common()),
        videos=len(set(t[Col.VIDEO_ID])), frames=int(sum(t[Col.NUM_FRAMES][i] or 0 for i in ok)),
        tar_bytes=tar_bytes, sample_bytes=int(sum(t[Col.TAR_SIZE][i] or 0 for i in ok)),
        matters=dict(Counter(t[Col.MATTER][i] or "none" for i in ok).most_common()),
        sources=dict(Counter(t[Col.SOURCE][i] or "none" for i in ok).most_common()),
        quality=quality, done=len(st.finished), planned=st.planned,
        unreadable=[str(e) for e in st.unreadable] + v.problems() + tar_problems(st, v), warnings=st.warnings())


def _human(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.1f} {unit}" if unit != "B" else f"{int(n)} B"
        n /= 1024
    return str(n)


def text_histogram(values: np.ndarray, width: int = 40) -> list[str]:
    """Lines ``[lo, hi)  count  bar`` over 10 bins of [0, 1]."""
    counts, _ = np.histogram(np.clip(values, 0, 1), bins=BINS)
    top = max(1, int(counts.max()) if len(counts) else 1)
    lines = []
    for lo, hi, c in zip(BINS[:-1], BINS[1:], counts):
        bar = "█" * int(round(width * c / top))
        lines.append(f"  [{lo:.1f}, {hi:.1f}{']' if hi == 1.0 else ')'} {int(c):6d} {bar}")
    return lines


def render(s: SplitStats) -> str:
    """The text report of `python -m mava stats`."""
    plan = f" of {s.planned} planned" if s.planned is not None else ""
    out = [f"split {s.split}: {s.done} finished shards{plan}, {s.shards} with readable manifests, {s.videos} videos",
           f"samples: {s.samples} planned, {s.ok} ok, {s.failed} failed"]
    for k, v in s.failures.items():
        out.append(f"  failed {k}: {v}")
    out.append(f"frames (ok samples): {s.frames}")
    out.append(f"bytes: {_human(s.tar_bytes)} in shards, {_human(s.sample_bytes)} in ok samples"
               + (f", {_human(s.sample_bytes / s.ok)} per sample" if s.ok else ""))
    out.append("matters: " + ", ".join(f"{k} {v}" for k, v in s.matters.items()))
    out.append("sources: " + ", ".join(f"{k} {v}" for k, v in s.sources.items()))
    for c in schema.QUALITY_COLUMNS:
        v = s.quality.get(c, np.array([]))
        if len(v):
            out.append(f"{c}: mean {v.mean():.3f}, median {np.median(v):.3f}, min {v.min():.3f}, max {v.max():.3f}")
            out += text_histogram(v)
        else:
            out.append(f"{c}: no values")
    if s.unreadable:
        out.append(f"UNREADABLE ({len(s.unreadable)} files or problems, left out of the figures above; "
                   "`python -m mava verify` checks the split):")
        out += [f"  {u}" for u in s.unreadable]
    return "\n".join(out)


def plot_range(column: str, values: np.ndarray) -> float:
    """Upper end of a histogram's x axis: 1 for IoU; for area-like columns (mean alpha, semi-transparent
    fraction), which are small for small objects, the next of 0.05, 0.1, 0.2, 0.5, 1 above the largest value."""
    if column == "mask_iou" or not len(values):
        return 1.0
    top = float(np.max(values))
    return next(h for h in (0.05, 0.1, 0.2, 0.5, 1.0) if top <= h)


def plot(s: SplitStats, path) -> None:
    """Histograms of the quality columns and the failure counts, as one PNG (matplotlib Agg) written
    to `path` (a local path or a binary file object)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 4, figsize=(16, 3.6))
    for ax, c in zip(axes, schema.QUALITY_COLUMNS):
        v = np.clip(s.quality.get(c, np.array([])), 0, 1)
        hi = plot_range(c, v)
        ax.hist(v, bins=np.linspace(0.0, hi, 21), color="#3b7dd8", edgecolor="white")
        ax.set_title(f"{c} (n={len(v)})" + ("" if hi == 1.0 else f", 0..{hi:g}"))
        ax.set_xlim(0, hi)
    ax = axes[-1]
    labels = ["ok"] + list(s.failures)
    vals = [s.ok] + list(s.failures.values())
    ax.barh(labels, vals, color=["#2e9e5b"] + ["#d8543b"] * len(s.failures))
    ax.set_title("samples")
    fig.suptitle(f"MA-V {s.split}: {s.ok} ok / {s.samples} samples, {s.frames} frames")
    fig.tight_layout()
    fig.savefig(path, dpi=100, format="png")
    plt.close(fig)
