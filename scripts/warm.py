#!/usr/bin/python3
"""Start-to-warm: how long after start consentd answers at full speed.

    scripts/warm.py --build BUILD --data DIR --records N --seed S \
        --ports RPC,RESP,HTTP --server-cpu 0 --client-cpu 1 --json OUT

Drops the page cache first when it may (root), so the index is read from
the disk as after a reboot; starts consentd (--workers 1, pinned to
--server-cpu) on DIR; times start to /readyz; then starts the load
generator (RPC, batch 100, pinned to --client-cpu) at once and samples
consentd's own consentd_checks_total on /metrics every 0.25 s, so the rate
seen is the server's whatever the client's own start-up costs. It also
reads the server's resident and huge-page memory the moment /readyz turns
true, against the table's size: ready means resident. Steady is
the median rate of the second half of the windows; warm is the first window
from which every later window but noise reaches 90 % of steady (the first
window at 90 % that is followed by no window under 70 %).

Prints one summary line and writes the windows and the figures as JSON. It
asserts nothing about speed (bench/README.md); it exits non-zero only when
consentd did not start or the load generator saw a wrong answer.
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
import urllib.request


def metric_total(port, name):
    with urllib.request.urlopen("http://127.0.0.1:%d/metrics" % port, timeout=5) as r:
        text = r.read().decode()
    total = 0.0
    for line in text.splitlines():
        if line.startswith(name) and (len(line) == len(name) or line[len(name)] in " {"):
            total += float(line.rsplit(" ", 1)[1])
    return total


def ready(port):
    try:
        with urllib.request.urlopen("http://127.0.0.1:%d/readyz" % port, timeout=1) as r:
            return r.status == 200
    except OSError:
        return False


def rollup(pid):
    """Resident and huge-page kB of the server (taskset execs it, so the
    pid is consentd's), read the moment /readyz turned 200."""
    out = {}
    try:
        with open("/proc/%d/smaps_rollup" % pid) as f:
            for line in f:
                k, _, v = line.partition(":")
                if k in ("Rss", "AnonHugePages"):
                    out[k] = int(v.split()[0])
    except OSError:
        pass
    return out


def drop_caches():
    try:
        os.sync()
        with open("/proc/sys/vm/drop_caches", "w") as f:
            f.write("3\n")
        return True
    except OSError:
        return False


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--build", required=True)
    ap.add_argument("--data", required=True)
    ap.add_argument("--records", type=int, required=True)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--ports", required=True, help="RPC,RESP,HTTP")
    ap.add_argument("--server-cpu", default="0")
    ap.add_argument("--client-cpu", default="1")
    ap.add_argument("--duration", type=float, default=12.0)
    ap.add_argument("--json", required=True)
    a = ap.parse_args()
    rpc, resp, http = (int(p) for p in a.ports.split(","))

    cold = drop_caches()
    log = open(a.json + ".consentd.log", "wb")
    t0 = time.monotonic()
    srv = subprocess.Popen(
        ["taskset", "-c", a.server_cpu, os.path.join(a.build, "consentd"),
         "--data-dir", a.data, "--rpc", "127.0.0.1:%d" % rpc,
         "--resp", "127.0.0.1:%d" % resp, "--http", "127.0.0.1:%d" % http,
         "--grpc", "127.0.0.1:0",
         "--workers", "1"], stdout=log, stderr=subprocess.STDOUT)
    try:
        while not ready(http):
            if srv.poll() is not None or time.monotonic() - t0 > 600:
                print("warm: consentd did not become ready (see %s)" % log.name)
                return 2
            time.sleep(0.02)
        ready_s = time.monotonic() - t0
        resident = rollup(srv.pid)
        lg = subprocess.Popen(
            ["taskset", "-c", a.client_cpu, os.path.join(a.build, "loadgen"),
             "--proto", "rpc", "--port", str(rpc), "--records", str(a.records),
             "--seed", str(a.seed), "--batch", "100", "--pipeline", "2",
             "--connections", "8", "--warmup", "0", "--duration", str(a.duration),
             "--quiet", "--json", a.json + ".loadgen.json"])
        windows = []
        prev_n, prev_t = metric_total(http, "consentd_checks_total"), time.monotonic()
        while lg.poll() is None:
            time.sleep(0.25)
            n, t = metric_total(http, "consentd_checks_total"), time.monotonic()
            windows.append({"t_s": round(t - t0, 3), "checks_per_s": (n - prev_n) / (t - prev_t)})
            prev_n, prev_t = n, t
        lg_rc = lg.returncode
        table_bytes = metric_total(http, "consentd_index_bytes")
    finally:
        srv.terminate()
        try:
            srv.wait(timeout=30)
        except subprocess.TimeoutExpired:
            srv.kill()

    # The load generator's own start (key pools) shows as windows at 0.
    live = [w for w in windows if w["checks_per_s"] > 0]
    res = {"records": a.records, "cold_page_cache": cold, "ready_s": round(ready_s, 3),
           "rss_kb_at_ready": resident.get("Rss"),
           "huge_kb_at_ready": resident.get("AnonHugePages"),
           "index_bytes": int(table_bytes),
           "windows": windows}
    if len(live) >= 4:
        steady = statistics.median(w["checks_per_s"] for w in live[len(live) // 2:])
        warm_at = None
        for i, w in enumerate(live):
            if w["checks_per_s"] >= 0.9 * steady and \
                    all(x["checks_per_s"] >= 0.7 * steady for x in live[i:-1]):
                warm_at = w["t_s"]
                break
        res.update(steady_checks_per_s=round(steady),
                   first_window_checks_per_s=round(live[0]["checks_per_s"]),
                   first_load_s=live[0]["t_s"], warm_s=warm_at)
    with open(a.json, "w") as f:
        json.dump(res, f, indent=1)
    print("warm: %d records, page cache %s: ready %.2f s, then resident %s MiB "
          "(%s MiB in huge pages) for a %d MiB table; first load at %s s, "
          "first window %s/s, steady %s/s, warm (90 %% of steady) at %s s" % (
              a.records, "dropped" if cold else "kept", ready_s,
              (res["rss_kb_at_ready"] or 0) // 1024, (res["huge_kb_at_ready"] or 0) // 1024,
              res["index_bytes"] // (1 << 20), res.get("first_load_s"),
              res.get("first_window_checks_per_s"), res.get("steady_checks_per_s"),
              res.get("warm_s")))
    return 1 if lg_rc == 1 else 0


if __name__ == "__main__":
    sys.exit(main())
