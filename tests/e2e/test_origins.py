"""Changes from many origins, exactly once (DESIGN 8) against real consentd
processes: Apply with origin, after_cursor and cursor from Google's
protobuf runtime, two feeders of different origins interleaving, a stale
cursor refused with 409 and nothing of its batch visible, cursors kept
across SIGTERM and SIGKILL restarts, the two kinds refusing to mix, and
consentctl feed --origin applying a file once however often it runs.

The change streams and their model (DESIGN 2's order rule) are
test_changes.py's; with origins the file's sequences are the feeder's
cursors and the server gives log positions of its own."""

import os
import random
import signal
import threading
import time

import helpers
from helpers import Rpc
import test_changes as tc


def origin_apply(pb, rid, changes, origin, after, cursor):
    """A Request{apply} of serialized Consents with their sequences zeroed
    (the server's positions, not the file's)."""
    req = pb.Request(id=rid)
    a = req.apply
    for cb in changes:
        c = a.changes.add()
        c.ParseFromString(cb)
        c.sequence = 0
    a.origin = origin
    a.after_cursor = after
    a.cursor = cursor
    a.SetInParent()
    return req


def stats_of(pb, port, origin):
    with Rpc(pb, port) as rpc:
        req = pb.Request()
        req.stats.origin = origin
        req.stats.SetInParent()
        r = rpc.call(req)
        assert r.WhichOneof("body") == "stats", r
        return r.stats


def combined_model(base, streams_upto):
    """The state after every change of each (stream, through) by the order
    rule: the highest rank per key, whatever the interleaving."""
    state = dict(base)
    for st, upto in streams_upto:
        for seq, key, val, _ in st.changes:
            if seq > upto:
                break
            old = state.get(key)
            if old is None or tc.rank(val) > tc.rank(old):
                state[key] = val
    return state


class Feeder(threading.Thread):
    """One origin: its own stream, sent in random batches with cursors
    (the file sequence of each batch's last change)."""

    def __init__(self, pb, port, origin, st, n, seed):
        super().__init__()
        self.pb, self.port, self.origin, self.st, self.n = pb, port, origin, st, n
        self.rng = random.Random(seed)
        self.error = None
        self.applied = 0

    def run(self):
        try:
            with Rpc(self.pb, self.port) as rpc:
                cursor, i = "", 1
                while i <= self.n:
                    m = min(self.rng.randint(1, 60), self.n - i + 1)
                    batch = [cb for _, _, _, cb in self.st.get(i, m)]
                    nxt = str(i + m - 1)
                    r = rpc.call(origin_apply(self.pb, 0, batch, self.origin,
                                              cursor, nxt))
                    assert r.WhichOneof("body") == "apply", r
                    assert r.apply.applied + r.apply.skipped == m, r
                    self.applied += m
                    cursor, i = nxt, i + m
        except Exception as e:  # reported by the test
            self.error = e


def test_two_origins_interleave(env):
    """Two feeders of different origins at once: every change of both is
    applied exactly once, in server positions 1..N of its own, the index
    equals the model of both streams, and each origin's cursor is the last
    file sequence it sent."""
    pb = env.pb
    d = env.data_dir()
    s = tc.start(d, os.path.join(env.tmp, "origins-two.log"))
    try:
        w0 = tc.stats(pb, s.rpc).applied_sequence
        a = tc.Stream(pb, env.oracle.records, seed=31)
        b = tc.Stream(pb, env.oracle.records, seed=32)
        n = 900
        a.upto_seq(n)
        b.upto_seq(n)
        fa = Feeder(pb, s.rpc, "iys:brand-a", a, n, 1)
        fb = Feeder(pb, s.rpc, "gateway:b", b, n, 2)
        fa.start()
        fb.start()
        fa.join(120)
        fb.join(120)
        assert fa.error is None and fb.error is None, (fa.error, fb.error)
        assert tc.stats(pb, s.rpc).applied_sequence == w0 + 2 * n
        assert stats_of(pb, s.rpc, "iys:brand-a").origin_cursor == str(n)
        assert stats_of(pb, s.rpc, "gateway:b").origin_cursor == str(n)
        assert stats_of(pb, s.rpc, "nobody").origin_cursor == ""
        state = combined_model(env.oracle.records, [(a, n), (b, n)])
        keys = {k for _, k, _, _ in a.changes} | {k for _, k, _, _ in b.changes}
        tc.check_keys(pb, s.rpc, keys, state, "two origins")
    finally:
        tc.stop_ok(s)
    tc.ctl("verify", d)


def test_stale_cursor_refused_nothing_applied(env):
    """A batch whose after_cursor is not the stored cursor is an Error 409
    naming the stored cursor, and nothing of it is applied: the checks
    answer as before, the applied sequence stays, before and after a
    restart. The kinds do not mix: an Apply without origin is 409 too."""
    pb = env.pb
    d = env.data_dir()
    log = os.path.join(env.tmp, "origins-stale.log")
    s = tc.start(d, log)
    st = tc.Stream(pb, env.oracle.records, seed=33)
    try:
        with Rpc(pb, s.rpc) as rpc:
            first = [cb for _, _, _, cb in st.get(1, 40)]
            r = rpc.call(origin_apply(pb, 0, first, "x", "", "40"))
            assert r.WhichOneof("body") == "apply", r
            seq = r.apply.applied_sequence
            state = st.model(40)
            stale = st.get(41, 40)
            keys = {k for _, k, _, _ in st.changes}
            for after in ("", "39", "41"):
                r = rpc.call(origin_apply(pb, 0, [cb for _, _, _, cb in stale],
                                          "x", after, "80"))
                assert r.WhichOneof("body") == "error", r
                assert r.error.code == 409 and '"40"' in r.error.message, r.error
            # The other kind: refused, saying why.
            r = rpc.call(pb.Request(apply=pb.ApplyRequest(
                changes=[pb.Consent.FromString(stale[0][3])])))
            assert r.error.code == 409 and "origin" in r.error.message, r.error
        assert tc.stats(pb, s.rpc).applied_sequence == seq
        assert stats_of(pb, s.rpc, "x").origin_cursor == "40"
        tc.check_keys(pb, s.rpc, keys, state, "after the 409s")
        assert s.metrics().total("consentd_applies_conflict_total") == 4
    finally:
        tc.stop_ok(s)
    s = tc.start(d, log)
    try:
        assert tc.stats(pb, s.rpc).applied_sequence == seq
        tc.check_keys(pb, s.rpc, keys, state, "restarted after the 409s")
    finally:
        tc.stop_ok(s)


def test_restarts_keep_cursors(env):
    """Cursors and the kind survive a SIGTERM (a generation written at the
    stop) and a SIGKILL (the change log replayed past it); the next batch
    must follow the cursor from before the restart."""
    pb = env.pb
    d = env.data_dir()
    log = os.path.join(env.tmp, "origins-restart.log")
    st = tc.Stream(pb, env.oracle.records, seed=34)
    cursor, i = "", 1

    def feed(s, m):
        nonlocal cursor, i
        with Rpc(pb, s.rpc) as rpc:
            batch = [cb for _, _, _, cb in st.get(i, m)]
            r = rpc.call(origin_apply(pb, 0, batch, "file:f", cursor,
                                      str(i + m - 1)))
            assert r.WhichOneof("body") == "apply", r
            cursor, i = str(i + m - 1), i + m
            return r.apply.applied_sequence

    s = tc.start(d, log)
    try:
        feed(s, 30)
        seq = feed(s, 30)
    finally:
        tc.stop_ok(s)
    s = tc.start(d, log)
    try:
        assert stats_of(pb, s.rpc, "file:f").origin_cursor == "60"
        assert tc.stats(pb, s.rpc).applied_sequence == seq
        seq = feed(s, 25)
    finally:
        s.kill()  # SIGKILL: no checkpoint, the log has it all
    s = tc.start(d, log)
    try:
        assert stats_of(pb, s.rpc, "file:f").origin_cursor == "85"
        assert tc.stats(pb, s.rpc).applied_sequence == seq
        with Rpc(pb, s.rpc) as rpc:
            r = rpc.call(origin_apply(pb, 0, [st.get(86, 1)[0][3]], "file:f",
                                      "60", "86"))
            assert r.error.code == 409 and '"85"' in r.error.message, r.error
            r = rpc.call(pb.Request(apply=pb.ApplyRequest(
                changes=[pb.Consent.FromString(st.get(86, 1)[0][3])])))
            assert r.error.code == 409, r
        tc.check_keys(pb, s.rpc, {k for _, k, _, _ in st.changes[:85]},
                      st.model(85), "after SIGKILL")
    finally:
        tc.stop_ok(s)
    tc.ctl("verify", d)


def test_feed_origin_twice_applies_once(env):
    """consentctl feed with an origin on the same file twice: the first run
    applies it, the second says it resumed and sends nothing; the default
    origin is file: + the base name; --no-origin into a directory fed with
    origins is refused (409) and changes nothing."""
    pb = env.pb
    d = env.data_dir()
    tmp = os.path.join(env.tmp, "origins-feed")
    os.makedirs(tmp, exist_ok=True)
    st = tc.Stream(pb, env.oracle.records, seed=35)
    n = 1200
    path = os.path.join(tmp, "changes.bin")
    st.write(path, 0, n)
    s = tc.start(d, os.path.join(tmp, "server.log"))
    try:
        rpc = "127.0.0.1:%d" % s.rpc
        w0 = tc.stats(pb, s.rpc).applied_sequence
        p = tc.ctl("feed", "--rpc", rpc, "--origin", "X", "--batch", "97", path)
        err = p.stderr.decode()
        assert "origin X: new" in err, err
        assert tc.stats(pb, s.rpc).applied_sequence == w0 + n
        assert stats_of(pb, s.rpc, "X").origin_cursor == str(n)
        p = tc.ctl("feed", "--rpc", rpc, "--origin", "X", path)
        err = p.stderr.decode()
        assert "resumed after cursor %d" % n in err, err
        assert "sent 0, applied 0" in err, err
        assert tc.stats(pb, s.rpc).applied_sequence == w0 + n
        keys = {k for _, k, _, _ in st.changes}
        tc.check_keys(pb, s.rpc, keys, st.model(n), "fed once")
        # A longer file later: only the new part goes.
        st.write(path, 0, n + 100)
        p = tc.ctl("feed", "--rpc", rpc, "--origin", "X", path)
        assert "sent 100," in p.stderr.decode(), p.stderr.decode()
        assert tc.stats(pb, s.rpc).applied_sequence == w0 + n + 100
        # The default origin: file:changes.bin, a new one (the file again).
        p = tc.ctl("feed", "--rpc", rpc, path)
        assert "origin file:changes.bin: new" in p.stderr.decode()
        assert stats_of(pb, s.rpc, "file:changes.bin").origin_cursor == \
            str(n + 100)
        seq = tc.stats(pb, s.rpc).applied_sequence
        # The old way into this directory (a stream following the applied
        # sequence, so that it sends): refused whole.
        old = os.path.join(tmp, "old-way.bin")
        st.write(old, seq, seq + 5)
        p = tc.ctl("feed", "--rpc", rpc, "--no-origin", old, check=False)
        assert p.returncode == 1 and "409" in p.stderr.decode(), \
            p.stderr.decode()
        assert tc.stats(pb, s.rpc).applied_sequence == seq
        tc.check_keys(pb, s.rpc, {k for _, k, _, _ in st.changes},
                      st.model(n + 100), "fed twice")
    finally:
        tc.stop_ok(s)


def feed_origin_until_killed(pb, port, st, origin, first, cursor, stop, out,
                             window):
    """Sends the stream from file sequence `first` in batches with cursors,
    pipelining `window` of them, until the connection dies. out["acked"]:
    the last cursor acknowledged; out["bounds"]: every cursor sent."""
    rng = random.Random(first)
    try:
        rpc = Rpc(pb, port, timeout=10.0)
    except OSError:
        return
    inflight = []
    i = first
    try:
        while not stop.is_set():
            m = rng.choice((1, 3, 20, 80))
            batch = [cb for _, _, _, cb in st.get(i, m)]
            nxt = str(i + m - 1)
            rid = len(out["bounds"]) + 1000 * first
            rpc.send(origin_apply(pb, rid, batch, origin, cursor, nxt))
            out["bounds"].add(i + m - 1)
            inflight.append((rid, i + m - 1))
            cursor, i = nxt, i + m
            if len(inflight) < window:
                continue
            rid, last = inflight.pop(0)
            r = rpc.recv()
            assert r.id == rid and r.WhichOneof("body") == "apply", r
            out["acked"] = max(out["acked"], last)
    except (OSError, helpers.Closed):
        pass
    finally:
        rpc.close()


def test_kill9_cursor_moves_with_its_changes(env):
    """An origin's feeder runs while consentd is SIGKILLed at random
    moments, checkpoints and log drops included. After each restart the
    stored cursor is at least the last one acknowledged, is the end of a
    batch that was sent, and the server holds exactly the changes through
    it: the applied sequence is the number of changes through the cursor
    (the server numbers them densely) and the keys answer as the model at
    the cursor. So no batch is ever half there, or there without its
    cursor, or its cursor without it."""
    pb = env.pb
    d = env.data_dir()
    log = os.path.join(env.tmp, "origins-kill9.log")
    st = tc.Stream(pb, env.oracle.records, seed=36)
    rng = random.Random(int(os.environ.get("CONSENTD_CRASH_SEED", "9")))
    flags = ["--checkpoint-changes", "300"]
    out = {"acked": 0, "bounds": {0}}
    w0 = None
    rounds = max(4, min(12, tc.CRASH_ROUNDS))
    for rnd in range(rounds + 1):
        s = tc.start(d, log, flags)
        cur = stats_of(pb, s.rpc, "kill9").origin_cursor
        c = int(cur) if cur else 0
        a = tc.stats(pb, s.rpc).applied_sequence
        if w0 is None:
            w0 = a
        assert c >= out["acked"], "round %d: cursor %d < acknowledged %d" % (
            rnd, c, out["acked"])
        assert c in out["bounds"], "round %d: cursor %d is no batch's end" % (
            rnd, c)
        assert a - w0 == c, "round %d: %d changes applied, cursor %d" % (
            rnd, a - w0, c)
        recent = [k for k, q in st.touched.items() if q > c - 200]
        state = st.model(c)
        tc.check_keys(pb, s.rpc, set(recent) | set(rng.sample(
            st.keys, min(200, len(st.keys)))), state, "round %d" % rnd)
        if rnd == rounds:
            tc.stop_ok(s)
            break
        stop = threading.Event()
        t = threading.Thread(target=feed_origin_until_killed,
                             args=(pb, s.rpc, st, "kill9", c + 1, cur, stop,
                                   out, rng.choice((1, 3))))
        t.start()
        time.sleep(rng.uniform(0.02, 0.4))
        s.proc.send_signal(signal.SIGKILL)
        s.proc.wait(10)
        stop.set()
        t.join(30)
        assert not t.is_alive()
        s.kill()
    tc.ctl("verify", d)
    assert out["acked"] > 0
    with open(log, errors="replace") as f:
        text = f.read()
    print("origins kill9: %d rounds, cursor %d, %d batches sent; %d "
          "generations written, %d torn log tails cut" % (
              rounds, c, len(out["bounds"]) - 1,
              text.count(": wrote generation"),
              text.count("removed a torn tail")))


def test_principals_and_origins(env, partners):
    """With --tokens: the brand check comes first (a change outside the
    principal's brands is 403 even with a stale cursor), and an origin's
    cursor is told to principals that may apply (or have the stats right),
    not to one that may only check."""
    pb = env.pb
    d = env.data_dir()
    s = tc.start(d, os.path.join(env.tmp, "origins-tokens.log"),
                 ["--tokens", partners.path])
    try:
        st = tc.Stream(pb, env.oracle.records, seed=37)
        brand = partners.bob_brands[0]
        mine = [c for _, k, _, c in st.get(1, 2000) if k[0] == brand][:20]
        other = [c for _, k, _, c in st.get(1, 2000) if k[0] != brand][:1]
        assert mine and other
        with Rpc(pb, s.rpc) as rpc:
            assert rpc.auth(partners.tokens["carol"]).WhichOneof("body") == "auth"
            r = rpc.call(origin_apply(pb, 0, mine, "carol:1", "", "a"))
            assert r.WhichOneof("body") == "apply", r
            r = rpc.call(origin_apply(pb, 0, mine[:1] + other, "carol:1",
                                      "stale", "b"))
            assert r.error.code == 403, r
            req = pb.Request()
            req.stats.origin = "carol:1"
            assert rpc.call(req).stats.origin_cursor == "a"
        with Rpc(pb, s.rpc) as rpc:
            assert rpc.auth(partners.tokens["alice"]).WhichOneof("body") == "auth"
            req = pb.Request()
            req.stats.origin = "carol:1"
            r = rpc.call(req)
            assert r.WhichOneof("body") == "stats" and r.stats.origin_cursor == ""
        with Rpc(pb, s.rpc) as rpc:
            assert rpc.auth(partners.tokens["root"]).WhichOneof("body") == "auth"
            req = pb.Request()
            req.stats.origin = "carol:1"
            assert rpc.call(req).stats.origin_cursor == "a"
    finally:
        tc.stop_ok(s)
