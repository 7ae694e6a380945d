#!/usr/bin/env bash
# Put the VideoMaMa weights on this node (jobs/cluster.yaml runs it in setup_commands on every node).
#
#   jobs/fetch_weights.sh [DEST]          DEST defaults to /models
#
# Result (the folders the README passes to the job):
#   DEST/videomama/unet/                           --checkpoint DEST/videomama
#   DEST/stable-video-diffusion-img2vid-xt/vae/    --base-model DEST/stable-video-diffusion-img2vid-xt
#
# Source, by MAVA_WEIGHTS_FROM:
#   hub (default)   `hf download` of SammyLim/VideoMaMa (unet/) and stabilityai/stable-video-diffusion-img2vid-xt
#                   (vae/). The SVD repository is gated: accept its license on the Hub once, and give the node
#                   a token (HF_TOKEN, or the token file of `hf auth login`).
#   s3://bucket/p   (any fsspec URL the node can read) a copy of the same layout: p/videomama/unet/ and
#                   p/stable-video-diffusion-img2vid-xt/vae/, e.g. filled once with
#                   `jobs/fetch_weights.sh /tmp/models && aws s3 sync /tmp/models s3://bucket/p`.
#                   Faster than the Hub for many nodes in one region, and needs no Hub token.
# MAVA_VAE_FILES: `hf download` include pattern for the VAE (default: vae/*, both plain and fp16 variants).
#
# A folder that already holds config.json and a .safetensors file is kept (node restarts). Downloads go to
# a temporary folder first, so an interrupted fetch never leaves a folder that looks complete.
set -euo pipefail

DEST=${1:-/models}
FROM=${MAVA_WEIGHTS_FROM:-hub}
PY=${MAVA_PYTHON:-python3}
UNET_REPO=SammyLim/VideoMaMa
SVD_REPO=stabilityai/stable-video-diffusion-img2vid-xt
CKPT=videomama
BASE=stable-video-diffusion-img2vid-xt

complete() { [[ -f "$1/config.json" ]] && compgen -G "$1/*.safetensors" > /dev/null; }

# fetch NAME SUB REPO INCLUDE: DEST/NAME/SUB from the Hub repo REPO or from FROM/NAME/SUB
fetch() {
  local name=$1 sub=$2 repo=$3 include=$4
  local final="$DEST/$name/$sub" tmp="$DEST/.partial-$name"
  if complete "$final"; then
    echo "kept $final"
    return
  fi
  mkdir -p "$tmp" "$DEST/$name"
  if [[ "$FROM" == hub ]]; then
    hf download "$repo" --include "$include" --local-dir "$tmp"
  else
    "$PY" - "$FROM/$name/$sub" "$tmp/$sub" <<'EOF'
import sys

import fsspec

src, dst = sys.argv[1], sys.argv[2]
fs, root = fsspec.core.url_to_fs(src)
if not fs.isdir(root):
    sys.exit(f"fetch_weights: {src} is not a folder")
fs.get(root.rstrip("/") + "/", dst.rstrip("/") + "/", recursive=True)
EOF
  fi
  if ! complete "$tmp/$sub"; then
    echo "fetch_weights: $tmp/$sub has no config.json and .safetensors after the download" >&2
    exit 1
  fi
  rm -rf "$final"
  mv "$tmp/$sub" "$final"
  rm -rf "$tmp"
  echo "fetched $final"
}

mkdir -p "$DEST"
fetch "$CKPT" unet "$UNET_REPO" "unet/*"
fetch "$BASE" vae "$SVD_REPO" "${MAVA_VAE_FILES:-vae/*}"
echo "--checkpoint $DEST/$CKPT --base-model $DEST/$BASE"
