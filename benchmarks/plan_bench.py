"""Planning and the rerun skip check at SA-V scale: a split of 50.9K video entries and thousands of finished
shards, on local disk and on a local S3 server.

- planning: ``list_videos`` + ``plan_shards`` of a train-layout split (``sav_NNN/`` folders of 1000 videos,
  an mp4 and a manual JSON per video; planning lists names, it opens neither);
- the skip check of a rerun, as the job makes it: ``gather_shard_facts`` (every shard's marker, tar size
  and manifest, read together once), ``settle_plan`` (the shard plan recorded in the output, from those
  markers) and ``select_shards`` (every finished shard proved done from those facts), over N finished
  shards, against the serial baseline measured in the same run (``check_shard`` per shard, each file read
  in turn: what ``select_shards`` did before it fetched the shards' files together).

    python -m benchmarks.plan_bench [--videos 50900] [--shards 6363] [--s3-videos 2000] [--s3-shards 2000]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import os
import sys
import tempfile
import time
from pathlib import Path

from mava import lifecycle, schema

VIDEOS_PER_SHARD = 8
FINGERPRINT = {schema.FP_MATTER: {"matter": "bench"}, schema.FP_CONTENT: {"segment_len": 12}}


def make_split(root: Path, n_videos: int) -> Path:
    """A train-layout split of ``n_videos`` entries: hard links to one tiny mp4 and one JSON."""
    split = root / "sav_train"
    split.mkdir(parents=True, exist_ok=True)
    mp4, ann = root / "seed.mp4", root / "seed.json"
    mp4.write_bytes(b"\0" * 64)
    ann.write_text(json.dumps({"masklet": []}))
    for i in range(n_videos):
        folder = split / f"sav_{i // 1000:03d}"
        if i % 1000 == 0:
            folder.mkdir(exist_ok=True)
        vid = f"sav_{i + 1:06d}"
        os.link(mp4, folder / f"{vid}.mp4")
        os.link(ann, folder / f"{vid}_manual.json")
    return split


def shard_files(plans: list, split: str) -> dict[str, bytes]:
    """Relative path -> bytes of a finished output of ``plans``: tar, manifest and done marker per shard."""
    from pipeline import plan as planning

    rec = planning.plan_record(VIDEOS_PER_SHARD)
    files = {schema.PLAN_JSON: json.dumps(rec, indent=1, sort_keys=True).encode()}
    for p in plans:
        tar = b"T" * (10240 + p.index % 7)
        man = f"manifest of shard {p.index}".encode() * 40
        marker = {schema.MARKER_PLAN: rec, schema.MARKER_VIDEOS: [v.video_id for v in p.videos],
                  schema.MARKER_FINGERPRINT: FINGERPRINT, schema.MARKER_TAR_BYTES: len(tar),
                  schema.MARKER_MANIFEST_SHA256: hashlib.sha256(man).hexdigest()}
        files[schema.shard_tar(split, p.index)] = tar
        files[schema.shard_manifest(split, p.index)] = man
        files[schema.shard_done(split, p.index)] = json.dumps(marker).encode()
    return files


def time_plan(split_url: str) -> tuple[float, list]:
    from pipeline import plan as planning
    from pipeline.sav import list_videos

    t0 = time.perf_counter()
    plans = planning.plan_shards(list_videos(split_url), VIDEOS_PER_SHARD)
    return time.perf_counter() - t0, plans


def time_skip(out_split: str, split: str, plans: list, count=None) -> dict:
    """Seconds of gather_shard_facts + settle_plan and of select_shards (after), and of the serial per-shard
    check (before); ``count()``: requests since its last call (S3), recorded as ``*_requests``."""
    from mava.folder import SplitDir
    from pipeline import plan as planning

    count = count or (lambda: None)
    rec = planning.plan_record(VIDEOS_PER_SHARD)
    count()
    t0 = time.perf_counter()        # as the job does it: every shard's facts once, then the plan, then select
    facts = planning.gather_shard_facts(SplitDir(out_split), split)
    planning.settle_plan(SplitDir(out_split), split, plans, VIDEOS_PER_SHARD, markers=facts.markers)
    t1 = time.perf_counter()
    settle_n = count()
    sel = planning.select_shards(plans, SplitDir(out_split), split, fingerprint=FINGERPRINT, plan=rec, facts=facts)
    t2 = time.perf_counter()
    select_n = count()
    if sel.run or sel.mismatched:
        raise RuntimeError(f"the skip check did not keep every finished shard: {len(sel.run)} to run, "
                           f"{len(sel.mismatched)} mismatched")
    d = SplitDir(out_split)
    t2 = time.perf_counter()
    states = [planning.check_shard(d, split, p, FINGERPRINT, plan_rec=rec).state for p in plans]
    t3 = time.perf_counter()
    serial_n = count()
    if set(states) != {"done"}:
        raise RuntimeError(f"the serial check found {sorted(set(states))}")
    return {"settle_s": t1 - t0, "select_s": t2 - t1, "serial_s": t3 - t2, "settle_requests": settle_n,
            "select_requests": select_n, "serial_requests": serial_n}


def report(where: str, n_videos: int, plan_s: float, n_shards: int, skip: dict) -> None:
    after = skip["settle_s"] + skip["select_s"]
    print(f"{where}: planning {n_videos} videos {plan_s:.2f} s ({plan_s / n_videos * 1e6:.0f} us/video); skip check of "
          f"{n_shards} finished shards {after:.2f} s (facts + plan {skip['settle_s']:.2f}, select "
          f"{skip['select_s']:.2f}; {after / n_shards * 1e3:.2f} ms/shard) vs serial per-shard check "
          f"{skip['serial_s']:.2f} s ({skip['serial_s'] / n_shards * 1e3:.2f} ms/shard): {after / skip['serial_s']:.3f}x "
          f"the serial check", flush=True)
    if skip.get("serial_requests") is not None:
        print(f"{where}: requests per shard: facts + plan {skip['settle_requests'] / n_shards:.2f}, select "
              f"{skip['select_requests'] / n_shards:.2f} (the job's whole skip check "
              f"{(skip['settle_requests'] + skip['select_requests']) / n_shards:.2f}), serial check "
              f"{skip['serial_requests'] / n_shards:.2f}", flush=True)


def main(argv: list[str] | None = None) -> int:
    p = lifecycle.OneLineParser(prog="python -m benchmarks.plan_bench", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog=lifecycle.exit_codes("the skip check did not keep every finished shard"))
    p.add_argument("--videos", type=int, default=50_900, help="video entries of the local split (SA-V train: 50.9K)")
    p.add_argument("--shards", type=int, default=None,
                   help="finished shards in the local output (default: the whole plan, videos / 8)")
    p.add_argument("--s3-videos", type=int, default=2000, help="video entries of the split on the local S3 server "
                                                               "(0: no S3 part)")
    p.add_argument("--s3-shards", type=int, default=2000,
                   help="finished shards on the local S3 server (with --s3-videos)")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)

    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        t0 = time.perf_counter()
        split = make_split(tmp / "data", args.videos)
        print(f"built a split of {args.videos} video entries in {time.perf_counter() - t0:.1f} s", flush=True)
        plan_s, plans = time_plan(str(split))
        plans = plans[:args.shards] if args.shards else plans
        out = tmp / "out" / "sav_train"
        for rel, data in shard_files(plans, "sav_train").items():
            (out / rel).parent.mkdir(parents=True, exist_ok=True)
            (out / rel).write_bytes(data)
        report("local disk", args.videos, plan_s, len(plans), time_skip(str(out), "sav_train", plans))
        if args.s3_videos:
            s3_part(tmp, args.s3_videos, args.s3_shards)
    return lifecycle.EXIT_OK


def s3_part(tmp: Path, n_videos: int, n_shards: int) -> None:
    """The same on the local S3 server (moto): objects uploaded concurrently, then planned and checked."""
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from tests.s3_server import FAKE_AWS, S3Server

    server = S3Server(tmp)
    try:
        os.environ.update(FAKE_AWS | {"FSSPEC_S3_ENDPOINT_URL": server.url})
        import fsspec

        from pipeline import plan as planning

        fsspec.config.conf.setdefault("s3", {})["endpoint_url"] = server.url  # fsspec read the env at import

        fs = fsspec.filesystem("s3", skip_instance_cache=True, client_kwargs={"endpoint_url": server.url})
        fs.mkdir("bench")
        t0 = time.perf_counter()
        up = {}
        for i in range(n_videos):
            vid = f"sav_{i + 1:06d}"
            base = f"bench/data/sav_train/sav_{i // 1000:03d}/{vid}"
            up[f"{base}.mp4"] = b"\0" * 64
            up[f"{base}_manual.json"] = b'{"masklet": []}'
        fs.pipe(up)
        plan_s, plans = time_plan("s3://bench/data/sav_train")

        def count() -> int:
            """Requests the server saw since the last call."""
            n = len(server.recorded())
            server.recorder("stop-recording")
            server.recorder("reset-recording")
            server.recorder("start-recording")
            return n

        n_plans = max(n_shards, 1)
        all_plans = planning.plan_shards([v for p in plans for v in p.videos] +
                                         _more_videos(n_plans * VIDEOS_PER_SHARD - n_videos), VIDEOS_PER_SHARD)
        shard_plans = all_plans[:n_shards]
        fs.pipe({f"bench/out/sav_train/{rel}": data for rel, data in shard_files(shard_plans, "sav_train").items()})
        server.recorder("reset-recording")
        server.recorder("start-recording")
        print(f"uploaded {len(up)} split objects and {3 * len(shard_plans)} shard files to the local S3 server in "
              f"{time.perf_counter() - t0:.1f} s", flush=True)
        report("local S3 server", n_videos, plan_s, len(shard_plans),
               time_skip("s3://bench/out/sav_train", "sav_train", shard_plans, count))
    finally:
        server.stop()


def _more_videos(n: int) -> list:
    """Video refs past the split's end, so that an S3 output can hold more shards than its split plans."""
    from pipeline.sav import LAYOUT_TRAIN, VideoRef

    return [VideoRef(f"sav_9{i:08d}", LAYOUT_TRAIN, None, None) for i in range(max(0, n))]


if __name__ == "__main__":
    sys.exit(lifecycle.run_main(main))
