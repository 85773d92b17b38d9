#!/usr/bin/env bash
# Fuzzes every decoder that takes outside bytes (or the targets named) with libFuzzer through
# cargo-fuzz: RUNS executions per target (default 1,000,000), starting from the committed seed
# corpus (fuzz/corpus, written by `fuzz/src/make_seeds.rs`) with the target's dictionary
# (fuzz/dict) where it has one. Not part of CI: the default takes tens of minutes on 2 cores.
#
#   bash scripts/fuzz.sh [RUNS] [TARGET...]
#
# Installs cargo-fuzz into target/tools and uses the nightly toolchain (libFuzzer needs
# sanitizer flags). The corpus grows in target/fuzz-runs/corpus (the committed seeds stay as
# they are); crashes and slow inputs land in target/fuzz-runs/artifacts, and a summary of every
# target (executions, executions per second, new coverage, crash or not) in
# target/fuzz-runs/summary.txt. A crash found becomes a regression test of the crate whose
# decoder it broke.
set -euo pipefail
cd "$(dirname "$0")/.."

runs=${1:-1000000}
shift || true
if [ $# -gt 0 ]; then
    targets=("$@")
else
    mapfile -t targets < <(ls fuzz/fuzz_targets | sed 's/\.rs$//')
fi

tools=$PWD/target/tools
if ! [ -x "$tools/bin/cargo-fuzz" ]; then
    cargo install --locked cargo-fuzz --version 0.13.1 --root "$tools"
fi
rustup toolchain list | grep -q '^nightly' || rustup toolchain install nightly --profile minimal

if ! [ -d fuzz/corpus ]; then
    cargo run --quiet --manifest-path fuzz/Cargo.toml --target-dir target --bin make_seeds
fi

out=$PWD/target/fuzz-runs
mkdir -p "$out/artifacts"
: > "$out/summary.txt"
status=0
for t in "${targets[@]}"; do
    corpus=$out/corpus/$t
    mkdir -p "$corpus"
    if [ -d "fuzz/corpus/$t" ]; then
        cp -n fuzz/corpus/"$t"/* "$corpus"/ 2>/dev/null || true
    fi
    args=(-runs="$runs" -artifact_prefix="$out/artifacts/$t-" -print_final_stats=1)
    if [ -f "fuzz/dict/$t.dict" ]; then
        args+=(-dict="$PWD/fuzz/dict/$t.dict")
    fi
    printf '==> %s: %s runs\n' "$t" "$runs"
    start=$(date +%s)
    set +e
    PATH="$tools/bin:$PATH" cargo +nightly fuzz run --fuzz-dir fuzz --target-dir "$PWD/target/fuzz-build" \
        "$t" "$corpus" -- "${args[@]}" > "$out/$t.log" 2>&1
    rc=$?
    set -e
    secs=$(( $(date +%s) - start ))
    execs=$(grep -o 'stat::number_of_executed_units: *[0-9]*' "$out/$t.log" | grep -o '[0-9]*$' || echo 0)
    rate=$(grep -o 'stat::average_exec_per_sec: *[0-9]*' "$out/$t.log" | grep -o '[0-9]*$' || echo 0)
    cov=$(grep -o 'cov: [0-9]*' "$out/$t.log" | tail -1 | grep -o '[0-9]*' || echo 0)
    verdict=ok
    if [ "$rc" -ne 0 ]; then
        verdict="FAILED (exit $rc; see $out/$t.log)"
        status=1
    fi
    line=$(printf '%-20s %9s execs %7s/s %5s edges %5ss  %s' "$t" "$execs" "$rate" "$cov" "$secs" "$verdict")
    echo "$line"
    echo "$line" >> "$out/summary.txt"
done
echo "summary: $out/summary.txt"
exit $status
