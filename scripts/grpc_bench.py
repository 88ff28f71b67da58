#!/usr/bin/python3
"""The gRPC rows of `make bench` (scripts/bench.sh): h2load (nghttp2-client)
drives consentd's gRPC port with one Check message, and this script checks
what h2load cannot.

h2load sends the same request body (-d FILE: one length-prefixed
CheckRequest) on every stream and counts HTTP statuses; it never reads the
reply's message or its grpc-status (a trailer). So, around each run:
  before  the same message is sent once through grpcio (a real gRPC client)
          and once as a framed RPC Request: the call must end OK and its
          CheckResponse must be the RPC's, verdict for verdict, with the
          dataset's records found where the request names them;
  during  h2load's own counts: every request done, 2xx, none failed;
  after   consentd's /metrics must have counted at least succeeded x batch
          gRPC checks (an error answer counts none), and the grpcio call
          again gives the same verdicts.
Exit 0 when all of that holds, 1 on a wrong answer, 2 when something could
not run. Writes a JSON shaped like bench/loadgen's (requests_per_s,
checks_per_s, latency_us from h2load's per-request log)."""

import argparse
import json
import os
import re
import socket
import struct
import subprocess
import sys
import tempfile
import time
import urllib.request

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PROTO = os.path.join(ROOT, "proto", "consent.proto")
PATH = "/consent.v1.ConsentService/Check"


def load_pb(tmp):
    subprocess.run(["protoc", "-I", os.path.dirname(PROTO),
                    "--python_out=" + tmp, PROTO], check=True)
    sys.path.insert(0, tmp)
    import consent_pb2
    return consent_pb2


def read_varint(f):
    v, shift = 0, 0
    while True:
        b = f.read(1)
        if not b:
            return None
        v |= (b[0] & 0x7F) << shift
        if not b[0] & 0x80:
            return v
        shift += 7


def first_consents(pb, path, n):
    """The first n records of the snapshot stream (DESIGN 3.5)."""
    out = []
    with open(path, "rb") as f:
        while len(out) < n:
            ln = read_varint(f)
            if ln is None:
                break
            fr = pb.StreamFrame.FromString(f.read(ln))
            if fr.WhichOneof("frame") == "batch":
                out.extend(fr.batch.consents)
    return out[:n]


def make_request(pb, consents, batch):
    """batch checks: 9 in 10 name a record, the rest a recipient nobody
    has (the bench's hit ratio, 0.9)."""
    req = pb.CheckRequest()
    hits = []
    for i in range(batch):
        c = consents[i % len(consents)]
        hit = batch == 1 or i % 10 != 9
        rec = c.recipient if hit else "+90599%07d" % (1000000 + i)
        if not hit and c.channel == 3:
            rec = "nobody%d@bench.invalid" % i
        req.checks.add(recipient=rec, brand_code=c.brand_code,
                       channel=c.channel, recipient_type=c.recipient_type)
        hits.append(hit)
    return req, hits


def rpc_check(pb, port, req):
    r = pb.Request(id=1)
    r.check.CopyFrom(req)
    body = r.SerializeToString()
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.sendall(struct.pack(">I", len(body)) + body)
        hdr = b""
        while len(hdr) < 4:
            hdr += s.recv(4 - len(hdr))
        (n,) = struct.unpack(">I", hdr)
        data = b""
        while len(data) < n:
            chunk = s.recv(n - len(data))
            if not chunk:
                raise OSError("RPC closed")
            data += chunk
    resp = pb.Response.FromString(data)
    if resp.WhichOneof("body") != "check":
        raise OSError("RPC answered %s" % resp)
    return resp.check


def grpc_check(pb, port, msg):
    import grpc
    with grpc.insecure_channel("127.0.0.1:%d" % port) as ch:
        call = ch.unary_unary(PATH, request_serializer=lambda b: b,
                              response_deserializer=pb.CheckResponse.FromString)
        return call(msg, timeout=10)


def verify(pb, a, req_bytes, req, hits):
    """The gRPC reply is the RPC's, verdict for verdict; records found."""
    g = grpc_check(pb, a.grpc, req_bytes)
    r = rpc_check(pb, a.rpc, req)
    gv = [v.SerializeToString() for v in g.verdicts]
    rv = [v.SerializeToString() for v in r.verdicts]
    if len(gv) != a.batch or gv != rv:
        return "gRPC verdicts differ from the RPC's (%d vs %d)" % (len(gv), len(rv))
    for v, hit in zip(g.verdicts, hits):
        if hit and v.status == 0:
            return "a record of the dataset was not found: %s" % v
    return None


def grpc_checks_counted(http_port):
    with urllib.request.urlopen("http://127.0.0.1:%d/metrics" % http_port,
                                timeout=10) as f:
        text = f.read().decode()
    total = 0
    for line in text.splitlines():
        if line.startswith("consentd_checks_total{") and 'protocol="grpc"' in line:
            total += int(float(line.rsplit(" ", 1)[1]))
    return total


def cpu_seconds(pid):
    """utime + stime of a process, in seconds (None without a pid)."""
    if not pid:
        return None
    try:
        with open("/proc/%d/stat" % pid) as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except OSError:
        return None


def ms(seconds):
    """h2load takes durations as integers with a unit."""
    return "%dms" % int(float(seconds) * 1000)


def pct(sorted_v, q):
    if not sorted_v:
        return None
    return sorted_v[min(len(sorted_v) - 1, int(q * len(sorted_v)))]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--snapshot", required=True)
    ap.add_argument("--rpc", type=int, required=True)
    ap.add_argument("--grpc", type=int, required=True)
    ap.add_argument("--http", type=int, required=True)
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--connections", type=int, default=8)
    ap.add_argument("--streams", type=int, default=32)
    ap.add_argument("--duration", default="8")
    ap.add_argument("--warmup", default="2")
    ap.add_argument("--cpu", default="1")
    ap.add_argument("--server-pid", type=int, default=0)
    ap.add_argument("--label", required=True)
    ap.add_argument("--json", required=True)
    a = ap.parse_args()

    tmp = tempfile.mkdtemp(prefix="grpc-bench-")
    try:
        pb = load_pb(tmp)
        consents = first_consents(pb, a.snapshot, max(a.batch, 1))
        if not consents:
            print("grpc_bench: no records in %s" % a.snapshot)
            return 2
        req, hits = make_request(pb, consents, a.batch)
        req_bytes = req.SerializeToString()
        data = os.path.join(tmp, "check.grpc")
        with open(data, "wb") as f:
            f.write(b"\0" + struct.pack(">I", len(req_bytes)) + req_bytes)
        try:
            bad = verify(pb, a, req_bytes, req, hits)
        except Exception as e:  # the port did not answer at all
            print("grpc_bench: %s: %r" % (a.label, e))
            return 2
        if bad:
            print("grpc_bench: %s: WRONG before the run: %s" % (a.label, bad))
            return 1
        counted0 = grpc_checks_counted(a.http)
        cpu0, t0 = cpu_seconds(a.server_pid), time.monotonic()
        log = os.path.join(tmp, "h2load.log")
        cmd = ["taskset", "-c", a.cpu, "h2load", "-c", str(a.connections),
               "-m", str(a.streams), "-t", "1", "-D", ms(a.duration),
               "--warm-up-time", ms(a.warmup), "-d", data,
               "-H", "content-type: application/grpc", "-H", "te: trailers",
               "--log-file", log, "http://127.0.0.1:%d%s" % (a.grpc, PATH)]
        p = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                           timeout=float(a.duration) + float(a.warmup) + 120)
        out = p.stdout.decode(errors="replace")
        cpu1, t1 = cpu_seconds(a.server_pid), time.monotonic()
        counted = grpc_checks_counted(a.http) - counted0
        # The server's share of a core over the whole h2load run (warm-up
        # included, as are the checks counted): h2load itself may be what
        # limits the rate, and this says how busy consentd was meanwhile.
        server_cpu = (cpu1 - cpu0) / (t1 - t0) if cpu0 is not None and \
            cpu1 is not None else None
        per_cpu_s = counted / (cpu1 - cpu0) if server_cpu else None
        m = re.search(r"finished in [^,]+, ([0-9.]+) req/s", out)
        rq = re.search(r"requests: (\d+) total, (\d+) started, (\d+) done, "
                       r"(\d+) succeeded, (\d+) failed, (\d+) errored, "
                       r"(\d+) timeout", out)
        st = re.search(r"status codes: (\d+) 2xx, (\d+) 3xx, (\d+) 4xx, (\d+) 5xx", out)
        if p.returncode != 0 or not (m and rq and st):
            print("grpc_bench: %s: h2load exit %d\n%s" % (a.label, p.returncode, out[-2000:]))
            return 2
        rps = float(m.group(1))
        done, ok, failed, errored = (int(rq.group(i)) for i in (3, 4, 5, 6))
        non2xx = sum(int(st.group(i)) for i in (2, 3, 4))
        durs = []
        with open(log) as f:
            for line in f:
                parts = line.split("\t")
                if len(parts) >= 3:
                    durs.append(int(parts[2]))
        durs.sort()
        problems = []
        if failed or errored or non2xx:
            problems.append("h2load: %d failed, %d errored, %d not 2xx" % (failed, errored, non2xx))
        if counted < ok * a.batch:
            problems.append("consentd counted %d gRPC checks for %d calls of %d"
                            % (counted, ok, a.batch))
        bad = verify(pb, a, req_bytes, req, hits)
        if bad:
            problems.append("after the run: " + bad)
        res = {
            "label": a.label, "tool": "h2load", "batch": a.batch,
            "connections": a.connections, "streams": a.streams,
            "requests_per_s": rps, "checks_per_s": rps * a.batch,
            "latency_us": {"p50": pct(durs, 0.5), "p90": pct(durs, 0.9),
                           "p99": pct(durs, 0.99), "p999": pct(durs, 0.999),
                           "max": durs[-1] if durs else None},
            "requests": done, "succeeded": ok,
            "server_checks_counted": counted,
            "server_cpu": server_cpu,
            "server_checks_per_cpu_s": per_cpu_s,
            "wrong_checks": len(problems), "lost": done - ok,
            "client_cpu": None, "hit_ratio_sent": sum(hits) / len(hits),
            "target_rate": 0, "problems": problems,
        }
        with open(a.json, "w") as f:
            json.dump(res, f, indent=1)
        print("%s: %.0f calls/s, %.0f checks/s, p50 %s us, p99 %s us, "
              "server core %s%s" % (
                  a.label, rps, rps * a.batch, res["latency_us"]["p50"],
                  res["latency_us"]["p99"],
                  "—" if server_cpu is None else "%.0f %%" % (100 * server_cpu),
                  "; " + "; ".join(problems) if problems else ""))
        return 1 if problems else 0
    finally:
        subprocess.run(["rm", "-rf", tmp])


if __name__ == "__main__":
    sys.exit(main())
