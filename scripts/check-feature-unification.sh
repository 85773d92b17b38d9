#!/usr/bin/env bash
# Fails when building one binding crate alone would enable other features on a shared dependency
# than the workspace-wide build does (which would make cargo compile that dependency, and all that
# sits above it, a second time). The fix is a line in tools/workspace-hack/Cargo.toml.
set -euo pipefail
cd "$(dirname "$0")/.."

rows() { cargo tree --locked "$@" -f '{p} {f}' --prefix none | sed 's/ (\*)//; s/ (proc-macro)//' | sort -u; }
workspace=$(mktemp)
trap 'rm -f "$workspace"' EXIT
rows --workspace -e normal,build,dev >"$workspace"
status=0
for package in openledger-python openledger-node openledger-mobile openledger-server; do
    extra=$(rows -p "$package" -e normal,build | comm -13 "$workspace" -)
    if [ -n "$extra" ]; then
        echo "$package alone resolves features the workspace build does not:"
        echo "$extra" | sed 's/^/    /'
        status=1
    fi
done
[ "$status" = 0 ] && echo "binding crates resolve the same dependency features as the workspace"
exit "$status"
