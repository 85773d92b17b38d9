#!/usr/bin/env bash
# Installs Foundry 1.7.1 (anvil, the dev node; forge, the Solidity build and test runner; cast)
# from its npm packages into target/foundry. npm may skip the wrapper packages' install scripts, so
# the platform packages are installed directly: their binaries run as they are. All three are
# installed by one npm call (a later `npm install --no-save` would prune what an earlier one put
# there). Prints the three versions; does nothing but print them when they are already installed.
set -euo pipefail
cd "$(dirname "$0")/.."
version=1.7.1
dir=target/foundry
tools=(anvil forge cast)
bin() { echo "$dir/node_modules/@foundry-rs/$1-linux-amd64/bin/$1"; }

installed() {
    local t
    for t in "${tools[@]}"; do
        [ -x "$(bin "$t")" ] && "$(bin "$t")" --version 2>/dev/null | grep -q "$version" || return 1
    done
}

if ! installed; then
    mkdir -p "$dir"
    [ -f "$dir/package.json" ] || echo '{"private": true}' > "$dir/package.json"
    pkgs=()
    for t in "${tools[@]}"; do pkgs+=("@foundry-rs/$t-linux-amd64@$version"); done
    (cd "$dir" && npm install --no-save --ignore-scripts --no-audit --no-fund "${pkgs[@]}" >/dev/null)
    for t in "${tools[@]}"; do chmod +x "$(bin "$t")"; done
    installed || { echo "Foundry $version did not install" >&2; exit 1; }
fi
for t in "${tools[@]}"; do "$(bin "$t")" --version | head -1; done
