"""``python -m pipeline.demo``: generate a small synthetic SA-V split and turn it into MA-V on CPU."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

from mava import lifecycle, schema
from pipeline import run, synth

log = logging.getLogger("pipeline.demo")


def main(argv: list[str] | None = None) -> int:
    p = lifecycle.OneLineParser(prog="python -m pipeline.demo", description=__doc__,
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter,
                                epilog=lifecycle.exit_codes("the job failed (as python -m pipeline.run)"))
    p.add_argument("--workdir", type=Path, default=Path("build/demo"), help="where data/ and out/ go")
    p.add_argument("--videos", type=int, default=4, help="synthetic videos to generate")
    p.add_argument("--matter", default="guided", help="CPU matter to run (guided, closed-form, mask)")
    p.add_argument("--split", default="sav_train", help="split name")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")

    data, out = args.workdir / "data", args.workdir / "out"
    if not (data / args.split).exists():
        log.info("generating %d synthetic videos under %s", args.videos, data)
        synth.main(["--out", str(data), "--videos", str(args.videos), "--split", args.split])
    code = run.main(["--split", args.split, "--data-root", str(data), "--out", str(out),
                     "--matter", args.matter, "--videos-per-shard", "2", "--address", "local"])
    out_split = out / args.split
    if code == lifecycle.EXIT_USAGE:  # refused before any work: no run.json to summarise
        return code
    summary = json.loads((out_split / schema.RUN_JSON).read_text())["summary"]
    print(f"\nMA-V demo output: {out_split}/ (shards/, manifest/, done/, run.json)")
    print(f"{summary['samples_ok']} samples ok, {sum(summary['samples_failed'].values())} failed, "
          f"{summary['frames']} alpha frames; try: python -m mava stats {out_split}")
    return code


if __name__ == "__main__":
    sys.exit(lifecycle.run_main(main))
