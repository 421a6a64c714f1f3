#!/usr/bin/env bash
# Installs checkov (PyPI) into its own virtualenv; the last line of stdout is the checkov binary.
#
#   tools/ci/install-checkov.sh                  install if missing, print the binary's path
#   tools/ci/install-checkov.sh --print-bin      print it (exit 1 when not installed)
#
# Not in the project's .venv on purpose: checkov pins old versions of packaging, python-dateutil
# and networkx, and installing it there downgrades what pytest, kubernetes and torch need.
# Location: ${DATAMIX_CACHE_DIR:-${XDG_CACHE_HOME:-~/.cache}/datamix}/checkov-<version>.
set -euo pipefail

CHECKOV_VERSION="${CHECKOV_VERSION:-3.3.30}"
CACHE_ROOT="${DATAMIX_CACHE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/datamix}"
VENV="$CACHE_ROOT/checkov-$CHECKOV_VERSION"
BIN="$VENV/bin/checkov"

if [[ -x "$BIN" && -f "$VENV/.complete" ]]; then
  echo "$BIN"
  exit 0
fi
if [[ "${1:-}" == "--print-bin" ]]; then
  echo "checkov not installed (run tools/ci/install-checkov.sh)" >&2
  exit 1
fi
PYTHON="${CHECKOV_PYTHON:-$(command -v python3.11 || command -v python3)}"
rm -rf "$VENV"
"$PYTHON" -m venv "$VENV"
"$VENV/bin/python" -m pip install -q --disable-pip-version-check "checkov==$CHECKOV_VERSION" >&2
"$BIN" --version >&2
touch "$VENV/.complete"
echo "$BIN"
