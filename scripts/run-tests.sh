#!/usr/bin/env bash
# Runs every C unit test binary in BUILD/tests, then (unless --unit-only)
# the end-to-end pytest suite in tests/e2e against real servers started by
# the tests themselves. Prints one closing line, "total: N passed, N failed",
# and exits non-zero if anything failed.
set -uo pipefail
unit_only=0
if [ "${1:-}" = "--unit-only" ]; then unit_only=1; shift; fi
build=${1:-build}
passed=0 failed=0

for t in "$build"/tests/*_test; do
  [ -x "$t" ] || continue
  echo "== $t"
  out=$("$t" 2>&1); rc=$?
  printf '%s\n' "$out" | tail -n 40
  line=$(printf '%s\n' "$out" | grep -E '^[0-9]+ passed, [0-9]+ failed$' | tail -n 1)
  if [ -z "$line" ]; then
    echo "$t: exited $rc without a summary line"; failed=$((failed + 1)); continue
  fi
  p=${line%% passed*}; f=${line#*, }; f=${f%% failed*}
  passed=$((passed + p)); failed=$((failed + f))
  [ "$rc" -eq 0 ] || [ "$f" -gt 0 ] || { echo "$t: exit $rc"; failed=$((failed + 1)); }
done

if [ $unit_only -eq 0 ] && ls tests/e2e/test_*.py >/dev/null 2>&1; then
  echo "== tests/e2e (pytest)"
  out=$(CONSENTD_BUILD="$build" /usr/bin/python3 -m pytest -q -p no:cacheprovider tests/e2e 2>&1); rc=$?
  printf '%s\n' "$out" | tail -n 60
  sum=$(printf '%s\n' "$out" | tail -n 1)
  p=$(printf '%s' "$sum" | grep -oE '[0-9]+ passed' | awk '{s += $1} END {print s + 0}')
  f=$(printf '%s' "$sum" | grep -oE '[0-9]+ (failed|errors?)' | awk '{s += $1} END {print s + 0}')
  passed=$((passed + p)); failed=$((failed + f))
  if [ "$rc" -ne 0 ] && [ "$f" -eq 0 ]; then echo "pytest exited $rc"; failed=$((failed + 1)); fi
fi

echo "total: $passed passed, $failed failed"
[ "$failed" -eq 0 ]
