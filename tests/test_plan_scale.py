"""The skip check at scale: ``select_shards`` reads the shards' files together (``gather_shard_facts``)
and must decide every shard exactly as the per-shard ``check_shard`` that reads each file in turn.

One output holds a shard in each state a rerun meets (done, a tar of the wrong size, no tar, no
manifest, a manifest that is not the marker's, an unreadable marker, a marker of other videos, of
another fingerprint, of a shorter plan, no marker at all); both checks must agree on each, and
``--retry-failed`` must pick the done shard whose manifest holds a failed row. Planning lists the
folders of a train-layout split (in parallel on object stores) and keeps its order and first-wins rule.
"""

from __future__ import annotations

import hashlib
import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from mava import schema
from mava.folder import SplitDir
from mava.schema import Col
from pipeline import plan as planning
from pipeline.sav import LAYOUT_TRAIN, VideoRef, list_videos

SPLIT = "sav_train"
FP = {schema.FP_MATTER: {"matter": "m"}, schema.FP_CONTENT: {"segment_len": 12}}
PLAN = planning.plan_record(2)


def _manifest(statuses: list[str]) -> bytes:
    t = pa.table({Col.STATUS: statuses, Col.ERROR_TYPE: [None if s == schema.STATUS_OK else "X" for s in statuses]})
    sink = pa.BufferOutputStream()
    pq.write_table(t, sink)
    return sink.getvalue().to_pybytes()


@pytest.fixture(scope="module")
def output(tmp_path_factory):
    """(split dir, plans, expected state per shard index)."""
    root = tmp_path_factory.mktemp("out") / SPLIT
    videos = [VideoRef(f"sav_{i:06d}", LAYOUT_TRAIN, None, None) for i in range(24)]
    plans = planning.plan_shards(videos, 2)
    states = {}

    def write(p, *, marker_edit=None, tar_delta=0, tar=True, man=True, man_bytes=None, statuses=("ok",),
              marker=True, raw_marker=None):
        tar_bytes = b"x" * (1024 + p.index)
        man_data = _manifest(list(statuses))
        m = {schema.MARKER_PLAN: PLAN, schema.MARKER_VIDEOS: [v.video_id for v in p.videos],
             schema.MARKER_FINGERPRINT: FP, schema.MARKER_TAR_BYTES: len(tar_bytes) + tar_delta,
             schema.MARKER_MANIFEST_SHA256: hashlib.sha256(man_data).hexdigest()}
        if marker_edit:
            marker_edit(m)
        for rel, data, on in ((schema.shard_tar(SPLIT, p.index), tar_bytes, tar),
                              (schema.shard_manifest(SPLIT, p.index), man_bytes or man_data, man),
                              (schema.shard_done(SPLIT, p.index), raw_marker or json.dumps(m).encode(), marker)):
            if on:
                (root / rel).parent.mkdir(parents=True, exist_ok=True)
                (root / rel).write_bytes(data)

    cases = [
        ("done", {}), ("done", {"statuses": ("ok", "failed")}), ("damaged", {"tar_delta": 3}),
        ("damaged", {"tar": False}), ("damaged", {"man": False}), ("damaged", {"man_bytes": b"other"}),
        ("unreadable", {"raw_marker": b"{not json"}), ("unreadable", {"raw_marker": b"[1, 2]"}),
        ("other-videos", {"marker_edit": lambda m: m.update({schema.MARKER_VIDEOS: ["sav_999999"]})}),
        ("mismatch", {"marker_edit": lambda m: m.update({schema.MARKER_FINGERPRINT: {"matter": "other"}})}),
        ("grown", {"marker_edit": lambda m: m.update({schema.MARKER_VIDEOS: m[schema.MARKER_VIDEOS][:1]})}),
        ("missing", {"marker": False}),
    ]
    for p, (state, kw) in zip(plans, cases):
        write(p, **kw)
        states[p.index] = state
    return SplitDir(str(root)), plans, states


def test_select_decides_every_shard_as_the_serial_check(output):
    d, plans, states = output
    facts = planning.gather_shard_facts(d, SPLIT, {p.index for p in plans}, failures=True)
    for p in plans:
        serial = planning.check_shard(d, SPLIT, p, FP, plan_rec=PLAN)
        gathered = planning.check_shard(d, SPLIT, p, FP, plan_rec=PLAN, facts=facts)
        assert serial.state == states[p.index], (p.index, serial)
        assert (gathered.state, gathered.detail, gathered.marker) == (serial.state, serial.detail, serial.marker)
    assert {i for i, bad in facts.failed.items() if bad} == {1, 5}   # 5: "other" is no parquet
    assert sorted(facts.failed) == [0, 1, 2, 3, 5, 6, 7, 8, 9, 10]   # a marker (readable or not) and a manifest


def test_select_shards_keeps_done_shards_and_retries_failed_ones(output):
    d, plans, states = output
    sel = planning.select_shards(plans, d, SPLIT, fingerprint=FP, plan=PLAN)
    assert [p.index for p in sel.skip] == [0, 1]
    assert sorted(sel.mismatched) == [6, 7, 8, 9]
    assert [p.index for p in sel.run] == [2, 3, 4, 5, 10, 11]
    retry = planning.select_shards(plans, d, SPLIT, fingerprint=FP, plan=PLAN, retry_failed=True)
    assert [p.index for p in retry.skip] == [0]
    assert [p.index for p in retry.run] == [1, 2, 3, 4, 5, 10, 11]


def test_listing_a_split_of_many_folders_keeps_order_and_the_first_copy(tmp_path):
    split = tmp_path / SPLIT
    for f in range(3):
        for i in range(4):
            folder = split / f"sav_{f:03d}"
            folder.mkdir(parents=True, exist_ok=True)
            vid = f"sav_{(3 - f) * 10 + i:06d}"
            (folder / f"{vid}.mp4").write_bytes(b"")
            (folder / f"{vid}_manual.json").write_text("{}")
    (split / "sav_002" / "sav_000030.mp4").write_bytes(b"")   # also in sav_002: the copy in sav_000 is kept
    refs = list_videos(str(split))
    assert [r.video_id for r in refs] == sorted(r.video_id for r in refs)
    assert len(refs) == 12
    assert next(r for r in refs if r.video_id == "sav_000030").video_url == str(split / "sav_000" / "sav_000030.mp4")
    assert next(r for r in refs if r.video_id == "sav_000010").video_url == str(split / "sav_002" / "sav_000010.mp4")
