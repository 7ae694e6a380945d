"""``python -m mava``: inspect, query, verify, preview and evaluate an MA-V split."""

from __future__ import annotations

import argparse
import json
import logging
import sys

from mava import degrade, lifecycle, schema
from mava.schema import Col
from mava.export import DEFAULT_CRF

PROG = "python -m mava"
USAGE = "bad arguments, a split folder that does not exist"


def build_parser() -> argparse.ArgumentParser:
    p = lifecycle.OneLineParser(prog=PROG, description="Work with an MA-V split folder "
                                "(<out>/<split>, a local path or an fsspec URL).",
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter,
                                epilog=lifecycle.exit_codes("the data is damaged or incomplete (each command's "
                                                            "--help says when)", USAGE))
    p.add_argument("--log-level", default="WARNING", help="logging level")
    sub = p.add_subparsers(dest="cmd", required=True, metavar="COMMAND")
    fmt = argparse.ArgumentDefaultsHelpFormatter

    s = sub.add_parser("stats", help="counts, failures, frames, bytes, quality histograms (exit 1 when some "
                       "manifests, markers or run.json are unreadable: they are listed, the rest summarised)",
                       formatter_class=fmt, epilog=lifecycle.exit_codes(
                           "some manifests, markers or run.json are unreadable (listed; the rest summarised)", USAGE))
    s.add_argument("dir", help="split folder <out>/<split> (path or fsspec URL)")
    s.add_argument("--plot", metavar="FILE.png", help="also write histograms of the quality columns to this PNG")
    s.add_argument("--json", action="store_true", help="print the counts as JSON instead of text")

    q = sub.add_parser("query", help="SQL over the manifest (duckdb; table name: manifest)", formatter_class=fmt,
                       epilog=lifecycle.exit_codes("a manifest is unreadable", USAGE + ", SQL that duckdb rejects"))
    q.add_argument("dir", help="split folder <out>/<split> (path or fsspec URL)")
    q.add_argument("sql", help="e.g. \"select key from manifest where semi_fraction > 0.1\"")
    q.add_argument("--keys", action="store_true", help="print only the key column, one key per line")
    q.add_argument("--limit", type=int, default=None, help="print at most this many rows")

    v = sub.add_parser("verify", help="check markers, manifests, shards and samples agree; exit 1 on problems",
                       formatter_class=fmt, epilog=lifecycle.exit_codes(
                           "a problem was found (each is listed: damaged or missing files, planned shards not "
                           "complete)", USAGE))
    v.add_argument("dir", help="split folder <out>/<split> (path or fsspec URL)")
    v.add_argument("--full", action="store_true", help="also fully decode every frame JPEG (PNGs always are)")
    v.add_argument("--no-progress", action="store_true", help="no progress bar")

    pv = sub.add_parser("preview", help="contact sheet PNG (and MP4) of one sample", formatter_class=fmt,
                        epilog=lifecycle.exit_codes("the sample is a failed row, or damaged",
                                                    USAGE + ", an unknown key"))
    pv.add_argument("dir", help="split folder <out>/<split> (path or fsspec URL)")
    pv.add_argument("key", help="sample key, e.g. sav_000001_m003_0012")
    pv.add_argument("--out", required=True, metavar="FILE.png", help="where to write the contact sheet")
    pv.add_argument("--video", metavar="FILE.mp4", help="also write an H.264 MP4 of the panels")
    pv.add_argument("--tile", type=int, default=220, help="long side of each panel in pixels")

    e = sub.add_parser("eval", help="score mattes against ground-truth alpha PNGs", formatter_class=fmt,
                       epilog=lifecycle.exit_codes("no frame has ground truth, or the data is damaged",
                                                   USAGE + ", a ground-truth folder that does not exist"))
    e.add_argument("dir", help="split folder <out>/<split> (path or fsspec URL)")
    e.add_argument("--gt", required=True, metavar="GT_DIR",
                   help="ground truth: <GT_DIR>/<video_id>/<masklet_id:03d>/<ann_frame:05d>.png "
                        "(e.g. the synthetic split's gt_alpha/)")
    e.add_argument("--baselines", default="mask",
                   help="comma list of input-mask baselines to score too: 'mask' and/or degradations "
                        f"({', '.join(degrade.DEGRADATIONS)}); '' for none")
    e.add_argument("--band-radius", type=int, default=10, help="transition band: trimap unknown width (px)")
    e.add_argument("--overall-only", action="store_true", help="print only the overall rows")
    e.add_argument("--json", metavar="FILE", help="also write the full report as JSON")
    e.add_argument("--no-progress", action="store_true", help="no progress bar")
    c = sub.add_parser("card", help="Hugging Face dataset card (README.md): YAML header, provenance, counts, "
                       "figures (PNG beside it), how to load", formatter_class=fmt,
                       epilog=lifecycle.exit_codes("the data is damaged (a manifest, marker or sample is "
                                                   "unreadable)", USAGE))
    c.add_argument("dir", help="split folder <out>/<split> (path or fsspec URL)")
    c.add_argument("--out", required=True, metavar="README.md",
                   help="where to write the card (figures go to figures/ beside it)")
    c.add_argument("--figures-dir", default=None, help="where to write the figures (default: figures/ beside --out)")
    c.add_argument("--previews", type=int, default=4, help="samples shown in the contact sheet (0: none)")
    c.add_argument("--data-path", default=None,
                   help="shard glob as seen from the card (the Hub repo root); default: relative path from --out "
                        f"to the split's {schema.SHARDS_GLOB} when both are local, else {schema.SHARDS_GLOB}")
    c.add_argument("--pretty-name", default=None, help="the card's pretty_name (default: 'MA-V <split>')")
    x = sub.add_parser("export", help="one masklet's segments stitched into a full-length alpha sequence "
                       "(PNGs + grayscale H.264 MP4) with the seam report", formatter_class=fmt,
                       epilog=lifecycle.exit_codes("the data is damaged (a manifest or sample is unreadable)",
                                                   USAGE + ", a masklet without ok samples"))
    x.add_argument("dir", help="split folder <out>/<split> (path or fsspec URL)")
    x.add_argument("--video-id", required=True, help="video id, e.g. sav_000001")
    x.add_argument("--masklet", type=int, required=True, help="masklet id")
    x.add_argument("--source", choices=schema.SOURCES, default=None, help="masklet source (default: manual if present)")
    x.add_argument("--out", required=True, metavar="DIR",
                   help="output folder (path or fsspec URL): new or empty; export owns it (see --overwrite)")
    x.add_argument("--overwrite", action="store_true",
                   help="export into a folder that holds an earlier export: its files (alpha/, alpha_24fps/, the "
                        "MP4s, export.json) are removed first; a folder holding anything else is still refused")
    x.add_argument("--fps", type=float, default=6.0, choices=(6.0, 24.0),
                   help="6: the annotated frames; 24: also the video timeline (see --upsample)")
    x.add_argument("--upsample", choices=("nearest", "linear"), default="nearest",
                   help="24 fps frames between annotated ones: nearest annotated matte (crisp, at most 2 frames "
                        "late or early) or linear cross-dissolve (ghosts a moving edge)")
    x.add_argument("--gt", metavar="GT_DIR", default=None,
                   help="ground truth in `mava eval`'s layout: the seam is then dtSSD proper")
    x.add_argument("--crf", type=int, default=DEFAULT_CRF, help="H.264 quality (0 best, 51 worst; the default keeps 8-bit mattes within a few levels)")
    x.add_argument("--no-png", action="store_true", help="only the MP4(s) and the report")
    x.add_argument("--subset", default=None, metavar="VIEW",
                   help="only the windows in this named view (`mava filter`); the others become gaps")
    _qc_parsers(sub, fmt)
    return p


def _qc_parsers(sub, fmt) -> None:
    """``mava qc`` and ``mava filter`` (issue 18: quality control, named views)."""
    k = sub.add_parser("qc", help="quality control: score distributions, verdicts by reason, per-video summaries, "
                       "the worst samples (and a contact sheet of them); --recompute rewrites only the verdict view",
                       formatter_class=fmt)
    k.add_argument("dir", help="split folder <out>/<split> (path or fsspec URL)")
    k.add_argument("--worst", type=int, default=12, help="list (and draw) the N samples QC trusts least")
    k.add_argument("--sheet", metavar="FILE.png", help="write a contact sheet of the worst samples: frame with the "
                   "input mask, the mask, alpha, and where the score that flagged each looks")
    k.add_argument("--plot", metavar="FILE.png", help="write histograms of the scores with their thresholds")
    k.add_argument("--recompute", action="store_true",
                   help=f"recompute every verdict from the stored scores with --thresholds and write the verdict "
                        f"view ({schema.view_file(schema.VERDICT_VIEW)}); shards and manifests are untouched")
    k.add_argument("--thresholds", default="", metavar="NAME=VALUE,...",
                   help="with --recompute: thresholds over the defaults, e.g. 'leak_warn=0.02,leak_fail=0.1' "
                        "(names: <score>_warn, <score>_fail; see README 'Quality control')")
    k.add_argument("--from-tar", action="store_true",
                   help="with --recompute: compute the scores missing from the manifest (output written before QC "
                        "existed) from the samples in the shards, into the verdict view")
    k.add_argument("--json", action="store_true", help="print verdict and reason counts as JSON")
    k.add_argument("--no-progress", action="store_true", help="no progress bar")
    f = sub.add_parser("filter", help="record a named subset (a view: keys + predicate) of the ok samples, e.g. "
                       "--where \"qc = 'pass' and leak < 0.02\" --name clean; loaders take subset=NAME",
                       formatter_class=fmt)
    f.add_argument("dir", help="split folder <out>/<split> (path or fsspec URL)")
    f.add_argument("--where", required=True, help="SQL predicate over the manifest's columns (QC scores, qc, "
                   "qc_reason, mask_iou, ...); verdicts from the verdict view when `mava qc --recompute` wrote one")
    f.add_argument("--name", required=True, help=f"view name (letters, digits, _ and -): {schema.view_file('NAME')}")


def main(argv: list[str] | None = None) -> int:
    """Exit codes: 0 done; 1 the split has unreadable or unvouched files (listed) or the command found
    nothing to report; 2 a usage error, or a path that is not an MA-V split (one line)."""
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(), format="%(levelname)s %(name)s: %(message)s")
    from mava.folder import SplitDir, UnreadableFile
    from mava.sample import SampleFormatError
    from mava.state import NotASplit

    if not SplitDir(args.dir).exists(""):
        print(f"error: no split folder {args.dir}", file=sys.stderr)
        return lifecycle.EXIT_USAGE
    try:
        return _run(args)
    except NotASplit as exn:
        print(f"error: {exn}", file=sys.stderr)
        return lifecycle.EXIT_USAGE
    except (UnreadableFile, SampleFormatError) as exn:
        print(f"error: {exn} (`python -m mava verify {args.dir}` lists every damaged file; rerunning the "
              "job redoes damaged shards)", file=sys.stderr)
        return lifecycle.EXIT_FAILED


def _warn(lines: list[str]) -> None:
    """Say on the terminal (stderr, one line each) what a command that still serves leaves out."""
    for line in lines:
        print(f"warning: {line}", file=sys.stderr)


def _run(args: argparse.Namespace) -> int:
    from mava.state import inspect_split, require_split

    require_split(args.dir)  # a path that is not a split: one line, exit 2, for every command
    if args.cmd == "stats":
        from mava import stats

        s = stats.compute(args.dir)
        _warn(s.warnings)
        if args.json:
            d = {k: v for k, v in s.__dict__.items() if k != "quality"}
            print(json.dumps(d, indent=1))
        else:
            print(stats.render(s))
        if args.plot:
            stats.plot(s, args.plot)
        return 1 if s.unreadable else 0
    if args.cmd == "query":
        import duckdb

        from mava import manifest
        from mava.state import vouched_manifest

        st = inspect_split(args.dir)
        v = vouched_manifest(st)
        if v.unreadable:
            raise v.unreadable[0]
        _warn(st.warnings() + v.problems())
        con = duckdb.connect()
        con.register(manifest.TABLE, v.table)  # the finished shards' rows, each key once
        try:
            rel = con.sql(args.sql)
            res = manifest.QueryResult([], []) if rel is None else manifest.QueryResult(list(rel.columns), rel.fetchall())
        except duckdb.Error as exn:
            print(f"error: {type(exn).__name__}: {str(exn).splitlines()[0]}", file=sys.stderr)
            return lifecycle.EXIT_USAGE
        rows = res.rows[: args.limit] if args.limit is not None else res.rows
        if args.keys:
            if Col.KEY not in res.columns:
                print("error: --keys needs a query that selects the key column", file=sys.stderr)
                return 2
            i = res.columns.index(Col.KEY)
            print("\n".join(str(r[i]) for r in rows))
        else:
            print("\t".join(res.columns))
            for r in rows:
                print("\t".join("" if x is None else str(x) for x in r))
        return 0
    if args.cmd == "verify":
        from mava import verify

        rep = verify.verify(args.dir, full=args.full, progress=not args.no_progress)
        print(rep.summary())
        return 0 if rep.passed else 1
    if args.cmd == "preview":
        from mava import preview

        try:
            preview.preview(args.dir, args.key, args.out, video=args.video, tile=args.tile)
        except KeyError as exn:  # no such key
            print(f"error: {exn.args[0]}", file=sys.stderr)
            return lifecycle.EXIT_USAGE
        except ValueError as exn:  # a failed row
            print(f"error: {exn}", file=sys.stderr)
            return lifecycle.EXIT_FAILED
        print(args.out + (f" {args.video}" if args.video else ""))
        return 0
    if args.cmd == "card":
        from mava import card

        try:
            c = card.write(args.dir, args.out, figures_dir=args.figures_dir, n_previews=args.previews,
                           data_path=args.data_path, pretty_name=args.pretty_name)
        except card.CardError as exn:
            print(f"error: {exn}", file=sys.stderr)
            return 2
        _warn(c.warnings + c.problems)
        print(" ".join([args.out, *c.figures.values()]))
        return 1 if c.problems else 0
    if args.cmd == "export":
        from mava import export

        try:
            res = export.export(args.dir, args.video_id, args.masklet, args.out, source=args.source, gt_dir=args.gt,
                                fps=args.fps, upsample_method=args.upsample, crf=args.crf, png=not args.no_png,
                                subset=args.subset, overwrite=args.overwrite)
        except KeyError as exn:
            print(f"error: {exn.args[0]}", file=sys.stderr)
            return 2
        except export.ExportError as exn:
            print(f"error: {exn}", file=sys.stderr)
            return 2
        print(export.render(res.report))
        print(" ".join(res.files))
        return 0
    if args.cmd in ("qc", "filter"):
        return _run_qc(args)
    if args.cmd == "eval":
        import fsspec

        from mava import eval as ev

        baselines = tuple(b for b in args.baselines.split(",") if b)
        bad = [b for b in baselines if b != "mask" and b not in degrade.DEGRADATIONS]
        if bad:
            print(f"error: unknown baselines {bad}", file=sys.stderr)
            return 2
        gfs, groot = fsspec.core.url_to_fs(args.gt)
        if not gfs.exists(groot):
            print(f"error: no ground-truth folder {args.gt}", file=sys.stderr)
            return lifecycle.EXIT_USAGE
        rep = ev.evaluate(args.dir, args.gt, baselines, args.band_radius, progress=not args.no_progress)
        if not rep.frames:
            print(f"error: no frame of {args.dir} has ground truth under {args.gt} (expected "
                  "<GT_DIR>/<video_id>/<masklet_id:03d>/<ann_frame:05d>.png)", file=sys.stderr)
            return lifecycle.EXIT_FAILED
        print(ev.render(rep, per_clip=not args.overall_only))
        if args.json:
            ev.write_json(rep, args.json)
        return 0
    return 2


def _run_qc(args: argparse.Namespace) -> int:
    """``mava qc`` / ``mava filter``: exit 0, or 2 with one line for a bad threshold, predicate or view name."""
    from mava import qc, qc_report, views

    try:
        if args.cmd == "filter":
            url, view = views.filter_view(args.dir, args.where, args.name)
            print(f"view {args.name}: {len(view.keys)} samples where {args.where} -> {url}")
            return 0
        if args.thresholds and not args.recompute:
            print("error: --thresholds needs --recompute", file=sys.stderr)
            return 2
        if args.recompute:
            th = qc.Thresholds.parse(args.thresholds)
            url, _ = views.write_verdicts(args.dir, th, from_tar=args.from_tar, progress=not args.no_progress)
            print(f"verdict view -> {url}")
    except (views.ViewError, ValueError) as exn:
        print(f"error: {exn}", file=sys.stderr)
        return 2
    rep = qc_report.build(args.dir, args.worst)
    if args.json:
        print(json.dumps({"ok": rep.ok, "missing_scores": rep.missing, "verdicts": rep.verdicts,
                          "reasons": rep.reasons, "thresholds": rep.thresholds.as_dict()}, indent=1))
    else:
        print(qc_report.render(rep))
    if args.plot:
        qc_report.plot_scores(rep, args.plot)
    if args.sheet:
        qc_report.worst_sheet(args.dir, rep.worst).save(args.sheet)
    return 0


if __name__ == "__main__":
    sys.exit(lifecycle.run_main(main))
