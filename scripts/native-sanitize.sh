#!/usr/bin/env bash
# The native module under AddressSanitizer + UBSan: build slocast._native._core with
# SLOCAST_NATIVE_SANITIZE=1 into a scratch copy of the package, run tests/native
# against that build, then fuzz every tests/native/fuzz_*.py target with atheris
# (libFuzzer) for FUZZ_SECONDS each. Any sanitizer report or fuzz crash fails.
#
#   scripts/native-sanitize.sh            (make native-check; CI runs it)
#   FUZZ_SECONDS=600 scripts/native-sanitize.sh
#
# Python itself is not instrumented: the ASan/UBSan runtimes are preloaded and
# PYTHONMALLOC=malloc routes Python's allocations through ASan's malloc. Leak
# checking is off (the interpreter keeps memory until exit by design). Crash inputs
# are kept in out/fuzz/ (reproduce: scripts/fuzz_native.py TARGET CRASH_FILE).
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
python=${PYTHON:-$root/.venv/bin/python}
seconds=${FUZZ_SECONDS:-90}
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
cd "$root"

libasan=$(gcc -print-file-name=libasan.so)
libubsan=$(gcc -print-file-name=libubsan.so)
[[ -f "$libasan" && -f "$libubsan" ]] || { echo "gcc without ASan/UBSan runtimes" >&2; exit 2; }

SLOCAST_NATIVE_SANITIZE=1 "$python" setup.py -q build_ext \
  --build-lib "$work/lib" --build-temp "$work/tmp" >/dev/null
mkdir -p "$work/src"
cp -r services/slocast "$work/src/slocast"
find "$work/src" \( -name '*.so' -o -name __pycache__ \) -prune -exec rm -rf {} +
cp "$work"/lib/slocast/_native/_core*.so "$work/src/slocast/_native/"

export PYTHONPATH="$work/src"
export LD_PRELOAD="$libasan $libubsan"
export PYTHONMALLOC=malloc
export ASAN_OPTIONS=detect_leaks=0:abort_on_error=1:strict_string_checks=1
export UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1
"$python" -c "import slocast._native._core as c, sys; \
sys.exit(0 if c.__file__.startswith('$work') else 'not the sanitized build: ' + c.__file__)"

"$python" -m pytest -q -p no:cacheprovider -p no:xdist tests/native
shopt -s nullglob
targets=(tests/native/fuzz_*.py)
(( ${#targets[@]} )) || { echo "no fuzz targets in tests/native" >&2; exit 1; }
mkdir -p out/fuzz
for target in "${targets[@]}"; do
  echo "fuzzing $target for ${seconds}s"
  "$python" scripts/fuzz_native.py "$target" -max_total_time="$seconds" \
    -artifact_prefix="out/fuzz/$(basename "$target" .py)-" -print_final_stats=1
done
