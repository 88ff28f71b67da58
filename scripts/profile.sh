#!/usr/bin/env bash
# scripts/profile.sh BUILD [N] — instructions per check, not wall time: the
# server under callgrind, a fixed number of requests from the load generator
# (bench/README.md), counters zeroed after start-up and dumped after each
# workload. Counts do not move with the machine's other work, so a change
# is measured with them and `make bench` only confirms.
#
#   rpc100     RPC, 100 checks per request, 2 connections x 2 pipelined,
#              2000 requests (200 000 checks)
#   respcheck  RESP CHECK, 2 connections x 32 pipelined, 100 000 requests
#
# Data: BUILD/bench-data/idx-nN-s1 as `make bench` leaves it, else built
# here (consentctl gen + build, N default 1000000). Output: BUILD/profile/
# NAME.out (callgrind_annotate it) and one line per workload on stdout:
# "NAME: Ir I checks C Ir/check R". Exit 1 if the load generator saw a wrong
# answer or the server did not start.
set -uo pipefail

build=${1:-build}
n=${2:-1000000}
cd "$(dirname "$0")/.." || exit 2
data="$build/bench-data"; idx="$data/idx-n$n-s1"; out="$build/profile"
mkdir -p "$data" "$out"
if [ ! -d "$idx" ]; then
  "$build/consentctl" gen --records "$n" --seed 1 --out "$data/snap-n$n-s1.bin" &&
    "$build/consentctl" build --snapshot "$data/snap-n$n-s1.bin" --out "$idx" || exit 1
fi
rm -f "$out"/*.out "$out"/server.log

# No --ports-file: under valgrind the HTTP listener (libmicrohttpd) may
# not come up, and the file is written only once all three are bound.
# The RPC and RESP ports are read from the server's own log lines.
valgrind --tool=callgrind --callgrind-out-file="$out/cg.%p" \
  "$build/consentd" --data-dir "$idx" --rpc 127.0.0.1:0 --resp 127.0.0.1:0 \
  --http 127.0.0.1:0 --grpc 127.0.0.1:0 --workers 1 > "$out/server.log" 2>&1 &
pid=$!
port() {
  sed -n "s/^consentd: $1 listening on [^ ]*:\([0-9]*\) .*/\1/p" "$out/server.log"
}
for _ in $(seq 1 120); do
  [ -n "$(port resp)" ] && break
  kill -0 "$pid" 2>/dev/null || { echo "profile: consentd exited"; tail -n 5 "$out/server.log"; exit 1; }
  sleep 1
done
rpc=$(port rpc); resp=$(port resp)
[ -n "$rpc" ] && [ -n "$resp" ] || { echo "profile: no ports"; kill -9 "$pid"; exit 1; }

rc=0
run() {
  local name=$1 checks=$2; shift 2
  callgrind_control -z "$pid" > /dev/null 2>&1
  "$build/loadgen" --records "$n" --seed 1 --threads 1 --warmup 0 \
    --distinct 256 --quiet "$@" || rc=1
  callgrind_control -d "$name" "$pid" > /dev/null 2>&1
  sleep 1
  mv "$(ls -t "$out"/cg."$pid".* | head -n 1)" "$out/$name.out"
  local ir
  ir=$(callgrind_annotate "$out/$name.out" 2>/dev/null |
       awk '/PROGRAM TOTALS/ { gsub(",", "", $1); print $1 }')
  echo "$name: Ir $ir checks $checks Ir/check $((ir / checks))"
}
run rpc100 200000 --proto rpc --port "$rpc" --connections 2 --batch 100 \
  --pipeline 2 --requests 2000
run respcheck 100000 --proto resp-check --port "$resp" --connections 2 \
  --pipeline 32 --requests 100000
# The counts are written; SIGTERM's orderly stop is slow under valgrind.
kill -9 "$pid"; wait "$pid" 2>/dev/null
rm -f "$out"/cg."$pid"*
exit $rc
