"""What a split folder holds, before a ``mava`` command or a loader trusts it.

- :func:`require_split`: is this an MA-V split folder at all (exists, is a folder, holds run.json,
  plan.json, done markers, manifests or shards)? If not, :class:`NotASplit`, one line.
- :func:`inspect_split`: which shards are *finished* (a done marker that reads as a JSON object: the
  writer's last step) and which are *unfinished* (a manifest or tar without marker, or a shard of
  run.json's plan never written), what cannot be read, and what the commands that still serve an
  interrupted split must say on the terminal.
- :func:`vouched_manifest`: the manifest rows that finished shards vouch for. A manifest counts only
  when its shard is finished and, when the marker records a sha256, it is that manifest; a key found
  in two finished shards is served from the first only (a duplicate is a problem, never a second row).
"""

from __future__ import annotations

import hashlib
import json
import logging
import tarfile
from dataclasses import dataclass, field

import pyarrow as pa

from mava import lifecycle, schema
from mava.folder import MANIFEST_EMPTY, SplitDir, UnreadableFile, as_split
from mava.schema import Col

log = logging.getLogger(__name__)


class NotASplit(FileNotFoundError):
    """A path that is not an MA-V split folder (missing, a file, empty, nothing of MA-V in it), or one
    without a finished shard where one is needed; the message is one line for the user."""


def require_split(split_dir: str | SplitDir) -> SplitDir:
    """The split folder, or :class:`NotASplit` saying in one line why the path is not one."""
    d = as_split(split_dir)
    try:
        exists, isdir = d.exists(""), d.isdir("")
    except OSError as exc:
        raise NotASplit(f"{d.url} cannot be read ({type(exc).__name__}: {exc})") from exc
    if not exists:
        raise NotASplit(f"{d.url} does not exist (expected an MA-V split folder <out>/<split>, e.g. out/mava/sav_train)")
    if not isdir:
        raise NotASplit(f"{d.url} is a file, not an MA-V split folder <out>/<split>")
    if not (d.exists(schema.RUN_JSON) or d.exists(schema.PLAN_JSON) or d.done_files() or d.manifest_files()
            or d.shard_files()):
        raise NotASplit(f"{d.url} is not an MA-V split folder: it holds no {schema.RUN_JSON}, done markers, manifests "
                        "or shards (expected <out>/<split> as pipeline.run writes it, e.g. out/mava/sav_train)")
    return d


@dataclass
class SplitState:
    """What :func:`inspect_split` found in a split folder."""

    dir: SplitDir
    split: str                                   # the split's name as the output records it
    finished: dict[str, dict] = field(default_factory=dict)   # shard name -> its done marker
    unfinished: list[str] = field(default_factory=list)       # shard names without a readable marker
    unreadable: list[UnreadableFile] = field(default_factory=list)  # markers and run.json that do not read
    run: dict | None = None                      # run.json (None: absent or unreadable)
    planned: int | None = None                   # run.json num_shards

    @property
    def url(self) -> str:
        return self.dir.url

    def warnings(self) -> list[str]:
        """One line per reason the split is not a finished MA-V split (empty when it is one)."""
        out = []
        if self.unfinished:
            names = ", ".join(self.unfinished[:3]) + (", ..." if len(self.unfinished) > 3 else "")
            out.append(f"{self.url} is not finished: {len(self.unfinished)} shard(s) without a done marker ({names}); "
                       f"counting only its {len(self.finished)} finished shard(s)")
        if self.run is None and not any(e.path.endswith(schema.RUN_JSON) for e in self.unreadable):
            out.append(f"{self.url} has no {schema.RUN_JSON}: the run that wrote it did not finish")
        return out


def read_json_objects(d: SplitDir, paths: list[str]) -> dict[str, dict | UnreadableFile]:
    """JSON objects of several files of the split, fetched together (concurrently on object stores)."""
    if not paths:
        return {}
    raw = d.cat(list(paths), on_error="return")
    out: dict[str, dict | UnreadableFile] = {}
    for p in paths:
        data = raw.get(p)
        url = d.url_of(p)
        if isinstance(data, BaseException):
            out[p] = UnreadableFile(url, f"unreadable JSON ({type(data).__name__}: {data})")
            continue
        try:
            doc = json.loads(data)
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            out[p] = UnreadableFile(url, f"unreadable JSON ({type(exc).__name__}: {exc})")
            continue
        out[p] = doc if isinstance(doc, dict) else UnreadableFile(
            url, f"JSON is a {type(doc).__name__}, expected an object")
    return out


def inspect_split(split_dir: str | SplitDir, need_finished: bool = False) -> SplitState:
    """Finished and unfinished shards of a split (never raises for damaged content; raises
    :class:`NotASplit` for a path that is not a split, and with ``need_finished`` for one without a
    finished shard)."""
    d = require_split(split_dir)
    state = SplitState(d, d.split)
    try:
        state.run = d.run_info()
    except UnreadableFile as exc:
        state.unreadable.append(exc)
    n = (state.run or {}).get(schema.RUN_NUM_SHARDS)
    state.planned = n if isinstance(n, int) and not isinstance(n, bool) and n >= 0 else None
    for p, doc in read_json_objects(d, d.done_files()).items():
        if isinstance(doc, UnreadableFile):
            state.unreadable.append(doc)
        else:
            state.finished[schema.file_shard(p)] = doc
    state.finished = dict(sorted(state.finished.items()))
    seen = {schema.file_shard(p) for p in [*d.manifest_files(), *d.shard_files(), *d.done_files()]}
    if state.planned is not None:
        seen |= {schema.shard_name(state.split, i) for i in range(state.planned)}
    state.unfinished = sorted(s for s in seen if s not in state.finished)
    if need_finished and not state.finished:
        why = f" ({state.unreadable[0]})" if state.unreadable else ""
        raise NotASplit(f"{d.url} has no finished shard (no readable done marker under done/){why}: the run writing "
                        "it has not finished a shard yet")
    return state


def _conform(t: pa.Table, url: str) -> pa.Table:
    """A manifest table with exactly MANIFEST_SCHEMA, or UnreadableFile."""
    if t.schema.names != list(schema.MANIFEST_COLUMNS):
        raise UnreadableFile(url, f"manifest columns {t.schema.names} are not MANIFEST_SCHEMA's")
    if t.schema.equals(schema.MANIFEST_SCHEMA, check_metadata=False):
        return t
    try:
        return t.cast(schema.MANIFEST_SCHEMA)
    except (pa.ArrowException, ValueError) as exc:
        raise UnreadableFile(url, f"manifest types differ from MANIFEST_SCHEMA ({type(exc).__name__}: {exc})") from exc


@dataclass
class Vouched:
    """The manifest rows of the finished shards (a key once: the first finished shard that holds it)."""

    table: pa.Table
    unreadable: list[UnreadableFile] = field(default_factory=list)   # manifests not read or not vouched for
    duplicates: dict[str, list[str]] = field(default_factory=dict)   # key -> every finished shard holding it

    def problems(self) -> list[str]:
        out = [str(e) for e in self.unreadable]
        if self.duplicates:
            k, shards = next(iter(self.duplicates.items()))
            out.append(f"{len(self.duplicates)} key(s) are in more than one finished shard (e.g. {k} in "
                       f"{', '.join(shards)}): each is counted and served once, from its first shard")
        return out


def vouched_manifest(state: SplitState) -> Vouched:
    """Rows of the manifests that the finished shards' markers vouch for, in shard then key order."""
    d = state.dir
    rels = [schema.manifest_file(s) for s in state.finished]
    raw = d.cat(rels, on_error="return") if rels else {}
    tables, bad = [], []
    for shard, rel in zip(state.finished, rels):
        url, data = d.url_of(rel), raw.get(rel)
        if isinstance(data, BaseException) or data is None:
            bad.append(UnreadableFile(url, f"the done marker's manifest does not read ({type(data).__name__}: {data})"))
            continue
        sha = state.finished[shard].get(schema.MARKER_MANIFEST_SHA256)
        if isinstance(sha, str) and hashlib.sha256(data).hexdigest() != sha:
            bad.append(UnreadableFile(url, "not the manifest its done marker vouches for (sha256 differs)"))
            continue
        try:
            t = _conform(lifecycle.read_parquet(pa.BufferReader(data)), url)
        except pa.ArrowException as exc:
            bad.append(UnreadableFile(url, f"unreadable manifest ({type(exc).__name__}: {exc})"))
            continue
        except UnreadableFile as exc:
            bad.append(exc)
            continue
        tables.append(t)
    table = pa.concat_tables(tables) if tables else MANIFEST_EMPTY
    keys = table.column(Col.KEY).to_pylist()
    shards = table.column(Col.SHARD).to_pylist()
    first: dict[str, int] = {}
    dups: dict[str, list[str]] = {}
    keep = []
    for i, k in enumerate(keys):
        if k in first:
            dups.setdefault(k, [shards[first[k]]]).append(shards[i])
            continue
        first[k] = i
        keep.append(i)
    if dups:
        table = table.take(pa.array(keep, pa.int64()))
        log.warning("%s: %d key(s) in more than one finished shard; each served once, from its first shard",
                    state.url, len(dups))
    return Vouched(table, bad, dups)


def tar_sizes(state: SplitState) -> dict[str, int]:
    """Shard name -> size of its tar, for every tar of the split (one listing)."""
    return {schema.file_shard(p): int(info["size"]) for p, info in state.dir.glob(schema.SHARDS_GLOB, detail=True).items()}


def tar_problems(state: SplitState, vouched: Vouched | None = None) -> list[str]:
    """Finished shards whose tar is missing, not the size its done marker records (one listing), or
    (given the vouched rows) does not hold the first and last ok sample of its manifest where the rows
    say (one 512-byte ranged read each, fetched together): a swapped or rewritten tar."""
    d = state.dir
    sizes = tar_sizes(state)
    out = []
    for shard, marker in state.finished.items():
        want = marker.get(schema.MARKER_TAR_BYTES)
        if shard not in sizes:
            out.append(f"{d.url_of(schema.shard_file(shard))}: missing (the shard has a done marker)")
        elif isinstance(want, int) and sizes[shard] != want:
            out.append(f"{d.url_of(schema.shard_file(shard))}: {sizes[shard]} bytes, its done marker says {want}: "
                       "not the tar the marker vouches for")
    if vouched is None:
        return out
    ends: dict[str, tuple[tuple[str, int], tuple[str, int]]] = {}   # shard -> (first, last) (key, offset)
    for r in vouched.table.select([Col.SHARD, Col.KEY, Col.TAR_OFFSET, Col.STATUS]).to_pylist():
        if r[Col.STATUS] == schema.STATUS_OK and r[Col.SHARD] in sizes and r[Col.TAR_OFFSET] is not None:
            here = (r[Col.KEY], r[Col.TAR_OFFSET])
            ends[r[Col.SHARD]] = (ends[r[Col.SHARD]][0], here) if r[Col.SHARD] in ends else (here, here)
    jobs = [(shard, key, off) for shard, pair in ends.items() for key, off in dict(pair).items()]
    if not jobs:
        return out
    paths = [schema.shard_file(s) for s, _, _ in jobs]
    heads = d.cat_ranges(paths, [o for _, _, o in jobs], [o + tarfile.BLOCKSIZE for _, _, o in jobs],
                         on_error="return")
    said = {line.split(": ", 1)[0] for line in out}  # one line per shard
    for (shard, key, off), head in zip(jobs, heads):
        try:
            if isinstance(head, BaseException):
                raise head
            name = tarfile.TarInfo.frombuf(head, tarfile.ENCODING, "surrogateescape").name
        except (OSError, ValueError, tarfile.TarError) as exc:
            name = f"no tar header ({type(exc).__name__})"
        if name.partition(".")[0] != key and d.url_of(schema.shard_file(shard)) not in said:
            said.add(d.url_of(schema.shard_file(shard)))
            out.append(f"{d.url_of(schema.shard_file(shard))}: at byte {off} holds {name!r}, its manifest row says "
                       f"sample {key}: not the tar the manifest describes")
    return out
