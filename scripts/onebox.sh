#!/bin/bash
# onebox.sh N DIR: the whole registry on one box (issue 14), a one-off run.
#
# Makes N synthetic records (consentctl gen, piped: no snapshot file is
# kept), builds DIR from them (skipped when DIR has a generation already),
# serves DIR with consentd on core 0 and drives it with loadgen on core 1,
# every reply verified. Prints each step's figures and writes them to
# bench/results/<stamp>-onebox-n<N>.md:
#   - build: records/s, wall time, peak anonymous and file-backed RSS, the
#     system's page cache;
#   - start to ready, RSS once serving;
#   - closed loop: RESP CHECK 8×32 and RPC batch-100 8×2 (hit ratio 0.9),
#     batched hits (1.0) and misses (0.0) per server core;
#   - Applies: K changes (consentctl gen --changes | consentctl feed).
# Sizes: at N = 10^9 the table is ~18 GiB and DIR ~29 GiB (index + e-mail
# addresses); the build's e-mail list spills to $TMPDIR (else /var/tmp,
# index/generation.c), ~6 GiB more there while it runs.
# Env: DUR (s per load run, 10), CHANGES (K, 1000000), SEED (1), KEEP=1
# leaves the server running.
set -u
n=${1:?usage: onebox.sh N DIR}
dir=${2:?usage: onebox.sh N DIR}
dur=${DUR:-10}
changes=${CHANGES:-1000000}
seed=${SEED:-1}
here=$(cd "$(dirname "$0")/.." && pwd)
build=$here/build
stamp=$(date -u +%Y-%m-%d-%H%M%S)
out=$here/bench/results/$stamp-onebox-n$n.md
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

say() { echo "onebox: $*"; echo "$*" >> "$out"; }

# peaks PID: samples until PID exits, then prints
# "anon_mib file_mib cache_mib" (peaks of RssAnon, RssFile, page cache).
peaks() {
  local p=$1 ma=0 mf=0 mc=0 a f c
  while kill -0 "$p" 2>/dev/null; do
    read -r a f < <(awk '/^RssAnon/{a=$2}/^RssFile/{f=$2}END{print a+0, f+0}' \
      "/proc/$p/status" 2>/dev/null || echo "0 0")
    c=$(awk '/^Cached:/{print $2}' /proc/meminfo)
    [ "${a:-0}" -gt $ma ] && ma=$a
    [ "${f:-0}" -gt $mf ] && mf=$f
    [ "$c" -gt $mc ] && mc=$c
    sleep 0.5
  done
  echo "$((ma / 1024)) $((mf / 1024)) $((mc / 1024))"
}

{
  echo "# One box: $n records"
  echo
  echo "$stamp, commit $(git -C "$here" rev-parse --short HEAD); $(nproc) cores, $(awk '/MemTotal/{printf "%.1f GiB", $2/1048576}' /proc/meminfo); kernel $(uname -r)."
  echo "Command: \`scripts/onebox.sh $n DIR\` (DUR=$dur CHANGES=$changes SEED=$seed)."
  echo "Load average at the start: $(cut -d' ' -f1-3 /proc/loadavg) (anything above 0 is another process's)."
  echo
} > "$out"

# ---- 1. build ------------------------------------------------------------
if ls -d "$dir"/gen-* >/dev/null 2>&1; then
  say "- build: skipped, $dir has a generation"
else
  sync; echo 3 > /proc/sys/vm/drop_caches 2>/dev/null
  t0=$(date +%s.%N)
  "$build/consentctl" gen --records "$n" --seed "$seed" --out - |
    "$build/consentctl" build --snapshot - --out "$dir" > "$work/build.out" 2>&1 &
  bpid=$!
  sleep 0.2
  cpid=$(pgrep -n -f "consentctl build --snapshot - --out $dir")
  read -r ma mf mc < <(peaks "$cpid")
  wait $bpid; rc=$?
  t1=$(date +%s.%N)
  cat "$work/build.out"
  [ $rc -eq 0 ] || { say "- build failed (exit $rc)"; exit 1; }
  say "- build (gen piped into build, both on every core): $(tail -n 1 "$work/build.out"); wall $(echo "$t1 - $t0" | bc) s; peak RssAnon $ma MiB, RssFile $mf MiB, system page cache $mc MiB"
  say "- data directory on disk: $(du -sh "$dir" | cut -f1)"
fi

# ---- 2. serve -------------------------------------------------------------
sync; echo 3 > /proc/sys/vm/drop_caches 2>/dev/null
t0=$(date +%s.%N)
taskset -c 0 "$build/consentd" --data-dir "$dir" --workers 1 \
  --rpc 127.0.0.1:0 --resp 127.0.0.1:0 --http 127.0.0.1:0 --grpc 127.0.0.1:0 \
  --ports-file "$work/ports" > "$work/consentd.log" 2>&1 &
cd_pid=$!
port() { awk -v k="$1" '$1 == k {print $2}' "$work/ports" 2>/dev/null | sed 's/.*://'; }
until [ -s "$work/ports" ] && [ -n "$(port http)" ] &&
      curl -sf "http://127.0.0.1:$(port http)/readyz" >/dev/null; do
  kill -0 $cd_pid 2>/dev/null || { cat "$work/consentd.log"; say "- consentd died"; exit 1; }
  sleep 0.1
done
t1=$(date +%s.%N)
st=$(awk '/^RssAnon|^RssFile/{printf "%s %d MiB, ", substr($1, 1, length($1) - 1), $2/1024}' /proc/$cd_pid/status)
say "- start to ready: $(echo "$t1 - $t0" | bc) s (page cache dropped first); once ready: ${st%, }; $(grep -m1 'ready' "$work/consentd.log")"

# ---- 3. load ----------------------------------------------------------------
lg() { # NAME ARGS...: one verified run on core 1, its summary line kept
  local name=$1; shift
  taskset -c 1 "$build/loadgen" --records "$n" --seed "$seed" --threads 1 \
    --warmup 2 --duration "$dur" --json "$work/$name.json" --quiet "$@"
  local rc=$?
  local rate
  rate=$(/usr/bin/python3 -c "import json,sys; d=json.load(open('$work/$name.json')); print('%.2fM checks/s, p50 %.0f us, p99 %.0f us' % (d['checks_per_s']/1e6, d['latency_us']['p50'], d['latency_us']['p99']))" 2>/dev/null || echo "no figures")
  say "- $name: $rate (loadgen exit $rc; 0 = every reply verified)"
}
lg resp_check_8x32 --proto resp-check --port "$(port resp)" --connections 8 --pipeline 32
lg rpc_batch100_8x2 --proto rpc --port "$(port rpc)" --connections 8 --batch 100 --pipeline 2
lg rpc_batch100_hits --proto rpc --port "$(port rpc)" --connections 8 --batch 100 --pipeline 2 --hit-ratio 1.0
lg rpc_batch100_misses --proto rpc --port "$(port rpc)" --connections 8 --batch 100 --pipeline 2 --hit-ratio 0.0
st=$(awk '/^RssAnon|^RssFile/{printf "%s %d MiB, ", substr($1, 1, length($1) - 1), $2/1024}' /proc/$cd_pid/status)
say "- after the load: ${st%, }; system page cache $(awk '/^Cached:/{printf "%d MiB", $2/1024}' /proc/meminfo)"

# ---- 4. applies -------------------------------------------------------------
t0=$(date +%s.%N)
"$build/consentctl" gen --records "$n" --seed "$seed" --changes "$changes" --out - |
  taskset -c 1 "$build/consentctl" feed --rpc "127.0.0.1:$(port rpc)" --origin onebox - \
  > "$work/feed.out" 2>&1
rc=$?
t1=$(date +%s.%N)
say "- Applies: $changes changes in $(echo "$t1 - $t0" | bc) s ($(echo "$changes / ($t1 - $t0)" | bc) changes/s, feed exit $rc): $(tail -n 1 "$work/feed.out")"
st=$(awk '/^RssAnon|^RssFile/{printf "%s %d MiB, ", substr($1, 1, length($1) - 1), $2/1024}' /proc/$cd_pid/status)
say "- after the Applies: ${st%, }"

if [ "${KEEP:-0}" = 1 ]; then
  say "- server left running: pid $cd_pid, ports in $work/ports"
  trap - EXIT
else
  kill -TERM $cd_pid; wait $cd_pid
fi
echo "onebox: figures in $out"
