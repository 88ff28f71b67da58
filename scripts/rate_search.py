#!/usr/bin/python3
"""scripts/rate_search.py: the highest offered rate at which a server's p99
stays under a bound, by bisection over the open-loop rate (make bench).

    rate_search.py --loadgen BUILD/loadgen --cpu 1 --peak R --p99-us 1000 \
        --steps 6 --step-duration 3 --warmup 1 --json OUT -- LOADGEN-ARGS

Each step runs `taskset -c CPU loadgen LOADGEN-ARGS --rate X` for
--step-duration seconds; a step passes when every reply was verified
(exit 0), p99 is under the bound, the achieved rate is at least 97 % of
the offered one and the client was not client-bound (a client thread over
its busy limit: then the latency would be the client's). The search starts
at half of --peak (the measured closed-loop peak) and halves the interval
each step within [0, peak]. It prints each step and writes every step and
the answer (the highest passing rate, or null) to --json. Timing asserts
nothing: the exit code is 1 only if a step saw a wrong answer, 3 if a step
could not run at all, else 0.
"""
import argparse
import json
import os
import subprocess
import sys


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--loadgen", required=True)
    ap.add_argument("--cpu", default="")
    ap.add_argument("--peak", type=float, required=True)
    ap.add_argument("--p99-us", type=float, default=1000.0)
    ap.add_argument("--steps", type=int, default=6)
    ap.add_argument("--step-duration", type=float, default=3.0)
    ap.add_argument("--warmup", type=float, default=1.0)
    ap.add_argument("--json", required=True)
    ap.add_argument("rest", nargs=argparse.REMAINDER)
    a = ap.parse_args()
    rest = a.rest[1:] if a.rest[:1] == ["--"] else a.rest

    lo, hi = 0.0, a.peak
    steps, rc_out = [], 0
    for i in range(a.steps if a.peak > 0 else 0):
        rate = (lo + hi) / 2
        if rate < 1:
            break
        out = f"{a.json}.step{i}.json"
        # BENCH_FIFO=1 (scripts/bench.sh): SCHED_FIFO, as the servers.
        rt = ["chrt", "-f", "10"] if os.environ.get("BENCH_FIFO") == "1" else []
        cmd = rt + ([] if not a.cpu else ["taskset", "-c", a.cpu]) + [
            a.loadgen, *rest, "--rate", str(int(rate)),
            "--duration", str(a.step_duration), "--warmup", str(a.warmup),
            "--json", out, "--quiet", "--label", f"search step {i}"]
        rc = subprocess.run(cmd, timeout=a.step_duration + a.warmup + 300).returncode
        r = {}
        try:
            with open(out) as f:
                r = json.load(f)
            os.unlink(out)
        except (OSError, ValueError):
            pass
        p99 = r.get("latency_us", {}).get("p99")
        achieved = r.get("requests_per_s", 0.0)
        bound = bool(r.get("client_bound"))
        ok = (rc == 0 and p99 is not None and p99 < a.p99_us
              and achieved >= 0.97 * rate and not bound)
        step = {"rate": int(rate), "achieved": achieved, "p99_us": p99,
                "p999_us": r.get("latency_us", {}).get("p999"),
                "client_busy_max": r.get("client_busy_max"),
                "client_bound": bound, "client_cpu_us_per_request":
                r.get("client_cpu_us_per_request"),
                "server_cpu": r.get("server_cpu"), "exit": rc, "pass": ok}
        steps.append(step)
        print(f"rate search step {i}: offered {int(rate)}/s, achieved "
              f"{achieved:.0f}/s, p99 {p99} us, client busiest thread "
              f"{100 * (r.get('client_busy_max') or 0):.0f} %"
              f"{' (CLIENT-BOUND)' if bound else ''}: "
              f"{'pass' if ok else 'fail'}", flush=True)
        if rc == 1:
            rc_out = 1
        elif rc not in (0, 3) and rc_out == 0:
            rc_out = 3
        if ok:
            lo = rate
        else:
            hi = rate
    passing = [s for s in steps if s["pass"]]
    best = max(passing, key=lambda s: s["rate"]) if passing else None
    result = {
        "p99_bound_us": a.p99_us, "peak": a.peak, "steps": steps,
        "best_rate": best["rate"] if best else None,
        "best": best,
        # A failed step that was client-bound says the client, not the
        # server, may have ended the search.
        "client_bound_steps": sum(1 for s in steps if s["client_bound"]),
    }
    with open(a.json, "w") as f:
        json.dump(result, f, indent=1)
        f.write("\n")
    print(f"rate search: highest rate with p99 < {a.p99_us:.0f} us: "
          f"{best['rate'] if best else 'none'}/s", flush=True)
    return rc_out


if __name__ == "__main__":
    sys.exit(main())
