#!/usr/bin/env bash
# Builds the mobile library (bindings/uniffi, crate openledger-mobile), checks that the committed
# Kotlin and Swift sources are what uniffi-bindgen generates from it, and runs the Kotlin tests on
# the host JVM (JNA loads the desktop build of the library).
#
#   bash scripts/test-mobile.sh                        # check and test
#   OPENLEDGER_UPDATE_BINDINGS=1 bash scripts/test-mobile.sh   # rewrite the generated sources
#
# Needs a Rust toolchain, a JDK (17 or newer) and Maven; Maven fetches the Kotlin compiler, JNA
# and JUnit itself. Extra arguments are passed to `mvn`. The dev profile and the workspace target
# folder (or $CARGO_TARGET_DIR) are used, so what `cargo test` built is reused.
set -euo pipefail
cd "$(dirname "$0")/.."

step() { printf '\n==> %s\n' "$*"; }
start=$(date +%s)

target="${CARGO_TARGET_DIR:-target}"
case "$target" in /*) ;; *) target="$PWD/$target" ;; esac
case "$(uname -s)" in
    Darwin) lib="$target/debug/libopenledger_mobile.dylib" ;;
    *) lib="$target/debug/libopenledger_mobile.so" ;;
esac
kotlin_src=bindings/uniffi/kotlin/src/main/kotlin
swift_src=bindings/uniffi/swift

step "build the library and uniffi-bindgen (dev profile)"
cargo build -p openledger-mobile --locked

step "generate the Kotlin and Swift bindings"
generated="$target/uniffi-generated"
rm -rf "$generated"
for language in kotlin swift; do
    "$target/debug/uniffi-bindgen" generate --library "$lib" --language "$language" \
        --no-format --out-dir "$generated/$language"
done
if [ -n "${OPENLEDGER_UPDATE_BINDINGS:-}" ]; then
    rm -rf "$kotlin_src" "$swift_src"
    mkdir -p "$kotlin_src" "$swift_src"
    cp -R "$generated/kotlin/." "$kotlin_src/"
    cp -R "$generated/swift/." "$swift_src/"
    echo "bindings rewritten"
fi
if ! diff -r "$generated/kotlin" "$kotlin_src" || ! diff -r "$generated/swift" "$swift_src"; then
    echo "the committed bindings are stale: run OPENLEDGER_UPDATE_BINDINGS=1 bash scripts/test-mobile.sh" >&2
    exit 1
fi

step "Kotlin tests on the JVM (Maven)"
(cd bindings/uniffi/kotlin && mvn -q -B -Dstyle.color=never test -Dopenledger.native.dir="$target/debug" "$@")

printf '\nmobile bindings: all checks passed in %ss\n' "$(($(date +%s) - start))"
