#!/usr/bin/env python3
"""make bench-fleet: replication figures of the fleet (DESIGN 9) on this
machine, with real parts: a 3-node NATS JetStream cluster on loopback
(tests/e2e/natscluster.py), two consentd replicas (--nats) and one local
consentd (no --nats), on one snapshot.

- publish -> visible: consentctl publish --rate R (async PubAcks) of a change
  stream at 10k and 100k changes/s; each replica's own histogram of a
  message's stream timestamp to its being applied there
  (consentd_replication_visible_latency_seconds, read before and after)
  gives p50/p99 (bucket bounds, interpolated) and the largest bucket;
- Apply throughput: consentctl feed of the same change stream to the local
  server and to a replica (each Apply published, PubAck'ed and applied
  there before its reply), in the same run.

Usage: scripts/bench_fleet.py BUILD_DIR [RESULTS_DIR]. Figures are printed
and written to RESULTS_DIR/DATE-fleet.{json,md}; nothing is asserted."""

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "tests", "e2e"))


def varint(v):
    out = bytearray()
    while True:
        b = v & 0x7F
        v >>= 7
        out.append(b | (0x80 if v else 0))
        if not v:
            return bytes(out)


def write_changes(pb, path, n, seed):
    """A change stream of n new phone keys (one brand), sequences 1..n."""
    with open(path, "wb") as f:
        h = pb.StreamFrame()
        h.header.format_version = 1
        h.header.changes = True
        h.header.sequence = 0
        b = h.SerializeToString()
        f.write(varint(len(b)) + b)
        c = pb.Consent(channel=2, recipient_type=1, brand_code=600000 + seed,
                       status=2, source=6)
        batch = []
        for i in range(1, n + 1):
            c.recipient = "+9054%d%07d" % (seed % 10, i)
            c.consent_date = 1767214800 + i
            c.creation_date = 1767214800 + i
            c.sequence = i
            batch.append(c.SerializeToString())
            if len(batch) == 1000 or i == n:
                body = b"".join(b"\x0a" + varint(len(x)) + x for x in batch)
                fr = b"\x12" + varint(len(body)) + body
                f.write(varint(len(fr)) + fr)
                batch = []


def hist(server, name):
    m = server.metrics()
    out = []
    for labels, v in m.samples.get(name + "_bucket", []):
        le = labels["le"]
        out.append((float("inf") if le == "+Inf" else float(le), v))
    return sorted(out)


def quantiles(before, after):
    """p50, p99 and the largest non-empty bucket's bound of the
    difference of two cumulative histograms (seconds)."""
    d = [(le, a - b) for (le, a), (_, b) in zip(after, before)]
    total = d[-1][1] if d else 0
    if total == 0:
        return None
    res = {}
    for q in (0.5, 0.99):
        want, prev_le, prev_c = q * total, 0.0, 0
        for le, c in d:
            if c >= want:
                if le == float("inf"):
                    res["p%g" % (q * 100)] = prev_le
                else:
                    frac = (want - prev_c) / max(c - prev_c, 1)
                    res["p%g" % (q * 100)] = prev_le + (le - prev_le) * frac
                break
            prev_le, prev_c = le, c
    mx, prev = 0.0, 0
    for le, c in d:
        if c > prev:
            mx = le
        prev = c
    res["max_bucket"] = mx
    res["messages"] = total
    return res


def main():
    import helpers
    import natscluster
    import test_origins as to

    build = sys.argv[1] if len(sys.argv) > 1 else "build"
    results = sys.argv[2] if len(sys.argv) > 2 else os.path.join(ROOT, "bench", "results")
    os.environ["CONSENTD_BUILD"] = os.path.abspath(build)
    tmp = tempfile.mkdtemp(prefix="consentd-bench-fleet-")
    ctl = helpers.binary("consentctl")
    servers, cluster = [], None
    try:
        pb = helpers.load_pb(tmp)
        snap = os.path.join(tmp, "snap.bin")
        subprocess.run([ctl, "gen", "--records", "100000", "--seed", "1",
                        "--out", snap], check=True, stdout=subprocess.DEVNULL)
        cluster = natscluster.Cluster(tmp).start()
        dirs = []
        for i in range(3):
            d = os.path.join(tmp, "d%d" % i)
            subprocess.run([ctl, "build", "--snapshot", snap, "--out", d],
                           check=True, stdout=subprocess.DEVNULL,
                           stderr=subprocess.DEVNULL)
            dirs.append(d)
        for i in range(2):
            servers.append(helpers.Server(dirs[i], os.path.join(tmp, "r%d.log" % i), extra=[
                "--nats", cluster.urls(), "--nats-consumer", "bench%d" % i]).start())
        local = helpers.Server(dirs[2], os.path.join(tmp, "local.log")).start()
        servers.append(local)
        deadline = time.monotonic() + 60
        for s in servers[:2]:
            while True:
                with helpers.Rpc(pb, s.rpc) as rpc:
                    req = pb.Request(id=1)
                    req.apply.SetInParent()
                    if rpc.call(req).WhichOneof("body") == "apply":
                        break
                assert time.monotonic() < deadline, "the fleet takes no Apply"
                time.sleep(0.2)

        out = {"date": time.strftime("%Y-%m-%d-%H%M%S"),
               "commit": subprocess.run(["git", "-C", ROOT, "rev-parse", "--short=12", "HEAD"],
                                        stdout=subprocess.PIPE).stdout.decode().strip(),
               "cpus": os.cpu_count(), "lag": [], "apply": []}
        name = "consentd_replication_visible_latency_seconds"
        for k, (rate, secs, batch) in enumerate(((10000, 5, 10), (100000, 3, 100))):
            n = rate * secs
            path = os.path.join(tmp, "pub%d.bin" % rate)
            write_changes(pb, path, n, 1 + k)
            before = [hist(s, name) for s in servers[:2]]
            t0 = time.monotonic()
            p = subprocess.run([ctl, "publish", "--nats", cluster.urls(),
                                "--replica", "127.0.0.1:%d" % servers[0].rpc,
                                "--origin", "bench:%d" % rate, "--batch", str(batch),
                                "--window", "256", "--dup-window", "0",
                                "--rate", str(rate), path],
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                               timeout=120)
            took = time.monotonic() - t0
            assert p.returncode == 0, p.stdout.decode()
            deadline = time.monotonic() + 120
            for s in servers[:2]:
                while to.stats_of(pb, s.rpc, "bench:%d" % rate).origin_cursor != str(n):
                    assert time.monotonic() < deadline, (
                        "replica %d not at the publisher's end: %s\n%s" % (
                            s.rpc, to.stats_of(pb, s.rpc, "bench:%d" % rate),
                            p.stdout.decode()))
                    time.sleep(0.02)
            row = {"offered_changes_per_s": rate, "changes": n,
                   "changes_per_message": batch,
                   "published_changes_per_s": round(n / took)}
            for i, s in enumerate(servers[:2]):
                row["replica%d" % i] = quantiles(before[i], hist(s, name))
            out["lag"].append(row)
            print("publish->visible at %d changes/s (%d per message): %s" % (
                rate, batch, json.dumps(row)), flush=True)

        n = 50000
        path = os.path.join(tmp, "feed.bin")
        write_changes(pb, path, n, 3)
        for label, s in (("local", local), ("replicated", servers[1])):
            t0 = time.monotonic()
            p = subprocess.run([ctl, "feed", "--rpc", "127.0.0.1:%d" % s.rpc,
                                "--origin", "feed:%s" % label, "--batch", "100",
                                "--window", "8", path],
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                               timeout=300)
            took = time.monotonic() - t0
            assert p.returncode == 0, p.stdout.decode()
            row = {"mode": label, "changes": n, "changes_per_apply": 100,
                   "window": 8, "seconds": round(took, 2),
                   "changes_per_s": round(n / took)}
            out["apply"].append(row)
            print("Apply throughput %s: %s" % (label, json.dumps(row)), flush=True)

        os.makedirs(results, exist_ok=True)
        base = os.path.join(results, "%s-fleet" % out["date"])
        with open(base + ".json", "w") as f:
            json.dump(out, f, indent=1)
        with open(base + ".md", "w") as f:
            f.write("### Fleet: replication on NATS JetStream (3 nodes, R3, loopback)\n\n")
            f.write("%s, commit %s, %d CPUs shared by everything (3 nats-server, "
                    "3 consentd, the publisher).\n\n" % (out["date"], out["commit"], out["cpus"]))
            f.write("| offered changes/s | changes/message | published/s | replica | "
                    "p50 ms | p99 ms | max bucket ms |\n|---:|---:|---:|---|---:|---:|---:|\n")
            for r in out["lag"]:
                for i in range(2):
                    q = r["replica%d" % i] or {}
                    f.write("| %d | %d | %d | %d | %.2f | %.2f | %.0f |\n" % (
                        r["offered_changes_per_s"], r["changes_per_message"],
                        r["published_changes_per_s"], i, 1000 * q.get("p50", 0),
                        1000 * q.get("p99", 0), 1000 * q.get("max_bucket", 0)))
            f.write("\n| Apply (consentctl feed, 100 changes/Apply, 8 in flight) | changes/s |\n"
                    "|---|---:|\n")
            for r in out["apply"]:
                f.write("| %s | %d |\n" % (r["mode"], r["changes_per_s"]))
        print("written: %s.{json,md}" % base)
    finally:
        for s in servers:
            s.stop()
        if cluster is not None:
            cluster.stop()
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
