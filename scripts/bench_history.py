#!/usr/bin/env python3
"""make bench-history: what the evidence store (DESIGN 10) costs, measured
with real parts on this machine, in one run, same data, same feed:

- start-up from a snapshot of N records (consentd --snapshot into an empty
  data directory, start to /readyz), --history on (the snapshot ingested
  into history at its watermark) against --history off;
- check throughput with and without history (loadgen, RPC batch 1,
  8 connections x 32 pipelined, its every reply verified), the ratio;
- Apply throughput with history on against off: consentctl feed of the same
  change files (N changes in all, from consentctl gen --changes, one file per
  run) to both servers, the order alternating run by run;
- disk bytes per record: du of DIR/history after the snapshot (per snapshot
  record) and after the changes (per change);
- History queries and as-of checks (one per request, 4 connections x 4
  pipelined) per second and p99, warm, and cold (right after
  `echo 3 > /proc/sys/vm/drop_caches`: the history's pages are read from
  disk again; the index is in anonymous memory and stays).

Each server runs with --workers 1 pinned to core 0 (taskset); every client
(loadgen, consentctl feed, the query client: this script run again with
--query-load) is pinned to core 1. Figures are medians of BENCH_RUNS runs.
N = 10 000 000 by default (make bench-history N=...); QUICK=1: N = 100 000,
one run, 2 s per query run. Usage: scripts/bench_history.py BUILD_DIR
[RESULTS_DIR]. Results go to RESULTS_DIR/DATE-history.{json,md}; nothing is
asserted but that every answer the clients saw was right."""

import json
import os
import random
import selectors
import shutil
import socket
import statistics
import struct
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "tests", "e2e"))
from rpc_client import read_varint  # noqa: E402 (scripts/, beside this file)

QUICK = os.environ.get("QUICK") == "1"
SERVER_CPU = os.environ.get("BENCH_SERVER_CPU", "0")
CLIENT_CPU = os.environ.get("BENCH_CLIENT_CPU", "1")


T0 = time.monotonic()


def log(msg):
    print("bench-history: [%6.1f s] %s" % (time.monotonic() - T0, msg), flush=True)


def sample_keys(pb, path, want, seed):
    """About `want` keys spread over the whole snapshot stream: every k-th
    batch frame is decoded, the others skipped by their length."""
    size = os.path.getsize(path)
    every = max(1, size // (64 << 10) // max(1, want // 50))
    rng = random.Random(seed)
    keys = []
    with open(path, "rb") as f:
        i = 0
        while True:
            n = read_varint(f)
            if n is None:
                break
            if i % every != 0:
                f.seek(n, 1)
                i += 1
                continue
            fr = pb.StreamFrame.FromString(f.read(n))
            i += 1
            if fr.WhichOneof("frame") == "batch":
                cs = list(fr.batch.consents)
                for c in rng.sample(cs, min(len(cs), 50)):
                    keys.append((c.recipient, c.brand_code, c.channel,
                                 c.recipient_type))
    rng.shuffle(keys)
    return keys[:want]


# --- the query client (run pinned, as a child) ---------------------------------

def query_load(args):
    """--query-load PORT KIND KEYS_JSON SECONDS FIRST_SEQ LAST_SEQ: pipelined
    one-query requests over 4 connections (4 in flight each) for SECONDS,
    each reply checked; prints JSON {requests, seconds, qps, p50_us,
    p99_us, wrong}."""
    import helpers
    port, kind, keys_path, secs, first, last = (int(args[0]), args[1], args[2],
                                                float(args[3]), int(args[4]),
                                                int(args[5]))
    tmp = tempfile.mkdtemp(prefix="bench-history-client-")
    pb = helpers.load_pb(tmp)
    with open(keys_path) as f:
        keys = [tuple(k) for k in json.load(f)]
    rng = random.Random(7)
    # Requests prepared before the clock starts: (frame bytes, key, point).
    prepared = []
    for i in range(min(len(keys) * 2, 200000)):
        k = keys[rng.randrange(len(keys))]
        req = pb.Request(id=i + 1)
        point = 0
        if kind == "history":
            req.history.recipient, req.history.brand_code = k[0], k[1]
            req.history.channel, req.history.recipient_type = k[2], k[3]
        else:
            c = req.check.checks.add(recipient=k[0], brand_code=k[1],
                                     channel=k[2], recipient_type=k[3])
            if kind == "asof-seq":
                point = c.as_of_sequence = rng.randint(first, last)
            else:
                point = c.as_of_time = rng.randint(1430427600, 1767214800 + 86400 * 30)
        b = req.SerializeToString()
        prepared.append((struct.pack(">I", len(b)) + b, k, point))
    # Few enough in flight that the latency is the server's more than this
    # client's queue (one Python thread serves all of them).
    conns, window = 4, 4
    sel = selectors.DefaultSelector()
    state = []
    for _ in range(conns):
        s = socket.create_connection(("127.0.0.1", port))
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        s.setblocking(False)
        st = {"sock": s, "buf": bytearray(), "inflight": [], "out": bytearray()}
        sel.register(s, selectors.EVENT_READ, st)
        state.append(st)
    lat, wrong, nxt = [], 0, 0
    t0 = time.monotonic()
    end = t0 + secs
    sending = True
    while True:
        now = time.monotonic()
        if now >= end:
            sending = False
        if sending:
            for st in state:
                while len(st["inflight"]) < window:
                    fr, k, point = prepared[nxt % len(prepared)]
                    nxt += 1
                    st["out"] += fr
                    st["inflight"].append((time.monotonic(), k, point))
                if st["out"]:
                    try:
                        n = st["sock"].send(st["out"])
                        del st["out"][:n]
                    except BlockingIOError:
                        pass
        if not sending and all(not st["inflight"] for st in state):
            break
        for key, _ in sel.select(timeout=0.05):
            st = key.data
            try:
                data = st["sock"].recv(1 << 20)
            except BlockingIOError:
                continue
            if not data:
                raise SystemExit("the server closed a connection")
            st["buf"] += data
            buf = st["buf"]
            while len(buf) >= 4:
                n = struct.unpack(">I", buf[:4])[0]
                if len(buf) < 4 + n:
                    break
                r = pb.Response.FromString(bytes(buf[4:4 + n]))
                del buf[:4 + n]
                sent, k, point = st["inflight"].pop(0)
                if time.monotonic() <= end:
                    lat.append(time.monotonic() - sent)
                if kind == "history":
                    ok = r.WhichOneof("body") == "history" and all(
                        (e.consent.recipient, e.consent.brand_code, e.consent.channel,
                         e.consent.recipient_type) == k for e in r.history.entries) and \
                        [e.consent.sequence for e in r.history.entries] == \
                        sorted(e.consent.sequence for e in r.history.entries)
                else:
                    v = r.check.verdicts[0] if r.WhichOneof("body") == "check" else None
                    ok = v is not None and v.reason not in (6, 7) and (
                        kind != "asof-seq" or v.sequence <= point) and (
                        kind != "asof-time" or v.consent_date <= point)
                wrong += 0 if ok else 1
        if not sending and time.monotonic() > end + 30:
            raise SystemExit("replies owed 30 s after the end")
    took = min(time.monotonic(), end) - t0
    lat.sort()
    out = {"kind": kind, "requests": len(lat), "seconds": round(took, 3),
           "qps": round(len(lat) / took) if took > 0 else 0,
           "p50_us": round(1e6 * lat[len(lat) // 2]) if lat else None,
           "p99_us": round(1e6 * lat[int(len(lat) * 0.99)]) if lat else None,
           "wrong": wrong}
    shutil.rmtree(tmp, ignore_errors=True)
    print(json.dumps(out))


# --- the bench ------------------------------------------------------------------

def du(path):
    p = subprocess.run(["du", "-sb", path], stdout=subprocess.PIPE, check=True)
    return int(p.stdout.split()[0])


def drop_caches():
    try:
        t = time.monotonic()
        os.sync()
        log("sync took %.1f s" % (time.monotonic() - t))
        with open("/proc/sys/vm/drop_caches", "w") as f:
            f.write("3\n")
        return True
    except OSError as e:
        log("cannot drop the page cache (%s): no cold runs" % e)
        return False


def pinned(cmd):
    return ["taskset", "-c", CLIENT_CPU] + cmd


def main():
    if len(sys.argv) > 1 and sys.argv[1] == "--query-load":
        query_load(sys.argv[2:])
        return
    import helpers
    import test_origins as to

    build = sys.argv[1] if len(sys.argv) > 1 else "build"
    results = sys.argv[2] if len(sys.argv) > 2 else os.path.join(ROOT, "bench", "results")
    os.environ["CONSENTD_BUILD"] = os.path.abspath(build)
    n = int(os.environ.get("N") or (100000 if QUICK else 10000000))
    runs = int(os.environ.get("BENCH_RUNS") or (1 if QUICK else 3))
    qsecs = float(os.environ.get("BENCH_DURATION") or (2 if QUICK else 5))
    seed = int(os.environ.get("BENCH_SEED") or 1)
    tmp = tempfile.mkdtemp(prefix="consentd-bench-history-")
    ctl = helpers.binary("consentctl")
    servers = {}
    out = {"date": time.strftime("%Y-%m-%d-%H%M%S"),
           "commit": subprocess.run(["git", "-C", ROOT, "rev-parse", "--short=12", "HEAD"],
                                    stdout=subprocess.PIPE).stdout.decode().strip(),
           "cpus": os.cpu_count(), "records": n, "changes": n, "runs": runs,
           "quick": QUICK}
    try:
        pb = helpers.load_pb(tmp)
        snap = os.path.join(tmp, "snap.bin")
        log("gen %d records" % n)
        subprocess.run([ctl, "gen", "--records", str(n), "--seed", str(seed),
                        "--out", snap], check=True, stdout=subprocess.DEVNULL)
        per = n // runs
        feeds = []
        for r in range(runs):
            path = os.path.join(tmp, "changes%d.bin" % r)
            k = per if r < runs - 1 else n - per * (runs - 1)
            subprocess.run([ctl, "gen", "--records", str(n), "--seed", str(seed),
                            "--changes", str(k), "--from-sequence", str(r * per),
                            "--out", path], check=True, stdout=subprocess.DEVNULL)
            feeds.append((path, k))

        # Start-up from the snapshot, history on and off.
        out["startup_s"] = {}
        for mode in ("on", "off"):
            d = os.path.join(tmp, "d-" + mode)
            os.makedirs(d)
            s = helpers.Server(d, os.path.join(tmp, "consentd-%s.log" % mode),
                               extra=["--snapshot", snap, "--history", mode],
                               workers=1)
            s.preexec = lambda: (helpers._preexec(),
                                 os.sched_setaffinity(0, {int(SERVER_CPU)}))
            t0 = time.monotonic()
            s.start(timeout=3600)
            out["startup_s"][mode] = round(time.monotonic() - t0, 2)
            servers[mode] = s
            log("history %s: ready in %.1f s" % (mode, out["startup_s"][mode]))
        hist_dir = os.path.join(servers["on"].data_dir, "history")
        # The snapshot went into history before the generation was served
        # (a watermark of 0 is a head at sequence 0: the hash tells).
        st = to.stats_of(pb, servers["on"].rpc, "")
        out["snapshot_in_history"] = len(st.chain_hash) == 32
        if not out["snapshot_in_history"]:
            log("history on: no chain head after the snapshot (its records "
                "are not in the history)")
        snap_bytes = du(hist_dir)
        out["history_bytes_after_snapshot"] = snap_bytes
        out["bytes_per_snapshot_record"] = round(snap_bytes / n, 1)

        # Check throughput, history on vs off, interleaved.
        lg = helpers.binary("loadgen")
        checks = {"on": [], "off": []}
        for r in range(runs):
            for mode in (("on", "off") if r % 2 == 0 else ("off", "on")):
                j = os.path.join(tmp, "lg-%s-%d.json" % (mode, r))
                p = subprocess.run(pinned([
                    lg, "--proto", "rpc", "--port", str(servers[mode].rpc),
                    "--records", str(n), "--seed", str(seed), "--connections", "8",
                    "--pipeline", "32", "--duration", str(qsecs), "--warmup", "1",
                    "--json", j, "--quiet"]), stdout=subprocess.PIPE,
                    stderr=subprocess.STDOUT)
                if p.returncode != 0:
                    raise SystemExit("loadgen on history %s exited %d: %s" % (
                        mode, p.returncode, p.stdout.decode()[-2000:]))
                with open(j) as f:
                    doc = json.load(f)
                qps = round(doc["checks_per_s"])
                checks[mode].append(qps)
                log("checks, history %s, run %d: %s/s" % (mode, r + 1, qps))
        out["checks_per_s"] = {m: statistics.median(v) for m, v in checks.items()}
        out["checks_ratio_on_off"] = round(out["checks_per_s"]["on"] /
                                           out["checks_per_s"]["off"], 3)

        # Apply throughput: the same files to both, the order alternating.
        applies = {"on": [], "off": []}
        for r, (path, k) in enumerate(feeds):
            for mode in (("on", "off") if r % 2 == 0 else ("off", "on")):
                t0 = time.monotonic()
                p = subprocess.run(pinned([ctl, "feed", "--rpc", "127.0.0.1:%d" %
                                           servers[mode].rpc, "--batch", "1000",
                                           "--window", "8", path]),
                                   stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
                took = time.monotonic() - t0
                if p.returncode != 0:
                    raise SystemExit("feed to history %s: %s" % (mode, p.stdout.decode()))
                applies[mode].append(round(k / took))
                log("Apply, history %s, run %d: %d changes in %.1f s, %d/s" % (
                    mode, r + 1, k, took, k / took))
        out["applies_per_s"] = {m: statistics.median(v) for m, v in applies.items()}
        out["applies_ratio_on_off"] = round(out["applies_per_s"]["on"] /
                                            out["applies_per_s"]["off"], 3)
        st = to.stats_of(pb, servers["on"].rpc, "")
        deadline = time.monotonic() + 600
        while st.chain_sequence < st.applied_sequence and time.monotonic() < deadline:
            time.sleep(0.1)
            st = to.stats_of(pb, servers["on"].rpc, "")
        total = du(hist_dir)
        out["history_bytes"] = total
        out["bytes_per_change"] = round((total - snap_bytes) / n, 1)
        out["chain_sequence"] = st.chain_sequence
        first_seq = 1
        last_seq = st.applied_sequence

        # Queries, warm then cold.
        keys = sample_keys(pb, snap, 20000 if QUICK else 100000, seed)
        keys_path = os.path.join(tmp, "keys.json")
        with open(keys_path, "w") as f:
            json.dump(keys, f)
        out["queries"] = []
        me = os.path.abspath(__file__)
        for kind in ("history", "asof-seq", "asof-time"):
            for cache in ("warm", "cold"):
                rows = []
                for r in range(runs):
                    if cache == "cold":
                        if not drop_caches():
                            break
                    else:
                        # Warm: one unmeasured pass first.
                        subprocess.run(pinned([sys.executable, me, "--query-load",
                                               str(servers["on"].rpc), kind, keys_path,
                                               str(qsecs), str(first_seq),
                                               str(last_seq)]),
                                       stdout=subprocess.DEVNULL, check=True)
                    p = subprocess.run(pinned([sys.executable, me, "--query-load",
                                               str(servers["on"].rpc), kind, keys_path,
                                               str(qsecs), str(first_seq), str(last_seq)]),
                                       stdout=subprocess.PIPE, check=True)
                    row = json.loads(p.stdout.decode().strip().splitlines()[-1])
                    if row["wrong"]:
                        raise SystemExit("%s %s: %d wrong answers" % (kind, cache,
                                                                      row["wrong"]))
                    rows.append(row)
                    log("%s %s run %d: %s" % (kind, cache, r + 1, json.dumps(row)))
                if rows:
                    out["queries"].append({
                        "kind": kind, "cache": cache,
                        "qps": statistics.median(x["qps"] for x in rows),
                        "p50_us": statistics.median(x["p50_us"] for x in rows),
                        "p99_us": statistics.median(x["p99_us"] for x in rows)})

        os.makedirs(results, exist_ok=True)
        base = os.path.join(results, "%s-history" % out["date"])
        with open(base + ".json", "w") as f:
            json.dump(out, f, indent=1)
        with open(base + ".md", "w") as f:
            f.write(render(out))
        print(render(out))
        print("written: %s.{json,md}" % base)
    finally:
        for s in servers.values():
            s.stop()
        shutil.rmtree(tmp, ignore_errors=True)


def render(o):
    t = []
    t.append("### Evidence store (DESIGN 10): N = %d records + %d changes%s\n" % (
        o["records"], o["changes"], " (QUICK)" if o["quick"] else ""))
    t.append("%s, commit %s, %d CPUs (server core %s, clients core %s), medians "
             "of %d run%s.\n" % (o["date"], o["commit"], o["cpus"], SERVER_CPU,
                                CLIENT_CPU, o["runs"], "" if o["runs"] == 1 else "s"))
    t.append("| figure | history on | history off | on / off |")
    t.append("|---|---:|---:|---:|")
    t.append("| start-up from the snapshot (s) | %.1f | %.1f | %.2f |" % (
        o["startup_s"]["on"], o["startup_s"]["off"],
        o["startup_s"]["on"] / max(o["startup_s"]["off"], 1e-9)))
    t.append("| checks/s (RPC batch 1, loadgen) | %d | %d | %.3f |" % (
        o["checks_per_s"]["on"], o["checks_per_s"]["off"], o["checks_ratio_on_off"]))
    t.append("| Apply changes/s (consentctl feed, 1000/Apply, 8 in flight) | %d | %d | %.3f |" % (
        o["applies_per_s"]["on"], o["applies_per_s"]["off"], o["applies_ratio_on_off"]))
    t.append("")
    t.append("| disk | bytes |")
    t.append("|---|---:|")
    t.append("| DIR/history after the snapshot%s | %d (%.1f per record) |" % (
        "" if o["snapshot_in_history"] else " (its records not in history)",
        o["history_bytes_after_snapshot"], o["bytes_per_snapshot_record"]))
    t.append("| DIR/history after the changes | %d (%.1f per change) |" % (
        o["history_bytes"], o["bytes_per_change"]))
    t.append("")
    t.append("| query (1 per request, 4 conns x 4 in flight, Python client) | cache | "
             "queries/s | p50 us | p99 us |")
    t.append("|---|---|---:|---:|---:|")
    for q in o["queries"]:
        t.append("| %s | %s | %d | %d | %d |" % (q["kind"], q["cache"], q["qps"],
                                               q["p50_us"], q["p99_us"]))
    return "\n".join(t) + "\n"


if __name__ == "__main__":
    main()
