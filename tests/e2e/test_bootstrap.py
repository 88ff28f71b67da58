"""Bootstrap from a peer (DESIGN 9): GET /v1/snapshot on the ops port,
consentd --bootstrap-from and consentctl dump --from, against real consentd
processes: a fresh server built from a peer that is under check load (every
check verified against the oracle) and has changes newer than its newest
generation on disk; the two dump the same records at the same sequence;
the peer's origins and cursors carry over, so the bootstrapped server
takes the origin's next batch and refuses a stale one with 409; a download
cut mid-stream (a proxy that closes the connection) publishes nothing and
the server exits 1 saying why; dump --from equals consentctl dump of the
peer's own data; tokens guard the snapshot."""

import os
import random
import signal
import socket
import subprocess
import threading
import time

import helpers
from helpers import Rpc
import test_changes as tc
from test_origins import origin_apply, stats_of

ORIGIN = "iys:600123"


def url(server):
    return "http://%s:%d" % (helpers.LOOPBACK, server.http)


def gens(d):
    return sorted(n for n in os.listdir(d) if n.startswith("gen-"))


def stream_of(pb, path):
    """(header, [(brand, recipient, rtype, channel, status, source, date)],
    trailer) of a snapshot stream file: the records in stream order."""
    header, consents, trailer = helpers.read_stream(pb, path)
    recs = [(c.brand_code, c.recipient, c.recipient_type, c.channel,
             c.status, c.source, c.consent_date) for c in consents]
    return header, recs, trailer


def dump_from(pb, server, path, token=None):
    args = ["dump", "--from", url(server), "--out", path]
    if token:
        args += ["--token", token]
    tc.ctl(*args)
    return stream_of(pb, path)


def cursors(header):
    return [(o.origin, o.cursor) for o in header.origins]


class CheckLoad(threading.Thread):
    """Checks of keys no change touches, in batches over one RPC
    connection, each verdict compared with the oracle's (or with
    expect(key), a verdict tuple, when given), until stopped."""

    def __init__(self, env, port, keys, seed, expect=None):
        super().__init__()
        self.env, self.port, self.keys = env, port, keys
        o = env.oracle
        self.expect = expect or (lambda k: o.expect(
            k[1], brand=k[0], channel=k[3], rtype=k[2]).tuple())
        self.rng = random.Random(seed)
        self.halt = threading.Event()
        self.checks = 0
        self.failures = []

    def run(self):
        pb = self.env.pb
        try:
            with Rpc(pb, self.port) as rpc:
                while not self.halt.is_set():
                    part = self.rng.sample(self.keys, 32)
                    resp = rpc.check([tc.key_check(k) for k in part])
                    for k, v in zip(part, resp.verdicts):
                        exp = self.expect(k)
                        if helpers.verdict_tuple(v) != exp:
                            self.failures.append((k, helpers.verdict_tuple(v),
                                                  exp))
                    self.checks += len(part)
        except Exception as e:  # an error is a failure of the test
            self.failures.append(("error", repr(e)))

    def finish(self):
        self.halt.set()
        self.join(30)
        assert not self.is_alive(), "the check thread hung"
        assert not self.failures, "checks failed: %s" % self.failures[:5]
        assert self.checks > 0, "no check was made"


def feed_origin(pb, port, st, first, n, batch, after):
    """Changes first..first+n-1 of st as origin batches of `batch`, cursor
    = the batch's last file sequence. Returns the last cursor."""
    with Rpc(pb, port) as rpc:
        i = first
        while i < first + n:
            m = min(batch, first + n - i)
            cb = [c for _, _, _, c in st.get(i, m)]
            nxt = str(i + m - 1)
            r = rpc.call(origin_apply(pb, 0, cb, ORIGIN, after, nxt))
            assert r.WhichOneof("body") == "apply", r
            assert r.apply.applied + r.apply.skipped == m, r
            after, i = nxt, i + m
    return after


def newest_watermark(pb, d, tmp):
    """The watermark of d's newest generation on disk (consentctl dump)."""
    path = os.path.join(tmp, "disk-%d.bin" % time.monotonic_ns())
    tc.ctl("dump", d, "--out", path)
    h, _, _ = helpers.read_stream(pb, path)
    return h.sequence


def test_bootstrap_from_a_peer_under_load(env):
    """The peer applies 260 changes with origins (a generation written
    through 200 on SIGUSR1, so the last 60 are in no generation on disk), then serves checks from a
    thread while a fresh consentd bootstraps from it. No check fails or
    errors; the new server's served state is the peer's at the same
    sequence (record for record), with the peer's cursor; it accepts the
    origin's next batch and refuses a stale one with 409. consentctl dump
    --from equals consentctl dump of the peer's data once the peer wrote it
    at its stop."""
    pb = env.pb
    peer_dir = env.data_dir()
    peer = tc.start(peer_dir, os.path.join(env.tmp, "bs-peer.log"))
    new = None
    load = None
    try:
        st = tc.Stream(pb, env.oracle.records, seed=71)
        last = feed_origin(pb, peer.rpc, st, 1, 200, 50, "")
        # A checkpoint through 200 (SIGUSR1: the served state rebuilt and
        # written), then changes that are in no generation on disk.
        peer.proc.send_signal(signal.SIGUSR1)
        deadline = time.monotonic() + 60
        while "rebuild: " not in peer.log_tail() or \
                "written and swapped in" not in peer.log_tail():
            assert time.monotonic() < deadline, peer.log_tail()
            time.sleep(0.02)
        assert newest_watermark(pb, peer_dir, env.tmp) == 200
        last = feed_origin(pb, peer.rpc, st, 201, 60, 20, last)
        assert last == "260"
        applied = tc.stats(pb, peer.rpc).applied_sequence
        assert applied == 260
        on_disk = newest_watermark(pb, peer_dir, env.tmp)
        assert on_disk == 200, (on_disk, peer.log_tail())

        touched = {k for _, k, _, _ in st.changes}
        keys = [k for k in env.oracle.records if k not in touched]
        load = CheckLoad(env, peer.rpc, keys, 5)
        load.start()

        new_dir = os.path.join(env.tmp, "bs-new")
        new = helpers.Server(new_dir, os.path.join(env.tmp, "bs-new.log"),
                             extra=["--bootstrap-from", url(peer)])
        new.start(timeout=120)
        # The load went on through the whole bootstrap.
        time.sleep(0.2)
        load.finish()
        load = None

        assert len(gens(new_dir)) == 1, gens(new_dir)
        assert tc.stats(pb, new.rpc).applied_sequence == applied
        assert stats_of(pb, new.rpc, ORIGIN).origin_cursor == "260"

        hp, rp, tp = dump_from(pb, peer, os.path.join(env.tmp, "bs-p.bin"))
        hn, rn, tn = dump_from(pb, new, os.path.join(env.tmp, "bs-n.bin"))
        assert hp.sequence == hn.sequence == applied
        assert hp.origins_kind == hn.origins_kind == 2
        assert cursors(hp) == cursors(hn) == [(ORIGIN, "260")]
        assert sorted(rp) == sorted(rn)
        assert tp.record_count == tn.record_count == len(rp)
        # The served state is the model of every change applied.
        model = st.model(260)
        got = {r[:4]: (r[4], r[6], r[5]) for r in rn}
        assert got == model, "bootstrapped state differs from the model"

        # §8's rule goes on from the peer's cursor.
        with Rpc(pb, new.rpc) as rpc:
            cb = [c for _, _, _, c in st.get(261, 20)]
            r = rpc.call(origin_apply(pb, 0, cb, ORIGIN, "260", "280"))
            assert r.WhichOneof("body") == "apply", r
            assert r.apply.applied + r.apply.skipped == 20, r
            cb = [c for _, _, _, c in st.get(281, 10)]
            r = rpc.call(origin_apply(pb, 0, cb, ORIGIN, "260", "290"))
            assert r.WhichOneof("body") == "error", r
            assert r.error.code == 409, r
            assert "280" in r.error.message, r.error.message
            # And the kind: without origin is the other kind, 409.
            req = pb.Request()
            c = req.apply.changes.add()
            c.ParseFromString(cb[0])
            c.sequence = applied + 1000
            r = rpc.call(req)
            assert r.WhichOneof("body") == "error" and r.error.code == 409, r
        assert tc.stats(pb, new.rpc).applied_sequence == applied + 20
        tc.check_keys(pb, new.rpc, {k for _, k, _, _ in st.changes},
                      st.model(280), "after the next batch")

        # dump --from of the peer equals its own data, written at stop.
        tc.stop_ok(peer)
        peer = None
        tc.ctl("dump", peer_dir, "--out", os.path.join(env.tmp, "bs-d.bin"))
        hd, rd, _ = stream_of(pb, os.path.join(env.tmp, "bs-d.bin"))
        assert hd.sequence == hp.sequence
        assert cursors(hd) == cursors(hp) and hd.origins_kind == 2
        assert rd == rp, "dump --from and dump differ"
    finally:
        if load is not None:
            load.halt.set()
            load.join(30)
        if new is not None:
            tc.stop_ok(new)
        if peer is not None:
            tc.stop_ok(peer)


class CuttingProxy(threading.Thread):
    """Forwards one connection to the peer and closes both sides once
    `limit` bytes of the answer went through: a download cut mid-stream."""

    def __init__(self, port, limit):
        super().__init__(daemon=True)
        self.port, self.limit = port, limit
        self.lsock = socket.socket()
        self.lsock.bind((helpers.LOOPBACK, 0))
        self.lsock.listen(4)
        self.lsock.settimeout(60)
        self.sent = 0
        self.addr = "http://%s:%d" % self.lsock.getsockname()

    def run(self):
        try:
            c, _ = self.lsock.accept()
        except OSError:
            return
        u = socket.create_connection((helpers.LOOPBACK, self.port))
        c.settimeout(30)
        u.settimeout(30)
        req = b""
        while b"\r\n\r\n" not in req:
            d = c.recv(4096)
            if not d:
                break
            req += d
        u.sendall(req)
        try:
            while self.sent < self.limit:
                d = u.recv(min(65536, self.limit - self.sent))
                if not d:
                    break
                c.sendall(d)
                self.sent += len(d)
        finally:
            c.close()
            u.close()
            self.lsock.close()


def test_cut_download_publishes_nothing(env):
    """A download cut after 200 kB (of some 800 kB) builds nothing: the new
    server exits 1 naming the failed download, and its DIR holds no
    generation. consentctl dump --from through the same cut fails too and
    leaves no file."""
    pb = env.pb
    peer = env.server(name="bs-cut-peer")
    try:
        p = CuttingProxy(peer.http, 200000)
        p.start()
        d = os.path.join(env.tmp, "bs-cut")
        log = os.path.join(env.tmp, "bs-cut.log")
        s = helpers.Server(d, log, extra=["--bootstrap-from", p.addr]).launch()
        try:
            rc = s.proc.wait(60)
        except subprocess.TimeoutExpired:
            s.kill()
            raise AssertionError("a cut download did not end the server\n" +
                                 s.log_tail())
        s.kill()
        assert rc == 1, "exit %s\n%s" % (rc, s.log_tail())
        text = s.log_tail()
        assert "--bootstrap-from %s" % p.addr in text, text
        assert "download failed after" in text, text
        assert gens(d) == [], gens(d)
        assert p.sent == 200000, p.sent

        p = CuttingProxy(peer.http, 100000)
        p.start()
        out = os.path.join(env.tmp, "bs-cut.bin")
        r = tc.ctl("dump", "--from", p.addr, "--out", out, check=False)
        assert r.returncode == 1, r
        assert b"download failed" in r.stderr, r.stderr
        assert not os.path.exists(out)
        assert not [n for n in os.listdir(env.tmp) if n.startswith("bs-cut.bin")]

        # The peer served on: a whole snapshot still comes.
        h, recs, t = dump_from(pb, peer, os.path.join(env.tmp, "bs-ok.bin"))
        assert t.record_count == len(recs) == len(env.oracle.records)
    finally:
        tc.stop_ok(peer)


def test_peer_killed_mid_stream(env):
    """kill -9 of the peer while a bootstrap downloads: the new server
    exits 1 and publishes nothing. The peer holds 300k records (some 11
    MB of stream, more than the pipe and the socket buffers between) and
    the proxy takes 50 kB of them before the kill, with a small receive
    buffer, so the kill lands mid-stream."""
    snap = os.path.join(env.tmp, "bs-kill-snap.bin")
    pd = os.path.join(env.tmp, "bs-kill-peer")
    tc.ctl("gen", "--records", 300000, "--seed", 9, "--out", snap)
    tc.ctl("build", "--snapshot", snap, "--out", pd)
    peer = tc.start(pd, os.path.join(env.tmp, "bs-kill-peer.log"))
    try:
        gate = threading.Event()

        class Holding(CuttingProxy):
            def run(self):
                c, _ = self.lsock.accept()
                u = socket.socket()
                u.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 16384)
                u.connect((helpers.LOOPBACK, self.port))
                req = b""
                while b"\r\n\r\n" not in req:
                    req += c.recv(4096)
                u.sendall(req)
                while self.sent < self.limit:
                    d = u.recv(min(65536, self.limit - self.sent))
                    if not d:
                        break
                    c.sendall(d)
                    self.sent += len(d)
                gate.set()
                # After the kill: whatever the peer had sent, then its end.
                try:
                    while True:
                        d = u.recv(65536)
                        if not d:
                            break
                        c.sendall(d)
                except OSError:
                    pass
                c.close()
                u.close()

        p = Holding(peer.http, 50000)
        p.start()
        d = os.path.join(env.tmp, "bs-kill")
        s = helpers.Server(d, os.path.join(env.tmp, "bs-kill.log"),
                           extra=["--bootstrap-from", p.addr]).launch()
        assert gate.wait(60), "the proxy saw no stream"
        # The stalled download holds nothing up on the peer: its ops port
        # answers, and so does a check over the RPC.
        st, _, body = peer.http_get(
            "/v1/check?recipient=%2B905321234567&brand_code=600123"
            "&channel=MESAJ", timeout=5)
        assert st == 200 and b'"reason"' in body, (st, body)
        assert peer.http_get("/readyz", timeout=5)[0] == 200
        with Rpc(env.pb, peer.rpc) as rpc:
            v = rpc.check_one("+905321234567", 600123, helpers.MESAJ)
            assert v.reason != 0, v
        peer.kill()
        try:
            rc = s.proc.wait(60)
        except subprocess.TimeoutExpired:
            s.kill()
            raise AssertionError("no exit after the peer died\n" + s.log_tail())
        s.kill()
        assert rc == 1, "exit %s\n%s" % (rc, s.log_tail())
        assert "download failed" in s.log_tail(), s.log_tail()
        assert gens(d) == []
    finally:
        peer.kill()


def test_bootstrap_flag_ignored_with_a_generation(env):
    """A DIR that has a generation serves it; --bootstrap-from is logged as
    ignored and never contacted (here it names a port nothing serves)."""
    d = env.data_dir()
    s = tc.start(d, os.path.join(env.tmp, "bs-ign.log"),
                 extra=["--bootstrap-from", "http://127.0.0.1:1"])
    try:
        assert "--bootstrap-from http://127.0.0.1:1 ignored" in s.log_tail()
    finally:
        tc.stop_ok(s)


def test_bootstrap_bad_flags(env):
    """A URL that is not http(s), and both --snapshot and
    --bootstrap-from, are bad flags: exit 2 with the reason."""
    d = os.path.join(env.tmp, "bs-bad")
    for extra, want in (
            (["--bootstrap-from", "ftp://x:1"], "not an http:// or https://"),
            (["--bootstrap-from", "http://x:1", "--snapshot", env.snapshot],
             "give one")):
        p = subprocess.run([helpers.binary("consentd"), "--data-dir", d] +
                           extra, stdout=subprocess.PIPE,
                           stderr=subprocess.PIPE, timeout=30)
        assert p.returncode == 2, p
        assert want.encode() in p.stderr, p.stderr


def test_snapshot_needs_the_right_principal(env, partners, token_server):
    """With a token file: no token is 401, a partner of some brands 403,
    root (brands '*' and stats) gets the whole snapshot, and
    --bootstrap-from with CONSENTD_TOKEN=root's builds from it."""
    s = token_server
    st, _, body = s.http_get("/v1/snapshot")
    assert st == 401, (st, body)
    st, _, body = s.http_get("/v1/snapshot", headers={
        "Authorization": "Bearer " + partners.tokens["alice"]})
    assert st == 403 and b"'*'" in body, (st, body)
    out = os.path.join(env.tmp, "bs-root.bin")
    h, recs, t = dump_from(env.pb, s, out, token=partners.tokens["root"])
    assert t.record_count == len(recs) == len(env.oracle.records)

    d = os.path.join(env.tmp, "bs-tok")
    new = helpers.Server(d, os.path.join(env.tmp, "bs-tok.log"),
                         extra=["--bootstrap-from", url(s)])
    os.environ["CONSENTD_TOKEN"] = partners.tokens["root"]
    try:
        new.launch()
    finally:
        del os.environ["CONSENTD_TOKEN"]
    try:
        new.wait_ready(60)
        with Rpc(env.pb, new.rpc) as rpc:
            assert rpc.stats().records == len(env.oracle.records)
    finally:
        tc.stop_ok(new)
