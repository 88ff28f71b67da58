#!/usr/bin/python3
"""scripts/bench_swaps.py: client-seen latency while consentd swaps its
table under open-loop load (make bench; bench/README.md "Swaps under load").

    bench_swaps.py --build BUILD --records N --seed S --rpc P --http P \
        --server-pid PID --server-log FILE --rate R --cpu C --quiet-s Q \
        --out DIR --json OUT

With `loadgen --proto rpc --rate R --phases` running on core C (every
reply verified), it opens latency windows by SIGUSR1 to loadgen:

  0 quiet    Q seconds of the load alone;
  1 swap     SIGUSR1 to consentd (rebuild: a fresh table filled from the
             served one, swapped in by RCU, written as a generation), until
             consentd_generations_built_total has grown;
  2 quiet    Q seconds;
  3 growth   `consentctl feed` (on core C too) of a change stream of new
             keys (`consentctl gen --new-keys K`, made before the load
             starts), K enough to pass the table's load limit, so the
             writer grows it 1.5x; until the feed has ended and the growth's
             generation is written;
  4 after    Q seconds.

Then SIGUSR2 ends the load. The JSON has each window's length, requests,
p50/p99/p99.9/max and the server's own log lines for the swap and the
growth. Figures are printed, nothing is asserted; the exit code is 1 if
loadgen saw a wrong answer, 3 if a step could not be run.
"""
import argparse
import json
import os
import re
import signal
import subprocess
import sys
import time
import urllib.request


def metrics(http):
    with urllib.request.urlopen(f"http://127.0.0.1:{http}/metrics", timeout=5) as r:
        text = r.read().decode()
    m = {}
    for line in text.splitlines():
        if line.startswith("consentd_") and " " in line and "{" not in line:
            k, v = line.split(" ", 1)
            try:
                m[k] = float(v)
            except ValueError:
                pass
    return m


def wait_for(cond, deadline_s, step=0.05):
    end = time.monotonic() + deadline_s
    while time.monotonic() < end:
        if cond():
            return True
        time.sleep(step)
    return False


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--build", required=True)
    ap.add_argument("--records", type=int, required=True)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--rpc", required=True)
    ap.add_argument("--http", required=True)
    ap.add_argument("--server-pid", type=int, required=True)
    ap.add_argument("--server-log", required=True)
    ap.add_argument("--rate", type=float, required=True)
    ap.add_argument("--cpu", default="")
    ap.add_argument("--quiet-s", type=float, default=3.0)
    ap.add_argument("--warmup", type=float, default=1.0)
    ap.add_argument("--event-timeout", type=float, default=300.0)
    ap.add_argument("--out", required=True)
    ap.add_argument("--json", required=True)
    a = ap.parse_args()
    pin = ["taskset", "-c", a.cpu] if a.cpu else []
    if os.environ.get("BENCH_FIFO") == "1":  # scripts/bench.sh: as the servers
        pin = ["chrt", "-f", "10"] + pin
    result = {"rate": a.rate, "records": a.records, "windows": [], "events": {}}

    m0 = metrics(a.http)
    records, capacity = int(m0["consentd_records"]), int(m0["consentd_index_capacity"])
    # Past the load limit with some margin, whichever table serves when
    # the feed starts: the rebuild before it sizes one for the records
    # + 10 % + 4096 (GENERATION_GROW_MIN), or keeps a larger one. Keys past
    # the limit just go into the grown table (1.5x: no second growth).
    after_rebuild = max(capacity, records + records // 10 + 4096)
    k = after_rebuild * 105 // 100 - records + 1000
    keys = os.path.join(a.out, "new-keys.bin")
    subprocess.run([f"{a.build}/consentctl", "gen", "--records", str(a.records),
                    "--seed", str(a.seed), "--new-keys", str(k), "--out", keys],
                   check=True)
    result["events"]["growth_keys"] = k
    result["events"]["capacity_before"] = capacity

    lg_json = os.path.join(a.out, "swaps.loadgen.json")
    lg = subprocess.Popen(pin + [
        f"{a.build}/loadgen", "--proto", "rpc", "--port", a.rpc,
        "--records", str(a.records), "--seed", str(a.seed), "--threads", "1",
        "--connections", "8", "--rate", str(int(a.rate)), "--phases",
        "--warmup", str(a.warmup), "--duration", str(a.event_timeout * 2 + 60),
        "--server-pid", str(a.server_pid), "--label", "swaps", "--json", lg_json])
    marks = []  # (name, monotonic time)
    log_at = os.path.getsize(a.server_log) if os.path.exists(a.server_log) else 0

    def mark(name):
        lg.send_signal(signal.SIGUSR1)
        marks.append((name, time.monotonic()))

    rc = 0
    try:
        # loadgen prepares its requests (about a second per million)
        # before the warm-up; the quiet window starts after both.
        time.sleep(a.warmup + a.quiet_s + 2.0)
        if lg.poll() is not None:
            raise RuntimeError(f"loadgen ended early (exit {lg.returncode})")

        built = metrics(a.http)["consentd_generations_built_total"]
        mark("swap")
        t0 = time.monotonic()
        os.kill(a.server_pid, signal.SIGUSR1)
        ok = wait_for(lambda: metrics(a.http)["consentd_generations_built_total"] > built,
                      a.event_timeout)
        result["events"]["swap_s"] = time.monotonic() - t0
        result["events"]["swap_done"] = ok
        mark("quiet")
        time.sleep(a.quiet_s)

        m1 = metrics(a.http)
        swaps, built = m1["consentd_generation_swaps_total"], m1["consentd_generations_built_total"]
        if int(m1["consentd_index_capacity"]) - int(m1["consentd_records"]) >= k:
            raise RuntimeError("the rebuilt table holds the new keys without growing: "
                               "no growth window")
        mark("growth")
        t0 = time.monotonic()
        feed = subprocess.run(pin + [f"{a.build}/consentctl", "feed", "--rpc",
                                     f"127.0.0.1:{a.rpc}", "--origin",
                                     f"bench-swaps-{os.getpid()}-{int(time.time())}", keys],
                              capture_output=True, text=True, timeout=a.event_timeout)
        result["events"]["feed_s"] = time.monotonic() - t0
        result["events"]["feed_exit"] = feed.returncode
        if feed.returncode != 0:
            print(feed.stdout + feed.stderr)
        ok = wait_for(lambda: (lambda m: m["consentd_generation_swaps_total"] > swaps and
                               m["consentd_generations_built_total"] > built)(metrics(a.http)),
                      min(a.event_timeout, 120.0))
        result["events"]["growth_s"] = time.monotonic() - t0
        result["events"]["growth_done"] = ok
        m2 = metrics(a.http)
        result["events"]["capacity_after"] = int(m2["consentd_index_capacity"])
        result["events"]["records_after"] = int(m2["consentd_records"])
        mark("after")
        time.sleep(a.quiet_s)
    except Exception as e:  # the load is stopped and what ran is reported
        print(f"bench_swaps: {e}")
        rc = 3
    if lg.poll() is None:
        lg.send_signal(signal.SIGUSR2)
    try:
        lg_rc = lg.wait(timeout=120)
    except subprocess.TimeoutExpired:
        lg.kill()
        lg_rc = lg.wait()
    if lg_rc == 1:
        rc = 1
    elif lg_rc != 0 and rc == 0:
        rc = 3
    result["loadgen_exit"] = lg_rc

    try:
        with open(a.server_log) as f:
            f.seek(log_at)
            result["server_log"] = [l.strip() for l in f
                                    if re.search(r"rebuild|load limit|growth|generation", l)]
    except OSError:
        result["server_log"] = []
    try:
        with open(lg_json) as f:
            r = json.load(f)
    except (OSError, ValueError):
        r = {}
    for key in ("client_busy_max", "client_bound", "client_cpu_us_per_request",
                "server_cpu", "requests_per_s", "wrong_checks", "lost"):
        result[key] = r.get(key)
    names = ["quiet"] + [n for n, _ in marks]
    phases = r.get("phases", [])
    for i, p in enumerate(phases):
        end = phases[i + 1]["start_s"] if i + 1 < len(phases) else None
        result["windows"].append({
            "window": names[i] if i < len(names) else f"phase {i}",
            "seconds": None if end is None else end - p["start_s"],
            "requests": p["requests"], "p50_us": p["p50_us"], "p99_us": p["p99_us"],
            "p999_us": p["p999_us"], "max_us": p["max_us"]})
    with open(a.json, "w") as f:
        json.dump(result, f, indent=1)
        f.write("\n")
    for w in result["windows"]:
        print(f"swaps: {w['window']:>7}: {w['requests']} requests, p50 {w['p50_us']:.0f} "
              f"p99 {w['p99_us']:.0f} p99.9 {w['p999_us']:.0f} max {w['max_us']:.0f} us")
    for l in result["server_log"]:
        print(f"swaps: server: {l}")
    return rc


if __name__ == "__main__":
    sys.exit(main())
