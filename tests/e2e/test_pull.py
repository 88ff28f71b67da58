"""consentctl pull (DESIGN 8, 12) against tests/iys_standin.py, a local
stand-in of İYS's API that follows İYS's documented requests and answers,
with a real consentd behind it. Every verdict is decided by an
independent reference in this file: the stand-in's own ledger (every
movement it served) folded by DESIGN 2's order rule, written from the
README, not from consentd's code; answers are read over the RPC with
Google's protobuf runtime. Exactly once is checked by the server's log
positions: applied_sequence moves by exactly the number of records İYS
served, however often the connector and consentd were killed.

CONSENTD_PULL_HEAVY=1 runs the kill -9 test with more cycles."""

import hashlib
import json
import os
import random
import signal
import subprocess
import time
import urllib.request

import pytest

import helpers
from helpers import Rpc

STANDIN = os.path.join(helpers.ROOT, "tests", "iys_standin.py")
IYS_CODE = 600000
HEAVY = os.environ.get("CONSENTD_PULL_HEAVY") == "1"


# --- the stand-in -----------------------------------------------------------

class Standin:
    def __init__(self, tmp, brands, changes, seed=1, extra=()):
        self.brands = brands
        self.log_path = os.path.join(tmp, "standin-%d.log" % random.randrange(1 << 30))
        self.log = open(self.log_path, "wb")
        self.proc = subprocess.Popen(
            ["/usr/bin/python3", STANDIN, "--iys-code", str(IYS_CODE),
             "--brands", ",".join(map(str, brands)), "--changes", str(changes),
             "--seed", str(seed)] + list(extra),
            stdout=subprocess.PIPE, stderr=self.log, preexec_fn=helpers._preexec)
        line = self.proc.stdout.readline().decode()
        assert line.startswith("port "), "stand-in said %r\n%s" % (line, self.tail())
        self.port = int(line.split()[1])
        self.url = "http://127.0.0.1:%d" % self.port
        if "--tls-cert" in extra:
            self.url = "https://127.0.0.1:%d" % self.port

    def tail(self):
        with open(self.log_path, "rb") as f:
            return f.read()[-3000:].decode(errors="replace")

    def call(self, method, path, body=None):
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(self.url + path, data=data, method=method,
                                     headers={"Content-Type": "application/json"})
        ctx = None
        if self.url.startswith("https:"):
            import ssl
            ctx = ssl._create_unverified_context()  # the test's own controls
        with urllib.request.urlopen(req, timeout=60, context=ctx) as r:
            return json.loads(r.read().decode())

    def faults(self, **kw):
        return self.call("POST", "/_standin/faults", kw)

    def requests(self):
        return self.call("GET", "/_standin/requests")

    def state(self):
        return self.call("GET", "/_standin/state")

    def ledger(self, brand):
        return self.call("GET", "/_standin/ledger?brand=%d" % brand)

    def stop(self):
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)
        self.log.close()


# --- the reference ------------------------------------------------------------

def utc_of_tr(text):
    """İYS's Turkey-time text (UTC+3, no DST since 2016) to Unix seconds."""
    import calendar
    t = time.strptime(text, "%Y-%m-%d %H:%M:%S")
    return calendar.timegm(t) - 3 * 3600


def reference(pb, standin, classes=("HS", "IYS")):
    """(brand, recipient, rtype, channel) -> (status, source, consent_date)
    by the order rule: the newer consent date wins, at a tie RET, then the
    higher source code; and the number of good records served (of the
    sources followed)."""
    state, n = {}, 0
    for b in standin.brands:
        for r in standin.ledger(b):
            if r.get("_bad") or r["_class"] not in classes:
                continue
            n += 1
            rec = helpers.normalize(r["recipient"])
            assert rec == r["recipient"], "stand-in served a non-canonical %r" % rec
            key = (b, rec, pb.RecipientType.Value(r["recipientType"]),
                   pb.Channel.Value(r["type"]))
            try:
                src = pb.Source.Value(r["source"])
            except ValueError:
                src = pb.Source.Value("SOURCE_OTHER")
            val = (pb.Status.Value(r["status"]), src, utc_of_tr(r["consentDate"]))
            old = state.get(key)
            if old is None or (val[2], val[0], val[1]) > (old[2], old[0], old[1]):
                state[key] = val
    return state, n


def verify(pb, server, ref):
    """Every reference key answered with exactly its status, source, date."""
    keys = sorted(ref)
    bad = []
    with Rpc(pb, server.rpc, timeout=60) as rpc:
        for i in range(0, len(keys), 500):
            part = keys[i:i + 500]
            resp = rpc.check([dict(recipient=k[1], brand_code=k[0], channel=k[3],
                                   recipient_type=k[2]) for k in part])
            for k, v in zip(part, resp.verdicts):
                got = (v.status, v.source, v.consent_date)
                if got != ref[k]:
                    bad.append((k, got, ref[k]))
    assert not bad, "%d of %d keys differ, first: %s" % (len(bad), len(keys), bad[:3])


def stats(pb, server, origin=""):
    with Rpc(pb, server.rpc) as rpc:
        req = pb.Request()
        req.stats.origin = origin
        req.stats.SetInParent()
        r = rpc.call(req)
        assert r.WhichOneof("body") == "stats", r
        return r.stats


def assert_cursors(pb, server, standin):
    st = standin.state()["brands"]
    for b in standin.brands:
        for src in ("HS", "IYS"):
            want = st[str(b)][src] or ""
            got = stats(pb, server, "iys:%d:%s" % (b, src)).origin_cursor
            assert got == want, "origin iys:%d:%s at %r, İYS's end %r" % (
                b, src, got, want)


# --- the connector ----------------------------------------------------------

class Puller:
    def __init__(self, env, standin, server, brands, args=(), cred=None,
                 name="pull"):
        self.log_path = os.path.join(env.tmp, "%s-%d.log" % (
            name, random.randrange(1 << 30)))
        self.cred = cred or write_cred(env.tmp, "api-user", "api-pass")
        self.argv = [helpers.binary("consentctl"), "pull", "--iys", standin.url,
                     "--iys-code", str(IYS_CODE),
                     "--brand", ",".join(map(str, brands)),
                     "--credentials", self.cred,
                     "--consentd", "127.0.0.1:%d" % server.rpc,
                     "--retry-min-ms", "50", "--retry-max-ms", "500",
                     "--timeout-ms", "5000"] + list(args)
        self.proc = None

    def start(self):
        self.log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(self.argv, stdin=subprocess.DEVNULL,
                                     stdout=self.log, stderr=subprocess.STDOUT,
                                     preexec_fn=helpers._preexec)
        return self

    def wait(self, timeout=120):
        try:
            rc = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            raise AssertionError("pull did not finish in %d s\n%s" % (
                timeout, self.tail()))
        self.log.close()
        return rc

    def run(self, timeout=120):
        return self.start().wait(timeout)

    def kill(self):
        if self.proc and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)
        if not self.log.closed:
            self.log.close()

    def tail(self, n=4000):
        with open(self.log_path, "rb") as f:
            return f.read()[-n:].decode(errors="replace")

    def text(self):
        with open(self.log_path, "rb") as f:
            return f.read().decode(errors="replace")


def write_cred(tmp, user, password, name="cred"):
    path = os.path.join(tmp, "%s-%d" % (name, random.randrange(1 << 30)))
    with open(path, "w") as f:
        f.write("# İYS API user\nusername %s\npassword %s\n" % (user, password))
    os.chmod(path, 0o600)
    return path


def brands_for(env, n, base=910001):
    out = list(range(base, base + n))
    assert not set(out) & set(env.oracle.brands)
    return out


def fresh_server(env, name):
    d = env.data_dir()
    return helpers.Server(d, os.path.join(env.tmp, "%s-%d.log" % (
        name, env.n_dirs))).start()


def wait_for(cond, timeout, what):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        v = cond()
        if v:
            return v
        time.sleep(0.05)
    raise AssertionError("timed out after %d s waiting for %s" % (timeout, what))


# --- tests -----------------------------------------------------------------

def test_pull_converges_and_resumes(env):
    """20 brands x 10k changes: one pass applies every record exactly once
    and consentd answers the reference's verdict for every key; a second
    pass applies nothing; new changes at İYS are applied exactly once; the
    heartbeat moves data_as_of."""
    brands = brands_for(env, 20)
    si = Standin(env.tmp, brands, 10000, seed=11)
    srv = fresh_server(env, "consentd-pull")
    try:
        seq0 = stats(env.pb, srv).applied_sequence
        t0 = int(time.time())
        p = Puller(env, si, srv, brands, ["--once", "--rate", "100000"])
        rc = p.run(180)
        assert rc == 0, p.tail()
        ref, n = reference(env.pb, si)
        assert n == 200000
        st = stats(env.pb, srv)
        assert st.applied_sequence - seq0 == n, \
            "log positions moved by %d for %d records" % (st.applied_sequence - seq0, n)
        assert st.data_as_of >= t0
        verify(env.pb, srv, ref)
        assert_cursors(env.pb, srv, si)
        assert "pull: iys:910001:HS:" in p.text() and "records/s" in p.text()

        # Again: nothing new, nothing applied, heartbeat sent.
        time.sleep(1.1)  # data_as_of has a resolution of a second
        t1 = int(time.time())
        p = Puller(env, si, srv, brands, ["--once", "--rate", "100000"])
        assert p.run(60) == 0, p.tail()
        st = stats(env.pb, srv)
        assert st.applied_sequence - seq0 == n
        assert st.data_as_of >= t1, "the heartbeat did not move data_as_of"

        # New movements at İYS: applied once.
        si.faults(append={"brand": brands[3], "count": 1500})
        p = Puller(env, si, srv, brands, ["--once", "--rate", "100000"])
        assert p.run(60) == 0, p.tail()
        ref, n2 = reference(env.pb, si)
        assert n2 == n + 1500
        assert stats(env.pb, srv).applied_sequence - seq0 == n2
        verify(env.pb, srv, ref)
        assert_cursors(env.pb, srv, si)
    finally:
        si.stop()
        assert srv.stop() == 0, srv.log_tail()


def test_pull_kill9_cycles(env):
    """kill -9 of the connector, of consentd, or both, at random moments
    while 20 brands x 10k changes are pulled (30 cycles; 100 with
    CONSENTD_PULL_HEAVY=1), then a run to the end:
    every record applied exactly once, the state exact."""
    cycles = 100 if HEAVY else 30
    brands = brands_for(env, 20, base=920001)
    si = Standin(env.tmp, brands, 10000, seed=12)
    srv = fresh_server(env, "consentd-kill")
    rng = random.Random(1234)
    try:
        seq0 = stats(env.pb, srv).applied_sequence
        # Paced so the kills land while the 1000 pages are being pulled.
        args = ["--interval", "0.1", "--rate", "1200" if HEAVY else "4000",
                "--limit", "200"]
        p = Puller(env, si, srv, brands, args, name="pull-kill").start()
        pullers = [p]
        kills = {"pull": 0, "consentd": 0, "both": 0}
        for _ in range(cycles):
            time.sleep(rng.uniform(0.05, 0.6))
            victim = rng.choice(["pull", "pull", "consentd", "both"])
            kills[victim] += 1
            if victim in ("pull", "both"):
                p.kill()
            if victim in ("consentd", "both"):
                srv.kill()
                srv.start()
            if victim in ("pull", "both"):
                p = Puller(env, si, srv, brands, args, name="pull-kill").start()
                pullers.append(p)
            assert srv.alive(), srv.log_tail()
        # Let it reach İYS's end.
        ref, n = reference(env.pb, si)
        wait_for(lambda: stats(env.pb, srv).applied_sequence - seq0 >= n, 120,
                 "the pull to apply all %d records" % n)
        p.proc.send_signal(signal.SIGTERM)
        assert p.wait(30) == 0, p.tail()
        assert stats(env.pb, srv).applied_sequence - seq0 == n, \
            "applied %d for %d records: something applied twice" % (
                stats(env.pb, srv).applied_sequence - seq0, n)
        verify(env.pb, srv, ref)
        assert_cursors(env.pb, srv, si)
        assert sum(kills.values()) == cycles and kills["consentd"] + kills["both"] > 0
        logs = "".join(q.text() for q in pullers)
        print("kills %s; connector runs %d; pages logged %d; consentd lost "
              "mid-run %d times" % (kills, len(pullers), logs.count(" pages, "),
                                    logs.count("pull: consentd 127.0.0.1") +
                                    logs.count("Connection reset")))
        print(logs[logs.rfind("pull: pass"):][:200])
    finally:
        si.stop()
        assert srv.stop() == 0, srv.log_tail()


def max_in_window(times, window):
    times = sorted(times)
    best, j = 0, 0
    for i, t in enumerate(times):
        while times[j] <= t - window:
            j += 1
        best = max(best, i - j + 1)
    return best


def test_pull_rate_429_5xx_drops(env):
    """Under 429 storms (Retry-After honoured), 5xx bursts, pages cut off
    mid-body and slow pages it converges exactly, and no window ever held
    more requests than --rate allows (one forgiven for arrival jitter)."""
    brands = brands_for(env, 4, base=930001)
    per_window, window = 10, 1.0
    si = Standin(env.tmp, brands, 1500, seed=13,
                 extra=["--rate-limit", str(per_window),
                        "--rate-window-s", str(window)])
    srv = fresh_server(env, "consentd-rate")
    try:
        seq0 = stats(env.pb, srv).applied_sequence
        si.faults(storm429={"count": 3, "retry_after": 1},
                  status_burst={"code": 503, "count": 6}, drop_mid_page=3,
                  slow_ms=300, slow_count=2)
        p = Puller(env, si, srv, brands,
                   ["--once", "--rate", "%d/min" % (per_window * 60 / window),
                    "--limit", "100"], name="pull-rate")
        assert p.run(180) == 0, p.tail()
        ref, n = reference(env.pb, si)
        assert stats(env.pb, srv).applied_sequence - seq0 == n
        verify(env.pb, srv, ref)
        reqs = si.requests()
        codes = [r["status"] for r in reqs]
        assert codes.count(429) == 3 and codes.count(503) == 6 and codes.count(-200) == 3
        assert max_in_window([r["t"] for r in reqs], window) <= per_window + 1
        assert si.state()["rate_violations"] == 0
        # Retry-After: the request after each 429 came a second later at least.
        for i, r in enumerate(reqs[:-1]):
            if r["status"] == 429:
                assert reqs[i + 1]["t"] - r["t"] >= 0.95, (r, reqs[i + 1])
        text = p.text()
        assert "HTTP 429: retrying" in text and "HTTP 503: retrying" in text
    finally:
        si.stop()
        assert srv.stop() == 0, srv.log_tail()


def test_pull_stopped_iys_never_spins(env):
    """İYS answering 503 for good, or not listening at all: the connector
    backs off (at most a request per backoff), stays up, and stops cleanly
    on SIGTERM."""
    brands = brands_for(env, 1, base=940001)
    si = Standin(env.tmp, brands, 100, seed=14)
    srv = fresh_server(env, "consentd-spin")
    try:
        si.faults(status_burst={"code": 503, "count": 100000})
        p = Puller(env, si, srv, brands, ["--rate", "100000"], name="pull-spin")
        p.argv[p.argv.index("--retry-max-ms") + 1] = "400"
        p.start()
        wait_for(lambda: any(r["status"] == 503 for r in si.requests()), 30,
                 "the first 503")
        t0 = time.monotonic()
        time.sleep(3)
        n = sum(1 for r in si.requests() if r["t"] >= t0)
        # Backoff 50 ms doubling to 400 ms (jittered over its upper half):
        # at most 3 s / 200 ms + the climb; a spin would make thousands.
        assert 1 <= n <= 25, "%d requests in 3 s" % n
        assert p.proc.poll() is None, p.tail()
        p.proc.send_signal(signal.SIGTERM)
        assert p.wait(30) == 0, p.tail()

        # Nobody listening at all.
        dead = Standin(env.tmp, brands, 1, seed=15)
        dead.stop()
        q = Puller(env, dead, srv, brands, [], name="pull-dead")
        q.argv[q.argv.index("--retry-max-ms") + 1] = "400"
        q.start()
        time.sleep(3)
        tries = q.tail(100000).count("retrying in")
        assert 1 <= tries <= 25, "%d attempts in 3 s\n%s" % (tries, q.tail())
        assert q.proc.poll() is None, q.tail()
        q.proc.send_signal(signal.SIGTERM)
        assert q.wait(30) == 0, q.tail()
    finally:
        si.stop()
        assert srv.stop() == 0, srv.log_tail()


def test_pull_token_expiry_revocation_refusal(env):
    """Tokens of a 2 s life are refreshed before they expire; expired and
    revoked tokens are replaced (refresh, then password grant); credentials
    İYS refuses stop the connector with exit 3 and a clear message."""
    brands = brands_for(env, 2, base=950001)
    si = Standin(env.tmp, brands, 600, seed=16, extra=["--token-ttl", "2"])
    srv = fresh_server(env, "consentd-token")
    try:
        seq0 = stats(env.pb, srv).applied_sequence
        p = Puller(env, si, srv, brands, ["--interval", "0.2", "--rate", "100000",
                                          "--limit", "50"], name="pull-token")
        p.start()
        ref, n = reference(env.pb, si)
        wait_for(lambda: stats(env.pb, srv).applied_sequence - seq0 >= n, 60,
                 "the first records")
        wait_for(lambda: "token refreshed" in p.text(), 30, "a refresh")
        si.faults(expire_tokens=True)
        si.faults(append={"brand": brands[0], "count": 120})
        si.faults(revoke=True)
        si.faults(append={"brand": brands[1], "count": 80})
        ref, n = reference(env.pb, si)
        wait_for(lambda: stats(env.pb, srv).applied_sequence - seq0 >= n, 60,
                 "the records after the revocation")
        assert p.proc.poll() is None, p.tail()
        assert stats(env.pb, srv).applied_sequence - seq0 == n
        verify(env.pb, srv, ref)
        text = p.text()
        assert "401: a new token" in text and "password grant" in text
        # The password changed at İYS: exit 3, said plainly, no loop.
        si.faults(refuse_password=True, revoke=True)
        rc = p.wait(60)
        assert rc == 3, "exit %s\n%s" % (rc, p.tail())
        assert "İYS refused the credentials of user api-user" in p.tail()
        # A fresh start with refused credentials: exit 3 at once.
        q = Puller(env, si, srv, brands, ["--once"], name="pull-refused")
        assert q.run(60) == 3, q.tail()
    finally:
        si.stop()
        assert srv.stop() == 0, srv.log_tail()


def test_pull_bad_records(env):
    """A bad record stops the pull naming brand, source, page and field
    (exit 1, nothing of its page applied); --skip-bad reports and skips
    it, and everything else arrives."""
    brands = brands_for(env, 2, base=960001)
    si = Standin(env.tmp, brands, 300, seed=17)
    srv = fresh_server(env, "consentd-bad")
    try:
        si.faults(bad_record={"brand": brands[1], "source": "HS",
                              "field": "consentDate"})
        seq0 = stats(env.pb, srv).applied_sequence
        p = Puller(env, si, srv, brands, ["--once", "--rate", "100000"],
                   name="pull-bad")
        assert p.run(60) == 1, p.tail()
        text = p.text()
        assert ("brand %d source HS page 1" % brands[1]) in text, text
        assert "consentDate" in text and "--skip-bad" in text, text
        st_hs = stats(env.pb, srv, "iys:%d:HS" % brands[1]).origin_cursor
        assert st_hs == "", "the bad page's cursor moved: %r" % st_hs
        q = Puller(env, si, srv, brands, ["--once", "--rate", "100000",
                                          "--skip-bad"], name="pull-skip")
        assert q.run(60) == 0, q.tail()
        assert "consentDate" in q.text() and "skipped" in q.text()
        ref, n = reference(env.pb, si)
        assert stats(env.pb, srv).applied_sequence - seq0 == n
        verify(env.pb, srv, ref)
        assert_cursors(env.pb, srv, si)
    finally:
        si.stop()
        assert srv.stop() == 0, srv.log_tail()


def test_pull_cursor_moved_by_another(env):
    """Another feeder applies the page the connector is fetching (a 409 for
    the connector): it reads the cursor again and goes on; every record
    once."""
    brands = brands_for(env, 1, base=970001)
    si = Standin(env.tmp, brands, 900, seed=18)
    srv = fresh_server(env, "consentd-409")
    try:
        seq0 = stats(env.pb, srv).applied_sequence
        si.faults(slow_ms=6000, slow_count=1)  # room for the test's own apply
        p = Puller(env, si, srv, brands, ["--once", "--rate", "100000",
                                          "--limit", "100", "--sources", "HS"],
                   name="pull-409").start()
        wait_for(lambda: any("/changes" in r["path"] for r in si.requests()),
                 30, "the connector's first page request")
        # The same first page, fetched and applied by "someone else".
        tok = si.call("POST", "/oauth2/token", {
            "username": "api-user", "password": "api-pass",
            "grant_type": "password"})["access_token"]
        req = urllib.request.Request(
            si.url + "/sps/%d/brands/%d/consents/changes?source=HS&limit=100" % (
                IYS_CODE, brands[0]), headers={"Authorization": "Bearer " + tok})
        with urllib.request.urlopen(req, timeout=30) as r:
            page = json.loads(r.read().decode())
        assert len(page["list"]) == 100
        imp = os.path.join(env.tmp, "page1.json")
        with open(imp, "w") as f:
            json.dump(page, f)
        out = os.path.join(env.tmp, "page1.bin")
        helpers.run([helpers.binary("consentctl"), "import-json", "--brand",
                     str(brands[0]), "--iys-code", str(IYS_CODE), imp, "--out", out])
        _, cons, _ = helpers.read_stream(env.pb, out)
        with Rpc(env.pb, srv.rpc) as rpc:
            req = env.pb.Request()
            for c in cons:
                c.sequence = 0
                req.apply.changes.append(c)
            req.apply.origin = "iys:%d:HS" % brands[0]
            req.apply.after_cursor = ""
            req.apply.cursor = page["after"]
            r = rpc.call(req)
            assert r.WhichOneof("body") == "apply", r
        assert p.wait(60) == 0, p.tail()
        assert "reading the cursor again" in p.text(), p.text()
        ref, n = reference(env.pb, si, classes=("HS",))
        assert stats(env.pb, srv).applied_sequence - seq0 == n
        verify(env.pb, srv, ref)
        st = si.state()["brands"][str(brands[0])]
        assert stats(env.pb, srv, "iys:%d:HS" % brands[0]).origin_cursor == st["HS"]
    finally:
        si.stop()
        assert srv.stop() == 0, srv.log_tail()


def test_pull_refuses_bad_flags_and_files(env):
    """A bad credentials file is refused naming its line (exit 2); bad flags
    exit 2 with the reason."""
    bad = os.path.join(env.tmp, "cred-bad")
    with open(bad, "w") as f:
        f.write("username u\npasword p\n")
    base = [helpers.binary("consentctl"), "pull", "--iys", "http://127.0.0.1:9",
            "--iys-code", "1", "--brand", "5", "--once", "--consentd", "127.0.0.1:9"]
    r = subprocess.run(base + ["--credentials", bad], capture_output=True, timeout=30)
    assert r.returncode == 2
    assert b"cred-bad: line 2: unknown key \"pasword\"" in r.stderr, r.stderr
    good = write_cred(env.tmp, "u", "p")
    for extra, want in ((["--rate", "0"], b"--rate"), (["--limit", "5000"], b"--limit"),
                        (["--brand", "0"], b"--brand"), (["--sources", "X"], b"--sources")):
        r = subprocess.run(base + ["--credentials", good] + extra,
                           capture_output=True, timeout=30)
        assert r.returncode == 2 and want in r.stderr, (extra, r.stderr)


def test_pull_pushes_outbox_exactly_once(env):
    """Local rejections (REJECT through redis-py) reach the stand-in exactly
    once although the connector is killed -9 at random moments and İYS's
    answer to two adds is lost after İYS committed them (the window
    between İYS's answer and the mark); İYS's copies come back through the
    pull and consentd reconciles every entry."""
    import redis
    brands = brands_for(env, 1, base=980001)
    b = brands[0]
    si = Standin(env.tmp, brands, 600, seed=19)
    srv = fresh_server(env, "consentd-push")
    rng = random.Random(99)
    try:
        # İYS's state in first, so the keys are ONAY here and there.
        p = Puller(env, si, srv, brands, ["--once", "--rate", "100000"],
                   name="pull-push0")
        assert p.run(60) == 0, p.tail()
        ref, _ = reference(env.pb, si)
        onay = sorted(k for k, v in ref.items()
                      if v[0] == env.pb.Status.Value("ONAY") and
                      k[3] == env.pb.Channel.Value("MESAJ") and
                      k[2] == env.pb.RecipientType.Value("BIREYSEL"))
        keys = rng.sample(onay, 6)
        r = redis.Redis(host="127.0.0.1", port=srv.resp, socket_timeout=10)
        for k in keys:
            out = r.execute_command("REJECT", k[1], b, "MESAJ")
            assert out is not None
        ob = helpers.json.loads(srv.http_get("/v1/outbox")[2])
        assert ob["depth"] == 6, ob
        want = {(e["recipient"], e["consent_date"]) for e in ob["entries"]}

        si.faults(add_drop_after_commit=2)
        args = ["--ops", "127.0.0.1:%d" % srv.http, "--interval", "0.2",
                "--rate", "240"]
        p = Puller(env, si, srv, brands, args, name="pull-push").start()
        pullers = [p]
        for _ in range(8):
            time.sleep(rng.uniform(0.3, 1.5))
            p.kill()
            p = Puller(env, si, srv, brands, args, name="pull-push").start()
            pullers.append(p)

        def drained():
            return helpers.json.loads(srv.http_get("/v1/outbox")[2])["depth"] == 0
        wait_for(drained, 120, "the outbox to drain (pushed and reconciled)")
        p.proc.send_signal(signal.SIGTERM)
        assert p.wait(30) == 0, p.tail()

        adds = si.state()["adds"]
        got = [(a["recipient"], utc_of_tr(a["consentDate"])) for a in adds]
        assert sorted(got) == sorted(want), \
            "pushed %d times for %d rejections: %s" % (len(got), len(want), got)
        assert all(a["status"] == "RET" and a["source"] == "HS_MESAJ" and
                   a["brand"] == b for a in adds)
        # Both lost answers happened; after each, İYS's copy was found by
        # the status query or came back through the pull first: never a
        # second add (checked above).
        lost = [r for r in si.requests()
                if r["path"].endswith("/consents") and r["status"] == -200]
        assert len(lost) == 2, lost
        # Denied everywhere, with İYS's own copy as the record.
        with Rpc(env.pb, srv.rpc) as rpc:
            for k in keys:
                v = rpc.check_one(k[1], b, k[3], k[2])
                assert not v.allow and v.status == env.pb.Status.Value("RET"), (k, v)
    finally:
        si.stop()
        assert srv.stop() == 0, srv.log_tail()


def make_ca_and_cert(tmp):
    """A private CA and a certificate for 127.0.0.1 it signed (openssl)."""
    ca_key, ca = os.path.join(tmp, "ca.key"), os.path.join(tmp, "ca.pem")
    key, csr, crt = (os.path.join(tmp, n) for n in ("srv.key", "srv.csr", "srv.pem"))
    ext = os.path.join(tmp, "srv.ext")
    with open(ext, "w") as f:
        f.write("subjectAltName=IP:127.0.0.1\n")
    helpers.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes",
                 "-keyout", ca_key, "-out", ca, "-days", "2", "-subj", "/CN=test CA"])
    helpers.run(["openssl", "req", "-newkey", "rsa:2048", "-nodes", "-keyout", key,
                 "-out", csr, "-subj", "/CN=127.0.0.1"])
    helpers.run(["openssl", "x509", "-req", "-in", csr, "-CA", ca, "-CAkey", ca_key,
                 "-CAcreateserial", "-out", crt, "-days", "2", "-extfile", ext])
    return ca, crt, key


def test_pull_https_private_ca(env):
    """https:// is verified: a certificate of a private CA is refused
    (exit 1 at once, naming the certificate) until --iys-ca names the CA."""
    ca, crt, key = make_ca_and_cert(env.tmp)
    brands = brands_for(env, 2, base=985001)
    si = Standin(env.tmp, brands, 500, seed=21,
                 extra=["--tls-cert", crt, "--tls-key", key])
    srv = fresh_server(env, "consentd-tls")
    try:
        seq0 = stats(env.pb, srv).applied_sequence
        p = Puller(env, si, srv, brands, ["--once"], name="pull-tls-untrusted")
        assert p.run(60) == 1, p.tail()
        assert "certificate" in p.text().lower(), p.text()
        assert stats(env.pb, srv).applied_sequence == seq0
        p = Puller(env, si, srv, brands, ["--once", "--iys-ca", ca], name="pull-tls")
        assert p.run(60) == 0, p.tail()
        ref, n = reference(env.pb, si)
        assert stats(env.pb, srv).applied_sequence - seq0 == n
        verify(env.pb, srv, ref)
    finally:
        si.stop()
        assert srv.stop() == 0, srv.log_tail()


def test_pull_token_quota_waits(env):
    """H084 (the token endpoint's hourly quota) is waited out, not taken
    for refused credentials: the connector stays up, sends no further token
    request, and stops cleanly on SIGTERM."""
    brands = brands_for(env, 1, base=986001)
    si = Standin(env.tmp, brands, 10, seed=22)
    srv = fresh_server(env, "consentd-h084")
    try:
        si.faults(token_h084=1)
        p = Puller(env, si, srv, brands, ["--once"], name="pull-h084").start()
        wait_for(lambda: "hourly token limit" in p.text(), 30, "the H084 wait")
        time.sleep(1)
        assert p.proc.poll() is None, p.tail()
        tokens = [r for r in si.requests() if r["path"] == "/oauth2/token"]
        assert len(tokens) == 1, tokens
        p.proc.send_signal(signal.SIGTERM)
        assert p.wait(30) == 0, p.tail()
    finally:
        si.stop()
        assert srv.stop() == 0, srv.log_tail()
