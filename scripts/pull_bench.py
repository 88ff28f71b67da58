#!/usr/bin/python3
"""make bench-pull: consentctl pull's figures against tests/iys_standin.py
(the local stand-in of İYS's API) with a real consentd behind it.

  1. throughput: 20 brands x 10k changes (HS and IYS sources), one
     `pull --once` into a fresh data directory, RUNS times: records applied
     per second (wall time of the whole process: token, 40 origins' Stats,
     every page fetched, converted and made durable, the heartbeat);
  2. lag: `pull` polling every --interval, a change appended at the
     stand-in, the time until consentd answers it over the RPC (polled
     every 5 ms), SAMPLES times: p50, p90, max.

Asserts nothing about speed; exits non-zero only if an answer is wrong.
The rate limit is lifted (--rate 1000000): with İYS's documented 50/min a
pass of 40 origins takes 48 s of requests, and İYS itself publishes a
change an hour after it happened, which dwarfs both figures.
Usage: scripts/pull_bench.py BUILD [RUNS] [SAMPLES] [INTERVAL_S]
"""

import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "tests", "e2e"))
import helpers  # noqa: E402


def main():
    build = os.path.abspath(sys.argv[1] if len(sys.argv) > 1 else "build")
    runs = int(sys.argv[2]) if len(sys.argv) > 2 else 3
    samples = int(sys.argv[3]) if len(sys.argv) > 3 else 20
    interval = sys.argv[4] if len(sys.argv) > 4 else "1"
    os.environ["CONSENTD_BUILD"] = build
    tmp = tempfile.mkdtemp(prefix="pull-bench-")
    procs = []
    try:
        pb = helpers.load_pb(tmp)
        snap = os.path.join(tmp, "snap.bin")
        helpers.run([helpers.binary("consentctl"), "gen", "--records", "1000",
                     "--seed", "1", "--out", snap])
        cred = os.path.join(tmp, "cred")
        with open(cred, "w") as f:
            f.write("username api-user\npassword api-pass\n")
        brands = list(range(990001, 990021))
        si = subprocess.Popen(
            ["/usr/bin/python3", os.path.join(ROOT, "tests", "iys_standin.py"),
             "--brands", ",".join(map(str, brands)), "--changes", "10000"],
            stdout=subprocess.PIPE)
        procs.append(si)
        port = int(si.stdout.readline().split()[1])
        url = "http://127.0.0.1:%d" % port

        def server(i):
            d = os.path.join(tmp, "data%d" % i)
            helpers.run([helpers.binary("consentctl"), "build", "--snapshot",
                         snap, "--out", d])
            s = helpers.Server(d, os.path.join(tmp, "consentd%d.log" % i)).start()
            procs.append(s)
            return s

        def pull(s, extra):
            return [helpers.binary("consentctl"), "pull", "--iys", url,
                    "--iys-code", "600000", "--brand", ",".join(map(str, brands)),
                    "--credentials", cred, "--consentd", "127.0.0.1:%d" % s.rpc,
                    "--rate", "1000000"] + extra

        rates = []
        for i in range(runs):
            s = server(i)
            t0 = time.monotonic()
            p = subprocess.run(pull(s, ["--once"]), capture_output=True)
            dt = time.monotonic() - t0
            assert p.returncode == 0, p.stderr.decode()[-2000:]
            with helpers.Rpc(pb, s.rpc) as rpc:
                applied = rpc.stats().applied_sequence
            assert applied == 200000, "applied %d of 200000" % applied
            rates.append(200000 / dt)
            s.stop()
        print("pull throughput, 20 brands x 10k changes, --limit 999: "
              "%.0f records/s (median of %d; runs %s)" % (
                  statistics.median(rates), runs,
                  ", ".join("%.0f" % r for r in rates)))

        s = server(runs)
        p = subprocess.Popen(pull(s, ["--interval", interval]),
                             stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        procs.append(p)
        with helpers.Rpc(pb, s.rpc) as rpc:
            deadline = time.monotonic() + 120
            while rpc.stats().applied_sequence < 200000:
                assert time.monotonic() < deadline, "initial pull too slow"
                time.sleep(0.05)
            lags = []
            for i in range(samples):
                b = brands[i % len(brands)]
                req = urllib.request.Request(
                    url + "/_standin/faults", method="POST",
                    data=json.dumps({"append": {"brand": b, "count": 1}}).encode())
                t0 = time.monotonic()
                urllib.request.urlopen(req, timeout=10).read()
                with urllib.request.urlopen(
                        url + "/_standin/ledger?brand=%d" % b, timeout=30) as r:
                    rec = json.loads(r.read())[-1]
                want = pb.Status.Value(rec["status"])
                while True:
                    v = rpc.check_one(rec["recipient"], b, pb.Channel.Value("MESAJ"))
                    if v.status == want and v.consent_date > 0 and \
                            time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(
                                v.consent_date + 3 * 3600)) == rec["consentDate"]:
                        break
                    assert time.monotonic() - t0 < 60, "change not applied in 60 s"
                    time.sleep(0.005)
                lags.append(time.monotonic() - t0)
        lags.sort()
        print("lag from a change at the stand-in to consentd answering it, "
              "--interval %s s, 20 brands: p50 %.3f s, p90 %.3f s, max %.3f s "
              "(%d samples)" % (interval, statistics.median(lags),
                                lags[int(0.9 * (len(lags) - 1))], lags[-1],
                                len(lags)))
    finally:
        for pr in procs:
            if isinstance(pr, helpers.Server):
                pr.stop()
            elif pr.poll() is None:
                pr.kill()
                pr.wait(10)
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
