"""Live changes (DESIGN 2 Changes and Generations, 3.1 Apply, 5.1, 5.3)
against real consentd processes: the Apply RPC with Google's protobuf
runtime, a model of the order rule written here from DESIGN.md, SIGKILL at
random moments (while applying, checkpointing, growing the table and
taking a --snapshot), damaged index and log files, generations swapped
while clients check, and the replay/snapshot property with consentctl dump.

CONSENTD_CRASH_ROUNDS (default 50) sets the number of kills."""

import os
import random
import shutil
import signal
import socket
import struct
import subprocess
import threading
import time

import pytest

import helpers
from helpers import ARAMA, MESAJ, EPOSTA, BIREYSEL, TACIR, ONAY, RET, Rpc

CRASH_ROUNDS = int(os.environ.get("CONSENTD_CRASH_ROUNDS", "50"))
EPOCH = 1430427600          # 2015-05-01 00:00:00 Turkey time
CLOCK0 = 1767214800         # consentctl gen's "now"; change dates start here
HS_WEB = 6


def ctl(*args, check=True, timeout=120):
    p = subprocess.run([helpers.binary("consentctl")] + [str(a) for a in args],
                       stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                       timeout=timeout)
    if check:
        assert p.returncode == 0, "consentctl %s: exit %d\n%s" % (
            " ".join(map(str, args)), p.returncode, p.stderr.decode())
    return p


def varint(v):
    out = bytearray()
    while v >= 0x80:
        out.append((v & 0x7F) | 0x80)
        v >>= 7
    out.append(v)
    return bytes(out)


def src_code(s):
    """The index's order among sources at equal date and status."""
    if 1 <= s <= 13:
        return s
    if 32 <= s <= 40:
        return s - 18
    return 24 if s == 0 else 23


def rank(v):
    status, date, source = v
    return (date, status == RET, src_code(source))


# --- a change stream and its model -----------------------------------------

class Stream:
    """A deterministic change stream over a base dataset: flips (mostly
    ONAY to RET), ties at an equal date (RET must win), older changes
    (must be skipped) and new keys, phones and e-mails. `model(a)` folds
    the changes through sequence a over the base, by DESIGN 2's rule."""

    def __init__(self, pb, base, seed, start=0):
        self.pb = pb
        self.base = base                      # key -> (status, date, source)
        self.rng = random.Random(seed)
        self.now = dict(base)                 # generation-time state
        self.keys = list(base)
        self.brands = sorted({k[0] for k in base}) or [1234]
        self.changes = []                     # (seq, key, value, bytes)
        self.next_seq = start + 1
        self.state = dict(base)               # model, folded through upto
        self.upto = start
        self.folded = 0
        self.touched = {}                     # key -> last seq touching it

    def _key_new(self, seq):
        brand = self.rng.choice(self.brands)
        rtype = self.rng.choice((BIREYSEL, TACIR))
        if self.rng.random() < 0.5:
            return (brand, "+90555%07d" % (seq % 10000000), rtype,
                    self.rng.choice((ARAMA, MESAJ)))
        return (brand, "chg%d@live.example" % seq, rtype, EPOSTA)

    def _one(self):
        seq = self.next_seq
        self.next_seq += 1
        r = self.rng.random()
        clock = CLOCK0 + seq
        key = None
        if r < 0.2 or not self.keys:
            key = self._key_new(seq)
            if key in self.now:
                key = None
            else:
                self.keys.append(key)
                val = (ONAY, clock, HS_WEB)
        if key is None:
            key = self.keys[self.rng.randrange(len(self.keys))]
            st, d, src = self.now[key]
            if r < 0.65:
                val = (RET if st == ONAY else ONAY, max(d + 1, clock), HS_WEB)
            elif r < 0.8 and st == ONAY:
                val = (RET, d, HS_WEB)                      # tie: RET wins
            elif r < 0.9 and d - 1000 > EPOCH:
                val = (self.rng.choice((ONAY, RET)), d - 1000, HS_WEB)  # older
            else:
                val = (RET, max(d + 1, clock), HS_WEB)
        if key not in self.now or rank(val) > rank(self.now[key]):
            self.now[key] = val
        c = self.pb.Consent(recipient=key[1], channel=key[3],
                            recipient_type=key[2], brand_code=key[0],
                            status=val[0], source=val[2], consent_date=val[1],
                            creation_date=val[1], transaction_id="t%d" % seq,
                            sequence=seq)
        self.changes.append((seq, key, val, c.SerializeToString()))

    def upto_seq(self, seq):
        while self.next_seq <= seq:
            self._one()

    def get(self, first, n):
        """Changes first .. first+n-1 (serialized Consents)."""
        self.upto_seq(first + n - 1)
        off = first - self.changes[0][0]
        return self.changes[off:off + n]

    def model(self, a):
        """The state through sequence a (a never goes back)."""
        assert a >= self.upto, "applied sequence went back: %d < %d" % (
            a, self.upto)
        self.upto_seq(a)
        off0 = self.changes[0][0] if self.changes else 1
        while self.folded < len(self.changes) and \
                self.changes[self.folded][0] <= a:
            seq, key, val, _ = self.changes[self.folded]
            old = self.state.get(key)
            if old is None or rank(val) > rank(old):
                self.state[key] = val
            self.touched[key] = seq
            self.folded += 1
        self.upto = a
        assert off0 >= 1
        return self.state

    def write(self, path, after, last):
        """A change stream file (no trailer) of changes after..last."""
        self.upto_seq(last)
        with open(path, "wb") as f:
            h = self.pb.StreamFrame()
            h.header.format_version = 1
            h.header.changes = True
            h.header.sequence = after
            h.header.created_at = CLOCK0
            h.header.origin = "test_changes"
            b = h.SerializeToString()
            f.write(varint(len(b)) + b)
            batch = []
            for seq, _, _, cb in self.changes:
                if after < seq <= last:
                    batch.append(cb)
                if len(batch) == 500 or (seq == last and batch):
                    body = b"".join(b"\x0a" + varint(len(x)) + x for x in batch)
                    fr = b"\x12" + varint(len(body)) + body  # StreamFrame.batch
                    f.write(varint(len(fr)) + fr)
                    batch = []


def apply_frame(rid, consents):
    body = b"".join(b"\x0a" + varint(len(c)) + c for c in consents)
    req = b"\x08" + varint(rid) + b"\x1a" + varint(len(body)) + body
    return struct.pack(">I", len(req)) + req


class Applier:
    """A raw RPC connection for Apply, pipelining up to `window`."""

    def __init__(self, pb, port, timeout=20.0):
        self.pb = pb
        self.sock = socket.create_connection((helpers.LOOPBACK, port),
                                             timeout=timeout)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.rid = 0

    def close(self):
        self.sock.close()

    def send(self, consents):
        self.rid += 1
        self.sock.sendall(apply_frame(self.rid, consents))
        return self.rid

    def recv(self):
        n = struct.unpack(">I", helpers.recv_exact(self.sock, 4))[0]
        return self.pb.Response.FromString(helpers.recv_exact(self.sock, n))

    def apply(self, consents):
        rid = self.send(consents)
        r = self.recv()
        assert r.id == rid
        return r


def key_check(key):
    brand, rec, rtype, channel = key
    return dict(recipient=rec, brand_code=brand, channel=channel,
                recipient_type=rtype)


def check_keys(pb, port, keys, state, what):
    """Every key answers with exactly the model's record (absent keys as no
    record). Returns the number checked."""
    keys = list(keys)
    with Rpc(pb, port) as rpc:
        for i in range(0, len(keys), 256):
            part = keys[i:i + 256]
            resp = rpc.check([key_check(k) for k in part])
            for k, v in zip(part, resp.verdicts):
                want = state.get(k)
                got = (v.status, v.consent_date, v.source)
                if want is None:
                    assert v.status == 0, "%s: %s has a record %s, model none" % (
                        what, k, got)
                    continue
                assert got == want, "%s: %s answers %s, model %s" % (
                    what, k, got, want)
                if want[0] == RET:
                    assert not v.allow, "%s: acknowledged RET on %s " \
                        "answered ALLOW" % (what, k)
    return len(keys)


def base_records(pb, path):
    _, consents, _ = helpers.read_stream(pb, path)
    recs = {}
    for c in consents:
        k = (c.brand_code, c.recipient, c.recipient_type, c.channel)
        v = (c.status, c.consent_date, c.source)
        if k not in recs or rank(v) > rank(recs[k]):
            recs[k] = v
    return recs


def start(data_dir, log, extra=(), timeout=30.0, ports=None):
    """ports: an earlier Server whose ports a restart binds again."""
    return helpers.Server(data_dir, log, extra=list(extra),
                          ports=ports).start(timeout)


def stop_ok(server):
    rc = server.stop()
    assert rc == 0, "consentd exited %s on SIGTERM\n%s" % (rc, server.log_tail())


def stats(pb, port):
    with Rpc(pb, port) as rpc:
        return rpc.stats()


def metric(server, name):
    return server.metrics().get(name, 0)


# --- basics ------------------------------------------------------------------

def test_apply_rpc(env):
    """Apply answers after the change is durable, with applied_sequence,
    applied and skipped; replays and older changes are skipped and counted;
    a bad change refuses its whole request with a 400 naming it."""
    pb = env.pb
    d = env.data_dir()
    s = start(d, os.path.join(env.tmp, "apply.log"))
    try:
        st = Stream(pb, env.oracle.records, seed=1)
        ap = Applier(pb, s.rpc)
        batch = st.get(1, 50)
        r = ap.apply([c for _, _, _, c in batch])
        assert r.WhichOneof("body") == "apply", r
        assert r.apply.applied_sequence == 50
        assert r.apply.applied + r.apply.skipped == 50
        check_keys(pb, s.rpc, {k for _, k, _, _ in batch}, st.model(50), "batch")
        # The same batch again: all replays.
        r = ap.apply([c for _, _, _, c in batch])
        assert (r.apply.applied, r.apply.skipped, r.apply.applied_sequence) == \
            (0, 50, 50)
        # A bad change (sequence 0) in the middle: 400, nothing applied.
        nxt = st.get(51, 3)
        bad = pb.Consent.FromString(nxt[1][3])
        bad.sequence = 0
        r = ap.apply([nxt[0][3], bad.SerializeToString(), nxt[2][3]])
        assert r.WhichOneof("body") == "error", r
        assert r.error.code == 400 and "changes[1]" in r.error.message and \
            "sequence" in r.error.message, r.error
        bad = pb.Consent.FromString(nxt[2][3])
        bad.recipient = "nobody"
        r = ap.apply([nxt[0][3], nxt[1][3], bad.SerializeToString()])
        assert r.error.code == 400 and "changes[2]" in r.error.message and \
            "recipient" in r.error.message, r.error
        assert stats(pb, s.rpc).applied_sequence == 50
        # A pipelined check after an Apply is answered after it, and sees it.
        with Rpc(pb, s.rpc) as rpc:
            k = nxt[0][1]
            chk = pb.Request(id=99)
            chk.check.checks.add(**key_check(k))
            rpc.sock.sendall(apply_frame(98, [c for _, _, _, c in nxt]) +
                             Rpc.frame(chk.SerializeToString()))
            a, b = rpc.recv(), rpc.recv()
            assert (a.id, b.id) == (98, 99)
            assert a.apply.applied_sequence == 53
            want = st.model(53)[k]
            v = b.check.verdicts[0]
            assert (v.status, v.consent_date, v.source) == want
            assert b.check.applied_sequence == 53
        # A heartbeat (no changes) refreshes data_as_of.
        before = stats(pb, s.rpc).data_as_of
        r = ap.apply([])
        assert r.apply.applied_sequence == 53 and r.apply.applied == 0
        assert stats(pb, s.rpc).data_as_of >= max(before, int(time.time()) - 5)
        m = s.metrics()
        assert m.total("consentd_changes_skipped_replay_total") >= 50
        assert m.total("consentd_changes_applied_total") + \
            m.total("consentd_changes_skipped_order_total") >= 53
        assert m.total("consentd_changelog_appends_total") >= 2
        ap.close()
    finally:
        stop_ok(s)
    ctl("verify", d)


def test_body_set_twice_is_refused(env):
    """A Request whose body field occurs twice (the bytes of two Requests
    concatenated: Google's runtime merges them into one Apply of both
    changes, protobuf-c would keep only the last) is refused with a 400
    naming both fields, nothing of it is applied, and the connection goes
    on serving. The same for a CheckRequest split over two check fields."""
    pb = env.pb
    d = env.data_dir()
    s = start(d, os.path.join(env.tmp, "two-bodies.log"))
    try:
        st = Stream(pb, env.oracle.records, seed=3)
        two = st.get(1, 2)
        first, second = apply_frame(5, [two[0][3]]), apply_frame(5, [two[1][3]])
        raw = first[4:] + second[4:]
        merged = pb.Request.FromString(raw)
        assert len(merged.apply.changes) == 2, "the spec merges them"
        keys = [k for _, k, _, _ in two]
        with Rpc(pb, s.rpc) as rpc:
            before = rpc.check([key_check(k) for k in keys])
            rpc.sock.sendall(Rpc.frame(raw))
            r = rpc.recv()
            assert r.WhichOneof("body") == "error" and r.error.code == 400, r
            assert "3 (apply)" in r.error.message and "both set" in r.error.message, r
            assert rpc.stats().applied_sequence == 0
            after = rpc.check([key_check(k) for k in keys])
            assert after == before, "a refused request changed verdicts"
            # Check split in two: refused, not answered for a part.
            a = pb.Request(id=7)
            a.check.checks.add(**key_check(keys[0]))
            b = pb.Request(id=7)
            b.check.checks.add(**key_check(keys[1]))
            rpc.sock.sendall(Rpc.frame(a.SerializeToString() + b.SerializeToString()))
            r = rpc.recv()
            assert r.id == 7 and r.WhichOneof("body") == "error", r
            assert r.error.code == 400 and "2 (check)" in r.error.message, r
            # The connection serves on, and an Apply sent whole is applied.
            rpc.sock.sendall(first)
            r = rpc.recv()
            assert r.WhichOneof("body") == "apply" and r.apply.applied_sequence == 1, r
    finally:
        stop_ok(s)


def test_apply_needs_the_apply_right(env, partners):
    """With --tokens only a principal with 'apply' may apply (403 else)."""
    pb = env.pb
    d = env.data_dir()
    s = start(d, os.path.join(env.tmp, "apply-tokens.log"),
              ["--tokens", partners.path])
    try:
        st = Stream(pb, env.oracle.records, seed=2)
        frames = [c for _, _, _, c in st.get(1, 5)]
        for who, ok in (("alice", False), ("root", True)):
            with Rpc(pb, s.rpc) as rpc:
                assert rpc.auth(partners.tokens[who]).WhichOneof("body") == "auth"
                rpc.sock.sendall(apply_frame(7, frames))
                r = rpc.recv()
                if ok:
                    assert r.apply.applied_sequence == 5, r
                else:
                    assert r.error.code == 403, r
    finally:
        stop_ok(s)


def test_log_failure_refuses_changes_and_unreadies(env):
    """When the change log cannot be written (here: a file size limit, so
    write(2) fails with EFBIG) the Apply is refused with 503 and the log's
    message, every later Apply too, /readyz fails, checks keep being
    answered from the state served, and a restart (without the limit)
    comes back with everything acknowledged."""
    import resource
    pb = env.pb
    d = env.data_dir()
    log = os.path.join(env.tmp, "log-failure.log")
    orig = helpers._preexec

    def limited():
        orig()
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (64 << 10, resource.RLIM_INFINITY))

    helpers._preexec = limited
    try:
        # The change log's failure alone: the evidence store (DESIGN 10),
        # which would meet the limit too, is off here (writer_test covers
        # its own failure).
        s = start(d, log, extra=["--history", "off"])
    finally:
        helpers._preexec = orig
    st = Stream(pb, env.oracle.records, seed=12)
    acked = 0
    try:
        ap = Applier(pb, s.rpc)
        refused = None
        for first in range(1, 100000, 100):
            r = ap.apply([c for _, _, _, c in st.get(first, 100)])
            if r.WhichOneof("body") == "error":
                refused = r.error
                break
            acked = r.apply.applied_sequence
        assert refused is not None and refused.code == 503 and \
            "change log" in refused.message, refused
        assert acked > 0
        r = ap.apply([c for _, _, _, c in st.get(acked + 1, 1)])
        assert r.WhichOneof("body") == "error" and r.error.code == 503, r
        ap.close()
        st_, _, body = s.http_get("/readyz")
        assert st_ == 503 and b"change" in body, (st_, body)
        assert s.http_get("/healthz")[0] == 200
        state = st.model(acked)
        keys = [k for k, q in st.touched.items()]
        check_keys(pb, s.rpc, keys, state, "after the log failed")
        assert metric(s, "consentd_changelog_failures_total") == 1
    finally:
        stop_ok(s)
    s = start(d, log)
    try:
        a = stats(pb, s.rpc).applied_sequence
        # The refused append may or may not have reached the disk whole;
        # never half of it, never less than what was acknowledged.
        assert a == acked or a == acked + 100, (a, acked)
        check_keys(pb, s.rpc, st.touched.keys(), st.model(a), "restarted")
    finally:
        stop_ok(s)
    ctl("verify", d)


# --- kill -9 -------------------------------------------------------------------

def feed_until_killed(pb, port, st, first, stop, acked, window):
    """Applies the stream from `first` until the connection dies; records
    the highest applied_sequence acknowledged in acked[0]."""
    rng = random.Random(first)
    try:
        ap = Applier(pb, port, timeout=10.0)
    except OSError:
        return
    inflight = []
    seq = first
    try:
        while not stop.is_set():
            n = rng.choice((1, 1, 5, 20, 100, 200))
            batch = st.get(seq, n)
            seq += n
            inflight.append((ap.send([c for _, _, _, c in batch]), seq - 1))
            if len(inflight) < window:
                continue
            rid, last = inflight.pop(0)
            r = ap.recv()
            assert r.id == rid and r.WhichOneof("body") == "apply", r
            assert r.apply.applied_sequence >= last
            acked[0] = max(acked[0], r.apply.applied_sequence)
    except (OSError, helpers.Closed):
        pass
    finally:
        ap.close()


def check_history(pb, port, st, a, rng):
    """The history (DESIGN 10) of the keys changed last and of a sample of
    the others holds every change of the stream through a (each
    acknowledged one among them), once, in order, with every field; the
    snapshot's own records (sequence 0) aside. Returns the keys checked."""
    per_key = {}
    for seq, key, _, cb in st.changes:
        if seq <= a:
            per_key.setdefault(key, []).append(cb)
    keys = [k for k, q in st.touched.items() if q > a - 300]
    others = sorted(set(per_key) - set(keys))
    keys += rng.sample(others, min(700, len(others)))
    with Rpc(pb, port) as rpc:
        for k in keys:
            req = pb.Request()
            req.history.recipient = k[1]
            req.history.brand_code = k[0]
            req.history.channel = k[3]
            req.history.recipient_type = k[2]
            r = rpc.call(req)
            assert r.WhichOneof("body") == "history", "History of %s: %s" % (k, r)
            got = [e.consent for e in r.history.entries if e.consent.sequence > 0]
            want = [pb.Consent.FromString(cb) for cb in per_key.get(k, [])]
            assert got == want, "history of %s after the kills: %d changes " \
                "(sequences %s), the stream through %d has %d (%s)" % (
                    k, len(got), [c.sequence for c in got], a, len(want),
                    [c.sequence for c in want])
    return len(keys)


def test_kill9_loses_nothing_acknowledged(env):
    """A feeder applies a stream full of ONAY->RET flips while consentd is
    SIGKILLed at random moments (while applying, writing checkpoints,
    growing its table, and taking a --snapshot every few rounds); after
    each restart every acknowledged change is answered as applied,
    consentctl verify and consentctl audit verify pass, and at the end the
    history holds every acknowledged change (DESIGN 10)."""
    pb = env.pb
    tmp = os.path.join(env.tmp, "kill9")
    os.makedirs(tmp)
    snap = os.path.join(tmp, "base.bin")
    ctl("gen", "--records", 100000, "--seed", 11, "--out", snap)
    base = base_records(pb, snap)
    d = os.path.join(tmp, "data")
    ctl("build", "--snapshot", snap, "--out", d)
    st = Stream(pb, base, seed=5)
    rng = random.Random(int(os.environ.get("CONSENTD_CRASH_SEED", "9")))
    log = os.path.join(tmp, "consentd.log")
    flags = ["--checkpoint-changes", "700"]
    applied = 0
    kills = snapshots = 0
    t_end = time.monotonic() + float(os.environ.get("CONSENTD_CRASH_SECONDS",
                                                    "600"))
    dumped = os.path.join(tmp, "dump.bin")
    s = None  # each restart binds the ports the killed server had
    for rnd in range(CRASH_ROUNDS):
        extra = list(flags)
        taking = rnd % 4 == 3
        if taking:
            # A snapshot taken in the background while changes arrive:
            # the base, or a dump of this directory at an earlier
            # watermark (both states of the model's history).
            extra += ["--snapshot", dumped if os.path.exists(dumped) else snap]
            snapshots += 1
        s = start(d, log, extra, ports=s)
        a = stats(pb, s.rpc).applied_sequence
        assert a >= applied, "round %d: applied sequence %d < acknowledged %d" \
            "\n%s" % (rnd, a, applied, s.log_tail())
        state = st.model(a)
        if not taking:  # those rounds are killed early, mid-build
            recent = [k for k, q in st.touched.items() if q > applied - 50]
            sample = rng.sample(st.keys, min(300, len(st.keys)))
            check_keys(pb, s.rpc, set(recent) | set(sample), state,
                       "round %d (applied %d)" % (rnd, a))
        applied = a
        if not taking:
            # The evidence store survived the kill: whole, its chain
            # recomputed (DESIGN 10), the server idle meanwhile.
            ctl("audit", "verify", d)
        stop = threading.Event()
        acked = [a]
        t = threading.Thread(target=feed_until_killed,
                             args=(pb, s.rpc, st, a + 1, stop, acked,
                                   rng.choice((1, 3))))
        t.start()
        time.sleep(rng.uniform(0.0, 0.25) if taking else rng.uniform(0.02, 0.5))
        s.proc.send_signal(signal.SIGKILL)
        s.proc.wait(10)
        stop.set()
        t.join(30)
        assert not t.is_alive()
        s.kill()
        kills += 1
        applied = max(applied, acked[0])
        ctl("verify", d)
        if rnd == 10:
            ctl("dump", d, "--out", dumped)
        if time.monotonic() > t_end:
            break
    # The last restart: everything acknowledged, every key touched.
    s = start(d, log, flags, ports=s)
    a = stats(pb, s.rpc).applied_sequence
    assert a >= applied
    n = check_keys(pb, s.rpc, st.touched.keys(), st.model(a), "final")
    h = check_history(pb, s.rpc, st, a, rng)
    m = s.metrics()
    stop_ok(s)
    ctl("verify", d)
    ctl("audit", "verify", d)
    with open(log, errors="replace") as f:
        text = f.read()
    print("kill9: %d kills (%d with --snapshot), %d changes acknowledged, "
          "%d keys checked at the end (%d histories); over all runs: %d table growths, %d "
          "generations written, %d of %d snapshot builds taken, %d "
          "unfinished builds removed, %d torn log tails cut" % (
              kills, snapshots, applied, n, h, text.count("load limit: new table"),
              text.count(": wrote generation"),
              text.count("snapshot: now serving"),
              text.count("built snapshot"),
              text.count("left by an unfinished build"),
              text.count("removed a torn tail")))
    del m
    assert kills >= min(CRASH_ROUNDS, 50) or time.monotonic() > t_end
    shutil.rmtree(tmp, ignore_errors=True)


# --- damaged files -------------------------------------------------------------

def flip(path, off):
    with open(path, "r+b") as f:
        f.seek(off)
        b = f.read(1)
        f.seek(off)
        f.write(bytes([b[0] ^ 0x20]))


def gens(d):
    return sorted(g for g in os.listdir(d) if g.startswith("gen-"))


def segments(d):
    c = os.path.join(d, "changes")
    return sorted(os.path.join(c, f) for f in os.listdir(c) if f.endswith(".log"))


def test_damaged_files(env):
    """A damaged newest generation (bit flip, truncation): the previous one
    is served and the log brings back everything acknowledged. A damaged
    change log (bit flip inside, a truncated segment that is not the last):
    the server refuses to start, naming the file."""
    pb = env.pb
    tmp = os.path.join(env.tmp, "damage")
    os.makedirs(tmp)
    d0 = os.path.join(tmp, "data")
    ctl("build", "--snapshot", env.snapshot, "--out", d0)
    st = Stream(pb, env.oracle.records, seed=3)
    log = os.path.join(tmp, "consentd.log")
    flags = ["--checkpoint-changes", "300", "--changelog-segment-bytes", "20000"]
    s = start(d0, log, flags)
    ap = Applier(pb, s.rpc)
    for first in range(1, 2001, 100):
        r = ap.apply([c for _, _, _, c in st.get(first, 100)])
        assert r.apply.applied_sequence == first + 99
    ap.close()
    s.proc.send_signal(signal.SIGKILL)   # no shutdown checkpoint
    s.proc.wait(10)
    s.kill()
    ctl("verify", d0)
    assert len(gens(d0)) == 2, gens(d0)
    assert len(segments(d0)) >= 2, segments(d0)
    state = st.model(2000)
    keys = set(st.touched) | set(random.Random(4).sample(list(st.base), 500))

    def copy(name):
        d = os.path.join(tmp, name)
        shutil.copytree(d0, d)
        return d

    for how in ("flip", "truncate"):
        d = copy("gen-" + how)
        index = os.path.join(d, gens(d)[-1], "index")
        size = os.path.getsize(index)
        if how == "flip":
            flip(index, size // 2)
        else:
            os.truncate(index, size - 4096)
        assert ctl("verify", d, check=False).returncode != 0
        s = start(d, os.path.join(tmp, "gen-%s.log" % how), flags)
        try:
            assert "skipping generation" in s.log_tail(20000)
            assert stats(pb, s.rpc).applied_sequence == 2000
            check_keys(pb, s.rpc, keys, state, "newest generation %s" % how)
        finally:
            stop_ok(s)
        ctl("verify", d)   # the next generation replaced the damaged one

    for how in ("flip", "truncate"):
        d = copy("log-" + how)
        segs = segments(d)
        victim = segs[0]
        size = os.path.getsize(victim)
        if how == "flip":
            flip(victim, size // 2)
        else:
            os.truncate(victim, size - 7)
        srv = helpers.Server(d, os.path.join(tmp, "log-%s.log" % how), extra=flags)
        with pytest.raises(AssertionError) as e:
            srv.start(timeout=15)
        srv.kill()
        assert os.path.basename(victim) in str(e.value), \
            "the refusal does not name %s:\n%s" % (victim, e.value)
    shutil.rmtree(tmp, ignore_errors=True)


# --- swaps under load ------------------------------------------------------------

def rss_kb(pid):
    with open("/proc/%d/status" % pid) as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def sanitized(pid):
    with open("/proc/%d/maps" % pid) as f:
        maps = f.read()
    return "libasan" in maps or "libtsan" in maps


def test_swaps_under_load(env):
    """Generations swapped repeatedly (SIGUSR1: a rebuilt table swapped in
    under RCU, the old one freed after the grace period) while clients
    check continuously and a feeder flips keys and adds new ones: zero
    failed or wrong answers, an acknowledged RET is never allowed, and the
    resident memory comes back to about one generation."""
    pb = env.pb
    tmp = os.path.join(env.tmp, "swaps")
    os.makedirs(tmp)
    snap = os.path.join(tmp, "base.bin")
    ctl("gen", "--records", 1000000, "--seed", 13, "--out", snap)
    d = os.path.join(tmp, "data")
    ctl("build", "--snapshot", snap, "--out", d)
    _, consents, _ = helpers.read_stream(pb, snap)
    rng = random.Random(6)
    picked = rng.sample(consents, 6000)
    del consents
    stable = {}
    for c in picked[:4000]:
        k = (c.brand_code, c.recipient, c.recipient_type, c.channel)
        stable[k] = None
    flips = [(c.brand_code, c.recipient, c.recipient_type, c.channel)
             for c in picked[4000:]]
    flips = [k for k in dict.fromkeys(flips) if k not in stable]
    s = start(d, os.path.join(tmp, "consentd.log"), ["--workers", "2"])
    errors = []
    stop = threading.Event()
    acked_ret = {}          # key -> date of its acknowledged RET
    lock = threading.Lock()
    counts = {"checks": 0, "applies": 0}
    try:
        # What the stable keys answer before anything moves.
        with Rpc(pb, s.rpc) as rpc:
            ks = list(stable)
            for i in range(0, len(ks), 256):
                resp = rpc.check([key_check(k) for k in ks[i:i + 256]])
                for k, v in zip(ks[i:i + 256], resp.verdicts):
                    stable[k] = (v.allow, v.reason, v.status, v.consent_date)

        def checker(seed):
            r = random.Random(seed)
            ks = list(stable)
            try:
                with Rpc(pb, s.rpc, timeout=30) as rpc:
                    while not stop.is_set():
                        part = r.sample(ks, 48)
                        with lock:
                            rets = list(acked_ret.items())
                        extra = r.sample(rets, min(16, len(rets)))
                        resp = rpc.check([key_check(k) for k in part] +
                                         [key_check(k) for k, _ in extra])
                        for k, v in zip(part, resp.verdicts[:48]):
                            got = (v.allow, v.reason, v.status, v.consent_date)
                            if got != stable[k]:
                                errors.append("%s: %s, was %s" % (k, got, stable[k]))
                        for (k, date), v in zip(extra, resp.verdicts[48:]):
                            if v.allow or v.status != RET or v.consent_date < date:
                                errors.append("acknowledged RET %s answered "
                                              "%s" % (k, v))
                        counts["checks"] += len(resp.verdicts)
            except Exception as e:  # any failed request is a failure
                errors.append("checker: %r" % e)

        def feeder():
            seq = stats(pb, s.rpc).applied_sequence
            try:
                ap = Applier(pb, s.rpc, timeout=60)
                i = 0
                while not stop.is_set() and i < len(flips):
                    batch = []
                    for k in flips[i:i + 20]:
                        seq += 1
                        c = pb.Consent(recipient=k[1], channel=k[3],
                                       recipient_type=k[2], brand_code=k[0],
                                       status=RET, source=HS_WEB,
                                       consent_date=CLOCK0 + seq, sequence=seq)
                        batch.append((k, CLOCK0 + seq, c.SerializeToString()))
                    # New keys too, so the table grows now and then.
                    for j in range(200):
                        seq += 1
                        c = pb.Consent(recipient="+90544%07d" % seq,
                                       channel=MESAJ, recipient_type=BIREYSEL,
                                       brand_code=777, status=ONAY,
                                       source=HS_WEB, consent_date=CLOCK0 + seq,
                                       sequence=seq)
                        batch.append((None, 0, c.SerializeToString()))
                    r = ap.apply([c for _, _, c in batch])
                    if r.WhichOneof("body") != "apply":
                        errors.append("apply: %s" % r)
                        return
                    with lock:
                        for k, date, _ in batch:
                            if k is not None:
                                acked_ret[k] = date
                    counts["applies"] += 1
                    i += 20
                    time.sleep(0.01)
                ap.close()
            except Exception as e:
                errors.append("feeder: %r" % e)

        threads = [threading.Thread(target=checker, args=(i,)) for i in range(3)]
        threads.append(threading.Thread(target=feeder))
        for t in threads:
            t.start()
        time.sleep(0.5)
        rss0 = rss_kb(s.proc.pid)
        swaps0 = metric(s, "consentd_generation_swaps_total")
        peak = rss0
        n_rebuilds = 6
        for i in range(n_rebuilds):
            before = metric(s, "consentd_generation_swaps_total")
            s.proc.send_signal(signal.SIGUSR1)
            deadline = time.monotonic() + 30
            while metric(s, "consentd_generation_swaps_total") <= before:
                assert time.monotonic() < deadline, "no swap after SIGUSR1\n" + \
                    s.log_tail()
                peak = max(peak, rss_kb(s.proc.pid))
                time.sleep(0.02)
            time.sleep(0.2)
        stop.set()
        for t in threads:
            t.join(60)
        swaps = metric(s, "consentd_generation_swaps_total") - swaps0
        time.sleep(0.5)
        rss1 = rss_kb(s.proc.pid)
        m = s.metrics()
        gen_mib = m.get("consentd_index_capacity", 0) * 17.4 / 2**20
        assert not errors, "%d failures, first: %s" % (len(errors), errors[:5])
        assert counts["checks"] > 1000 and counts["applies"] > 3, counts
        assert swaps >= n_rebuilds
        # One generation (~18 MiB) of slack: after the swaps the old tables
        # are gone, never one per swap. (Under a sanitizer the runtime's
        # quarantine and shadow memory make RSS meaningless.)
        assert sanitized(s.proc.pid) or rss1 < rss0 + 24 * 1024, \
            "RSS %d kB before the swaps, %d kB after (peak %d kB)" % (
                rss0, rss1, peak)
        print("swaps: %d swaps, %d checks, %d applies, RSS %d -> %d kB "
              "(peak %d), index %.1f MiB" % (swaps, counts["checks"],
                                              counts["applies"], rss0, rss1,
                                              peak, gen_mib))
    finally:
        stop.set()
        stop_ok(s)
    ctl("verify", d)
    shutil.rmtree(tmp, ignore_errors=True)


# --- the property ---------------------------------------------------------------

def dump_set(pb, d, path):
    ctl("dump", d, "--out", path)
    header, consents, trailer = helpers.read_stream(pb, path)
    assert trailer is not None
    got = {(c.brand_code, c.recipient, c.recipient_type, c.channel,
            c.status, c.consent_date, c.source) for c in consents}
    assert len(got) == len(consents)
    return header.sequence, got


def test_replay_and_snapshot_property(env):
    """Applying a change stream twice, or a snapshot taken at sequence k
    (consentctl dump) plus the changes after k (consentctl feed, or
    consentd --snapshot while serving), gives the same index contents as
    applying the whole stream once."""
    pb = env.pb
    tmp = os.path.join(env.tmp, "property")
    os.makedirs(tmp)
    st = Stream(pb, env.oracle.records, seed=8)
    n, k = 3000, 1700
    changes = os.path.join(tmp, "changes.bin")
    st.write(changes, 0, n)
    all_frames = [c for _, _, _, c in st.get(1, n)]

    def server(name, d=None, extra=()):
        d = d or os.path.join(tmp, name)
        if not os.path.exists(d):
            ctl("build", "--snapshot", env.snapshot, "--out", d)
        return d, start(d, os.path.join(tmp, name + ".log"), extra)

    def apply_all(port, frames, twice=False):
        ap = Applier(pb, port)
        rng = random.Random(len(frames))
        for _ in range(2 if twice else 1):
            i = 0
            while i < len(frames):
                m = rng.randint(1, 250)
                r = ap.apply(frames[i:i + m])
                assert r.WhichOneof("body") == "apply", r
                i += m
        ap.close()
        return r.apply

    # Once.
    da, s = server("once")
    apply_all(s.rpc, all_frames)
    stop_ok(s)
    seq_a, once = dump_set(pb, da, os.path.join(tmp, "once.bin"))
    assert seq_a == n
    state = st.model(n)
    assert once == {k_ + v for k_, v in state.items()}, "the index differs " \
        "from the model of the stream"

    # Twice: the second pass is all replays.
    db, s = server("twice")
    last = apply_all(s.rpc, all_frames, twice=True)
    assert last.applied == 0 and last.applied_sequence == n
    assert metric(s, "consentd_changes_skipped_replay_total") >= n
    stop_ok(s)
    assert dump_set(pb, db, os.path.join(tmp, "twice.bin"))[1] == once

    # A snapshot at k, then the rest by consentctl feed --no-origin (which
    # resumes after the server's applied sequence).
    dc, s = server("at-k")
    apply_all(s.rpc, all_frames[:k])
    stop_ok(s)
    snap_k = os.path.join(tmp, "snap-k.bin")
    seq_k, _ = dump_set(pb, dc, snap_k)
    assert seq_k == k
    dd = os.path.join(tmp, "from-k")
    ctl("build", "--snapshot", snap_k, "--out", dd)
    _, s = server("from-k", dd)
    p = ctl("feed", "--rpc", "127.0.0.1:%d" % s.rpc, "--no-origin", changes)
    assert stats(pb, s.rpc).applied_sequence == n, p.stderr.decode()
    stop_ok(s)
    assert dump_set(pb, dd, os.path.join(tmp, "from-k.bin"))[1] == once

    # The same snapshot handed to a running server (--snapshot) that
    # already applied a different prefix: the result is the same.
    de, s = server("take", extra=["--snapshot", snap_k])
    deadline = time.monotonic() + 30
    while metric(s, "consentd_generation_swaps_total") < 1:
        assert time.monotonic() < deadline, s.log_tail()
        time.sleep(0.05)
    assert stats(pb, s.rpc).applied_sequence == k
    apply_all(s.rpc, all_frames[k - 300:])
    stop_ok(s)
    assert dump_set(pb, de, os.path.join(tmp, "take.bin"))[1] == once
    ctl("verify", de)
    shutil.rmtree(tmp, ignore_errors=True)
