"""Never two tables in RAM (README "Memory"): with --index-load mmap a real
consentd grows its table into a working file and takes a snapshot into
one, while clients check without pause; every answer is verified against
the snapshot and the acknowledged changes, during and after."""

import os
import random
import shutil
import threading
import time

import helpers
from helpers import BIREYSEL, EPOSTA, MESAJ, ONAY, Rpc
from test_changes import (CLOCK0, HS_WEB, Applier, base_records, ctl,
                          key_check, start, stop_ok)


def mapped_files(pid):
    """The files consentd maps, by path."""
    out = set()
    with open("/proc/%d/maps" % pid) as f:
        for line in f:
            parts = line.split(None, 5)
            if len(parts) == 6 and parts[5].startswith("/"):
                out.add(parts[5].strip())
    return out


def work_mapped(pid, d):
    return sorted(p for p in mapped_files(pid)
                  if p.startswith(d + "/.tmp-gen-work-"))


def log_count(path, text):
    with open(path, errors="replace") as f:
        return f.read().count(text)


def wait_for(cond, what, server, timeout=60.0):
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, "%s: not in %.0f s\n%s" % (
            what, timeout, server.log_tail())
        assert server.alive(), "consentd died\n" + server.log_tail()
        time.sleep(0.02)


class Load:
    """Checkers verifying the stable keys and every acknowledged new key
    without pause, and a feeder adding new keys (phones and e-mails) so
    that the table fills, until stopped."""

    def __init__(self, pb, server, stable):
        self.pb, self.s, self.stable = pb, server, stable
        self.acked = {}            # key -> consent_date, acknowledged ONAY
        self.lock = threading.Lock()
        self.stop = threading.Event()
        self.feeding = threading.Event()
        self.errors = []
        self.checks = 0
        self.seq = None

    def checker(self, seed):
        r = random.Random(seed)
        ks = list(self.stable)
        try:
            with Rpc(self.pb, self.s.rpc, timeout=30) as rpc:
                while not self.stop.is_set():
                    part = r.sample(ks, 48)
                    with self.lock:
                        news = list(self.acked.items())
                    extra = r.sample(news, min(48, len(news)))
                    resp = rpc.check([key_check(k) for k in part] +
                                     [key_check(k) for k, _ in extra])
                    for k, v in zip(part, resp.verdicts[:48]):
                        got = (v.status, v.consent_date, v.source)
                        if got != self.stable[k]:
                            self.errors.append("%s answers %s, snapshot %s" % (
                                k, got, self.stable[k]))
                    for (k, date), v in zip(extra, resp.verdicts[48:]):
                        if v.status != ONAY or v.consent_date != date:
                            self.errors.append("acknowledged %s@%d answered "
                                               "%s" % (k, date, v))
                    self.checks += len(resp.verdicts)
        except Exception as e:  # any failed request is a failure
            self.errors.append("checker: %r" % e)

    def feeder(self):
        try:
            ap = Applier(self.pb, self.s.rpc, timeout=60)
            while not self.stop.is_set():
                if not self.feeding.is_set():
                    time.sleep(0.01)
                    continue
                batch = []
                for _ in range(200):
                    self.seq += 1
                    n = self.seq
                    if n % 3 == 0:
                        k = (424242, "mem%d@example.com" % n, BIREYSEL, EPOSTA)
                    else:
                        k = (424242, "+90545%07d" % n, BIREYSEL, MESAJ)
                    c = self.pb.Consent(recipient=k[1], channel=k[3],
                                        recipient_type=k[2], brand_code=k[0],
                                        status=ONAY, source=HS_WEB,
                                        consent_date=CLOCK0 + n, sequence=n)
                    batch.append((k, CLOCK0 + n, c.SerializeToString()))
                r = ap.apply([c for _, _, c in batch])
                if r.WhichOneof("body") != "apply":
                    self.errors.append("apply: %s" % r)
                    return
                with self.lock:
                    for k, date, _ in batch:
                        self.acked[k] = date
            ap.close()
        except Exception as e:
            self.errors.append("feeder: %r" % e)

    def __enter__(self):
        with Rpc(self.pb, self.s.rpc) as rpc:
            self.seq = rpc.stats().applied_sequence
        self.threads = [threading.Thread(target=self.checker, args=(i,))
                        for i in range(2)]
        self.threads.append(threading.Thread(target=self.feeder))
        for t in self.threads:
            t.start()
        return self

    def __exit__(self, *exc):
        self.stop.set()
        for t in self.threads:
            t.join(60)

    def check_all(self, port, what):
        """Every stable and acknowledged key, exactly."""
        want = dict(self.stable)
        want.update({k: (ONAY, d, HS_WEB) for k, d in self.acked.items()})
        ks = list(want)
        with Rpc(self.pb, port) as rpc:
            for i in range(0, len(ks), 256):
                part = ks[i:i + 256]
                resp = rpc.check([key_check(k) for k in part])
                for k, v in zip(part, resp.verdicts):
                    got = (v.status, v.consent_date, v.source)
                    assert got == want[k], "%s: %s answers %s, want %s" % (
                        what, k, got, want[k])
        return len(ks)


def test_mapped_growth_and_snapshot_swap(env):
    """--index-load mmap: the served table is a working copy of the
    generation, mapped (MAP_SHARED); at the load limit it grows into a working file (.tmp-gen-work-*, the
    old one mapped, never copied into anonymous memory), twice, under
    check load; then a --snapshot taken while serving is built into a
    working file, the change log replayed and the served index merged into
    it, and served from it. Zero wrong or failed answers throughout, every
    acknowledged key answered after each step and after a restart."""
    pb = env.pb
    tmp = os.path.join(env.tmp, "memory")
    os.makedirs(tmp)
    snap = os.path.join(tmp, "base.bin")
    ctl("gen", "--records", 20000, "--seed", 17, "--out", snap)
    base = base_records(pb, snap)
    d = os.path.join(tmp, "data")
    ctl("build", "--snapshot", snap, "--out", d)
    stable = dict(random.Random(3).sample(sorted(base.items()), 3000))
    log = os.path.join(tmp, "consentd.log")
    flags = ["--index-load", "mmap", "--checkpoint-changes", "5000"]
    s = start(d, log, flags)
    grown = "load limit: new table"
    try:
        # Served from a working copy of the generation, never its file.
        assert len(work_mapped(s.proc.pid, d)) == 1, mapped_files(s.proc.pid)
        with Load(pb, s, stable) as load:
            load.feeding.set()
            wait_for(lambda: log_count(log, grown) >= 2 or load.errors,
                     "two growths", s, timeout=120)
            load.feeding.clear()
            time.sleep(0.3)  # checks on the grown table, feeder idle
        assert not load.errors, "%d failures, first: %s" % (
            len(load.errors), load.errors[:5])
        with open(log, errors="replace") as f:
            growths = [l for l in f if grown in l]
        assert all("in a working file" in l for l in growths), growths
        # The served table is one working file, mapped.
        assert len(work_mapped(s.proc.pid, d)) == 1, mapped_files(s.proc.pid)
        n = load.check_all(s.rpc, "after growth")
        assert load.checks > 500 and len(load.acked) > 2000, (
            load.checks, len(load.acked))
        stop_ok(s)
        assert not [e for e in os.listdir(d) if e.startswith(".tmp-gen-work-")], \
            "a working file outlived its server: %s" % os.listdir(d)

        # A snapshot taken while serving (the base again, watermark 0: the
        # log replayed past it or, where checkpoints dropped the log, the
        # served index merged in), under the same load.
        s = start(d, log, flags + ["--snapshot", snap])
        taken = "snapshot: now serving generation"
        before = log_count(log, taken)
        with Load(pb, s, stable) as load2:
            load2.acked = dict(load.acked)
            load2.seq = max(load2.seq, load.seq)
            wait_for(lambda: log_count(log, taken) > before or load2.errors,
                     "the snapshot swap", s, timeout=120)
            time.sleep(0.3)
        assert not load2.errors, "%d failures, first: %s" % (
            len(load2.errors), load2.errors[:5])
        assert len(work_mapped(s.proc.pid, d)) == 1, mapped_files(s.proc.pid)
        assert load2.check_all(s.rpc, "after the snapshot swap") == n
        stop_ok(s)
        ctl("verify", d)
        s = start(d, log, flags)
        load2.check_all(s.rpc, "after a restart")
        with open(log, errors="replace") as f:
            said = [l.rstrip() for l in f if grown in l or taken in l]
        print("memory: %d keys answered, %d checks under load; %s" % (
            n, load.checks + load2.checks, "; ".join(said)))
    finally:
        if s.alive():
            stop_ok(s)
    shutil.rmtree(tmp, ignore_errors=True)
