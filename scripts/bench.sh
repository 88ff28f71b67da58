#!/usr/bin/env bash
# scripts/bench.sh BUILD [N] — `make bench`: consentd and Redis side by side
# on the same N synthetic records, one run of this script (bench/README.md).
#
#   1. consentctl gen N records (cached per N and seed in BUILD/bench-data);
#   2. hyperfine times `consentctl build` (--runs 3), then one more build
#      is served;
#   3. consentd (--workers 1) and redis-server (own port, no persistence)
#      both start pinned to core 0; Redis gets the same keys through
#      `loadgen --emit-redis-load | redis-cli --pipe`;
#   4. the load generator, pinned to core 1, runs every workload against
#      both, interleaved, RUNS times: RPC batch 1 and 100, RESP CHECK and
#      MCHECK 100 against GET and MGET 100, RESP CHECK over TLS against a
#      second consentd (same records, --tls-listeners resp, its own copy of
#      the index) right after each plaintext RESP CHECK run, and h2load the
#      gRPC port at batch 1 and 100 (scripts/grpc_bench.py); then
#      redis-benchmark (CHECK vs GET, same pipeline); then the latency
#      table: open loop at 25, 50 and 75 % of each workload's peak (RESP
#      CHECK, RPC batch 1, Redis GET) with the client's and server's CPU,
#      and the highest rate with p99 under 1 ms (scripts/rate_search.py);
#   4b-4d. start to warm, bootstrap from a peer, swaps under load (a
#      rebuild and a growth under open-loop load, scripts/bench_swaps.py);
#   5. the Google Benchmark binaries BUILD/bench/*_bench, if any;
#   6. bench/results/latest.{md,json} plus a dated copy, the table in
#      README.md between <!-- bench:start --> and <!-- bench:end --> (only
#      if both markers exist), and the table on stdout.
#
# It asserts nothing about speed. It exits non-zero only if the load
# generator saw a wrong answer (exit 1): a fast wrong server must not pass.
# QUICK=1 (CI): N = 100000, one run each, short durations.
# Env: BENCH_SEED (1), BENCH_REDIS_PORT (17709), BENCH_RUNS, BENCH_DURATION,
# BENCH_FIFO (0; 1: servers and loadgen at SCHED_FIFO, see below).
set -uo pipefail

build=${1:-build}
quick=${QUICK:-0}
n=${2:-}
if [ -z "$n" ]; then
  if [ "$quick" = 1 ]; then n=100000; else n=10000000; fi
fi
seed=${BENCH_SEED:-1}
if [ "$quick" = 1 ]; then
  runs=${BENCH_RUNS:-1}; dur=${BENCH_DURATION:-2}; warm=0.5; hf_runs=1
  rb_requests=200000
else
  runs=${BENCH_RUNS:-3}; dur=${BENCH_DURATION:-8}; warm=2; hf_runs=3
  rb_requests=3000000
fi
conns=8          # client connections, every workload
depth=32         # pipeline depth, one check per request
batch=100        # checks per request, batched workloads
batch_depth=2    # pipeline depth, batched workloads
python=/usr/bin/python3

cd "$(dirname "$0")/.." || exit 2
for bin in consentctl consentd loadgen; do
  [ -x "$build/$bin" ] || echo "bench: $build/$bin is missing; its rows will be empty"
done

stamp=$(date +%Y-%m-%d-%H%M%S)
data="$build/bench-data"
out="$build/bench-runs/$stamp"
mkdir -p "$data" "$out" bench/results
# Absolute: redis-server resolves its log file after changing to --dir.
data=$(cd "$data" && pwd); out=$(cd "$out" && pwd)
status="$out/status.tsv"   # name run exit-code, one line per measured run
facts="$out/facts.tsv"     # key value, everything the report needs
: > "$status"; : > "$facts"
fact() { printf '%s\t%s\n' "$1" "$2" >> "$facts"; }
log() { printf '\n== %s\n' "$*"; }

if [ "$(nproc)" -ge 2 ]; then srv_cpu=0; cli_cpu=1; else srv_cpu=0; cli_cpu=0; fi
# BENCH_FIFO=1: the servers and the load generator run SCHED_FIFO (chrt -f
# 10), so that other work on a shared machine cannot hold them off the CPU
# for milliseconds (which is what p99 then measures). Off by default: a
# saturated server at FIFO takes its core from everything else.
rt=()
if [ "${BENCH_FIFO:-0}" = 1 ]; then rt=(chrt -f 10); export BENCH_FIFO; fi
fact fifo "${BENCH_FIFO:-0}"
fact records "$n"; fact seed "$seed"; fact runs "$runs"; fact duration "$dur"
fact warmup "$warm"; fact quick "$quick"; fact connections "$conns"
fact depth "$depth"; fact batch "$batch"; fact batch_depth "$batch_depth"
fact cpu "$(lscpu | sed -n 's/^Model name: *//p' | head -n 1)"
fact cores "$(nproc)"; fact kernel "$(uname -r)"
fact redis_version "$(redis-server --version | sed -n 's/.*v=\([^ ]*\).*/\1/p')"
fact commit "$(git rev-parse --short HEAD 2>/dev/null || echo unknown)"
fact stamp "$stamp"

# ---- ports: none guessed ------------------------------------------------------
# consentd binds port 0 and reports its ports in --ports-file; Redis cannot,
# so it is started on a port and started again on the next if that bind
# fails (the bind itself is the check, not a probe before it).
p_rpc=""; p_resp=""; p_http=""; p_grpc=""; p_redis=""
# The port of listener $1 in consentd's ports file $2.
ports_get() { awk -v n="$1" '$1 == n { sub(/.*:/, "", $2); print $2 }' "$2"; }

# ---- servers: started here, stopped here --------------------------------------
cd_pid=""; rd_pid=""; tls_pid=""
stop_servers() {
  for p in $cd_pid $rd_pid $tls_pid; do
    kill "$p" 2>/dev/null && wait "$p" 2>/dev/null
  done
  cd_pid=""; rd_pid=""; tls_pid=""
}
trap stop_servers EXIT
trap 'stop_servers; exit 130' INT TERM

rss_kb() { awk '/^VmRSS:/ {print $2}' "/proc/$1/status" 2>/dev/null; }
now() { date +%s.%N; }
elapsed() { awk -v a="$1" -v b="$(now)" 'BEGIN {printf "%.3f", b - a}'; }

# ---- 1. dataset ----------------------------------------------------------------
# The cache is only good for the generator that wrote it: the marker holds
# consentctl's digest, so a rebuilt synth.c regenerates the snapshot.
snap="$data/snap-n$n-s$seed.bin"
gen_id=$(sha256sum "$build/consentctl" 2>/dev/null | cut -d' ' -f1)
if [ -s "$snap" ] && [ -n "$gen_id" ] && [ "$(cat "$snap.ok" 2>/dev/null)" = "$gen_id" ]; then
  log "dataset: $snap (cached)"
  fact gen_seconds cached
else
  log "dataset: consentctl gen --records $n --seed $seed"
  rm -f "$snap" "$snap.ok"
  t0=$(now)
  if "$build/consentctl" gen --records "$n" --seed "$seed" --out "$snap"; then
    echo "$gen_id" > "$snap.ok"; fact gen_seconds "$(elapsed "$t0")"
  else
    echo "bench: consentctl gen failed"; fact gen_seconds failed
  fi
fi
fact snapshot_bytes "$(stat -c %s "$snap" 2>/dev/null || echo 0)"

# ---- 2. index build, timed --------------------------------------------------
idx="$data/idx-n$n-s$seed"
if [ -s "$snap.ok" ]; then
  log "index build: hyperfine --runs $hf_runs consentctl build"
  hyperfine -N --runs "$hf_runs" --prepare "rm -rf $data/idx-timed" \
    --export-json "$out/hyperfine-build.json" \
    "$build/consentctl build --snapshot $snap --out $data/idx-timed" \
    || echo "bench: the timed index build failed"
  rm -rf "$data/idx-timed" "$idx"
  "$build/consentctl" build --snapshot "$snap" --out "$idx" \
    || echo "bench: consentctl build failed"
  fact index_bytes "$(du -sb "$idx" 2>/dev/null | cut -f1)"
fi

# ---- 3. servers ----------------------------------------------------------------
log "consentd --workers 1 on core $srv_cpu (ports chosen by the kernel)"
cd_ok=0
if [ -x "$build/consentd" ] && [ -d "$idx" ]; then
  t0=$(now)
  ports="$out/consentd.ports"
  rm -f "$ports"
  "${rt[@]}" taskset -c "$srv_cpu" "$build/consentd" --data-dir "$idx" \
    --rpc 127.0.0.1:0 --resp 127.0.0.1:0 --http 127.0.0.1:0 \
    --grpc 127.0.0.1:0 --ports-file "$ports" --workers 1 > "$out/consentd.log" 2>&1 &
  cd_pid=$!
  for _ in $(seq 1 6000); do
    kill -0 "$cd_pid" 2>/dev/null || break
    if [ -z "$p_http" ] && [ -s "$ports" ]; then
      p_rpc=$(ports_get rpc "$ports"); p_resp=$(ports_get resp "$ports")
      p_http=$(ports_get http "$ports"); p_grpc=$(ports_get grpc "$ports")
      echo "consentd: rpc $p_rpc, resp $p_resp, http $p_http, grpc $p_grpc"
    fi
    if [ -n "$p_http" ] && curl -sf -o /dev/null "http://127.0.0.1:$p_http/readyz"; then
      cd_ok=1; break
    fi
    sleep 0.1
  done
  if [ $cd_ok -eq 1 ]; then
    fact consentd_ready_seconds "$(elapsed "$t0")"
    fact consentd_rss_kb_loaded "$(rss_kb "$cd_pid")"
    curl -sf "http://127.0.0.1:$p_http/v1/stats" > "$out/consentd-stats.json" || true
  else
    echo "bench: consentd did not become ready; see $out/consentd.log"
    tail -n 5 "$out/consentd.log"
    kill "$cd_pid" 2>/dev/null; wait "$cd_pid" 2>/dev/null; cd_pid=""
  fi
fi
fact consentd_ok "$cd_ok"

# The TLS twin: the same records (a copy of the data directory: one server
# per directory), RESP over TLS with a certificate made here, so that TLS
# RESP CHECK is measured against plaintext RESP CHECK in the same run.
log "consentd --workers 1 --tls-listeners resp on core $srv_cpu (TLS RESP)"
tls_ok=0; p_tls=""
if [ $cd_ok -eq 1 ]; then
  tls_dir="$out/tls"; mkdir -p "$tls_dir"
  if openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes \
       -keyout "$tls_dir/ca.key" -out "$tls_dir/ca.pem" -days 2 \
       -subj "/CN=consentd bench CA" > "$tls_dir/openssl.log" 2>&1 &&
     openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes \
       -keyout "$tls_dir/srv.key" -out "$tls_dir/srv.csr" \
       -subj "/CN=consentd bench" >> "$tls_dir/openssl.log" 2>&1 &&
     printf 'subjectAltName=IP:127.0.0.1\n' > "$tls_dir/srv.ext" &&
     openssl x509 -req -in "$tls_dir/srv.csr" -CA "$tls_dir/ca.pem" \
       -CAkey "$tls_dir/ca.key" -CAcreateserial -days 2 -extfile "$tls_dir/srv.ext" \
       -out "$tls_dir/srv.pem" >> "$tls_dir/openssl.log" 2>&1 &&
     rm -rf "$data/idx-tls" && cp -a "$idx" "$data/idx-tls"; then
    ports="$out/consentd-tls.ports"
    taskset -c "$srv_cpu" "$build/consentd" --data-dir "$data/idx-tls" \
      --rpc 127.0.0.1:0 --resp 127.0.0.1:0 --http 127.0.0.1:0 --grpc 127.0.0.1:0 \
      --ports-file "$ports" --workers 1 --tls-listeners resp \
      --tls-cert "$tls_dir/srv.pem" --tls-key "$tls_dir/srv.key" \
      > "$out/consentd-tls.log" 2>&1 &
    tls_pid=$!
    p_tls_http=""
    for _ in $(seq 1 6000); do
      kill -0 "$tls_pid" 2>/dev/null || break
      if [ -z "$p_tls_http" ] && [ -s "$ports" ]; then
        p_tls=$(ports_get resp "$ports"); p_tls_http=$(ports_get http "$ports")
      fi
      if [ -n "$p_tls_http" ] && curl -sf -o /dev/null "http://127.0.0.1:$p_tls_http/readyz"; then
        tls_ok=1; break
      fi
      sleep 0.1
    done
    [ $tls_ok -eq 1 ] && echo "consentd (TLS): resp $p_tls" ||
      { echo "bench: the TLS consentd did not become ready; see $out/consentd-tls.log"; }
  else
    echo "bench: no certificate or no index copy for the TLS run; see $out/tls/openssl.log"
  fi
fi
fact tls_ok "$tls_ok"
fact openssl_version "$(openssl version | cut -d' ' -f2)"

log "redis-server on core $srv_cpu, loaded with the same $n records"
rd_ok=0
for cand in $(seq "${BENCH_REDIS_PORT:-17709}" 10 $((${BENCH_REDIS_PORT:-17709} + 190))); do
  "${rt[@]}" taskset -c "$srv_cpu" redis-server --port "$cand" --bind 127.0.0.1 \
    --save '' --appendonly no --daemonize no --dir "$out" \
    --logfile "$out/redis.log" &
  rd_pid=$!
  for _ in $(seq 1 100); do
    kill -0 "$rd_pid" 2>/dev/null || break  # the bind failed: next port
    # Our redis on its port, not another one already there.
    if [ "$(redis-cli -p "$cand" info server 2>/dev/null | tr -d '\r' |
            sed -n 's/^process_id://p')" = "$rd_pid" ]; then
      rd_ok=1; break
    fi
    sleep 0.1
  done
  if [ $rd_ok -eq 1 ]; then p_redis=$cand; break; fi
  kill "$rd_pid" 2>/dev/null; wait "$rd_pid" 2>/dev/null; rd_pid=""
done
echo "redis-server: port ${p_redis:-none}"
if [ $rd_ok -eq 1 ]; then
  t0=$(now)
  "$build/loadgen" --emit-redis-load --records "$n" --seed "$seed" |
    taskset -c "$cli_cpu" redis-cli -p "$p_redis" --pipe > "$out/redis-load.log" 2>&1
  fact redis_load_seconds "$(elapsed "$t0")"
  keys=$(redis-cli -p "$p_redis" dbsize)
  fact redis_keys "$keys"
  if [ "$keys" != "$n" ]; then
    echo "bench: Redis holds $keys keys, not $n; see $out/redis-load.log"
    rd_ok=0
  fi
  fact redis_rss_kb_loaded "$(rss_kb "$rd_pid")"
  fact redis_used_memory "$(redis-cli -p "$p_redis" info memory | tr -d '\r' | sed -n 's/^used_memory://p')"
else
  echo "bench: redis-server did not answer PING"
fi
fact redis_ok "$rd_ok"

# ---- 4. workloads --------------------------------------------------------------
wrong=0
# run_lg NAME RUN ARGS...: one loadgen run on core $cli_cpu, JSON kept.
run_lg() {
  local name=$1 run=$2; shift 2
  timeout $(( ${dur%.*} + 300 )) "${rt[@]}" taskset -c "$cli_cpu" "$build/loadgen" \
    --label "$name" --json "$out/$name.$run.json" --records "$n" \
    --seed "$seed" --threads 1 --connections "$conns" --warmup "$warm" \
    --duration "$dur" "$@"
  local rc=$?
  printf '%s\t%s\t%s\n' "$name" "$run" "$rc" >> "$status"
  [ $rc -eq 1 ] && wrong=1
  [ $rc -ne 0 ] && echo "bench: $name run $run: loadgen exit $rc"
  return 0
}

# run_grpc NAME RUN BATCH STREAMS: h2load on core $cli_cpu against the gRPC
# port, its replies verified around the run (scripts/grpc_bench.py).
run_grpc() {
  local name=$1 run=$2 b=$3 m=$4
  timeout $(( ${dur%.*} + 300 )) $python scripts/grpc_bench.py \
    --snapshot "$snap" --rpc "$p_rpc" --grpc "$p_grpc" --http "$p_http" \
    --batch "$b" --connections "$conns" --streams "$m" --duration "$dur" \
    --warmup "$warm" --cpu "$cli_cpu" --server-pid "$cd_pid" \
    --label "$name" --json "$out/$name.$run.json"
  local rc=$?
  printf '%s\t%s\t%s\n' "$name" "$run" "$rc" >> "$status"
  [ $rc -eq 1 ] && wrong=1
  [ $rc -ne 0 ] && echo "bench: $name run $run: grpc_bench exit $rc"
  return 0
}

closed_loop() {
  local r=$1
  if [ $cd_ok -eq 1 ]; then
    run_lg cd_rpc_b1 "$r" --proto rpc --port "$p_rpc" --pipeline "$depth"
    run_lg cd_resp_check "$r" --proto resp-check --port "$p_resp" --pipeline "$depth"
  fi
  [ $tls_ok -eq 1 ] && run_lg cd_tls_resp_check "$r" --proto resp-check \
    --port "$p_tls" --pipeline "$depth" --tls-ca "$tls_dir/ca.pem"
  [ $rd_ok -eq 1 ] && run_lg rd_get "$r" --proto redis-get --port "$p_redis" --pipeline "$depth"
  if [ $cd_ok -eq 1 ]; then
    run_lg cd_rpc_batch "$r" --proto rpc --port "$p_rpc" --batch "$batch" \
      --pipeline "$batch_depth"
    run_lg cd_resp_mcheck "$r" --proto resp-mcheck --port "$p_resp" \
      --batch "$batch" --pipeline "$batch_depth"
  fi
  [ $rd_ok -eq 1 ] && run_lg rd_mget "$r" --proto redis-mget --port "$p_redis" \
    --batch "$batch" --pipeline "$batch_depth"
  if [ $cd_ok -eq 1 ] && [ -n "$p_grpc" ]; then
    run_grpc cd_grpc_b1 "$r" 1 "$depth"
    run_grpc cd_grpc_batch "$r" "$batch" "$batch_depth"
  fi
}

for r in $(seq 1 "$runs"); do
  log "closed loop, run $r of $runs ($conns connections, loadgen on core $cli_cpu)"
  closed_loop "$r"
done

# redis-benchmark: the same RESP pair through a client nobody here wrote. It
# cannot use the dataset's keys (only __rand_int__), so both sides miss:
# CHECK of an unknown +1 number (NO_CONSENT) vs GET of an absent key.
brand=1334567 # synth_brand_code(0), the most popular brand
for r in $(seq 1 "$runs"); do
  log "redis-benchmark, run $r of $runs (-c $conns -P $depth -n $rb_requests, misses)"
  if [ $cd_ok -eq 1 ]; then
    taskset -c "$cli_cpu" redis-benchmark -h 127.0.0.1 -p "$p_resp" -c "$conns" \
      -P "$depth" -n "$rb_requests" -r 100000000 --threads 1 --csv \
      CHECK "+1__rand_int__" "$brand" MESAJ > "$out/rb_check.$r.csv" 2> "$out/rb_check.$r.err"
    printf 'rb_check\t%s\t%s\n' "$r" $? >> "$status"
    tail -n 1 "$out/rb_check.$r.csv"
  fi
  if [ $rd_ok -eq 1 ]; then
    taskset -c "$cli_cpu" redis-benchmark -h 127.0.0.1 -p "$p_redis" -c "$conns" \
      -P "$depth" -n "$rb_requests" -r 100000000 --threads 1 --csv \
      GET "c:$brand:2:1:+1__rand_int__" > "$out/rb_get.$r.csv" 2> "$out/rb_get.$r.err"
    printf 'rb_get\t%s\t%s\n' "$r" $? >> "$status"
    tail -n 1 "$out/rb_get.$r.csv"
  fi
done

# The latency table: open loop (fixed schedule, latency from the intended
# send time) at 25, 50 and 75 % of each workload's own closed-loop peak
# (median rate), RESP CHECK and RPC batch 1 (consentd) beside Redis GET,
# with the client's and the server's CPU (loadgen --server-pid); a run in
# which a client thread was over 85 % busy is client-bound and the report
# prints that instead of its figures. Then the highest offered rate with
# p99 under 1 ms, by bisection (scripts/rate_search.py).
median_rps() {
  $python - "$out" "$1" <<'EOF'
import glob, json, statistics, sys
v = []
for f in glob.glob(f"{sys.argv[1]}/{sys.argv[2]}.*.json"):
    try:
        v.append(json.load(open(f))["requests_per_s"])
    except Exception:
        pass
print(int(statistics.median(v)) if v else 0)
EOF
}
if [ "$quick" = 1 ]; then
  search_steps=3; search_dur=1; search_warm=0.5
else
  search_steps=6; search_dur=3; search_warm=1
fi
lat_fracs="25 50 75"
# name closed-loop-run proto port server-pid
lat_set=()
[ $cd_ok -eq 1 ] && lat_set+=("check cd_resp_check resp-check $p_resp $cd_pid"
                             "rpc cd_rpc_b1 rpc $p_rpc $cd_pid")
[ $rd_ok -eq 1 ] && lat_set+=("get rd_get redis-get $p_redis $rd_pid")
peak_of() { awk -v k="peak_$1" '$1 == k {print $2}' "$facts" | tail -n 1; }
for spec in "${lat_set[@]}"; do
  read -r w closed _ _ _ <<< "$spec"
  fact "peak_$w" "$(median_rps "$closed")"
done
for r in $(seq 1 "$runs"); do
  for frac in $lat_fracs; do
    log "latency, run $r of $runs: open loop at $frac % of each workload's peak"
    for spec in "${lat_set[@]}"; do
      read -r w closed proto port pid <<< "$spec"
      peak=$(peak_of "$w")
      rate=$(( ${peak:-0} * frac / 100 ))
      [ "$r" = 1 ] && fact "lat_rate_${w}_$frac" "$rate"
      [ "$rate" -gt 0 ] && run_lg "lat_${w}_$frac" "$r" --proto "$proto" \
        --port "$port" --rate "$rate" --server-pid "$pid"
    done
  done
done
for spec in "${lat_set[@]}"; do
  read -r w closed proto port pid <<< "$spec"
  peak=$(peak_of "$w")
  [ "${peak:-0}" -gt 0 ] || continue
  log "rate search ($w): highest rate with p99 < 1 ms, $search_steps steps of $search_dur s"
  timeout $(( search_steps * (search_dur + 320) )) $python scripts/rate_search.py \
    --loadgen "$build/loadgen" --cpu "$cli_cpu" --peak "$peak" --p99-us 1000 \
    --steps "$search_steps" --step-duration "$search_dur" --warmup "$search_warm" \
    --json "$out/search_$w.json" -- --proto "$proto" --port "$port" \
    --records "$n" --seed "$seed" --threads 1 --connections "$conns" \
    --server-pid "$pid"
  rc=$?
  printf 'search_%s\t1\t%s\n' "$w" "$rc" >> "$status"
  [ $rc -eq 1 ] && wrong=1
done

# Memory after every workload has touched the data.
[ -n "$cd_pid" ] && fact consentd_rss_kb_after "$(rss_kb "$cd_pid")"
[ -n "$rd_pid" ] && fact redis_rss_kb_after "$(rss_kb "$rd_pid")"
if [ $tls_ok -eq 1 ]; then
  fact tls_cipher "$(openssl s_client -connect "127.0.0.1:$p_tls" \
    -CAfile "$tls_dir/ca.pem" < /dev/null 2>/dev/null |
    sed -n 's/^ *Cipher *: *//p; s/^New, \(TLSv[0-9.]*\), Cipher is \(.*\)/\1 \2/p' | head -n 1)"
  curl -sf "http://127.0.0.1:$p_tls_http/metrics" > "$out/consentd-tls.metrics" || true
fi
stop_servers
rm -rf "$data/idx-tls"

# ---- 4b. start to warm ---------------------------------------------------------
# consentd restarted on the same generation (page cache dropped when root
# may), the RPC batch-100 load started the moment /readyz turns true, and
# the server's own check rate sampled every 0.25 s (scripts/warm.py).
if [ -x "$build/consentd" ] && [ -d "$idx" ]; then
  log "start to warm: consentd restarted on core $srv_cpu, RPC batch $batch from core $cli_cpu"
  warm_dur=$([ "$quick" = 1 ] && echo 3 || echo 12)
  $python scripts/warm.py --build "$build" --data "$idx" --records "$n" \
    --seed "$seed" --ports "$p_rpc,$p_resp,$p_http" --server-cpu "$srv_cpu" \
    --client-cpu "$cli_cpu" --duration "$warm_dur" --json "$out/warm.json"
  rc=$?
  printf 'warm\t1\t%s\n' "$rc" >> "$status"
  [ $rc -eq 1 ] && wrong=1
fi

# ---- 4c. bootstrap from a peer -------------------------------------------------
# A peer serves the generation; a second consentd with an empty data
# directory starts with --bootstrap-from it: start to /readyz is the
# download (GET /v1/snapshot), the build and the publish, over loopback.
# The peer on core $srv_cpu, the new server on $cli_cpu.
if [ -x "$build/consentd" ] && [ -d "$idx" ]; then
  log "bootstrap: consentd --bootstrap-from a peer serving $n records"
  bs_ok=0
  rm -rf "$data/bootstrap-new" "$out/peer.ports" "$out/bootstrap.ports"
  taskset -c "$srv_cpu" "$build/consentd" --data-dir "$idx" \
    --rpc 127.0.0.1:0 --resp 127.0.0.1:0 --http 127.0.0.1:0 --grpc 127.0.0.1:0 \
    --ports-file "$out/peer.ports" --workers 1 > "$out/peer.log" 2>&1 &
  peer_pid=$!
  peer_http=""
  for _ in $(seq 1 6000); do
    kill -0 "$peer_pid" 2>/dev/null || break
    [ -s "$out/peer.ports" ] && peer_http=$(ports_get http "$out/peer.ports")
    if [ -n "$peer_http" ] && curl -sf -o /dev/null "http://127.0.0.1:$peer_http/readyz"; then
      break
    fi
    sleep 0.1
  done
  if [ -n "$peer_http" ]; then
    t0=$(now)
    taskset -c "$cli_cpu" "$build/consentd" --data-dir "$data/bootstrap-new" \
      --bootstrap-from "http://127.0.0.1:$peer_http" \
      --rpc 127.0.0.1:0 --resp 127.0.0.1:0 --http 127.0.0.1:0 --grpc 127.0.0.1:0 \
      --ports-file "$out/bootstrap.ports" --workers 1 > "$out/bootstrap.log" 2>&1 &
    bs_pid=$!
    bs_http=""
    for _ in $(seq 1 36000); do
      kill -0 "$bs_pid" 2>/dev/null || break
      [ -z "$bs_http" ] && [ -s "$out/bootstrap.ports" ] &&
        bs_http=$(ports_get http "$out/bootstrap.ports")
      if [ -n "$bs_http" ] && curl -sf -o /dev/null "http://127.0.0.1:$bs_http/readyz"; then
        bs_ok=1; break
      fi
      sleep 0.05
    done
    if [ $bs_ok -eq 1 ]; then
      fact bootstrap_ready_seconds "$(elapsed "$t0")"
      fact bootstrap_rss_kb "$(rss_kb "$bs_pid")"
    else
      echo "bench: the bootstrap did not become ready; see $out/bootstrap.log"
      tail -n 5 "$out/bootstrap.log"
    fi
    kill "$bs_pid" 2>/dev/null; wait "$bs_pid" 2>/dev/null
  fi
  kill "$peer_pid" 2>/dev/null; wait "$peer_pid" 2>/dev/null
  rm -rf "$data/bootstrap-new"
  printf 'bootstrap\t1\t%s\n' "$([ $bs_ok -eq 1 ] && echo 0 || echo 1)" >> "$status"
fi

# ---- 4d. swaps under load ------------------------------------------------------
# A consentd on a copy of the index (core $srv_cpu) under open-loop RPC load
# at half of its batch-1 peak (core $cli_cpu): a rebuild (SIGUSR1: a new
# table filled and swapped in while serving) and a growth (Applies of new
# keys past the load limit: the writer grows the table 1.5x), each event's
# client-seen latency against quiet windows (scripts/bench_swaps.py).
swap_rate=$(( $(peak_of rpc 2>/dev/null || echo 0) / 2 ))
if [ -x "$build/consentd" ] && [ -d "$idx" ] && [ "${swap_rate:-0}" -gt 0 ]; then
  log "swaps under load: rebuild and growth at $swap_rate RPC checks/s ($n records)"
  rm -rf "$data/idx-swaps" && cp -a "$idx" "$data/idx-swaps"
  sw_ports="$out/swaps.ports"; rm -f "$sw_ports"
  "${rt[@]}" taskset -c "$srv_cpu" "$build/consentd" --data-dir "$data/idx-swaps" \
    --rpc 127.0.0.1:0 --resp 127.0.0.1:0 --http 127.0.0.1:0 --grpc 127.0.0.1:0 \
    --ports-file "$sw_ports" --workers 1 > "$out/consentd-swaps.log" 2>&1 &
  sw_pid=$!
  sw_http=""; sw_rpc=""; sw_ok=0
  for _ in $(seq 1 6000); do
    kill -0 "$sw_pid" 2>/dev/null || break
    if [ -z "$sw_http" ] && [ -s "$sw_ports" ]; then
      sw_http=$(ports_get http "$sw_ports"); sw_rpc=$(ports_get rpc "$sw_ports")
    fi
    if [ -n "$sw_http" ] && curl -sf -o /dev/null "http://127.0.0.1:$sw_http/readyz"; then
      sw_ok=1; break
    fi
    sleep 0.1
  done
  if [ $sw_ok -eq 1 ]; then
    timeout 1500 $python scripts/bench_swaps.py --build "$build" --records "$n" \
      --seed "$seed" --rpc "$sw_rpc" --http "$sw_http" --server-pid "$sw_pid" \
      --server-log "$out/consentd-swaps.log" --rate "$swap_rate" --cpu "$cli_cpu" \
      --quiet-s "$([ "$quick" = 1 ] && echo 1 || echo 3)" --warmup "$warm" \
      --out "$out" --json "$out/swaps.json"
    rc=$?
  else
    echo "bench: the consentd for the swaps did not become ready; see $out/consentd-swaps.log"
    rc=3
  fi
  printf 'swaps\t1\t%s\n' "$rc" >> "$status"
  [ $rc -eq 1 ] && wrong=1
  kill "$sw_pid" 2>/dev/null; wait "$sw_pid" 2>/dev/null
  rm -rf "$data/idx-swaps" "$out/new-keys.bin"
fi

# ---- 5. Google Benchmark binaries ----------------------------------------------
# Each gets the record count as BENCH_RECORDS and as --records=N when its
# --help lists that flag (Google Benchmark's own main rejects unknown flags).
min_time=$([ "$quick" = 1 ] && echo 0.05 || echo 0.5)
for b in "$build"/bench/*_bench; do
  [ -x "$b" ] || continue
  name=$(basename "$b")
  log "Google Benchmark: $name (records $n, core $cli_cpu)"
  extra=()
  "$b" --help 2>&1 | grep -q -- '--records' && extra=(--records="$n")
  BENCH_RECORDS=$n timeout 900 taskset -c "$cli_cpu" "$b" "${extra[@]}" \
    --benchmark_min_time="$min_time" --benchmark_out="$out/gbench-$name.json" \
    --benchmark_out_format=json
  printf 'gbench_%s\t1\t%s\n' "$name" $? >> "$status"
done

# ---- 6. report -----------------------------------------------------------------
log "report"
$python - "$out" bench/results "$stamp" <<'EOF'
import glob, json, os, re, statistics, sys

out, resdir, stamp = sys.argv[1], sys.argv[2], sys.argv[3]
facts = {}
for line in open(f"{out}/facts.tsv"):
    k, _, v = line.rstrip("\n").partition("\t")
    facts[k] = v
status = [l.rstrip("\n").split("\t") for l in open(f"{out}/status.tsv") if l.strip()]
n = int(facts["records"])

def load_runs(name):
    runs = []
    for f in sorted(glob.glob(f"{out}/{name}.*.json")):
        try:
            runs.append(json.load(open(f)))
        except Exception:
            pass
    return runs

def med(values):
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else None

def summary(name):
    runs = load_runs(name)
    if not runs:
        return None
    return {
        "runs": len(runs),
        "requests_per_s": med([r["requests_per_s"] for r in runs]),
        "checks_per_s": med([r["checks_per_s"] for r in runs]),
        "p50_us": med([r["latency_us"]["p50"] for r in runs]),
        "p90_us": med([r["latency_us"]["p90"] for r in runs]),
        "p99_us": med([r["latency_us"]["p99"] for r in runs]),
        "p999_us": med([r["latency_us"]["p999"] for r in runs]),
        "max_us": med([r["latency_us"]["max"] for r in runs]),
        "wrong_checks": sum(r["wrong_checks"] for r in runs),
        "lost": sum(r["lost"] for r in runs),
        "client_cpu": med([r["client_cpu"] for r in runs]),
        "client_busy_max": med([r.get("client_busy_max") for r in runs]),
        "client_bound_runs": sum(1 for r in runs if r.get("client_bound")),
        "client_cpu_us_per_request": med([r.get("client_cpu_us_per_request") for r in runs]),
        "server_cpu": med([r.get("server_cpu") for r in runs]),
        "io": runs[0].get("io"),
        "hit_ratio_sent": med([r["hit_ratio_sent"] for r in runs]),
        "target_rate": runs[0]["target_rate"],
        "all": runs,
    }

def rb_summary(name):
    rows = []
    for f in sorted(glob.glob(f"{out}/{name}.*.csv")):
        lines = [l for l in open(f).read().splitlines() if l.strip()]
        if len(lines) < 2:
            continue
        head = [h.strip('"') for h in lines[0].split(",")]
        vals = [v.strip('"') for v in lines[-1].split(",")]
        try:
            d = dict(zip(head, vals))
            rows.append({k: float(d[k]) for k in
                         ("rps", "p50_latency_ms", "p99_latency_ms", "max_latency_ms")})
        except (KeyError, ValueError):
            pass
    if not rows:
        return None
    return {"runs": len(rows),
            "requests_per_s": med([r["rps"] for r in rows]),
            "p50_us": med([r["p50_latency_ms"] * 1000 for r in rows]),
            "p99_us": med([r["p99_latency_ms"] * 1000 for r in rows]),
            "max_us": med([r["max_latency_ms"] * 1000 for r in rows])}

S = {k: summary(k) for k in (
    "cd_rpc_b1", "cd_resp_check", "rd_get", "cd_rpc_batch", "cd_resp_mcheck",
    "rd_mget", "cd_tls_resp_check", "cd_grpc_b1", "cd_grpc_batch")}
S.update({f"lat_{w}_{f}": summary(f"lat_{w}_{f}")
          for w in ("check", "rpc", "get") for f in (25, 50, 75)})
RB = {k: rb_summary(k) for k in ("rb_check", "rb_get")}

def fnum(v, unit=""):
    if v is None:
        return "—"
    if v >= 1e6:
        return f"{v / 1e6:.2f} M{unit}"
    if v >= 1e4:
        return f"{v / 1e3:.0f} k{unit}"
    if v >= 100:
        return f"{v:.0f}{unit}"
    return f"{v:.1f}{unit}"

def flat(v):
    return "—" if v is None else (f"{v:.0f}" if v >= 100 else f"{v:.1f}")

def ratio(a, b):
    if a is None or b is None or not b:
        return None
    return a / b

def fratio(r):
    return "—" if r is None else f"{r:.2f}×"

def get(s, k):
    return None if s is None else s.get(k)

rows = []  # (workload, consentd, redis, key) for the throughput table
def pair(label, cd, rd, key="checks_per_s"):
    c, r = S.get(cd) if isinstance(cd, str) else cd, S.get(rd) if isinstance(rd, str) else rd
    rows.append({
        "workload": label,
        "consentd_per_s": get(c, key), "redis_per_s": get(r, key),
        "ratio": ratio(get(c, key), get(r, key)),
        "consentd_p50_us": get(c, "p50_us"), "consentd_p99_us": get(c, "p99_us"),
        "redis_p50_us": get(r, "p50_us"), "redis_p99_us": get(r, "p99_us"),
        "p99_ratio": ratio(get(c, "p99_us"), get(r, "p99_us")),
    })

conns, depth = facts["connections"], facts["depth"]
batch, bdepth = facts["batch"], facts["batch_depth"]
pair(f"RPC, 1 check/request, {conns}×{depth} pipelined — vs GET", "cd_rpc_b1", "rd_get")
pair(f"RESP CHECK, {conns}×{depth} pipelined — vs GET", "cd_resp_check", "rd_get")
pair(f"RPC, {batch} checks/request, {conns}×{bdepth} — vs MGET {batch}", "cd_rpc_batch", "rd_mget")
pair(f"RESP MCHECK {batch}, {conns}×{bdepth} — vs MGET {batch}", "cd_resp_mcheck", "rd_mget")
pair(f"redis-benchmark CHECK vs GET, -c {conns} -P {depth} (misses)",
     RB["rb_check"], RB["rb_get"], key="requests_per_s")

def paired_ratio(a, b, key="checks_per_s"):
    """The median over runs r of a.r / b.r: each TLS run was made right
    after its plaintext run, so a pair shares the machine's mood (the
    medians of each side can come from different minutes)."""
    r = []
    for f in glob.glob(f"{out}/{a}.*.json"):
        g = f[:-len(".json")].rsplit(".", 1)
        try:
            x = json.load(open(f))[key]
            y = json.load(open(f"{out}/{b}.{g[1]}.json"))[key]
        except Exception:
            continue
        if y:
            r.append(x / y)
    return med(r)

tls_row = None
if S.get("cd_tls_resp_check"):
    t, p = S["cd_tls_resp_check"], S.get("cd_resp_check")
    tls_row = {
        "workload": f"RESP CHECK, {conns}×{depth} pipelined, TLS vs plaintext",
        "tls_per_s": get(t, "checks_per_s"), "plain_per_s": get(p, "checks_per_s"),
        "ratio": paired_ratio("cd_tls_resp_check", "cd_resp_check"),
        "tls_p50_us": get(t, "p50_us"), "tls_p99_us": get(t, "p99_us"),
        "plain_p50_us": get(p, "p50_us"), "plain_p99_us": get(p, "p99_us"),
        "tls_client_cpu": get(t, "client_cpu"), "plain_client_cpu": get(p, "client_cpu"),
        "cipher": facts.get("tls_cipher", ""), "openssl": facts.get("openssl_version", ""),
    }
# gRPC (h2load) against the framed RPC (loadgen), both on the same server.
grpc_rows = []
for label, g, r in (
        (f"gRPC Check, 1 check/call, h2load -c {conns} -m {depth} — vs RPC 1 check/request, {conns}×{depth}",
         "cd_grpc_b1", "cd_rpc_b1"),
        (f"gRPC Check, {batch} checks/call, h2load -c {conns} -m {bdepth} — vs RPC {batch} checks/request, {conns}×{bdepth}",
         "cd_grpc_batch", "cd_rpc_batch")):
    gs, rs = S.get(g), S.get(r)
    if gs is None:
        continue
    grpc_rows.append({
        "workload": label,
        "grpc_per_s": get(gs, "checks_per_s"), "rpc_per_s": get(rs, "checks_per_s"),
        "ratio": ratio(get(gs, "checks_per_s"), get(rs, "checks_per_s")),
        "grpc_p50_us": get(gs, "p50_us"), "grpc_p99_us": get(gs, "p99_us"),
        "rpc_p50_us": get(rs, "p50_us"), "rpc_p99_us": get(rs, "p99_us"),
        "server_cpu": med([x.get("server_cpu") for x in gs["all"]]),
        "server_checks_per_cpu_s": med([x.get("server_checks_per_cpu_s") for x in gs["all"]]),
    })

# The latency table: each workload at 25/50/75 % of its own peak, then
# the rate search; a level with any client-bound run shows no figures.
lat_names = (("check", "RESP CHECK (consentd)"), ("rpc", "RPC, 1 check/request (consentd)"),
             ("get", "Redis GET"))
latency_rows = []
for w, label in lat_names:
    peak = float(facts.get(f"peak_{w}", 0) or 0)
    levels = []
    for frac in (25, 50, 75):
        sm = S.get(f"lat_{w}_{frac}")
        if sm is None:
            continue
        levels.append({
            "fraction": frac, "rate": float(facts.get(f"lat_rate_{w}_{frac}", 0) or 0),
            "achieved": sm["requests_per_s"], "p50_us": sm["p50_us"], "p99_us": sm["p99_us"],
            "p999_us": sm["p999_us"], "max_us": sm["max_us"],
            "client_busy_max": sm["client_busy_max"],
            "client_bound": sm["client_bound_runs"] > 0,
            "client_cpu_us_per_request": sm["client_cpu_us_per_request"],
            "server_cpu": sm["server_cpu"], "io": sm["io"], "runs": sm["runs"],
        })
    search = None
    try:
        search = json.load(open(f"{out}/search_{w}.json"))
    except Exception:
        pass
    closed = S.get({"check": "cd_resp_check", "rpc": "cd_rpc_b1", "get": "rd_get"}[w])
    if levels or search:
        latency_rows.append({"workload": w, "label": label, "peak": peak,
                             "peak_client_busy_max": closed and closed["client_busy_max"],
                             "levels": levels, "search": search})

swaps = None
try:
    swaps = json.load(open(f"{out}/swaps.json"))
except Exception:
    pass

def kb(k):
    try:
        return int(facts[k])
    except (KeyError, ValueError):
        return None

cd_rss = max([v for v in (kb("consentd_rss_kb_loaded"), kb("consentd_rss_kb_after")) if v] or [0]) or None
rd_rss = max([v for v in (kb("redis_rss_kb_loaded"), kb("redis_rss_kb_after")) if v] or [0]) or None
mem = {
    "consentd_rss_kb_loaded": kb("consentd_rss_kb_loaded"),
    "consentd_rss_kb_after": kb("consentd_rss_kb_after"),
    "redis_rss_kb_loaded": kb("redis_rss_kb_loaded"),
    "redis_rss_kb_after": kb("redis_rss_kb_after"),
    "redis_used_memory": kb("redis_used_memory"),
    "consentd_bytes_per_record": cd_rss * 1024 / n if cd_rss and n else None,
    "redis_bytes_per_record": rd_rss * 1024 / n if rd_rss and n else None,
}
mem["ratio"] = ratio(mem["consentd_bytes_per_record"], mem["redis_bytes_per_record"])

build = None
try:
    h = json.load(open(f"{out}/hyperfine-build.json"))["results"][0]
    build = {"mean_s": h["mean"], "stddev_s": h.get("stddev"), "min_s": h["min"],
             "max_s": h["max"], "runs": len(h["times"]),
             "records_per_s": n / h["mean"] if h["mean"] else None}
except Exception:
    pass

gbench = []
for f in sorted(glob.glob(f"{out}/gbench-*.json")):
    try:
        g = json.load(open(f))
    except Exception:
        continue
    for b in g.get("benchmarks", []):
        if b.get("run_type") == "aggregate" and b.get("aggregate_name") != "median":
            continue
        gbench.append({"binary": os.path.basename(f)[7:-5], "name": b["name"],
                       "real_time": b.get("real_time"), "cpu_time": b.get("cpu_time"),
                       "time_unit": b.get("time_unit", "ns"),
                       "items_per_second": b.get("items_per_second"),
                       "counters": {k: v for k, v in b.items() if k not in (
                           "name", "run_name", "run_type", "repetitions",
                           "repetition_index", "threads", "iterations",
                           "real_time", "cpu_time", "time_unit", "family_index",
                           "per_family_instance_index", "items_per_second",
                           "aggregate_name", "aggregate_unit")}})

wrong_runs = [s for s in status if len(s) == 3 and s[2] == "1" and not s[0].startswith(("rb_", "gbench_"))]
failed_runs = [s for s in status if len(s) == 3 and s[2] not in ("0", "1")]
failed_runs += [s for s in status if len(s) == 3 and s[2] == "1" and s[0].startswith(("rb_", "gbench_"))]

# ---- markdown ----
L = []
q = " (QUICK)" if facts.get("quick") == "1" else ""
L.append(f"### consentd vs Redis {facts.get('redis_version', '')} — {n:,} records{q}")
L.append("")
L.append(f"{stamp}, commit {facts.get('commit')}; {facts.get('cpu')}, {facts.get('cores')} cores, "
         f"kernel {facts.get('kernel')}. Each server runs on **one core** (taskset core 0; "
         f"consentd `--workers 1`), the load generator on core 1, so every rate is per core. "
         f"Medians of {facts.get('runs')} run(s) of {facts.get('duration')} s after "
         f"{facts.get('warmup')} s warm-up; hit ratio 0.9, uniform keys; every reply verified.")
L.append("")
L.append("| workload | consentd /s | Redis /s | ratio | consentd p50 / p99 µs | Redis p50 / p99 µs | p99 ratio |")
L.append("|---|---:|---:|---:|---:|---:|---:|")
for r in rows:
    L.append(f"| {r['workload']} | {fnum(r['consentd_per_s'])} | {fnum(r['redis_per_s'])} | "
             f"{fratio(r['ratio'])} | {flat(r['consentd_p50_us'])} / {flat(r['consentd_p99_us'])} | "
             f"{flat(r['redis_p50_us'])} / {flat(r['redis_p99_us'])} | {fratio(r['p99_ratio'])} |")
L.append("")
L.append("Rates are checks (consentd) and keys (Redis) per second; the redis-benchmark row is requests per second. "
         "Ratio: consentd / Redis (above 1 is faster; for p99, below 1 is better).")
if tls_row:
    L.append("")
    L.append(f"TLS on the RESP port (OpenSSL {tls_row['openssl']} over the loop's memory BIOs, "
             f"{tls_row['cipher'] or 'cipher unknown'}; no kernel TLS on this kernel), "
             "the same load generator with `--tls-ca`, every reply verified; "
             "a second consentd on a copy of the index, run right after each plaintext run. "
             "Ratio: the median of the per-run ratios (each TLS run over the plaintext run before it).")
    L.append("")
    L.append("| workload | TLS /s | plaintext /s | ratio | TLS p50 / p99 µs | plaintext p50 / p99 µs |")
    L.append("|---|---:|---:|---:|---:|---:|")
    L.append(f"| {tls_row['workload']} | {fnum(tls_row['tls_per_s'])} | {fnum(tls_row['plain_per_s'])} | "
             f"{fratio(tls_row['ratio'])} | {flat(tls_row['tls_p50_us'])} / {flat(tls_row['tls_p99_us'])} | "
             f"{flat(tls_row['plain_p50_us'])} / {flat(tls_row['plain_p99_us'])} |")
if grpc_rows:
    L.append("")
    L.append("gRPC (h2load repeating one message, replies verified around each run: "
             "bench/README.md) against the framed RPC (loadgen) on the same server:")
    L.append("")
    L.append("| workload | gRPC checks/s | RPC checks/s | ratio | gRPC p50 / p99 µs | RPC p50 / p99 µs | consentd core busy | gRPC checks per consentd CPU-second |")
    L.append("|---|---:|---:|---:|---:|---:|---:|---:|")
    for g in grpc_rows:
        busy = "—" if g["server_cpu"] is None else f"{100 * g['server_cpu']:.0f} %"
        L.append(f"| {g['workload']} | {fnum(g['grpc_per_s'])} | {fnum(g['rpc_per_s'])} | "
                 f"{fratio(g['ratio'])} | {flat(g['grpc_p50_us'])} / {flat(g['grpc_p99_us'])} | "
                 f"{flat(g['rpc_p50_us'])} / {flat(g['rpc_p99_us'])} | {busy} | "
                 f"{fnum(g['server_checks_per_cpu_s'])} |")
def fpct(v):
    return "—" if v is None else f"{100 * v:.0f} %"
def fus(v):
    return "—" if v is None else f"{v:.2f}"
if latency_rows:
    L.append("")
    L.append("Latency under open loop (fixed schedule, latency from each request's intended send "
             "time, so a stall is charged to every request it delays) at 25, 50 and 75 % of each "
             "workload's own closed-loop peak above, 8 connections, io_uring client; client CPU: the "
             "busiest client thread's share of its core and the client's CPU per request. A run "
             "where a client thread was over 85 % busy measures the client: it is marked "
             "client-bound and shows no figures.")
    L.append("")
    L.append("| workload | load | offered /s | achieved /s | p50 / p99 / p99.9 µs | client thread busy | client µs/request | server core busy |")
    L.append("|---|---:|---:|---:|---:|---:|---:|---:|")
    for row in latency_rows:
        for lv in row["levels"]:
            if lv["client_bound"]:
                figs = "client-bound"
            else:
                figs = f"{flat(lv['p50_us'])} / {flat(lv['p99_us'])} / {flat(lv['p999_us'])}"
            L.append(f"| {row['label']} | {lv['fraction']} % | {fnum(lv['rate'])} | "
                     f"{fnum(lv['achieved'])} | {figs} | {fpct(lv['client_busy_max'])} | "
                     f"{fus(lv['client_cpu_us_per_request'])} | {fpct(lv['server_cpu'])} |")
    L.append("")
    L.append("Highest offered rate with p99 under 1 ms (bisection over the rate in [0, peak], "
             "a few seconds a step; a step passes with p99 < 1 ms, at least 97 % of the rate "
             "achieved, every reply verified and the client not client-bound):")
    L.append("")
    L.append("| workload | closed-loop peak /s (client thread busy) | highest rate, p99 < 1 ms | of the peak | its p99 / p99.9 µs | client thread busy | steps (client-bound) |")
    L.append("|---|---:|---:|---:|---:|---:|---:|")
    for row in latency_rows:
        sr = row["search"]
        if not sr:
            continue
        best, rate, peak = sr.get("best"), sr.get("best_rate"), row["peak"]
        share = "—" if rate is None or not peak else f"{100 * rate / peak:.0f} %"
        at = "—" if not best else f"{flat(best['p99_us'])} / {flat(best['p999_us'])}"
        busy = "—" if not best else fpct(best.get("client_busy_max"))
        found = "none found" if rate is None else fnum(rate)
        L.append(f"| {row['label']} | {fnum(peak)} ({fpct(row['peak_client_busy_max'])}) | "
                 f"{found} | {share} | {at} | {busy} | "
                 f"{len(sr.get('steps', []))} ({sr.get('client_bound_steps', 0)}) |")
if swaps and swaps.get("windows"):
    ev = swaps.get("events", {})
    bound = " (CLIENT-BOUND)" if swaps.get("client_bound") else ""
    L.append("")
    L.append(f"Swaps under load: RPC at {fnum(swaps.get('rate'))}/s (half the batch-1 peak), open "
             f"loop, a consentd on a copy of the index; a rebuild (SIGUSR1: a new table filled and "
             f"swapped in while serving, {ev.get('swap_s', 0):.1f} s to its generation written) and a "
             f"growth ({fnum(ev.get('growth_keys'))} Applies of new keys by `consentctl feed`, "
             f"past the load limit of {fnum(ev.get('capacity_before'))} records: the writer grew the "
             f"table to {fnum(ev.get('capacity_after'))}; {ev.get('growth_s', 0):.1f} s with the feed). "
             f"Latency by each request's intended send time; the busiest client thread "
             f"{fpct(swaps.get('client_busy_max'))}{bound}.")
    L.append("")
    L.append("| window | seconds | requests | p50 µs | p99 µs | p99.9 µs | max µs |")
    L.append("|---|---:|---:|---:|---:|---:|---:|")
    for wdw in swaps["windows"]:
        secs = "—" if wdw.get("seconds") is None else f"{wdw['seconds']:.1f}"
        L.append(f"| {wdw['window']} | {secs} | {fnum(wdw['requests'])} | {flat(wdw['p50_us'])} | "
                 f"{flat(wdw['p99_us'])} | {flat(wdw['p999_us'])} | {flat(wdw['max_us'])} |")
    logs = [l.split("writer: ", 1)[-1] for l in swaps.get("server_log", [])
            if "new table" in l or "wrote generation" in l]
    if logs:
        L.append("")
        L.append("consentd's log: " + "; ".join(f"`{l}`" for l in logs) + ".")
L.append("")
L.append("| memory and loading | consentd | Redis | ratio |")
L.append("|---|---:|---:|---:|")
def fb(v):
    return "—" if v is None else f"{v:.1f} B"
L.append(f"| RSS per record (VmRSS / records) | {fb(mem['consentd_bytes_per_record'])} | "
         f"{fb(mem['redis_bytes_per_record'])} | {fratio(mem['ratio'])} |")
def fmb(v):
    return "—" if v is None else f"{v / 1024:.0f} MiB"
L.append(f"| RSS after load / after the runs | {fmb(mem['consentd_rss_kb_loaded'])} / {fmb(mem['consentd_rss_kb_after'])} | "
         f"{fmb(mem['redis_rss_kb_loaded'])} / {fmb(mem['redis_rss_kb_after'])} | |")
if build:
    sd = f" ± {build['stddev_s']:.2f}" if build.get("stddev_s") else ""
    L.append(f"| index build (`consentctl build`, hyperfine, {build['runs']} run(s)) | "
             f"{build['mean_s']:.2f}{sd} s, {fnum(build['records_per_s'])} records/s | | |")
def fs(k):
    v = facts.get(k)
    try:
        return f"{float(v):.1f} s"
    except (TypeError, ValueError):
        return v or "—"
L.append(f"| start to ready / to loaded | {fs('consentd_ready_seconds')} | "
         f"{fs('redis_load_seconds')} (`redis-cli --pipe`) | |")
L.append(f"| snapshot generation (`consentctl gen`) | {fs('gen_seconds')} | | |")
try:
    bs = float(facts.get("bootstrap_ready_seconds"))
    L.append(f"| bootstrap from a peer (`--bootstrap-from`, start to ready) | {bs:.2f} s, "
             f"{fnum(n / bs if bs > 0 else 0)} records/s | | |")
except (TypeError, ValueError):
    L.append("| bootstrap from a peer (`--bootstrap-from`, start to ready) | — | | |")
try:
    warm = json.load(open(f"{out}/warm.json"))
except Exception:
    warm = None
if warm and warm.get("steady_checks_per_s"):
    cache = "page cache dropped" if warm["cold_page_cache"] else "page cache kept"
    wa = "—" if warm.get("warm_s") is None else f"{warm['warm_s']:.1f} s"
    L.append(f"| start to warm ({cache}): ready / first load / 90 % of steady RPC batch {100} | "
             f"{warm['ready_s']:.1f} s / {warm['first_load_s']:.1f} s / {wa}; first window "
             f"{fnum(warm['first_window_checks_per_s'])}/s, steady {fnum(warm['steady_checks_per_s'])}/s | | |")
if gbench:
    L.append("")
    L.append("Google Benchmark (in-process, core 1):")
    L.append("")
    L.append("| benchmark | time | items/s |")
    L.append("|---|---:|---:|")
    for g in gbench:
        t = g["real_time"]
        L.append(f"| {g['binary']}: {g['name']} | "
                 f"{'—' if t is None else '%.1f %s' % (t, g['time_unit'])} | "
                 f"{fnum(g['items_per_second'])} |")
if wrong_runs or failed_runs:
    L.append("")
    for s in wrong_runs:
        L.append(f"**WRONG ANSWERS** in {s[0]} run {s[1]} (see {out}).")
    for s in failed_runs:
        L.append(f"Run {s[0]} #{s[1]} failed (exit {s[2]}; see {out}).")
md = "\n".join(L) + "\n"

result = {
    "stamp": stamp, "facts": facts, "throughput": rows, "latency": latency_rows,
    "swaps": swaps,
    "tls": tls_row, "grpc": grpc_rows,
    "memory": mem, "index_build": build, "google_benchmark": gbench,
    "redis_benchmark": RB, "workloads": {k: v for k, v in S.items() if v},
    "start_to_warm": {k: v for k, v in (warm or {}).items() if k != "windows"},
    "wrong_runs": wrong_runs, "failed_runs": failed_runs,
    "raw_dir": os.path.relpath(out),
}
tag = f"{stamp}-n{n}" + ("-quick" if facts.get("quick") == "1" else "")
for name in ("latest", tag):
    with open(f"{resdir}/{name}.md", "w") as f:
        f.write(md)
    with open(f"{resdir}/{name}.json", "w") as f:
        json.dump(result, f, indent=1, default=str)
        f.write("\n")

if os.path.exists("README.md"):
    text = open("README.md").read()
    start, end = "<!-- bench:start -->", "<!-- bench:end -->"
    i, j = text.find(start), text.find(end)
    if i >= 0 and j > i:
        text = text[:i + len(start)] + "\n" + md + text[j:]
        with open("README.md", "w") as f:
            f.write(text)
        print("bench: README.md table replaced")
print()
print(md)
EOF

echo "bench: raw results in $out; bench/results/latest.md"
if [ $wrong -ne 0 ]; then
  echo "bench: the load generator saw WRONG ANSWERS (see above)"
  exit 1
fi
exit 0
