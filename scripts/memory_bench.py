#!/usr/bin/env python3
"""Peak memory of each operation (README "Memory"): build, serve, growth,
snapshot swap and dump, for one consentd build and one --index-load mode.

    scripts/memory_bench.py --build build --mode mmap --records 10000000 \
        --work DIR --json out.json

It makes (once per --work) a base snapshot of N records (seed 1) and a
change stream of N/8 flips of another dataset's records (seed 2: keys the
base lacks, more than the 10 % headroom of a fresh generation, so the
table grows), builds a data directory with `consentctl build`, then on
a copy of it:
  serve     consentd started, until /readyz: VmHWM, RssAnon, RssFile
  growth    the change stream fed (consentctl feed) until the log says
            "load limit: new table" and the next checkpoint is written
  snapshot  consentd restarted with --snapshot BASE (a snapshot taken
            while serving: built, the log replayed, the served index
            merged), until the log says "snapshot: now serving"
  dump      consentctl dump of the data directory
Per phase: VmHWM (of consentd: reset at the phase's start through
/proc/PID/clear_refs 5), and the largest RssAnon and RssFile seen by a
20 ms poll of /proc/PID/status (RssFile: page cache mapped by the process, which the
kernel may evict; RssAnon: memory it may not, there being no swap).
"""

import argparse
import json
import os
import shutil
import subprocess
import sys
import threading
import time


def status(pid):
    out = {}
    try:
        with open("/proc/%d/status" % pid) as f:
            for line in f:
                k, _, v = line.partition(":")
                if k in ("VmHWM", "VmRSS", "RssAnon", "RssFile", "RssShmem"):
                    out[k] = int(v.split()[0])
    except FileNotFoundError:
        pass
    return out


class Sampler:
    """Polls /proc/PID/status every 20 ms, keeping the largest values."""

    def __init__(self, pid, reset=True):
        self.pid, self.max, self.reset = pid, {}, reset
        self.stop = threading.Event()
        self.t = threading.Thread(target=self.run, daemon=True)

    def run(self):
        while not self.stop.is_set():
            for k, v in status(self.pid).items():
                self.max[k] = max(self.max.get(k, 0), v)
            time.sleep(0.02)

    def __enter__(self):
        if self.reset:
            with open("/proc/%d/clear_refs" % self.pid, "w") as f:
                f.write("5")  # resets VmHWM to the present RSS
        self.t.start()
        return self

    def __exit__(self, *exc):
        self.stop.set()
        self.t.join()
        self.max["VmHWM"] = max(status(self.pid).get("VmHWM", 0),
                                self.max.get("VmHWM", 0))


def sampled(cmd):
    """Runs cmd, polling its /proc/PID/status: (largest values, seconds).
    VmHWM is the last one read, within 20 ms of its exit."""
    t0 = time.monotonic()
    p = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    s = Sampler(p.pid, reset=False)
    with s:
        _, err = p.communicate()
    if p.returncode != 0:
        sys.exit("%s: exit %d\n%s" % (" ".join(cmd), p.returncode,
                                      err.decode(errors="replace")[-2000:]))
    return s.max, round(time.monotonic() - t0, 1)


def wait_log(path, text, count, proc, timeout):
    deadline = time.monotonic() + timeout
    while True:
        with open(path, errors="replace") as f:
            if f.read().count(text) >= count:
                return
        if proc.poll() is not None:
            sys.exit("consentd exited %d; see %s" % (proc.returncode, path))
        if time.monotonic() > deadline:
            sys.exit("no '%s' in %s after %.0f s" % (text, path, timeout))
        time.sleep(0.05)


def start(consentd, d, mode, log, ports, extra=()):
    """Starts consentd; returns at once (the caller samples it from its
    first instruction: the load is part of the serve phase)."""
    if os.path.exists(ports):
        os.unlink(ports)
    lf = open(log, "ab")
    return subprocess.Popen([consentd, "--data-dir", d, "--rpc", "127.0.0.1:0",
                          "--resp", "127.0.0.1:0", "--http", "127.0.0.1:0",
                          "--grpc", "127.0.0.1:0", "--ports-file", ports,
                          "--workers", "2", "--index-load", mode,
                          "--checkpoint-changes", "100000000"] + list(extra),
                         stdin=subprocess.DEVNULL, stdout=lf,
                         stderr=subprocess.STDOUT)


def wait_ports(p, ports, log):
    deadline = time.monotonic() + 600
    while not os.path.exists(ports):
        if p.poll() is not None or time.monotonic() > deadline:
            sys.exit("consentd did not start; see %s" % log)
        time.sleep(0.02)
    got = {}
    with open(ports) as f:
        for line in f:
            parts = line.split()
            if len(parts) >= 2:
                got[parts[0]] = parts[-1].rsplit(":", 1)[-1]
    return got


def ready(http_port, proc, timeout=600):
    import http.client
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            sys.exit("consentd exited %d" % proc.returncode)
        try:
            c = http.client.HTTPConnection("127.0.0.1", int(http_port),
                                           timeout=1)
            c.request("GET", "/readyz")
            if c.getresponse().status == 200:
                return
        except OSError:
            pass
        time.sleep(0.05)
    sys.exit("consentd not ready")


def stop(proc):
    proc.terminate()
    proc.wait(600)


def mib(kb):
    return round(kb / 1024.0, 1)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--build", default="build")
    ap.add_argument("--mode", default="mmap", choices=["anon", "mmap", "auto"])
    ap.add_argument("--records", type=int, default=10000000)
    ap.add_argument("--work", required=True)
    ap.add_argument("--json")
    a = ap.parse_args()
    ctl = os.path.join(a.build, "consentctl")
    consentd = os.path.join(a.build, "consentd")
    os.makedirs(a.work, exist_ok=True)
    base = os.path.join(a.work, "base-%d.bin" % a.records)
    changes = os.path.join(a.work, "new-%d.bin" % a.records)
    n_new = a.records // 8
    if not os.path.exists(base):
        subprocess.run([ctl, "gen", "--records", str(a.records), "--seed", "1",
                        "--out", base], check=True)
    if not os.path.exists(changes):
        subprocess.run([ctl, "gen", "--records", str(n_new), "--seed", "2",
                        "--changes", str(n_new), "--out", changes], check=True)
    res = {"records": a.records, "mode": a.mode, "build": a.build}
    d0 = os.path.join(a.work, "built-%s" % os.path.basename(
        os.path.abspath(a.build)))
    shutil.rmtree(d0, ignore_errors=True)
    m, secs = sampled([ctl, "build", "--snapshot", base, "--out", d0])
    res["build"] = dict(m, seconds=secs)
    print("build: %s" % res["build"], flush=True)
    gen = sorted(e for e in os.listdir(d0) if e.startswith("gen-"))[-1]
    res["index_mib"] = mib(os.path.getsize(os.path.join(d0, gen, "index")) / 1024)

    d = os.path.join(a.work, "data-%s" % a.mode)
    shutil.rmtree(d, ignore_errors=True)
    shutil.copytree(d0, d)
    log = os.path.join(a.work, "consentd-%s.log" % a.mode)
    if os.path.exists(log):
        os.unlink(log)
    ports = os.path.join(a.work, "ports")

    proc = start(consentd, d, a.mode, log, ports)
    with Sampler(proc.pid) as s:
        got = wait_ports(proc, ports, log)
        ready(got["http"], proc)
    res["serve"] = s.max
    print("serve: %s" % s.max, flush=True)

    t0 = time.monotonic()
    with Sampler(proc.pid) as s:
        subprocess.run([ctl, "feed", "--rpc", "127.0.0.1:" + got["rpc"],
                        "--no-origin", "--batch", "1000", changes], check=True,
                       stdout=subprocess.DEVNULL)
        wait_log(log, "load limit: new table", 1, proc, 600)
        wait_log(log, "growth: wrote generation", 1, proc, 600)
    res["growth"] = dict(s.max, seconds=round(time.monotonic() - t0, 1))
    with open(log, errors="replace") as f:
        res["growth_log"] = [l.strip() for l in f if "load limit" in l or
                             "growth: wrote" in l]
    print("growth: %s" % res["growth"], flush=True)
    stop(proc)

    proc = start(consentd, d, a.mode, log, ports, ["--snapshot", base])
    with Sampler(proc.pid) as s:
        got = wait_ports(proc, ports, log)
        wait_log(log, "snapshot: now serving", 1, proc, 1200)
    res["snapshot"] = s.max
    with open(log, errors="replace") as f:
        res["snapshot_log"] = [l.strip() for l in f if "snapshot:" in l]
    print("snapshot: %s" % s.max, flush=True)
    stop(proc)

    m, secs = sampled([ctl, "dump", d, "--out", os.devnull])
    res["dump"] = dict(m, seconds=secs)
    print("dump: %s" % res["dump"], flush=True)
    if a.json:
        with open(a.json, "w") as f:
            json.dump(res, f, indent=1)
    shutil.rmtree(d, ignore_errors=True)
    shutil.rmtree(d0, ignore_errors=True)


if __name__ == "__main__":
    main()
