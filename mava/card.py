"""``python -m mava card``: a Hugging Face Hub dataset card (README.md) for an MA-V split.

The card is made only from what the output folder records: run.json (matter, checkpoint hash,
options, code version), the done markers (content options, fingerprints when recorded) and the
manifest (counts and quality histograms, as ``mava stats`` computes them), plus a contact sheet of a
few samples. Its YAML header points ``configs`` at the shards and declares the row features, so
``datasets.load_dataset(<folder or repo>)`` reads the shards without guessing columns (see mava/hf.py).
"""

from __future__ import annotations

import json
import logging
import os
import posixpath
from dataclasses import dataclass, field

import fsspec
import numpy as np
import yaml
from PIL import Image, ImageDraw

from mava import hf, qc_report, schema, stats
from mava.schema import Col
from mava.folder import SplitDir
from mava.preview import BG, ROW_LABELS, TEXT, _font, panels
from mava.sample import Sample, decode_sample, has_frames
from mava.state import SplitState, inspect_split, tar_problems, vouched_manifest

log = logging.getLogger(__name__)

LICENSE = "cc-by-4.0"
LICENSE_NOTE = (
    "MA-V is derived from SA-V (Segment Anything Video, by Meta), whose videos and masklets are released "
    "under the Creative Commons Attribution 4.0 International license (CC BY 4.0). The `license` field "
    "above records the source's terms, which the mattes inherit as derived data. This is a statement "
    "of where the data comes from, not legal advice: read SA-V's license and terms before you use or "
    "redistribute the data."
)
TASK_CATEGORIES = ["image-segmentation", "mask-generation"]
TAGS = ["video-matting", "alpha-matting", "video", "webdataset", "sa-v", "ma-v"]
FIGURES_DIR = "figures"
STATS_PNG = "stats.png"
PREVIEWS_PNG = "previews.png"

# the Hub's size categories, by number of examples
_SIZES = [(1_000, "n<1K"), (10_000, "1K<n<10K"), (100_000, "10K<n<100K"), (1_000_000, "100K<n<1M"),
          (10_000_000, "1M<n<10M"), (100_000_000, "10M<n<100M"), (1_000_000_000, "100M<n<1B")]


def size_category(n: int) -> str:
    """The Hub's ``size_categories`` tag for `n` examples."""
    for limit, tag in _SIZES:
        if n < limit:
            return tag
    return "1B<n<10B"


def hub_split_name(split: str) -> str:
    """The conventional Hub split of an SA-V split: sav_train -> train, sav_val -> validation, sav_test -> test."""
    s = split.lower()
    for part, name in (("train", "train"), ("val", "validation"), ("test", "test")):
        if part in s.split("_") or s.endswith(part):
            return name
    return "".join(c if c.isalnum() or c == "_" else "_" for c in split) or "train"


@dataclass
class Provenance:
    """What the output folder says about how it was made."""

    run: dict | None
    problems: list[str] = field(default_factory=list)   # unreadable run.json / markers, disagreeing shards
    marker_options: list[dict] = field(default_factory=list)       # distinct done-marker options
    marker_fingerprints: list[dict] = field(default_factory=list)  # distinct done-marker fingerprints


def _distinct(values: list[dict]) -> list[dict]:
    seen, out = set(), []
    for v in values:
        k = json.dumps(v, sort_keys=True, default=str)
        if k not in seen:
            seen.add(k)
            out.append(v)
    return out


def provenance(st: SplitState) -> Provenance:
    """run.json and the distinct options/fingerprints recorded in the finished shards' done markers
    (never raises for content; unreadable run.json and markers are problems)."""
    problems = [str(e) for e in st.unreadable]
    opts, fps = [], []
    for m in st.finished.values():
        if isinstance(m.get(schema.MARKER_OPTIONS_LEGACY), dict):  # markers written before fingerprints
            opts.append(m[schema.MARKER_OPTIONS_LEGACY])
        if isinstance(m.get(schema.MARKER_FINGERPRINT), dict):
            fps.append(m[schema.MARKER_FINGERPRINT])
    prov = Provenance(st.run, problems, _distinct(opts), _distinct(fps))
    if len(prov.marker_options) > 1 or len(prov.marker_fingerprints) > 1:
        prov.problems.append("shards were written with different options or fingerprints (see below): "
                             "the split mixes outputs of different runs")
    return prov


def _flatten(d: dict, prefix: str = "") -> list[tuple[str, object]]:
    out = []
    for k, v in d.items():
        name = f"{prefix}{k}"
        if isinstance(v, dict) and v:
            out += _flatten(v, name + ".")
        else:
            out.append((name, v))
    return out


def _table(pairs: list[tuple[str, object]], head: tuple[str, str] = ("option", "value")) -> list[str]:
    def cell(v: object) -> str:
        s = json.dumps(v, default=str) if not isinstance(v, str) else v
        return s.replace("|", "\\|")

    return [f"| {head[0]} | {head[1]} |", "| --- | --- |"] + [f"| `{k}` | {cell(v)} |" for k, v in pairs]


# --- figures --------------------------------------------------------------------------------------


def pick_samples(rows: list[dict], n: int) -> list[dict]:
    """Up to `n` of the ok `rows` spread over clips: the first segment of distinct (video, masklet), in
    key order, preferring distinct videos."""
    first: dict[tuple, dict] = {}
    for r in sorted(rows, key=lambda r: (r[Col.VIDEO_ID], r[Col.SOURCE], r[Col.MASKLET_ID], r[Col.START])):
        first.setdefault((r[Col.VIDEO_ID], r[Col.SOURCE], r[Col.MASKLET_ID]), r)
    clips = list(first.values())
    by_video: list[dict] = []
    seen = set()
    for r in clips:  # one per video first, then the rest
        if r[Col.VIDEO_ID] not in seen:
            seen.add(r[Col.VIDEO_ID])
            by_video.append(r)
    rest = [r for r in clips if r not in by_video]
    return (by_video + rest)[:n]


def _load(split: SplitDir, row: dict) -> Sample:
    """One sample of a vouched manifest row (frames when present)."""
    members = split.row_members(row)
    fields = ("frames", "alpha", "mask") if has_frames(members) else ("alpha", "mask")
    return decode_sample(row[Col.KEY], members, None, fields, shard=split.url_of(schema.shard_file(row[Col.SHARD])))


def previews_sheet(split: SplitDir, samples: list[dict], tile: int = 200) -> Image.Image:
    """One row per sample (vouched manifest rows), at its frame with the largest input mask: frame +
    input mask outline, matte composite over a checkerboard, alpha."""
    rows = []
    for row in samples:
        key = row[Col.KEY]
        s = _load(split, row)
        t = int(np.argmax(s.masks.reshape(len(s.masks), -1).sum(1)))
        rows.append((key, s.meta.get(Col.ANN_FRAMES, [None] * (t + 1))[t], panels(s, t, tile)))
    pw = max(p[0].shape[1] for _, _, p in rows)
    gap, cap, head = 8, 20, 30
    W = gap + 3 * (pw + gap)
    H = head + sum(cap + p[0].shape[0] + gap for _, _, p in rows) + gap
    sheet = Image.new("RGB", (W, H), BG)
    draw = ImageDraw.Draw(sheet)
    for j, lab in enumerate(ROW_LABELS):
        draw.text((gap + j * (pw + gap), 8), lab, fill=TEXT, font=_font(15))
    y = head
    for key, ann, ps in rows:
        draw.text((gap, y + 2), f"{key}  (annotated frame {ann})", fill=TEXT, font=_font(13))
        for j, p in enumerate(ps):
            sheet.paste(Image.fromarray(p), (gap + j * (pw + gap), y + cap))
        y += cap + ps[0].shape[0] + gap
    return sheet


def _save_png(img_or_fn, fs: fsspec.AbstractFileSystem, path: str) -> None:
    with fs.open(path, "wb") as f:
        img_or_fn.save(f, format="PNG")


# --- the card -------------------------------------------------------------------------------------


class CardError(ValueError):
    """The card cannot be written where asked (one line for the user)."""


@dataclass
class Card:
    header: dict
    body: str
    figures: dict[str, str]   # name -> path written
    warnings: list[str] = field(default_factory=list)  # the split is not finished (what the card leaves out)
    problems: list[str] = field(default_factory=list)  # unreadable or unvouched files, mixed runs

    def text(self) -> str:
        return "---\n" + yaml.safe_dump(self.header, sort_keys=False, allow_unicode=True, width=1000) + "---\n\n" + self.body


def _data_path(split: SplitDir, card_path: str | None, data_path: str | None) -> str:
    """Glob of the shards relative to the card (the repo root on the Hub)."""
    if data_path:
        return data_path
    if card_path and split.is_local and "://" not in card_path:
        rel = os.path.relpath(split.local_path(""), os.path.dirname(os.path.abspath(card_path)))
        return posixpath.normpath(posixpath.join(rel.replace(os.sep, "/"), schema.SHARDS_GLOB))
    return schema.SHARDS_GLOB


def header(table, s: stats.SplitStats, data_path: str, pretty_name: str | None = None) -> dict:
    """The card's YAML metadata: license, tasks, size, configs pointing at the shards, row features
    (`table`: the vouched manifest rows)."""
    hub_split = hub_split_name(s.split)
    feats = [{"name": n, "dtype": d} for n, d in hf.columns(hf.max_frames(table), hf.has_frames(table))]
    return {
        "pretty_name": pretty_name or f"MA-V {s.split}",
        "license": LICENSE,
        "task_categories": TASK_CATEGORIES,
        "tags": TAGS,
        "size_categories": [size_category(s.ok)],
        "configs": [{"config_name": "default", "default": True,
                     "data_files": [{"split": hub_split, "path": data_path}]}],
        "dataset_info": {"config_name": "default", "features": feats,
                         # num_bytes: the ok samples' bytes in the shards (what a download of the rows costs)
                         "splits": [{"name": hub_split, "num_bytes": s.sample_bytes, "num_examples": s.ok}]},
    }


def _how_made(prov: Provenance) -> list[str]:
    run = prov.run or {}
    out = ["## How it was made", ""]
    matter = run.get(schema.RUN_MATTER) if isinstance(run.get(schema.RUN_MATTER), dict) else {}
    out.append(f"- matter: `{matter.get('name', 'unknown')}`"
               + (" (deterministic)" if matter.get("deterministic") else ""))
    sha = run.get(schema.RUN_CHECKPOINT_SHA256)
    out.append(f"- checkpoint sha256: `{sha}`" if sha else "- checkpoint sha256: none (a matter without weights)")
    out.append(f"- code version: `{run.get(schema.RUN_CODE_VERSION, 'unknown')}`")
    out.append(f"- finished: {run.get(schema.RUN_FINISHED_AT, 'unknown')}")
    out.append(f"- planned shards: {run.get(schema.RUN_NUM_SHARDS, 'unknown')}")
    out.append("")
    fp = run.get(schema.RUN_FINGERPRINT)
    if not isinstance(fp, dict) and len(prov.marker_fingerprints) == 1:
        fp = prov.marker_fingerprints[0]  # run.json lacks it (e.g. unreadable): the markers agree on one
    if isinstance(fp, dict):
        out += ["### Output-changing options (fingerprint)", "",
                "Everything that changes the bytes written, as recorded in run.json's fingerprint; a rerun with "
                "a different fingerprint is never mixed into the same folder.", ""]
        out += _table(_flatten(fp)) + [""]
    else:
        out += ["### Output-changing options", "",
                "run.json records no fingerprint (written before fingerprints were recorded). The options "
                "the done markers record as shaping every shard's content:", ""]
        for o in prov.marker_options or [{}]:
            out += _table(_flatten(o)) + [""]
        conf = (run.get(schema.RUN_CONFIG) or {}).get("matter_config")
        if isinstance(conf, dict):
            out += ["The matter's configuration as run (not classified into output-changing and "
                    "speed-only options in this run.json):", ""] + _table(_flatten(conf)) + [""]
    if len(prov.marker_fingerprints) > 1:
        out += ["### Shards disagree", "", "The done markers record different fingerprints:", ""]
        for i, f in enumerate(prov.marker_fingerprints):
            out += [f"Fingerprint {i + 1}:", ""] + _table(_flatten(f)) + [""]
    if matter:
        out += ["### Matter settings", "", "The matter's own description (run.json `matter`):", ""]
        out += _table(_flatten({k: v for k, v in matter.items() if k != "name"})) + [""]
    return out


def _counts(s: stats.SplitStats) -> list[str]:
    rows = [("shards", s.shards), ("videos", s.videos), ("samples planned", s.samples), ("samples ok", s.ok),
            ("samples failed", s.failed)]
    rows += [(f"failed: {k}", v) for k, v in s.failures.items()]
    rows += [("alpha frames (ok samples)", s.frames), ("bytes in shards", s.tar_bytes)]
    out = ["| count | value |", "| --- | --- |"] + [f"| {k} | {v} |" for k, v in rows]
    out += ["", "| quality (ok samples) | mean | median | min | max |", "| --- | --- | --- | --- | --- |"]
    for c in schema.QUALITY_COLUMNS:
        v = s.quality.get(c, np.array([]))
        if len(v):
            out.append(f"| `{c}` | {v.mean():.3f} | {np.median(v):.3f} | {v.min():.3f} | {v.max():.3f} |")
    return out


def _loading(hub_split: str, data_path: str, shards: list[str], max_frames: int) -> list[str]:
    a0, f0 = schema.alpha_ext(0), schema.frame_ext(0)
    names = sorted(shards)
    if len(names) > 1:
        head = os.path.commonprefix(names)
        head = head[: head.rfind("-") + 1] if "-" in head else head
        brace = f"{head}{{{names[0][len(head):]}..{names[-1][len(head):]}}}.tar"
    else:
        brace = f"{names[0]}.tar" if names else "<shard>.tar"
    return [
        "## How to load", "",
        "Each sample is one segment of up to "
        f"{max_frames} annotated frames (6 fps) of one masklet: `<key>.json` (metadata: video, masklet, "
        f"annotated and video frame indices, input mask RLEs), `<key>.{f0}` ... (frames, when written) and "
        f"`<key>.{a0}` ... (8-bit alpha at the source resolution). Keys: `{{video_id}}_{{m|a}}{{masklet:03d}}_"
        "{start:04d}`. The parquet manifest (`manifest/*.parquet`, one row per planned sample, failures "
        "included) holds the quality columns and each sample's byte range in its shard.", "",
        "With `datasets` (the header's `dataset_info` declares the columns; samples shorter than the "
        "longest have `None` in the missing frame columns):", "",
        "```python",
        "import datasets",
        f'ds = datasets.load_dataset("<this repo or folder>", split="{hub_split}")          # or streaming=True',
        "row = ds[0]",
        f'row["json"]["num_frames"], row["{a0}"]   # dict, PIL image (mode L)',
        "```", "",
        "With `webdataset`:", "",
        "```python",
        "import webdataset as wds",
        f'ds = wds.WebDataset("{posixpath.dirname(data_path)}/{brace}").decode("pil")   # members by name, e.g. "{a0}"',
        "```", "",
        "With the MA-V loaders (clips of aligned frames, alpha and input masks; streaming or random access by "
        "byte range; SAM-2-style batches):", "",
        "```python",
        "from mava.loaders import ClipConfig, StreamingClips, RandomAccessClips, sam2_collate",
        "cfg = ClipConfig(clip_len=8, size=(512, 512), hflip=0.5)",
        'ds = StreamingClips("<folder or s3://...>", cfg, on_error="skip")   # or RandomAccessClips(...)',
        "```", "",
        "`python -m mava verify <folder>` checks that markers, manifests and shards agree.", "",
    ]


def build(split_dir: str | SplitDir | SplitState, card_path: str | None = None, figures_dir: str | None = None,
          n_previews: int = 4, data_path: str | None = None, pretty_name: str | None = None) -> Card:
    """Compute the card of a split's finished shards; write its figures (PNG) under `figures_dir`
    (default: ``figures/`` beside `card_path`; none when both are None). Raises
    :class:`~mava.state.NotASplit` for a path that is not a split or has no finished shard."""
    st = split_dir if isinstance(split_dir, SplitState) else inspect_split(split_dir, need_finished=True)
    split = st.dir
    v = vouched_manifest(st)
    s = stats.summarise(st, v)
    prov = provenance(st)
    ok = [r for r in v.table.to_pylist() if r[Col.STATUS] == schema.STATUS_OK]
    max_frames = hf.max_frames(v.table)
    dpath = _data_path(split, card_path, data_path)
    head = header(v.table, s, dpath, pretty_name)
    hub_split = head["configs"][0]["data_files"][0]["split"]
    figures: dict[str, str] = {}
    fig_rel = FIGURES_DIR
    if figures_dir is None and card_path is not None:
        figures_dir = posixpath.join(posixpath.dirname(card_path) or ".", FIGURES_DIR)
    if figures_dir is not None:
        ffs, froot = fsspec.core.url_to_fs(figures_dir)
        ffs.makedirs(froot, exist_ok=True)
        if card_path is not None and "://" not in figures_dir and "://" not in card_path:
            fig_rel = os.path.relpath(os.path.abspath(figures_dir), os.path.dirname(os.path.abspath(card_path)))
        stats_png = posixpath.join(froot, STATS_PNG)
        with ffs.open(stats_png, "wb") as f:
            stats.plot(s, f)  # a file object: works for any fsspec URL
        figures["stats"] = stats_png
        picked = pick_samples(ok, n_previews)
        if picked:
            prev_png = posixpath.join(froot, PREVIEWS_PNG)
            _save_png(previews_sheet(split, picked), ffs, prev_png)
            figures["previews"] = prev_png
    matter = ((prov.run or {}).get(schema.RUN_MATTER) or {}).get("name", "a matter")
    problems = prov.problems + v.problems() + tar_problems(st, v)
    warnings = st.warnings()
    body = [f"# MA-V: {s.split}", "",
            f"Video alpha mattes made from the SA-V `{s.split}` split's masklets by the `{matter}` matter, "
            "as WebDataset shards with a parquet manifest. Every sample is a segment of up to "
            f"{max_frames} frames of one masklet at the annotation rate (6 fps), with the input mask it "
            "was conditioned on.", ""]
    if warnings or problems:
        body += ["> **Warning.** " + " ".join(warnings + problems), ""]
    body += ["## License", "", LICENSE_NOTE, ""]
    body += ["## Contents", ""] + _counts(s) + [""]
    if figures:
        body += ["## Figures", ""]
        if "stats" in figures:
            body += ["Quality signals of the ok samples (from `mava stats`): mean alpha, fraction of "
                     f"semi-transparent pixels ({schema.SEMI_LO} < alpha < {schema.SEMI_HI}), IoU of alpha > 0.5 "
                     "with the input mask; and the samples by outcome.", "",
                     f"![quality histograms]({fig_rel}/{STATS_PNG})", ""]
        if "previews" in figures:
            body += ["A few samples (middle frame of the first segment of distinct clips):", "",
                     f"![previews]({fig_rel}/{PREVIEWS_PNG})", ""]
    qc_lines, qc_figures = qc_report.card_section(split, ffs if figures_dir is not None else None,
                                                  froot if figures_dir is not None else None, fig_rel)
    body += qc_lines
    figures |= qc_figures
    body += _how_made(prov)
    body += _loading(hub_split, dpath, list(st.finished), max_frames)
    return Card(head, "\n".join(body), figures, warnings, problems)


def check_out(card_path: str, figures_dir: str | None = None) -> None:
    """Refuse, before anything is written, a card path that names a folder or lies under a file, and a
    figures folder that is a file (:class:`CardError`, one line)."""
    fs, path = fsspec.core.url_to_fs(card_path)
    if not posixpath.basename(path.rstrip("/")) or fs.isdir(path):
        raise CardError(f"--out {card_path} is a folder: give the card's file name, e.g. "
                        f"{card_path.rstrip('/')}/README.md")
    parent = posixpath.dirname(path)
    while parent and parent not in ("/", "."):
        if fs.isfile(parent):
            raise CardError(f"--out {card_path}: {parent} is a file, not a folder")
        if fs.isdir(parent):
            break
        parent = posixpath.dirname(parent)
    figs = figures_dir or posixpath.join(posixpath.dirname(card_path) or ".", FIGURES_DIR)
    ffs, froot = fsspec.core.url_to_fs(figs)
    if ffs.isfile(froot):
        raise CardError(f"the figures folder {figs} is a file (give --figures-dir, or move it)")


def write(split_dir: str | SplitDir, card_path: str, **kwargs) -> Card:
    """Build the card and write it to `card_path` (figures beside it); :class:`CardError` before
    anything is written when `card_path` cannot be a file."""
    check_out(card_path, kwargs.get("figures_dir"))
    card = build(split_dir, card_path, **kwargs)
    with fsspec.open(card_path, "w", encoding="utf-8") as f:
        f.write(card.text())
    return card


def parse(text: str) -> tuple[dict, str]:
    """(YAML header, body) of a card's text."""
    if not text.startswith("---\n"):
        raise ValueError("a dataset card starts with a '---' YAML block")
    head, _, body = text[4:].partition("\n---\n")
    return yaml.safe_load(head), body
