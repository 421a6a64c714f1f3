#!/usr/bin/env bash
# Makes Debian's `prometheus` and `promtool` available to the tests marked `prometheus`
# (tests/ship/test_dashboard_prometheus.py); the last line of stdout is their bin dir.
#
#   tools/ci/install-prometheus.sh                   install if missing, print the bin dir
#   tools/ci/install-prometheus.sh --print-bin-dir   print the bin dir (exit 1 when not installed)
#
# Both are on PATH already (a distribution install, or a person's own): that bin dir is used.
# Otherwise the Debian package is fetched with `apt-get download` and unpacked with `dpkg -x` into
# ${DATAMIX_CACHE_DIR:-${XDG_CACHE_HOME:-~/.cache}/datamix}/prometheus: no service is registered
# or started (a full `apt-get install` would add a system user and try to start a daemon), and
# the two Go binaries are static, so none of the package's web-UI dependencies are needed.
set -euo pipefail

CACHE_ROOT="${DATAMIX_CACHE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/datamix}"
DEST="$CACHE_ROOT/prometheus"
BIN="$DEST/usr/bin"

installed() { [[ -x "$BIN/prometheus" && -x "$BIN/promtool" ]]; }
on_path() { command -v prometheus >/dev/null && command -v promtool >/dev/null; }

if on_path; then
  dirname "$(command -v prometheus)"
  exit 0
fi
if installed; then
  echo "$BIN"
  exit 0
fi
if [[ "${1:-}" == "--print-bin-dir" ]]; then
  echo "prometheus not installed (run tools/ci/install-prometheus.sh)" >&2
  exit 1
fi

command -v apt-get >/dev/null || { echo "apt-get not found: install prometheus and promtool yourself" >&2; exit 1; }
TMP="$(mktemp -d)"
trap 'rm -rf "$TMP"' EXIT
chmod 755 "$TMP"  # apt's unprivileged _apt user downloads into it
cd "$TMP"
if ! apt-get download prometheus >&2 2>"$TMP/err"; then
  echo "apt-get download failed ($(tail -1 "$TMP/err")); running apt-get update" >&2
  apt-get update -qq >&2
  apt-get download prometheus >&2
fi
mkdir -p "$CACHE_ROOT"
rm -rf "$DEST.tmp"
dpkg -x prometheus_*.deb "$DEST.tmp"
rm -rf "$DEST"
mv "$DEST.tmp" "$DEST"
installed || { echo "prometheus/promtool missing from the package" >&2; exit 1; }
echo "installed $("$BIN/prometheus" --version 2>&1 | head -1)" >&2
echo "$BIN"
