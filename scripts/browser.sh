#!/usr/bin/env bash
# What the page's browser test needs: Chromium's headless shell from Debian's packages
# and playwright-core from npm (tests/browser/package-lock.json). Sourced by
# scripts/test; run it once by hand before `cargo test --test daemon console::`.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
if ! command -v chromium-headless-shell >/dev/null; then
  echo "Installing chromium-headless-shell" >&2
  sudo=""
  [ "$(id -u)" -eq 0 ] || sudo="sudo"
  $sudo apt-get update -qq >/dev/null
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends \
    chromium-headless-shell >/dev/null
fi
if [ ! -d tests/browser/node_modules/playwright-core ]; then
  echo "Installing playwright-core into tests/browser" >&2
  npm ci --prefix tests/browser --no-audit --no-fund --silent
fi
