"""The fleet (DESIGN 9) with real parts: a 3-node NATS JetStream cluster on
loopback (natscluster.py: Debian's nats-server, each node its own store),
three consentd replicas (--nats, each its own durable consumer), consentctl
publish feeding one origin from a file, and Applies through two replicas
feeding another, while NATS nodes, replicas and the publisher are killed
with SIGKILL at random moments and started again.

After each cycle, once every replica has processed the stream to its end:
every change acknowledged (an ApplyResponse, or a 409 naming its batch's
cursor as stored) is answered as applied by every replica (the answer's
rank is at least the acknowledged change's: the other origin may have set
a later one), and no acknowledged RET that is the answer comes back ALLOW.
At the end, every replica answers the combined model of both streams for
every key, and the replicas' dumps are the same set of records at the same
watermark. Also: a cursor conflict is a 409 and nothing of its batch is
applied anywhere; losing the NATS quorum turns Applies into 503 within a
bound and /readyz false after --max-lag while checks go on, and the fleet
recovers when the quorum returns, without a restart.

Cycles: 30 by default (make test), CONSENTD_FLEET_ROUNDS=300 for the long
run."""

import json
import os
import random
import re
import shutil
import subprocess
import threading
import time
import urllib.request

import pytest

import helpers
from helpers import Rpc
import natscluster
import test_changes as tc
import test_origins as to
from test_bootstrap import CheckLoad

ROUNDS = int(os.environ.get("CONSENTD_FLEET_ROUNDS", "30"))
MAX_LAG = 2
N_PUBLISHED = 3000      # origin A: consentctl publish from a file
B_BATCH = 10            # origin B: Applies through replicas 1 and 2
PUB_ORIGIN = "file:fleet-a.bin"
APPLY_ORIGIN = "gateway:b"


def rpc_port(s):
    return s.rpc


class Fleet:
    def __init__(self, env):
        self.env = env
        self.pb = env.pb
        self.tmp = os.path.join(env.tmp, "fleet")
        os.makedirs(self.tmp, exist_ok=True)
        self.cluster = natscluster.Cluster(self.tmp).start()
        self.replicas = []
        for i in range(3):
            d = env.data_dir()
            log = os.path.join(self.tmp, "r%d.log" % i)
            s = helpers.Server(d, log, extra=self.extra(i))
            self.replicas.append(s.start())
        self.warm_up()

    def extra(self, i):
        return ["--nats", self.cluster.urls(), "--nats-consumer", "r%d" % i,
                "--max-lag", str(MAX_LAG), "--checkpoint-changes", "1500"]

    def restart_replica(self, i):
        old = self.replicas[i]
        s = helpers.Server(old.data_dir, old.log_path, extra=self.extra(i),
                           ports=old)
        self.replicas[i] = s.launch().wait_ports()
        return s

    def warm_up(self, timeout=60.0):
        """The stream exists and takes an Apply (the cluster elected its
        leaders): a heartbeat Apply answered on every replica."""
        deadline = time.monotonic() + timeout
        for s in self.replicas:
            while True:
                r = None
                try:
                    with Rpc(self.pb, s.rpc) as rpc:
                        req = self.pb.Request(id=1)
                        req.apply.SetInParent()
                        r = rpc.call(req)
                except OSError:
                    pass
                if r is not None and r.WhichOneof("body") == "apply":
                    break
                assert time.monotonic() < deadline, \
                    "the fleet took no Apply in %.0f s: %s\n%s" % (
                        timeout, r, s.log_tail())
                time.sleep(0.2)

    def metric(self, i, name):
        return self.replicas[i].metrics().get(name)

    def stream_last(self):
        """The stream's last sequence, as the replicas last saw it."""
        best = 0
        for s in self.replicas:
            try:
                best = max(best, int(s.metrics().get(
                    "consentd_replication_stream_last_sequence") or 0))
            except OSError:
                pass
        return best

    def caught_up(self, at_least=0, timeout=60.0):
        """Waits until every replica processed the stream through its last
        sequence (and at least at_least); returns that sequence."""
        deadline = time.monotonic() + timeout
        last = None
        while time.monotonic() < deadline:
            try:
                target = max(at_least, self.stream_last())
                seqs = [to.stats_of(self.pb, s.rpc, "").applied_sequence
                        for s in self.replicas]
                last = (target, seqs)
                if target > 0 and all(q >= target for q in seqs):
                    return target
            except (OSError, AssertionError, helpers.Closed) as e:
                last = repr(e)
            time.sleep(0.05)
        raise AssertionError("replicas not caught up in %.0f s: %s\n%s" % (
            timeout, last, "\n".join(s.log_tail(1500) for s in self.replicas)))

    def wait_cursor(self, origin, cursor, timeout=60.0):
        """Waits until every replica holds origin's cursor (its last batch
        processed everywhere); then until they all stand at the same
        sequence, the highest any of them reached. Returns it."""
        deadline = time.monotonic() + timeout
        got = None
        while time.monotonic() < deadline:
            try:
                got = [to.stats_of(self.pb, s.rpc, origin).origin_cursor
                       for s in self.replicas]
                if all(c == cursor for c in got):
                    top = max(to.stats_of(self.pb, s.rpc, "").applied_sequence
                              for s in self.replicas)
                    return self.caught_up(top, timeout)
            except (OSError, helpers.Closed, AssertionError) as e:
                got = repr(e)
            time.sleep(0.05)
        raise AssertionError("origin %s: cursors %s, want %s" % (
            origin, got, cursor))

    def stop(self):
        for s in self.replicas:
            s.kill()
        self.cluster.stop()
        keep = os.environ.get("CONSENTD_FLEET_KEEP")
        if keep:  # the logs, for a post-mortem
            import shutil
            shutil.copytree(self.tmp, keep, dirs_exist_ok=True,
                            ignore=shutil.ignore_patterns("js", "*.bin"))


@pytest.fixture(scope="module")
def fleet(env):
    f = Fleet(env)
    try:
        yield f
    finally:
        f.stop()


class Publisher:
    """consentctl publish of one file, run again until it exits 0 (a kill
    -9 or a failed publish stops a run; the next one resumes)."""

    def __init__(self, fleet, path):
        self.fleet = fleet
        self.path = path
        self.proc = None
        self.runs = 0
        self.done = False
        self.failed = None
        self.lock = threading.Lock()
        self.log = open(os.path.join(fleet.tmp, "publish.log"), "ab")
        self.thread = threading.Thread(target=self.loop, daemon=True)
        self.thread.start()

    def loop(self):
        deadline = time.monotonic() + 600
        while time.monotonic() < deadline:
            i = self.runs % 3
            with self.lock:
                self.runs += 1
                self.proc = subprocess.Popen(
                    [helpers.binary("consentctl"), "publish",
                     "--nats", self.fleet.cluster.urls(),
                     "--replica", "%s:%d" % (helpers.LOOPBACK,
                                              self.fleet.replicas[i].rpc),
                     "--origin", PUB_ORIGIN, "--batch", "25",
                     "--heartbeat", "1", self.path],
                    stdout=self.log, stderr=self.log,
                    preexec_fn=helpers._preexec)
            rc = self.proc.wait()
            if rc == 0:
                self.done = True
                return
            time.sleep(0.2)
        self.failed = "publisher never finished in 600 s"

    def kill(self):
        with self.lock:
            if self.proc is not None and self.proc.poll() is None:
                self.proc.kill()

    def wait(self, timeout):
        self.thread.join(timeout)
        assert self.done, "publish did not finish (%s; %d runs)" % (
            self.failed, self.runs)


class Applier:
    """Origin B through replicas 1 and 2 in turn: one batch at a time,
    retried on 503 or a dead replica; a 409 naming the batch's own cursor
    as stored means an earlier try was applied."""

    def __init__(self, fleet, stream, n):
        self.fleet = fleet
        self.stream = stream
        self.n = n
        self.cursor = 0
        self.acked = []           # (seq, key, value) acknowledged
        self.max_seq = 0          # the highest stream sequence acknowledged
        self.stop = False
        self.error = None
        self.tries = 0
        self.thread = threading.Thread(target=self.loop, daemon=True)
        self.thread.start()

    def loop(self):
        pb = self.fleet.pb
        try:
            # Once told to stop, a batch tried and not yet answered (503,
            # a replica killed mid-call) is tried on until it is: it may
            # have been applied, and the end state must know.
            unresolved = False
            while (not self.stop or unresolved) and self.cursor < self.n:
                batch = self.stream.get(self.cursor + 1,
                                        min(B_BATCH, self.n - self.cursor))
                last = batch[-1][0]
                req = to.origin_apply(pb, 1, [b[3] for b in batch],
                                      APPLY_ORIGIN,
                                      str(self.cursor) if self.cursor else "",
                                      str(last))
                i = 1 + self.tries % 2
                self.tries += 1
                unresolved = True
                try:
                    with Rpc(pb, self.fleet.replicas[i].rpc, timeout=30) as rpc:
                        r = rpc.call(req)
                except (OSError, helpers.Closed, AssertionError):
                    time.sleep(0.05)
                    continue
                body = r.WhichOneof("body")
                if body == "apply":
                    self.max_seq = max(self.max_seq, r.apply.applied_sequence)
                    self.acked.extend((s, k, v) for s, k, v, _ in batch)
                    self.cursor = last
                    unresolved = False
                    continue
                assert body == "error", r
                if r.error.code == 503:
                    time.sleep(0.05)
                    continue
                assert r.error.code == 409, r
                m = re.search(r'stored cursor "(\d*)"', r.error.message)
                assert m, r.error.message
                stored = int(m.group(1) or 0)
                assert stored in (self.cursor, last), (stored, self.cursor, last)
                if stored == last:
                    try:
                        seq = to.stats_of(pb, self.fleet.replicas[i].rpc,
                                          "").applied_sequence
                    except (OSError, helpers.Closed, AssertionError):
                        continue  # asked again, with the same batch
                    self.max_seq = max(self.max_seq, seq)
                    self.acked.extend((s, k, v) for s, k, v, _ in batch)
                    self.cursor = last
                    unresolved = False
                time.sleep(0.01)
        except Exception as e:  # reported by the test
            self.error = e

    def join(self, timeout):
        self.thread.join(timeout)
        assert self.error is None, repr(self.error)
        assert not self.thread.is_alive(), "the applier did not finish"


def describe(fleet, k, acked):
    """A key's answer and the origins' cursors on every replica, and the
    acknowledged changes of it (for a failure's message)."""
    out = []
    for s in fleet.replicas:
        try:
            with Rpc(fleet.pb, s.rpc) as rpc:
                v = rpc.check([tc.key_check(k)]).verdicts[0]
            out.append((s.rpc, (v.status, v.consent_date, v.source),
                        to.stats_of(fleet.pb, s.rpc, APPLY_ORIGIN).origin_cursor,
                        to.stats_of(fleet.pb, s.rpc, "").applied_sequence))
        except Exception as e:
            out.append((s.rpc, repr(e)))
    return "%s; acked: %s" % (out, [(q, v) for q, kk, v in acked if kk == k])


def verify_acked(fleet, acked, what):
    """Every acknowledged change answered as applied on every replica: the
    answer ranks at least as high (the other origin may hold a later one),
    and an acknowledged RET that is the answer is never an allow."""
    latest = {}
    for seq, key, val in acked:
        if key not in latest or tc.rank(val) > tc.rank(latest[key]):
            latest[key] = val
    keys = list(latest)
    for s in fleet.replicas:
        with Rpc(fleet.pb, s.rpc) as rpc:
            for i in range(0, len(keys), 256):
                part = keys[i:i + 256]
                resp = rpc.check([tc.key_check(k) for k in part])
                for k, v in zip(part, resp.verdicts):
                    got = (v.status, v.consent_date, v.source)
                    want = latest[k]
                    if v.status == 0 or tc.rank(got) < tc.rank(want):
                        raise AssertionError(
                            "%s: replica %s: %s answers %s, acknowledged %s "
                            "(all replicas: %s)" % (
                                what, s.rpc, k, got, want,
                                describe(fleet, k, acked)))
                    if got == want and want[0] == helpers.RET:
                        assert not v.allow, "%s: acknowledged RET on %s " \
                            "answered ALLOW" % (what, k)
    return len(keys)


def test_fleet_survives_kills(env, fleet):
    pb = env.pb
    base = tc.base_records(pb, env.snapshot)
    sa = tc.Stream(pb, base, seed=101)
    sb = tc.Stream(pb, base, seed=202)
    path = os.path.join(fleet.tmp, "fleet-a.bin")
    sa.write(path, 0, N_PUBLISHED)
    n_b = 100000  # bounded by the cycles, not by the stream
    pub = Publisher(fleet, path)
    app = Applier(fleet, sb, n_b)
    rng = random.Random(ROUNDS)
    checked = 0
    try:
        for cycle in range(ROUNDS):
            time.sleep(rng.uniform(0.05, 0.4))
            node = rng.randrange(3)
            rep = rng.randrange(3)
            fleet.cluster.nodes[node].kill()
            fleet.replicas[rep].kill()
            if rng.random() < 0.3:
                pub.kill()
            time.sleep(rng.uniform(0.05, 0.4))
            fleet.cluster.restart(node)
            fleet.restart_replica(rep)
            acked, seq = list(app.acked), app.max_seq
            assert app.error is None, repr(app.error)
            fleet.caught_up(seq)
            checked += verify_acked(fleet, acked[-400:], "cycle %d" % cycle)
        app.stop = True
        app.join(60)
        pub.wait(300)
        fleet.wait_cursor(APPLY_ORIGIN, str(app.cursor))
        fleet.wait_cursor(PUB_ORIGIN, str(N_PUBLISHED))
        # The whole of both origins' acknowledged changes, everywhere.
        verify_acked(fleet, app.acked, "end")
        # Origin A complete: every replica holds its cursor at the end.
        for s in fleet.replicas:
            st = to.stats_of(pb, s.rpc, PUB_ORIGIN)
            assert st.origin_cursor == str(N_PUBLISHED), st
            st = to.stats_of(pb, s.rpc, APPLY_ORIGIN)
            assert st.origin_cursor == str(app.cursor), (st, app.cursor)
        # Every key answers the combined model of both streams.
        model = to.combined_model(base, [(sa, N_PUBLISHED),
                                         (sb, app.cursor)])
        touched = {c[1] for c in sa.changes[:N_PUBLISHED]} | \
            {c[1] for c in sb.changes if c[0] <= app.cursor}
        for s in fleet.replicas:
            tc.check_keys(pb, s.rpc, touched, model, "replica %d" % s.rpc)
        assert app.cursor >= B_BATCH, "origin B made no progress"
        # Same records at the same watermark: SIGTERM writes each
        # replica's generation through what it applied, then dumps. A
        # message that arrives between two stops (nothing here publishes,
        # but a publish a killed run left in flight may still land) puts
        # the watermarks apart: then all start again, catch up, and stop.
        wm = fleet.wait_cursor(PUB_ORIGIN, str(N_PUBLISHED))
        for attempt in range(5):
            dumps = []
            for i, s in enumerate(fleet.replicas):
                assert s.stop() == 0, s.log_tail()
                dumps.append(tc.dump_set(pb, s.data_dir, os.path.join(
                    fleet.tmp, "dump%d.bin" % i)))
            wms = [d[0] for d in dumps]
            for i in range(3):
                fleet.restart_replica(i)
                fleet.replicas[i].wait_ready()
            if wms[0] == wms[1] == wms[2]:
                break
            fleet.caught_up(max(wms))
        assert wms[0] == wms[1] == wms[2] >= wm, wms
        assert dumps[0][1] == dumps[1][1] == dumps[2][1], \
            "the replicas' dumps differ at watermark %d" % wms[0]
    finally:
        app.stop = True
        pub.kill()


def answers(pb, port, keys):
    """The server's verdict tuple for each key, now."""
    out = {}
    with Rpc(pb, port) as rpc:
        for i in range(0, len(keys), 256):
            part = keys[i:i + 256]
            resp = rpc.check([tc.key_check(k) for k in part])
            for k, v in zip(part, resp.verdicts):
                out[k] = helpers.verdict_tuple(v)
    return out


def test_bootstrap_replica_joins(env, fleet):
    """A fresh replica (an empty data directory, --bootstrap-from a peer's
    ops port, --nats) builds its first generation from the peer's served
    state while the peer answers checks (each compared with what the peer
    answered before: nothing else writes meanwhile), then follows the
    stream from the peer's watermark: a batch published after it started
    reaches it, and its dump equals the peer's at the same watermark."""
    pb = env.pb
    fleet.warm_up()
    st = tc.Stream(pb, tc.base_records(pb, env.snapshot), seed=303)
    origin = "boot:joins"
    peer = fleet.replicas[0]

    def apply(port, first, n, after, cursor):
        with Rpc(pb, port) as rpc:
            cb = [c for _, _, _, c in st.get(first, n)]
            r = rpc.call(to.origin_apply(pb, 1, cb, origin, after, cursor))
        assert r.WhichOneof("body") == "apply", r

    apply(peer.rpc, 1, 200, "", "200")
    fleet.wait_cursor(origin, "200")
    touched = {k for _, k, _, _ in st.changes}
    keys = [k for k in sorted(env.oracle.records) if k not in touched][:2000]
    # Each answer compared with the peer's own before the joiner started
    # (the fleet's state is the earlier tests', not the oracle's).
    load = CheckLoad(env, peer.rpc, keys, 9,
                     expect=answers(pb, peer.rpc, keys).get)
    new = None
    load.start()
    try:
        new = helpers.Server(
            os.path.join(fleet.tmp, "joiner"),
            os.path.join(fleet.tmp, "joiner.log"),
            extra=["--nats", fleet.cluster.urls(), "--nats-consumer",
                   "joiner", "--bootstrap-from",
                   "http://127.0.0.1:%d" % peer.http]).start(timeout=120)
        load.finish()
        load = None
        assert "bootstrap" in new.log_tail(20000), new.log_tail()
        # A batch through another replica, after the joiner started.
        apply(fleet.replicas[1].rpc, 201, 50, "200", "250")
        fleet.wait_cursor(origin, "250")
        deadline = time.monotonic() + 60
        while to.stats_of(pb, new.rpc, origin).origin_cursor != "250":
            assert time.monotonic() < deadline, new.log_tail()
            time.sleep(0.05)
        # The keys the batches touched answer alike on the joiner and the
        # peer (the state before this test is the earlier tests').
        ks = sorted(touched)
        with Rpc(pb, peer.rpc) as rp, Rpc(pb, new.rpc) as rn:
            for i in range(0, len(ks), 256):
                part = [tc.key_check(k) for k in ks[i:i + 256]]
                got = [helpers.verdict_tuple(v)
                       for v in rn.check(part).verdicts]
                want = [helpers.verdict_tuple(v)
                        for v in rp.check(part).verdicts]
                assert got == want, "the joiner answers apart from its peer"
        # Same records at the same watermark (nothing else publishes).
        wm = fleet.caught_up(tc.stats(pb, new.rpc).applied_sequence)
        while tc.stats(pb, new.rpc).applied_sequence < wm:
            assert time.monotonic() < deadline, new.log_tail()
            time.sleep(0.05)
        assert peer.stop() == 0, peer.log_tail()
        assert new.stop() == 0, new.log_tail()
        a = tc.dump_set(pb, peer.data_dir, os.path.join(fleet.tmp, "peer.bin"))
        b = tc.dump_set(pb, new.data_dir, os.path.join(fleet.tmp, "join.bin"))
        assert a[0] == b[0] >= wm, (a[0], b[0], wm)
        assert a[1] == b[1], "the joiner's dump differs from its peer's"
    finally:
        if load is not None:
            load.halt.set()
        if new is not None:
            new.kill()
        if not fleet.replicas[0].alive():
            fleet.restart_replica(0)
            fleet.replicas[0].wait_ready()


def test_cursor_conflict_applies_nowhere(env, fleet):
    pb = env.pb
    fleet.warm_up()
    c1 = pb.Consent(recipient="+905559990001", channel=helpers.MESAJ,
                    recipient_type=helpers.BIREYSEL, brand_code=600123,
                    status=helpers.ONAY, source=tc.HS_WEB,
                    consent_date=tc.CLOCK0 + 10, creation_date=tc.CLOCK0)
    c2 = pb.Consent(recipient="+905559990002", channel=helpers.MESAJ,
                    recipient_type=helpers.BIREYSEL, brand_code=600123,
                    status=helpers.RET, source=tc.HS_WEB,
                    consent_date=tc.CLOCK0 + 10, creation_date=tc.CLOCK0)
    with Rpc(pb, fleet.replicas[0].rpc) as rpc:
        r = rpc.call(to.origin_apply(pb, 1, [c1.SerializeToString()],
                                     "conflict", "", "1"))
        assert r.WhichOneof("body") == "apply" and r.apply.applied == 1, r
    with Rpc(pb, fleet.replicas[1].rpc) as rpc:
        r = rpc.call(to.origin_apply(pb, 2, [c2.SerializeToString()],
                                     "conflict", "0", "2"))
        assert r.WhichOneof("body") == "error" and r.error.code == 409, r
        assert '"1"' in r.error.message, r.error.message
    # Replica 1 answered with the refused message's outcome, so it
    # processed it: every replica, once as far, refused it too.
    fleet.caught_up(to.stats_of(pb, fleet.replicas[1].rpc, "").applied_sequence)
    for s in fleet.replicas:
        with Rpc(pb, s.rpc) as rpc:
            v1 = rpc.check_one("+905559990001", 600123, helpers.MESAJ,
                                  helpers.BIREYSEL)
            v2 = rpc.check_one("+905559990002", 600123, helpers.MESAJ,
                                  helpers.BIREYSEL)
        assert v1.status == helpers.ONAY, v1
        assert v2.status == 0, "the refused batch is visible on %d: %s" % (
            s.rpc, v2)
        assert to.stats_of(pb, s.rpc, "conflict").origin_cursor == "1"


def test_local_rejection_replicated(env, fleet):
    """A Reject taken by one replica (origin "local", no cursor headers on
    the stream) is applied by every replica, each setting the origin's
    cursor to the same position (the message's stream sequence), and each
    queues it in its outbox for İYS."""
    pb = env.pb
    fleet.warm_up()
    rec, brand = "+905559990009", 600123
    with Rpc(pb, fleet.replicas[2].rpc) as rpc:
        req = pb.Request(id=7)
        req.reject.recipient = rec
        req.reject.brand_code = brand
        req.reject.channel = helpers.MESAJ
        r = rpc.call(req)
    assert r.WhichOneof("body") == "apply" and r.apply.applied == 1, r
    seq = r.apply.applied_sequence
    fleet.caught_up(seq)
    for s in fleet.replicas:
        with Rpc(pb, s.rpc) as rpc:
            v = rpc.check_one(rec, brand, helpers.MESAJ, helpers.BIREYSEL)
        assert (v.allow, v.status) == (False, helpers.RET), (s.rpc, v)
        assert to.stats_of(pb, s.rpc, "local").origin_cursor == str(seq)
        with urllib.request.urlopen("http://127.0.0.1:%d/v1/outbox" % s.http,
                                    timeout=10) as f:
            box = json.loads(f.read())
        mine = [e for e in box["entries"] if e["recipient"] == rec]
        assert [e["sequence"] for e in mine] == [seq], (s.rpc, box)


def test_fleet_figures(env, fleet):
    """A replica's /metrics passes promtool with the replication figures,
    which agree with Stats; /v1/stats?origin= gives an origin's cursor."""
    fleet.warm_up()
    pb = env.pb
    c = pb.Consent(recipient="+905559990004", channel=helpers.MESAJ,
                   recipient_type=helpers.BIREYSEL, brand_code=600123,
                   status=helpers.ONAY, source=tc.HS_WEB,
                   consent_date=tc.CLOCK0 + 30, creation_date=tc.CLOCK0)
    with Rpc(pb, fleet.replicas[0].rpc) as rpc:
        r = rpc.call(to.origin_apply(pb, 1, [c.SerializeToString()],
                                     "figures", "", "f1"))
        assert r.WhichOneof("body") == "apply", r
    # consentctl publish past its one-at-a-time window: async PubAcks,
    # at most --window outstanding, a fresh origin.
    base = tc.base_records(pb, env.snapshot)
    sc = tc.Stream(pb, base, seed=303)
    path = os.path.join(fleet.tmp, "fleet-c.bin")
    sc.write(path, 0, 400)
    p = subprocess.run([helpers.binary("consentctl"), "publish",
                        "--nats", fleet.cluster.urls(),
                        "--replica", "%s:%d" % (helpers.LOOPBACK,
                                                 fleet.replicas[2].rpc),
                        "--batch", "7", "--window", "4", "--dup-window", "0",
                        path], stdout=subprocess.PIPE,
                       stderr=subprocess.STDOUT, timeout=120)
    out = p.stdout.decode()
    assert p.returncode == 0 and "400 changes in 58 messages" in out, out
    last = fleet.wait_cursor("file:fleet-c.bin", "400")
    verify_acked(fleet, [(q, k, v) for q, k, v, _ in sc.changes[:400]],
                 "publish async")
    s = fleet.replicas[1]
    promtool = shutil.which("promtool")
    assert promtool, "promtool is missing (make deps installs Debian's prometheus)"
    m = s.metrics()
    r = subprocess.run([promtool, "check", "metrics"], input=m.text.encode(),
                       stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                       timeout=60)
    assert r.returncode == 0, "promtool check metrics:\n" + r.stdout.decode()
    assert m.get("consentd_nats_connected") == 1
    assert m.get("consentd_replication_applied_sequence") >= last
    assert m.get("consentd_nats_puback_latency_seconds_count") >= 1
    assert m.get("consentd_replication_messages_total") >= 1
    st, _, body = s.http_get("/v1/stats?origin=figures")
    assert st == 200, body
    assert json.loads(body)["origin_cursor"] == "f1", body
    st, _, body = s.http_get("/v1/stats?origin=nobody")
    assert st == 200 and json.loads(body)["origin_cursor"] == "", body
    st, _, body = s.http_get("/v1/stats?origin=")
    assert st == 400 and b"origin" in body, body


def test_quorum_loss(env, fleet):
    pb = env.pb
    fleet.warm_up()
    down = [0, 1]
    for i in down:
        fleet.cluster.nodes[i].kill()
    try:
        c = pb.Consent(recipient="+905559990003", channel=helpers.MESAJ,
                       recipient_type=helpers.BIREYSEL, brand_code=600123,
                       status=helpers.ONAY, source=tc.HS_WEB,
                       consent_date=tc.CLOCK0 + 20, creation_date=tc.CLOCK0)
        req = to.origin_apply(pb, 1, [c.SerializeToString()], "quorum", "",
                              "1")
        t0 = time.monotonic()
        with Rpc(pb, fleet.replicas[2].rpc, timeout=60) as rpc:
            r = rpc.call(req)
        took = time.monotonic() - t0
        assert r.WhichOneof("body") == "error" and r.error.code == 503, r
        assert took < 40, "503 took %.1f s" % took
        # /readyz false after --max-lag; checks still answered.
        deadline = time.monotonic() + 30
        while True:
            st, _, body = fleet.replicas[2].http_get("/readyz")
            if st == 503:
                assert b"replication" in body, body
                break
            assert time.monotonic() < deadline, "/readyz stayed %d" % st
            time.sleep(0.1)
        with Rpc(pb, fleet.replicas[2].rpc) as rpc:
            v = rpc.check_one("+905559990001", 600123, helpers.MESAJ,
                                  helpers.BIREYSEL)
            assert v.status == helpers.ONAY, v
    finally:
        for i in down:
            fleet.cluster.restart(i)
    # Back without a restart: the same Apply goes through (or its earlier
    # try did: a 409 naming cursor 1 as stored), and everyone is ready.
    # The restarted nodes elect the stream's and the consumers' leaders
    # again first; with the two cores starved by other work that took
    # over 60 s here (an Apply PubAck'ed, its message not fetched in
    # time), so the bound is generous: a fleet that never recovers still
    # fails.
    deadline = time.monotonic() + 180
    while True:
        with Rpc(pb, fleet.replicas[2].rpc, timeout=60) as rpc:
            r = rpc.call(req)
        if r.WhichOneof("body") == "apply" or (
                r.error.code == 409 and '"1"' in r.error.message):
            break
        assert r.error.code == 503, r
        assert time.monotonic() < deadline, "no recovery: %s" % r
        time.sleep(0.2)
    fleet.caught_up(to.stats_of(pb, fleet.replicas[2].rpc, "").applied_sequence)
    for s in fleet.replicas:
        deadline = time.monotonic() + 30
        while s.http_get("/readyz")[0] != 200:
            assert time.monotonic() < deadline, s.http_get("/readyz")
            time.sleep(0.1)
        with Rpc(pb, s.rpc) as rpc:
            v = rpc.check_one("+905559990003", 600123, helpers.MESAJ,
                                  helpers.BIREYSEL)
        assert v.status == helpers.ONAY, v
