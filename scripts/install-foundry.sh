#!/usr/bin/env bash
# Installs anvil 1.7.1 (Foundry's dev node) from its npm package into target/foundry. npm may skip
# the wrapper package's install script, so the platform package is installed directly: its
# binary runs as it is.
set -euo pipefail
cd "$(dirname "$0")/.."
dir=target/foundry
bin=$dir/node_modules/@foundry-rs/anvil-linux-amd64/bin/anvil
if [ -x "$bin" ] && "$bin" --version | grep -q "1.7.1"; then
    exit 0
fi
mkdir -p "$dir"
[ -f "$dir/package.json" ] || echo '{"private": true}' > "$dir/package.json"
(cd "$dir" && npm install --no-save --ignore-scripts --no-audit --no-fund \
    @foundry-rs/anvil-linux-amd64@1.7.1 >/dev/null)
chmod +x "$bin"
"$bin" --version | head -1
