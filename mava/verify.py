"""Check that an MA-V split is complete and consistent: markers, manifests, shards and samples agree."""

from __future__ import annotations

import hashlib
import io
import json
import logging
import posixpath
import tarfile
from dataclasses import dataclass, field

from PIL import Image
from tqdm import tqdm

from mava import schema
from mava.schema import Col
from mava.folder import (SplitDir, UnreadableFile, as_split, conform_manifest, is_legacy_manifest, read_json_file,
                         read_parquet_file)
from mava.sample import SampleFormatError, TarEntry, has_frames, scan_tar

log = logging.getLogger(__name__)


@dataclass
class Problem:
    kind: str
    shard: str
    key: str | None
    detail: str

    def __str__(self) -> str:
        where = f"{self.shard}:{self.key}" if self.key else self.shard
        return f"[{self.kind}] {where}: {self.detail}"


@dataclass
class VerifyReport:
    shards: int = 0
    ok_rows: int = 0
    failed_rows: int = 0
    samples_checked: int = 0
    pngs_checked: int = 0
    planned: int | None = None      # plan size from run.json, when recorded
    problems: list[Problem] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)  # what could not be checked (not a failure)

    @property
    def passed(self) -> bool:
        return not self.problems

    def add(self, kind: str, shard: str, key: str | None, detail: str) -> None:
        self.problems.append(Problem(kind, shard, key, detail))

    def summary(self) -> str:
        plan = f" of {self.planned} planned" if self.planned is not None else ""
        notes = "".join(f"\nnote: {n}" for n in self.notes)
        head = (f"{self.shards} shards{plan}, {self.ok_rows} ok rows, {self.failed_rows} failed rows, "
                f"{self.samples_checked} samples and {self.pngs_checked} PNGs checked: ")
        if self.passed:
            return head + "OK" + notes
        return (head + f"{len(self.problems)} problem(s)\n" + "\n".join(f"  {p}" for p in self.problems)
                + notes)


class _HashingReader(io.RawIOBase):
    """Read-through wrapper that hashes and counts the bytes of a sequential read."""

    def __init__(self, f):
        self.f, self.sha, self.n = f, hashlib.sha256(), 0

    def readable(self) -> bool:
        return True

    def readinto(self, b) -> int:
        data = self.f.read(len(b))
        b[:len(data)] = data
        self.sha.update(data)
        self.n += len(data)
        return len(data)


def _stem(path: str) -> str:
    return posixpath.basename(path).split(".")[0]


def _check_members(rep: VerifyReport, shard: str, e: TarEntry, row: dict, full: bool) -> None:
    key = e.key
    t = row[Col.NUM_FRAMES] or 0
    if len(row[Col.ANN_FRAMES] or []) != t or len(row[Col.VIDEO_FRAMES] or []) != t:
        rep.add("frame-count", shard, key, f"num_frames {t} but {len(row[Col.ANN_FRAMES] or [])} ann_frames, "
                f"{len(row[Col.VIDEO_FRAMES] or [])} video_frames")
    want = [schema.META_EXT]
    with_frames = has_frames(e.members)
    for i in range(t):
        if with_frames:
            want.append(schema.frame_ext(i))
        want.append(schema.alpha_ext(i))
    got = list(e.members)
    if got != want:
        missing = [m for m in want if m not in e.members]
        extra = [m for m in got if m not in want]
        rep.add("members", shard, key, f"missing {missing}, unexpected {extra}" if missing or extra
                else "members out of contract order")
    if row[Col.NUM_MEMBERS] != len(got) or row[Col.TAR_OFFSET] != e.offset or row[Col.TAR_SIZE] != e.size:
        rep.add("byte-range", shard, key, f"manifest (offset {row[Col.TAR_OFFSET]}, size {row[Col.TAR_SIZE]}, "
                f"members {row[Col.NUM_MEMBERS]}) vs tar ({e.offset}, {e.size}, {len(got)})")
    h, w = row[Col.HEIGHT], row[Col.WIDTH]
    try:
        meta = json.loads(e.members[schema.META_EXT]) if schema.META_EXT in e.members else None
    except ValueError as exn:  # JSONDecodeError, UnicodeDecodeError
        rep.add("json", shard, key, f"metadata does not parse: {exn}")
        meta = None
    if meta is not None and not isinstance(meta, dict):
        rep.add("json", shard, key, f"metadata is a {type(meta).__name__}, expected an object")
        meta = None
    if meta is not None:
        absent = [f for f in schema.META_FIELDS if f not in meta]
        if absent:
            rep.add("json", shard, key, f"metadata lacks {absent}")
        for f in (Col.KEY, Col.NUM_FRAMES, Col.HEIGHT, Col.WIDTH, Col.ANN_FRAMES, Col.VIDEO_FRAMES):
            col = row[f]
            if f in meta and meta[f] != col:
                rep.add("json", shard, key, f"metadata {f}={meta[f]!r} but manifest {col!r}")
        rles = meta.get(schema.META_MASK_RLES) or []
        if len(rles) != t or any(list(r.get("size", [])) != [h, w] for r in rles):
            rep.add("json", shard, key, f"mask_rles: {len(rles)} RLEs for {t} frames or size != [{h}, {w}]")
    for ext, data in e.members.items():
        is_png = schema.ALPHA_EXT_RE.match(ext)
        is_jpg = schema.FRAME_EXT_RE.match(ext)
        if not (is_png or is_jpg):
            continue
        try:
            im = Image.open(io.BytesIO(data))
            if is_png or full:
                im.load()
        except (OSError, SyntaxError, ValueError) as exn:
            rep.add("decode", shard, key, f"{ext} does not decode: {exn}")
            continue
        if is_png:
            rep.pngs_checked += 1
            if im.mode != "L":
                rep.add("decode", shard, key, f"{ext} has mode {im.mode}, expected L")
        if im.size != (w, h):
            rep.add("size", shard, key, f"{ext} is {im.size[0]}x{im.size[1]}, manifest says {w}x{h}")


def _scan_shard(rep: VerifyReport, split: SplitDir, shard: str, ok: dict[str, dict] | None, failed: set[str],
                full: bool) -> tuple[set[str], str | None, int | None]:
    """Walk a shard's tar checking every sample against its ok row (`ok` None: the manifest is unreadable,
    only read the tar); (keys seen, sha256, size), no hash when the tar is missing. An unreadable tar (garbage, 0 bytes, truncated) is a problem, not a crash."""
    tar_path = schema.shard_file(shard)
    seen: set[str] = set()
    if not split.exists(tar_path):
        rep.add("missing-shard", shard, None, f"no shard tar {tar_path}")
        return seen, None, None
    prev = None
    with split.open(tar_path, "rb") as f:
        hr = _HashingReader(f)
        try:
            for e in scan_tar(io.BufferedReader(hr, 1 << 20)):
                if e.key in seen:
                    rep.add("members", shard, e.key, "sample members not contiguous (key seen twice)")
                if prev is not None and e.key < prev:
                    rep.add("order", shard, e.key, f"sample after {prev}: shard not in key order")
                prev = e.key
                seen.add(e.key)
                rep.samples_checked += 1
                if ok is None:  # no readable manifest: only check that the tar reads
                    continue
                if e.key not in ok:
                    what = "a failed row" if e.key in failed else "no manifest row"
                    rep.add("orphan-sample", shard, e.key, f"sample in tar has {what}")
                    continue
                _check_members(rep, shard, e, ok[e.key], full)
        except (OSError, EOFError, tarfile.TarError, SampleFormatError) as exn:
            rep.add("tar", shard, None, f"{tar_path} does not read to the end: {type(exn).__name__}: {exn}")
        # drain the rest (end-of-archive blocks, or what a failed scan left) so the hash covers the file
        while hr.read(1 << 20):
            pass
    return seen, hr.sha.hexdigest(), hr.n


def verify_shard(rep: VerifyReport, split: SplitDir, shard: str, manifest_path: str | None,
                 marker: dict | None, full: bool) -> None:
    """Check one shard: its manifest (when readable), its tar sample by sample, and its done marker."""
    raw = table = None
    if manifest_path is not None:
        try:
            with split.open(manifest_path, "rb") as f:
                raw = f.read()
            table = read_parquet_file(split, manifest_path)
        except (OSError, UnreadableFile) as exn:
            rep.add("manifest", shard, None, str(exn) if isinstance(exn, UnreadableFile)
                    else f"{manifest_path}: {type(exn).__name__}: {exn}")
    if table is not None and is_legacy_manifest(table):  # written before the QC columns: readable, noted
        rep.notes.append(f"{shard}: manifest predates the QC columns (`python -m mava qc` explains)")
        table = conform_manifest(table)
    if table is not None and (table.schema.names != list(schema.MANIFEST_COLUMNS) or not table.schema.equals(
            schema.MANIFEST_SCHEMA, check_metadata=False)):
        rep.add("schema", shard, None, "manifest schema differs from MANIFEST_SCHEMA")
        table = None
    rows = table.to_pylist() if table is not None else []
    ok = {r[Col.KEY]: r for r in rows if r[Col.STATUS] == schema.STATUS_OK}
    failed = {r[Col.KEY] for r in rows if r[Col.STATUS] != schema.STATUS_OK}
    rep.ok_rows += len(ok)
    rep.failed_rows += len(failed)
    for r in rows:
        if r[Col.SHARD] != shard:
            rep.add("manifest", shard, r[Col.KEY], f"row says shard {r[Col.SHARD]}")
    n_problems = len(rep.problems)
    seen, sha, size = _scan_shard(rep, split, shard, ok if table is not None else None, failed, full)
    unseen = sorted(set(ok) - seen)
    tar_broken = any(p.kind == "tar" for p in rep.problems[n_problems:])
    if tar_broken and unseen:  # one line, not one per sample past the damage
        rep.add("missing-sample", shard, None, f"{len(unseen)} ok rows not reached in the damaged tar "
                f"(first: {unseen[0]})")
    else:
        for key in unseen:
            rep.add("missing-sample", shard, key, "ok row without its sample in the shard")
    if marker is not None:
        checks = {schema.MARKER_TAR_SHA256: sha, schema.MARKER_TAR_BYTES: size}
        if table is not None:
            checks |= {schema.MARKER_OK: len(ok), schema.MARKER_FAILED: len(failed),
                       schema.MARKER_SAMPLES: len(ok) + len(failed)}
        if raw is not None:
            checks[schema.MARKER_MANIFEST_SHA256] = hashlib.sha256(raw).hexdigest()
        for k, v in checks.items():
            if k in marker and v is not None and marker[k] != v:
                rep.add("marker", shard, None, f"done marker {k}={marker[k]!r} but found {v!r}")


def _planned_shards(rep: VerifyReport, split: SplitDir) -> int | None:
    """The plan size recorded in run.json (None when it cannot be known: a problem or a note)."""
    try:
        info = split.run_info()
    except UnreadableFile as exn:
        rep.add("run-json", split.split, None, str(exn))
        return None
    if info is None:
        rep.add("run-json", split.split, None, f"no {schema.RUN_JSON}: the run never finished (or was started by a "
                "version that writes it later); planned shards cannot be checked")
        return None
    n = info.get(schema.RUN_NUM_SHARDS)
    if not isinstance(n, int) or isinstance(n, bool) or n < 0:
        rep.notes.append(f"{schema.RUN_JSON} has no usable {schema.RUN_NUM_SHARDS!r} ({n!r}): "
                         "missing shards not checked")
        return None
    return n


def _plan(rep: VerifyReport, split: SplitDir) -> dict | None:
    """The output's shard plan (plan.json), None when absent (older outputs) or unreadable (a problem)."""
    try:
        plan = split.read_json(schema.PLAN_JSON)
    except UnreadableFile as exn:
        rep.add("plan", split.split, None, str(exn))
        return None
    if plan is not None and not isinstance(plan.get(schema.PLAN_VIDEOS_PER_SHARD), int):
        rep.add("plan", split.split, None, f"{schema.PLAN_JSON} records no {schema.PLAN_VIDEOS_PER_SHARD}: {plan!r}")
        return None
    return plan


def _check_marker_plan(rep: VerifyReport, shard: str, marker: dict, plan: dict) -> None:
    """A done marker of another shard plan than plan.json's, or with more videos than it allows."""
    theirs = marker.get(schema.MARKER_PLAN)
    if theirs is not None and theirs != plan:
        rep.add("plan", shard, None, f"done marker records shard plan {theirs!r}, {schema.PLAN_JSON} {plan!r}: "
                "the output mixes shard plans")
    videos = marker.get(schema.MARKER_VIDEOS)
    n = plan[schema.PLAN_VIDEOS_PER_SHARD]
    if isinstance(videos, list) and len(videos) > n:
        rep.add("plan", shard, None, f"done marker lists {len(videos)} videos, more than the plan's {n} per shard")


def verify(split_dir: str | SplitDir, full: bool = False, progress: bool = False) -> VerifyReport:
    """Check every shard of a split; `full` also decodes every JPEG (PNGs are always decoded).

    Never raises for damaged content: unreadable manifests, markers, tars, run.json and plan.json are
    problems, and so are planned shards (run.json ``num_shards``) without a done marker and done
    markers of another shard plan than plan.json's. Shard names come from what the output records
    (run.json, markers), not from the folder's name."""
    split = as_split(split_dir)
    rep = VerifyReport()
    manifests = {_stem(p): p for p in split.manifest_files()}
    markers = {_stem(p): p for p in split.done_files()}
    tars = {_stem(p) for p in split.shard_files()}
    planned = _planned_shards(rep, split)
    if split.exists(schema.LEASE_JSON):  # not a problem by itself: a run may be writing now
        try:
            lease = read_json_file(split, schema.LEASE_JSON)
            who = f"host {lease.get('host')}, pid {lease.get('pid')}, heartbeat {lease.get('heartbeat_at')}"
        except UnreadableFile as exn:
            who = exn.reason
        rep.notes.append(f"{schema.LEASE_JSON} is present ({who}): a run may be writing this output now, or "
                         "one was killed (the next run takes a stale lease over)")
    if planned is not None:
        rep.planned = planned
        missing = [schema.shard_name(split.split, i) for i in range(planned)
                   if schema.shard_name(split.split, i) not in markers]
        for s in missing:
            what = "unfinished: manifest without done marker" if s in manifests else "no done marker"
            rep.add("missing-shard", s, None, f"planned shard ({schema.RUN_NUM_SHARDS}={planned} in "
                    f"{schema.RUN_JSON}) is not complete: {what}")
    for s in sorted(set(markers) - set(manifests)):
        rep.add("marker", s, None, "done marker without manifest")
    for s in sorted(set(manifests) - set(markers)):
        if planned is None or s not in {schema.shard_name(split.split, i) for i in range(planned)}:
            rep.add("marker", s, None, "manifest without done marker (unfinished shard)")
    for s in sorted(tars - set(manifests) - set(markers)):
        rep.add("orphan-shard", s, None, "shard tar without manifest or done marker")
    if not manifests and not markers:
        rep.add("empty", split.url, None, "no manifests found")
    plan = _plan(rep, split)
    for s in tqdm(sorted(set(manifests) | set(markers)), desc="verify", disable=not progress):
        rep.shards += 1
        marker = None
        if s in markers:
            try:
                marker = read_json_file(split, markers[s])
            except UnreadableFile as exn:
                rep.add("marker", s, None, str(exn))
        if marker is not None and plan is not None:
            _check_marker_plan(rep, s, marker, plan)
        verify_shard(rep, split, s, manifests.get(s), marker, full)
    all_keys: dict[str, str] = {}
    table, _ = split.read_manifest_checked()  # unreadable ones were reported per shard above
    for r in table.select([Col.KEY, Col.SHARD]).to_pylist():
        if r[Col.KEY] in all_keys:
            rep.add("duplicate-key", r[Col.SHARD], r[Col.KEY], f"key also in {all_keys[r[Col.KEY]]}")
        all_keys[r[Col.KEY]] = r[Col.SHARD]
    return rep
