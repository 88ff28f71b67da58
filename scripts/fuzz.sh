#!/usr/bin/env bash
# libFuzzer driver for the targets in fuzz/*_fuzz.c (built by `make fuzz-build`
# into build/fuzz/fuzz/). Corpora live in fuzz/corpus/NAME/, regression inputs
# (crashes found and fixed) in fuzz/regressions/NAME/, dictionaries in
# fuzz/dict/NAME.dict.
#   fuzz.sh replay [SECONDS]   every corpus and regression input once, then a
#                              short run of each target (default 10 s)
#   fuzz.sh campaign NAME SECONDS   a campaign on one target; new inputs go to
#                              a scratch corpus dir, not the committed one
set -uo pipefail
bin=build/fuzz/fuzz
mode=${1:-replay}

dict_arg() { [ -f "fuzz/dict/$1.dict" ] && echo "-dict=fuzz/dict/$1.dict"; }

case "$mode" in
replay)
  secs=${2:-10}
  rc=0 n=0
  for t in "$bin"/*_fuzz; do
    [ -x "$t" ] || continue
    name=$(basename "$t" _fuzz)
    dirs=()
    for d in "fuzz/corpus/$name" "fuzz/regressions/$name"; do
      [ -d "$d" ] && dirs+=("$d")
    done
    echo "== $name: replay ${dirs[*]:-(no corpus)}"
    if [ ${#dirs[@]} -gt 0 ]; then
      "$t" -runs=0 $(dict_arg "$name") "${dirs[@]}" 2>&1 | tail -n 2 || rc=1
    fi
    scratch=$(mktemp -d)
    [ ${#dirs[@]} -gt 0 ] && cp -r "${dirs[0]}"/. "$scratch"/ 2>/dev/null
    echo "== $name: ${secs}s run"
    "$t" -max_total_time="$secs" -print_final_stats=1 $(dict_arg "$name") "$scratch" 2>&1 \
      | grep -E 'stat::number_of_executed_units|ERROR|SUMMARY' || true
    [ "${PIPESTATUS[0]}" -eq 0 ] || rc=1
    rm -rf "$scratch"
    n=$((n + 1))
  done
  echo "fuzz: $n targets replayed, exit $rc"
  exit $rc ;;
campaign)
  name=${2:?usage: fuzz.sh campaign NAME SECONDS}; secs=${3:-600}
  t="$bin/${name}_fuzz"
  [ -x "$t" ] || { echo "no fuzz target $t"; exit 2; }
  work="build/fuzz/corpus-$name"; mkdir -p "$work"
  [ -d "fuzz/corpus/$name" ] && cp -rn "fuzz/corpus/$name"/. "$work"/
  exec "$t" -max_total_time="$secs" -print_final_stats=1 -artifact_prefix="build/fuzz/$name-" \
    $(dict_arg "$name") "$work" ;;
*) echo "usage: fuzz.sh replay [SECONDS] | campaign NAME SECONDS"; exit 2 ;;
esac
