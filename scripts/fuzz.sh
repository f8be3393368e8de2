#!/usr/bin/env bash
# Coverage-guided fuzzing with afl (cargo-afl, stable toolchain).
#
#   scripts/fuzz.sh [SECONDS_PER_TARGET] [TARGET...]
#   FUZZ_EXECS=10000000 scripts/fuzz.sh 0 [TARGET...]
#
# Builds the afl driver in fuzz/ (one binary, the target named by its first
# argument; bodies in crates/fuzz-targets), then runs each target for
# SECONDS_PER_TARGET (default 10), or until FUZZ_EXECS executions in all
# (runs resumed from fuzz/out count theirs), on one core, one after another, starting
# from fuzz/corpus/<target>/ and resuming fuzz/out/<target>/ when present.
# Prints execs, crashes and hangs per target from afl's fuzzer_stats and
# exits 1 if any target has a crash or a hang (inputs under
# fuzz/out/<target>/default/{crashes,hangs}/). Installs cargo-afl and builds
# AFL++ first when missing. Targets: the folders of fuzz/corpus/.
set -euo pipefail
cd "$(dirname "$0")/.."
secs=${1:-10}
shift || true
if [ $# -gt 0 ]; then
  targets=("$@")
else
  mapfile -t targets < <(ls fuzz/corpus)
fi

if ! cargo afl --version >/dev/null 2>&1; then
  echo "fuzz: installing cargo-afl" >&2
  cargo install cargo-afl --locked
fi
# Builds AFL++ for this toolchain once; says so (and fails) when it is there.
if ! out=$(cargo afl config --build 2>&1) && ! grep -q "already built" <<<"$out"; then
  echo "$out" >&2
  exit 1
fi

(cd fuzz && cargo afl build --release --locked)
bin=fuzz/target/release/shardgate-fuzz

export AFL_NO_UI=1 AFL_SKIP_CPUFREQ=1 AFL_AUTORESUME=1 AFL_QUIET=1
export AFL_I_DONT_CARE_ABOUT_MISSING_CRASHES=1
failed=0
printf '%-18s %12s %8s %8s\n' target execs crashes hangs
for t in "${targets[@]}"; do
  [ -d "fuzz/corpus/$t" ] || { echo "fuzz: no corpus for target $t" >&2; exit 2; }
  mkdir -p fuzz/out
  # -m: an input that makes the target allocate over 2 GiB is a crash;
  # -t: one that runs over 1 s is a hang.
  if [ -n "${FUZZ_EXECS:-}" ]; then limit=(-E "$FUZZ_EXECS"); else limit=(-V "$secs"); fi
  # numeric: arithmetic on n digits is quadratic (as Postgres's is), so
  # inputs of 100 kB of digits take seconds under load; afl's -G keeps
  # generated inputs to 8 kB (about 16,000 digits per operand).
  case "$t" in numeric) limit+=(-G 8192) ;; esac
  cargo afl fuzz -i "fuzz/corpus/$t" -o "fuzz/out/$t" "${limit[@]}" -m 2048 -t 1000 \
    -- "$bin" "$t" >"fuzz/out/$t.log" 2>&1 || { echo "fuzz: afl failed on $t, see fuzz/out/$t.log" >&2; failed=1; continue; }
  stats="fuzz/out/$t/default/fuzzer_stats"
  stat() { awk -F' *: *' -v k="$1" '$1 == k { print $2 }' "$stats"; }
  printf '%-18s %12s %8s %8s\n' "$t" "$(stat execs_done)" "$(stat saved_crashes)" "$(stat saved_hangs)"
  if [ "$(stat saved_crashes)" != 0 ] || [ "$(stat saved_hangs)" != 0 ]; then
    failed=1
  fi
done
exit $failed
