"""Preview one MA-V sample: a contact sheet PNG (and optionally an MP4) people can look at."""

from __future__ import annotations

import logging

import cv2
import numpy as np
from PIL import Image, ImageDraw, ImageFont

from mava import manifest, schema
from mava.folder import SplitDir, as_split
from mava.sample import Sample, decode_sample, has_frames

log = logging.getLogger(__name__)

OUTLINE = (255, 214, 0)        # input-mask outline
BG = (24, 26, 30)
TEXT = (235, 235, 235)
ROW_LABELS = ("frame + input mask", "matte composite", "alpha")


def load_sample(split_dir: str | SplitDir, key: str) -> Sample:
    """Read one sample by key through its manifest byte range (frames when present)."""
    split = as_split(split_dir)
    con = manifest.connect(split)
    rows = con.execute("select shard, tar_offset, tar_size, status, error from manifest where key = ?",
                       [key]).fetchall()
    if not rows:
        raise KeyError(f"no manifest row for key {key!r}")
    shard, off, size, status, error = rows[0]
    if status != schema.STATUS_OK:
        raise ValueError(f"sample {key} failed: {error}")
    members = split.sample_members(key, shard, off, size)
    fields = ("frames", "alpha", "mask") if has_frames(members) else ("alpha", "mask")
    return decode_sample(key, members, None, fields)


def checkerboard(h: int, w: int, cell: int = 12) -> np.ndarray:
    yy, xx = np.mgrid[0:h, 0:w]
    light = ((yy // cell + xx // cell) % 2).astype(bool)
    out = np.empty((h, w, 3), np.uint8)
    out[light] = (205, 205, 205)
    out[~light] = (150, 150, 150)
    return out


def _resize(img: np.ndarray, w: int, h: int, nearest: bool = False) -> np.ndarray:
    if img.shape[1] == w and img.shape[0] == h:
        return img
    interp = cv2.INTER_NEAREST if nearest else (cv2.INTER_AREA if w < img.shape[1] else cv2.INTER_LINEAR)
    return cv2.resize(img, (w, h), interpolation=interp)


def panels(sample: Sample, t: int, long_side: int | None = None) -> list[np.ndarray]:
    """The three RGB panels of frame position t: frame + mask outline, composite, alpha; scaled so the
    long side is `long_side` (source size if None) before the outline and checkerboard are drawn, so
    both stay crisp at any display size."""
    h0, w0 = sample.alpha[t].shape
    s = 1.0 if long_side is None else long_side / max(h0, w0)
    w, h = max(1, round(w0 * s)), max(1, round(h0 * s))
    a8 = _resize(sample.alpha[t], w, h)
    a = a8.astype(np.float32) / 255.0
    mask = _resize(sample.masks[t].astype(np.uint8), w, h, nearest=True)
    if sample.frames is not None:
        fg = _resize(sample.frames[t], w, h)
        base = fg.copy()
    else:
        fg = np.full((h, w, 3), 255, np.uint8)
        base = np.repeat(a8[..., None], 3, -1)
    contours, _ = cv2.findContours(mask, cv2.RETR_LIST, cv2.CHAIN_APPROX_SIMPLE)
    cv2.drawContours(base, contours, -1, OUTLINE, max(1, round(max(h, w) / 160)), lineType=cv2.LINE_8)
    comp = (fg.astype(np.float32) * a[..., None]
            + checkerboard(h, w, max(4, max(h, w) // 24)).astype(np.float32) * (1 - a[..., None]))
    return [base, comp.round().astype(np.uint8), np.repeat(a8[..., None], 3, -1)]


def _font(size: int):
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow without scalable default font
        return ImageFont.load_default()


def contact_sheet(sample: Sample, tile: int = 220, per_row: int = 6, max_frames: int = 24) -> Image.Image:
    """One PNG: per frame a column of the three panels, frames in rows of `per_row`, with labels."""
    n = min(len(sample.indices), max_frames)
    cols = [panels(sample, t, tile) for t in range(n)]
    ph, pw = cols[0][0].shape[:2]
    gap, label_w, head, cap = 6, 160, 44, 18
    rows = (n + per_row - 1) // per_row
    per = min(n, per_row)
    block_h = cap + 3 * ph + 2 * gap
    W = label_w + per * (pw + gap) + gap
    H = head + rows * (block_h + 2 * gap) + gap
    sheet = Image.new("RGB", (W, H), BG)
    draw = ImageDraw.Draw(sheet)
    m = sample.meta
    title = (f"{sample.key}   matter={m.get('matter')}   {m.get('width')}x{m.get('height')}   "
             f"{len(sample.indices)} frames" + ("" if sample.frames is not None else "   (no frames: white)"))
    draw.text((gap + 4, 12), title, fill=TEXT, font=_font(18))
    small = _font(13)
    for r in range(rows):
        y0 = head + r * (block_h + 2 * gap)
        for j, lab in enumerate(ROW_LABELS):
            draw.text((gap + 4, y0 + cap + j * (ph + gap) + ph // 2 - 8), lab, fill=TEXT, font=small)
        for c in range(per):
            t = r * per_row + c
            if t >= n:
                break
            x0 = label_w + c * (pw + gap)
            ann = m.get("ann_frames", [None] * (t + 1))[sample.indices[t]]
            caption = f"#{sample.indices[t]}  ann {ann}"
            if not sample.masks[t].any():  # say why the alpha is black, as far as the tile is wide
                for extra in ("  (mask empty)", "  (empty)", " -"):
                    if draw.textlength(caption + extra, font=small) <= pw:
                        caption += extra
                        break
            draw.text((x0, y0 + 1), caption, fill=TEXT, font=small)
            for j, p in enumerate(cols[t]):
                sheet.paste(Image.fromarray(p), (x0, y0 + cap + j * (ph + gap)))
    return sheet


def write_video(sample: Sample, path: str, fps: float = 6.0, tile: int = 320) -> None:
    """An MP4 (H.264 via PyAV) with the three panels side by side per frame."""
    import av

    frames = []
    for t in range(len(sample.indices)):
        row = np.concatenate(panels(sample, t, tile), axis=1)
        h, w = row.shape[:2]
        frames.append(np.ascontiguousarray(row[: h - h % 2, : w - w % 2]))
    with av.open(path, "w") as out:
        stream = out.add_stream("libx264", rate=int(round(fps)))
        stream.height, stream.width = frames[0].shape[:2]
        stream.pix_fmt = "yuv420p"
        for f in frames:
            for packet in stream.encode(av.VideoFrame.from_ndarray(f, format="rgb24")):
                out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)


def preview(split_dir: str | SplitDir, key: str, out_png: str, video: str | None = None, tile: int = 220) -> Sample:
    """Write the contact sheet of `key` to `out_png` (and an MP4 to `video`)."""
    sample = load_sample(split_dir, key)
    contact_sheet(sample, tile=tile).save(out_png)
    if video:
        write_video(sample, video)
    return sample
