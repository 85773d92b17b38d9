#!/usr/bin/env bash
# Drives the chat page of `openledger serve` in a real browser: Debian's Chromium (installed with
# apt-get when missing, which needs root), playwright-core from npm, node --test. Builds the
# binary (dev profile, reusing what `cargo test` built). The screenshot goes to
# target/chat-page.png.
set -euo pipefail
cd "$(dirname "$0")/.."

if [ ! -x "${CHROMIUM:-/usr/bin/chromium}" ]; then
    if [ "$(id -u)" != 0 ]; then
        echo "Chromium is missing: run as root, or install Debian's chromium package, or set CHROMIUM" >&2
        exit 1
    fi
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends chromium >/dev/null
fi
target="${CARGO_TARGET_DIR:-target}"
case "$target" in /*) ;; *) target="$PWD/$target" ;; esac

cargo build -p openledger-server --bin openledger --locked
cd openledger-server/tests/browser
npm ci --no-audit --no-fund --silent
OPENLEDGER_BIN="$target/debug/openledger" OPENLEDGER_SCREENSHOT="$target/chat-page.png" node --test
