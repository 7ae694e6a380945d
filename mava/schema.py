"""The MA-V output contract: sample keys, tar member names, output layout and manifest columns.

This is the single module that knows these names; every reader and writer imports them from here.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import pyarrow as pa

# --- sources and keys -----------------------------------------------------------------------------

SOURCES = ("manual", "auto")
SOURCE_CODE = {"manual": "m", "auto": "a"}
CODE_SOURCE = {v: k for k, v in SOURCE_CODE.items()}

#: ids that may appear in keys and paths: no dots (WebDataset splits keys at the first dot),
#: no slashes, no leading dash.
SAFE_ID = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_-]{0,127}$")
KEY_RE = re.compile(r"^(?P<video_id>.+)_(?P<code>[ma])(?P<masklet_id>\d{3,})_(?P<start>\d{4,})$")

MAX_SEGMENT_LEN = 100  # member names carry a 2-digit frame number


def is_safe_id(value: str) -> bool:
    """True when `value` can be used as a path component and inside a WebDataset key."""
    return isinstance(value, str) and bool(SAFE_ID.match(value)) and value not in (".", "..")


def sample_key(video_id: str, source: str, masklet_id: int, start: int) -> str:
    """The stable key of one segment, e.g. ``sav_000001_m003_0012``."""
    if not is_safe_id(video_id):
        raise ValueError(f"unsafe video id {video_id!r}")
    return f"{video_id}_{SOURCE_CODE[source]}{int(masklet_id):03d}_{int(start):04d}"


def video_failure_key(video_id: str) -> str:
    """Key of the single failed row recorded when nothing of a video could be planned.

    Unsafe ids are replaced by a hash so the key stays a plain, unique token.
    """
    if is_safe_id(video_id):
        return f"{video_id}_video"
    import hashlib

    return f"unsafe-{hashlib.sha1(str(video_id).encode()).hexdigest()[:16]}_video"


@dataclass(frozen=True)
class KeyParts:
    video_id: str
    source: str
    masklet_id: int
    start: int


def parse_key(key: str) -> KeyParts:
    """Inverse of :func:`sample_key`."""
    m = KEY_RE.match(key)
    if not m:
        raise ValueError(f"not an MA-V sample key: {key!r}")
    return KeyParts(m["video_id"], CODE_SOURCE[m["code"]], int(m["masklet_id"]), int(m["start"]))


# --- tar members ----------------------------------------------------------------------------------

META_EXT = "json"


def alpha_ext(i: int) -> str:
    """Extension (after the key) of the i-th alpha PNG of a sample: ``alpha.03.png``."""
    return f"alpha.{i:02d}.png"


def frame_ext(i: int) -> str:
    """Extension of the i-th RGB frame JPEG of a sample: ``frame.03.jpg``."""
    return f"frame.{i:02d}.jpg"


ALPHA_EXT_RE = re.compile(r"^alpha\.(\d{2})\.png$")
FRAME_EXT_RE = re.compile(r"^frame\.(\d{2})\.jpg$")

META_MASK_RLES = "mask_rles"   # <key>.json: the input mask of each frame as a COCO RLE {"size", "counts"}
META_ROTATION = "rotation"                  # clockwise degrees the reader turned the decoded pictures by
META_DISPLAY_ROTATION = "display_rotation"  # what the container asks players to apply (clockwise degrees)
# Fields of <key>.json
META_FIELDS = (
    "key", "video_id", "source", "masklet_id", "start", "num_frames", "ann_frames", "video_frames",
    "overlap", "height", "width", "matter", META_MASK_RLES,
)
# Fields of <key>.json present only when they apply: ``rotation`` (so frames, masks and alpha are in the
# annotation's orientation) and ``display_rotation``, for rotated videos.
OPTIONAL_META_FIELDS = (META_ROTATION, META_DISPLAY_ROTATION)

# --- layout ---------------------------------------------------------------------------------------


def shard_name(split: str, index: int) -> str:
    return f"{split}-{index:06d}"


SHARD_NAME_RE = re.compile(r"^(?P<split>.+)-(?P<index>\d{6,})$")


def shard_index(name: str, split: str) -> int | None:
    """Index of a shard name (or file stem) of ``split``; None when it is not one."""
    m = SHARD_NAME_RE.match(name)
    return int(m["index"]) if m and m["split"] == split else None


def shard_file(shard: str) -> str:
    """Path of the tar of a shard named e.g. ``sav_train-000003``, relative to ``<out>/<split>``."""
    return f"shards/{shard}.tar"


def manifest_file(shard: str) -> str:
    """Path of a shard's manifest, relative to ``<out>/<split>``."""
    return f"manifest/{shard}.parquet"


def done_file(shard: str) -> str:
    """Path of a shard's done marker, relative to ``<out>/<split>``."""
    return f"done/{shard}.json"


def file_shard(path: str) -> str:
    """The shard name of a tar, manifest or marker path (the inverse of the three above)."""
    return path.rsplit("/", 1)[-1].split(".", 1)[0]


def shard_tar(split: str, index: int) -> str:
    """Path of a shard relative to ``<out>/<split>``."""
    return shard_file(shard_name(split, index))


def shard_manifest(split: str, index: int) -> str:
    return manifest_file(shard_name(split, index))


def shard_done(split: str, index: int) -> str:
    return done_file(shard_name(split, index))


RUN_JSON = "run.json"
RUN_NUM_SHARDS = "num_shards"   # run.json: shards in the run's plan (verify reports the missing ones)
# done-marker fields (done/<split>-NNNNNN.json)
MARKER_SHARD = "shard"              # the shard's name
MARKER_SAMPLES = "samples"          # manifest rows of the shard, failures included
MARKER_OK = "ok"                    # rows with status ok (= samples in the tar)
MARKER_FAILED = "failed"            # rows with status failed
MARKER_FRAMES = "frames"            # alpha frames in the tar
MARKER_TAR_BYTES = "tar_bytes"
MARKER_TAR_SHA256 = "tar_sha256"
MARKER_MANIFEST_SHA256 = "manifest_sha256"
MARKER_VIDEOS = "videos"    # the video ids the shard was written from, in plan order
MARKER_FINGERPRINT = "fingerprint"  # the mattes' identity: matter (name, weights sha256, output options) + content options
MARKER_PLAN = "plan"        # the shard plan the shard was written under (PLAN_JSON's object)
PLAN_JSON = "plan.json"     # <out>/<split>/plan.json: the output's shard plan, written before its first shard
PLAN_VIDEOS_PER_SHARD = "videos_per_shard"  # plan.json: consecutive videos of the sorted list per shard
PLAN_ORDER = "order"        # plan.json: how the video list is ordered before grouping
PLAN_ORDER_VIDEO_ID = "video_id"
SUBDIRS = ("shards", "manifest", "done")  # folders of <out>/<split>/
LEASE_JSON = "lease.json"   # the lease of the run writing this split (one writer per output)
# lease.json fields
LEASE_HOST = "host"
LEASE_PID = "pid"
LEASE_TOKEN = "token"               # random per run: whose lease this is
LEASE_STARTED_AT = "started_at"
LEASE_HEARTBEAT = "heartbeat"       # unix time of the holder's last refresh
LEASE_HEARTBEAT_AT = "heartbeat_at"
LEASE_TIMEOUT_S = "timeout_s"       # the holder's own staleness timeout
SHARDS_GLOB = "shards/*.tar"
MANIFEST_GLOB = "manifest/*.parquet"
DONE_GLOB = "done/*.json"
TMP_SUFFIX = ".tmp"  # partial files; never matched by the globs above

# --- manifest -------------------------------------------------------------------------------------

STATUS_OK = "ok"
STATUS_FAILED = "failed"

#: Threshold band for "semi-transparent": alpha strictly inside (SEMI_LO, SEMI_HI).
SEMI_LO, SEMI_HI = 0.02, 0.98

class Col:
    """Manifest column names (also the names of the matching <key>.json fields)."""

    KEY = "key"
    SHARD = "shard"
    VIDEO_ID = "video_id"
    SOURCE = "source"
    MASKLET_ID = "masklet_id"
    START = "start"
    NUM_FRAMES = "num_frames"
    ANN_FRAMES = "ann_frames"
    VIDEO_FRAMES = "video_frames"
    OVERLAP = "overlap"
    HEIGHT = "height"
    WIDTH = "width"
    STATUS = "status"
    ERROR_TYPE = "error_type"
    ERROR = "error"
    MATTER = "matter"
    MEAN_ALPHA = "mean_alpha"
    SEMI_FRACTION = "semi_fraction"
    MASK_IOU = "mask_iou"
    MASK_AREA = "mask_area"
    TAR_OFFSET = "tar_offset"
    TAR_SIZE = "tar_size"
    NUM_MEMBERS = "num_members"
    # quality control (issue 18; formulas in mava/qc.py and the README "Quality control")
    STABILITY = "stability"
    LEAK = "leak"
    HOLE = "hole"
    OFF_BAND = "off_band"
    FLICKER = "flicker"
    OVERLAP_MAD = "overlap_mad"
    SEAM_JUMP = "seam_jump"
    QC = "qc"
    QC_REASON = "qc_reason"


MANIFEST_SCHEMA = pa.schema([
    pa.field(Col.KEY, pa.string(), nullable=False),
    pa.field(Col.SHARD, pa.string(), nullable=False),           # shard name, e.g. sav_train-000003
    pa.field(Col.VIDEO_ID, pa.string(), nullable=False),
    pa.field(Col.SOURCE, pa.string()),                          # manual | auto (null: video-level failure)
    pa.field(Col.MASKLET_ID, pa.int32()),
    pa.field(Col.START, pa.int32()),                            # first annotated frame index
    pa.field(Col.NUM_FRAMES, pa.int32()),
    pa.field(Col.ANN_FRAMES, pa.list_(pa.int32())),             # annotated (6 fps) indices
    pa.field(Col.VIDEO_FRAMES, pa.list_(pa.int32())),           # video (24 fps) indices
    pa.field(Col.OVERLAP, pa.int32()),                          # frames shared with the previous window
    pa.field(Col.HEIGHT, pa.int32()),
    pa.field(Col.WIDTH, pa.int32()),
    pa.field(Col.STATUS, pa.string(), nullable=False),          # ok | failed
    pa.field(Col.ERROR_TYPE, pa.string()),                      # exception class name when failed
    pa.field(Col.ERROR, pa.string()),                           # human-readable message when failed
    pa.field(Col.MATTER, pa.string()),
    pa.field(Col.MEAN_ALPHA, pa.float32()),                     # mean of alpha over the clip
    pa.field(Col.SEMI_FRACTION, pa.float32()),                  # fraction of pixels with SEMI_LO<alpha<SEMI_HI
    pa.field(Col.MASK_IOU, pa.float32()),                       # IoU(alpha>0.5, input mask)
    pa.field(Col.MASK_AREA, pa.float32()),                      # mean input-mask fraction per frame
    pa.field(Col.TAR_OFFSET, pa.int64()),                       # byte offset of the sample's first member header
    pa.field(Col.TAR_SIZE, pa.int64()),                         # bytes spanned by all the sample's members
    pa.field(Col.NUM_MEMBERS, pa.int32()),
    # quality control scores and verdict of ok rows (null for failed rows and where undefined)
    pa.field(Col.STABILITY, pa.float32()),                      # |alpha>0.75| / |alpha>0.25|
    pa.field(Col.LEAK, pa.float32()),                           # share of sum(alpha) outside the dilated mask
    pa.field(Col.HOLE, pa.float32()),                           # share of the eroded mask with alpha < 0.5
    pa.field(Col.OFF_BAND, pa.float32()),                       # semi-transparent pixels off the edge band / mask area
    pa.field(Col.FLICKER, pa.float32()),                        # alpha change the mask does not explain (RMS)
    pa.field(Col.OVERLAP_MAD, pa.float32()),                    # disagreement with earlier windows on shared frames
    pa.field(Col.SEAM_JUMP, pa.float32()),                      # change at the seam / median change inside
    pa.field(Col.QC, pa.string()),                              # pass | warn | fail (default thresholds)
    pa.field(Col.QC_REASON, pa.string()),                       # scores that crossed a threshold, comma list
])
MANIFEST_COLUMNS = tuple(MANIFEST_SCHEMA.names)
#: columns added after shards were written: a manifest without them is read with nulls (older output)
QC_COLUMNS = (Col.STABILITY, Col.LEAK, Col.HOLE, Col.OFF_BAND, Col.FLICKER, Col.OVERLAP_MAD, Col.SEAM_JUMP,
              Col.QC, Col.QC_REASON)
LEGACY_MANIFEST_COLUMNS = tuple(c for c in MANIFEST_COLUMNS if c not in QC_COLUMNS)
QC_SCORE_COLUMNS = QC_COLUMNS[:-2]
QC_PASS, QC_WARN, QC_FAIL = "pass", "warn", "fail"
#: the per-sample quality signals (stats histograms, the dataset card)
QUALITY_COLUMNS = (Col.MEAN_ALPHA, Col.SEMI_FRACTION, Col.MASK_IOU)

# --- run record and users' formats (added for issue 13 / issue 9's verify; nothing above changed) -------

# run.json keys read by mava (written by pipeline/run.py)
RUN_MATTER = "matter"                      # the matter's describe()
RUN_FINGERPRINT = "fingerprint"            # the mattes' identity (name, weights sha256, output options, ...)
RUN_CHECKPOINT_SHA256 = "checkpoint_sha256"
RUN_CODE_VERSION = "code_version"
RUN_CONFIG = "config"                      # the job config as run (dataclasses.asdict)
RUN_SPLIT = "split"                        # run.json config: the split's name (shard names start with it)
RUN_FINISHED_AT = "finished_at"
RUN_SUMMARY = "summary"                    # counts, wall time, frames/s, actor utilisation
RUN_ERRORS = "errors"                      # run-level problems (exit 1)
RUN_ACTORS = "actors"                      # where each matter actor ran and how busy it was
RUN_HISTORY = "history"                    # earlier runs' records (newest last, at most RUN_HISTORY_LEN)
RUN_HISTORY_LEN = 20
MARKER_OPTIONS_LEGACY = "options"          # content options in done markers written before fingerprints (read only)

#: WebDataset's sample fields for the key and the shard URL (also the Hugging Face ``datasets``
#: webdataset builder's columns, beside one column per member extension such as ``alpha.03.png``).
WDS_KEY = "__key__"
WDS_URL = "__url__"
HF_KEY_COLUMN = WDS_KEY
HF_URL_COLUMN = WDS_URL

# --- fingerprint (done markers, run.json): the identity of a shard's content ------------------------
FP_MATTER = "matter"              # the matter's part: name, weights, output options, constants
FP_CONTENT = "content"            # the job's part: reader output options, frames
FP_NAME = "name"
FP_WEIGHTS = "weights_sha256"
FP_OPTIONS = "options"
FP_CONSTANTS = "constants"


# --- curated views (issue 18): named subsets of a split, never rewritten shards ---------------------
VIEWS_DIR = "views"                 # <out>/<split>/views/<name>.parquet
VERDICT_VIEW = "qc"                 # the verdict view of `mava qc --recompute` (and scores computed from tars)
VIEW_META = b"mava_view"            # parquet schema metadata key: the view's definition (JSON)
# view definition fields
VIEW_NAME = "name"
VIEW_WHERE = "where"                # the SQL predicate over the manifest (table ``manifest``)
VIEW_THRESHOLDS = "thresholds"      # the QC thresholds the verdicts were computed with
VIEW_VERDICTS = "verdicts"          # where the verdicts came from: manifest | view
VIEW_CREATED_AT = "created_at"
VIEW_ROWS = "rows"                  # keys in the view
VIEW_SCORES_FROM = "scores_from"    # verdict view: manifest | tar (scores computed from the samples)


def view_file(name: str) -> str:
    """Path of a named view relative to ``<out>/<split>``."""
    if not is_safe_id(name):
        raise ValueError(f"unsafe view name {name!r}: letters, digits, '_' and '-' only")
    return f"{VIEWS_DIR}/{name}.parquet"


VIEWS_GLOB = f"{VIEWS_DIR}/*.parquet"
