#!/usr/bin/env bash
# Removes the test executables a `cargo test` run ran, given its output (the "Running ...
# (target/...)" lines), keeping every library and build artifact: a later cargo call relinks only
# what it runs again.
set -euo pipefail
cd "$(dirname "$0")/.."
log=${1:?usage: remove-test-executables.sh CARGO_TEST_OUTPUT}
freed=0
while IFS= read -r exe; do
    [ -f "$exe" ] || continue
    freed=$((freed + $(stat -c %s "$exe")))
    rm -f "$exe"
done < <(sed -n 's/^ *Running .* (\(.*\))$/\1/p' "$log" | sort -u)
echo "removed the test executables: $((freed >> 20)) MiB freed"
