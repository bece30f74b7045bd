#!/usr/bin/env bash
# Run Tessera's fuzz targets with cargo-fuzz (libFuzzer) on the stable
# toolchain. See fuzz/README.md for the targets and the choices made here.
#
#   scripts/fuzz.sh list                 the targets
#   scripts/fuzz.sh TARGET [SECONDS]     fuzz one target (default 60 s)
#   scripts/fuzz.sh all [SECONDS]        each target in turn
#   scripts/fuzz.sh build                build every target, run nothing
#
# Environment:
#   FUZZ_SANITIZER   address (default) or none: none builds without ASan,
#                    about twice as fast, and needs no -Z flag at all.
#   FUZZ_SAVE=1      merge the inputs that found new coverage, minimised,
#                    back into fuzz/corpus/TARGET (what to commit).
#   FUZZ_JOBS        parallel fuzzing processes per target (default 1).
#   CARGO_TARGET_DIR where to build (default fuzz/target).
#
# Crashes are written to fuzz/artifacts/TARGET/; `cargo test -p tessera-e2e
# --test fuzz_corpus` replays them (and the saved corpus) without libFuzzer.
set -euo pipefail
cd "$(dirname "$0")/.."

if ! cargo fuzz --version >/dev/null 2>&1; then
    echo "cargo-fuzz is missing: cargo install cargo-fuzz --locked" >&2
    exit 2
fi
# cargo-fuzz passes nightly-only flags (-Zsanitizer=address and friends).
# Only the stable toolchain is installed here, and rustup cannot fetch
# nightly, so we let stable rustc accept them. This is the switch the Rust
# project uses to build its own standard library; it changes no code generation.
export RUSTC_BOOTSTRAP=1
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$PWD/fuzz/target}"
sanitizer="${FUZZ_SANITIZER:-address}"
targets=$(sed -n 's/^name = "\(.*\)"$/\1/p' fuzz/Cargo.toml | grep -v '^tessera-fuzz$')

build() {
    cargo fuzz build --fuzz-dir fuzz --sanitizer "$sanitizer" --release --debug-assertions "$@"
}

run_one() {
    local t="$1" secs="$2"
    # Scratch corpus: libFuzzer writes every new input to its first corpus
    # directory; keep those out of the repository unless FUZZ_SAVE is set.
    local work="$CARGO_TARGET_DIR/fuzz-corpus/$t"
    mkdir -p "$work" "fuzz/corpus/$t" "fuzz/artifacts/$t"
    echo "== $t: ${secs}s (sanitizer: $sanitizer)"
    local jobs=()
    # libFuzzer sends each job's output to fuzz-N.log when -jobs is given.
    if [ "${FUZZ_JOBS:-1}" -gt 1 ]; then jobs=(-jobs="$FUZZ_JOBS" -workers="$FUZZ_JOBS"); fi
    cargo fuzz run --fuzz-dir fuzz --sanitizer "$sanitizer" --release --debug-assertions "$t" \
        "$work" "fuzz/corpus/$t" -- \
        -max_total_time="$secs" -timeout=10 -rss_limit_mb=2048 -max_len=65536 \
        "${jobs[@]}" -print_final_stats=1
    if [ "${FUZZ_SAVE:-0}" = 1 ]; then
        local merged="$CARGO_TARGET_DIR/fuzz-merge/$t"
        rm -rf "$merged" && mkdir -p "$merged"
        cargo fuzz run --fuzz-dir fuzz --sanitizer "$sanitizer" --release --debug-assertions "$t" \
            "$merged" "fuzz/corpus/$t" "$work" -- -merge=1 -max_len=65536
        rm -rf "fuzz/corpus/$t" && mv "$merged" "fuzz/corpus/$t"
        echo "   fuzz/corpus/$t: $(ls "fuzz/corpus/$t" | wc -l) inputs"
    fi
}

case "${1:-}" in
    list) echo "$targets" ;;
    build) build ;;
    all)
        build
        for t in $targets; do run_one "$t" "${2:-60}"; done
        ;;
    "" | -h | --help) sed -n '2,20p' "$0"; exit 2 ;;
    *)
        echo "$targets" | grep -qx "$1" || { echo "unknown target $1; try: $0 list" >&2; exit 2; }
        build "$1"
        run_one "$1" "${2:-60}"
        ;;
esac
