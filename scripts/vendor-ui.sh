#!/usr/bin/env bash
# Fetches the web UI's charting library (uPlot, MIT) from the npm registry into
# crates/fungible-server/src/ui/assets/vendor/, checking the package against npm's integrity
# hash. The binary embeds these files and a test pins their SHA-256 (ui/assets.rs): after a
# deliberate update, change the version and integrity here and the pins there.
set -euo pipefail
cd "$(dirname "$0")/.."
VERSION=1.6.32
INTEGRITY="sha512-KIMVnG68zvu5XXUbC4LQEPnhwOxBuLyW1AHtpm6IKTXImkbLgkMy+jabjLgSLMasNuGGzQm/ep3tOkyTxpiQIw=="
dest=crates/fungible-server/src/ui/assets/vendor
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
(cd "$tmp" && npm pack "uplot@$VERSION" --silent >/dev/null)
got="sha512-$(openssl dgst -sha512 -binary "$tmp/uplot-$VERSION.tgz" | base64 -w0)"
if [[ "$got" != "$INTEGRITY" ]]; then
    echo "uplot@$VERSION: integrity $got, expected $INTEGRITY" >&2
    exit 1
fi
tar -xzf "$tmp/uplot-$VERSION.tgz" -C "$tmp"
cp "$tmp/package/dist/uPlot.iife.min.js" "$tmp/package/dist/uPlot.min.css" "$dest/"
cp "$tmp/package/LICENSE" "$dest/uPlot.LICENSE"
sha256sum "$dest/uPlot.iife.min.js" "$dest/uPlot.min.css"
