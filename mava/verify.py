"""Check that an MA-V split is complete and consistent: markers, manifests, shards and samples agree."""

from __future__ import annotations

import hashlib
import io
import json
import logging
import posixpath
from dataclasses import dataclass, field

import pyarrow.parquet as pq
from PIL import Image
from tqdm import tqdm

from mava import schema
from mava.manifest import SplitDir, as_split
from mava.sample import SampleFormatError, TarEntry, scan_tar

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
    problems: list[Problem] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return not self.problems

    def add(self, kind: str, shard: str, key: str | None, detail: str) -> None:
        self.problems.append(Problem(kind, shard, key, detail))

    def summary(self) -> str:
        head = (f"{self.shards} shards, {self.ok_rows} ok rows, {self.failed_rows} failed rows, "
                f"{self.samples_checked} samples and {self.pngs_checked} PNGs checked: ")
        if self.passed:
            return head + "OK"
        return head + f"{len(self.problems)} problem(s)\n" + "\n".join(f"  {p}" for p in self.problems)


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
    t = row["num_frames"] or 0
    if len(row["ann_frames"] or []) != t or len(row["video_frames"] or []) != t:
        rep.add("frame-count", shard, key, f"num_frames {t} but {len(row['ann_frames'] or [])} ann_frames, "
                f"{len(row['video_frames'] or [])} video_frames")
    want = [schema.META_EXT]
    has_frames = schema.frame_ext(0) in e.members
    for i in range(t):
        if has_frames:
            want.append(schema.frame_ext(i))
        want.append(schema.alpha_ext(i))
    got = list(e.members)
    if got != want:
        missing = [m for m in want if m not in e.members]
        extra = [m for m in got if m not in want]
        rep.add("members", shard, key, f"missing {missing}, unexpected {extra}" if missing or extra
                else "members out of contract order")
    if row["num_members"] != len(got) or row["tar_offset"] != e.offset or row["tar_size"] != e.size:
        rep.add("byte-range", shard, key, f"manifest (offset {row['tar_offset']}, size {row['tar_size']}, "
                f"members {row['num_members']}) vs tar ({e.offset}, {e.size}, {len(got)})")
    h, w = row["height"], row["width"]
    try:
        meta = json.loads(e.members[schema.META_EXT]) if schema.META_EXT in e.members else None
    except json.JSONDecodeError as exn:
        rep.add("json", shard, key, f"metadata does not parse: {exn}")
        meta = None
    if meta is not None:
        absent = [f for f in schema.META_FIELDS if f not in meta]
        if absent:
            rep.add("json", shard, key, f"metadata lacks {absent}")
        for f in ("key", "num_frames", "height", "width", "ann_frames", "video_frames"):
            col = row[f]
            if f in meta and meta[f] != col:
                rep.add("json", shard, key, f"metadata {f}={meta[f]!r} but manifest {col!r}")
        rles = meta.get("mask_rles") or []
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


def verify_shard(rep: VerifyReport, split: SplitDir, shard: str, manifest_path: str, marker: dict | None,
                 full: bool) -> None:
    with split.fs.open(manifest_path, "rb") as f:
        raw = f.read()
    table = pq.read_table(io.BytesIO(raw))
    if table.schema.names != list(schema.MANIFEST_COLUMNS) or not table.schema.equals(
            schema.MANIFEST_SCHEMA, check_metadata=False):
        rep.add("schema", shard, None, "manifest schema differs from MANIFEST_SCHEMA")
    rows = table.to_pylist()
    ok = {r["key"]: r for r in rows if r["status"] == schema.STATUS_OK}
    failed = {r["key"] for r in rows if r["status"] != schema.STATUS_OK}
    rep.ok_rows += len(ok)
    rep.failed_rows += len(failed)
    for r in rows:
        if r["shard"] != shard:
            rep.add("manifest", shard, r["key"], f"row says shard {r['shard']}")
    tar_path = split.shard_path(shard)
    seen: set[str] = set()
    sha = None
    if not split.fs.exists(tar_path):
        rep.add("missing-shard", shard, None, "manifest without shard tar")
    else:
        prev = None
        with split.fs.open(tar_path, "rb") as f:
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
                    if e.key not in ok:
                        what = "a failed row" if e.key in failed else "no manifest row"
                        rep.add("orphan-sample", shard, e.key, f"sample in tar has {what}")
                        continue
                    _check_members(rep, shard, e, ok[e.key], full)
                # drain the rest (end-of-archive blocks) so the hash covers the file
                while hr.read(1 << 20):
                    pass
            except (OSError, EOFError, SampleFormatError) as exn:
                rep.add("tar", shard, None, f"tar does not read to the end: {exn}")
        sha = hr.sha.hexdigest()
    for key in sorted(set(ok) - seen):
        rep.add("missing-sample", shard, key, "ok row without its sample in the shard")
    if marker is not None:
        n_ok, n_failed = len(ok), len(failed)
        checks = {schema.MARKER_OK: n_ok, schema.MARKER_FAILED: n_failed, schema.MARKER_SAMPLES: n_ok + n_failed,
                  schema.MARKER_TAR_SHA256: sha, schema.MARKER_MANIFEST_SHA256: hashlib.sha256(raw).hexdigest()}
        for k, v in checks.items():
            if k in marker and v is not None and marker[k] != v:
                rep.add("marker", shard, None, f"done marker {k}={marker[k]!r} but found {v!r}")


def verify(split_dir: str | SplitDir, full: bool = False, progress: bool = False) -> VerifyReport:
    """Check every shard of a split; `full` also decodes every JPEG (PNGs are always decoded)."""
    split = as_split(split_dir)
    rep = VerifyReport()
    manifests = {_stem(p): p for p in split.manifest_files()}
    markers = {_stem(p): p for p in split.done_files()}
    tars = {_stem(p) for p in split.shard_files()}
    for s in sorted(set(markers) - set(manifests)):
        rep.add("marker", s, None, "done marker without manifest")
    for s in sorted(set(manifests) - set(markers)):
        rep.add("marker", s, None, "manifest without done marker (unfinished shard)")
    for s in sorted(tars - set(manifests)):
        rep.add("orphan-shard", s, None, "shard tar without manifest")
    if not manifests:
        rep.add("empty", split.url, None, "no manifests found")
    all_keys: dict[str, str] = {}
    for s in tqdm(sorted(manifests), desc="verify", disable=not progress):
        rep.shards += 1
        marker = None
        if s in markers:
            with split.fs.open(markers[s], "rb") as f:
                try:
                    marker = json.load(f)
                except json.JSONDecodeError as exn:
                    rep.add("marker", s, None, f"done marker does not parse: {exn}")
        verify_shard(rep, split, s, manifests[s], marker, full)
    for r in split.read_manifest().select(["key", "shard"]).to_pylist():
        if r["key"] in all_keys:
            rep.add("duplicate-key", r["shard"], r["key"], f"key also in {all_keys[r['key']]}")
        all_keys[r["key"]] = r["shard"]
    return rep
