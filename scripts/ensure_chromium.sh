#!/usr/bin/env bash
# Make a headless Chromium available for the report's browser test (tests/report/test_report_browser.py).
# Idempotent: does nothing when chromium is already on PATH. Uses Debian's package (apt-get), so it needs
# root (or sudo) on a fresh CI machine; prints the binary path on success.
set -euo pipefail

find_chromium() {
  for name in chromium chromium-browser google-chrome-stable google-chrome; do
    if command -v "$name" >/dev/null 2>&1; then command -v "$name"; return 0; fi
  done
  return 1
}

if bin=$(find_chromium); then
  echo "$bin"
  exit 0
fi

SUDO=""
if [ "$(id -u)" -ne 0 ]; then
  if command -v sudo >/dev/null 2>&1; then SUDO="sudo"; else
    echo "ensure_chromium: chromium is missing and this user cannot run apt-get (not root, no sudo)" >&2
    exit 1
  fi
fi

export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -q >&2
$SUDO apt-get install -y -q --no-install-recommends chromium fonts-dejavu-core >&2

if bin=$(find_chromium); then
  echo "$bin"
else
  echo "ensure_chromium: apt-get finished but no chromium binary is on PATH" >&2
  exit 1
fi
