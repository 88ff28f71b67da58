"""Local rejections (DESIGN 11) and their outbox for İYS (DESIGN 12)
against real consentd processes: Reject on the RPC port (Google's protobuf
runtime), REJECT on the RESP port (redis-py and redis-cli), POST /v1/reject
on the HTTP port, each key denied on every port as soon as the reply came;
the 'reject' right and the brand list; a newer İYS record kept; kill -9
after acknowledged rejections, round after round; and the outbox API the
connector uses (GET /v1/outbox, POST /v1/outbox/pushed) across restarts,
with an entry reconciled by İYS's own copy arriving as an Apply of origin
iys:BRAND:HS."""

import hashlib
import http.client
import json
import os
import random
import subprocess
import threading
import time

import pytest
import redis

import helpers
from helpers import Rpc, RET, ONAY, MESAJ, EPOSTA, BIREYSEL, TACIR

HS_MESAJ, HS_CAGRI_MERKEZI, HS_WEB = 8, 10, 6


# --- clients ----------------------------------------------------------------

def rpc_reject(pb, port, recipient, brand, channel, rtype=0, source=0,
               token=None):
    """A Request{reject} through Google's runtime: the Response."""
    with Rpc(pb, port) as rpc:
        if token is not None:
            a = rpc.auth(token)
            assert a.WhichOneof("body") == "auth", a
        req = pb.Request()
        req.reject.recipient = recipient
        req.reject.brand_code = brand
        req.reject.channel = channel
        req.reject.recipient_type = rtype
        req.reject.source = source
        req.reject.SetInParent()
        return rpc.call(req)


def redis_client(server, token=None):
    return redis.Redis(host=helpers.LOOPBACK, port=server.resp,
                       password=token, socket_timeout=10,
                       decode_responses=True)


def http_json(server, method, path, body=None, token=None):
    headers = {"Content-Type": "application/json"}
    if token is not None:
        headers["Authorization"] = "Bearer " + token
    data = None if body is None else (
        body if isinstance(body, (bytes, str)) else json.dumps(body))
    st, _, out = server.http_request(method, path, body=data, headers=headers)
    try:
        return st, json.loads(out) if out else None
    except ValueError:
        return st, out


def http_reject(server, recipient, brand, channel, token=None, **extra):
    body = dict(recipient=recipient, brand_code=brand, channel=channel)
    body.update(extra)
    return http_json(server, "POST", "/v1/reject", body, token)


def verdicts_everywhere(pb, server, recipient, brand, channel, rtype=BIREYSEL,
                        token=None):
    """The verdict of one check on the RPC, RESP and HTTP ports, as
    (allow, reason name) each."""
    out = {}
    with Rpc(pb, server.rpc) as rpc:
        if token is not None:
            rpc.auth(token)
        v = rpc.check_one(recipient, brand, channel, rtype)
        out["rpc"] = (v.allow, helpers.REASON_NAMES.get(v.reason))
    r = redis_client(server, token)
    try:
        got = r.execute_command("CHECK", recipient, brand,
                                helpers.CHANNEL_NAMES[channel],
                                helpers.RTYPE_NAMES[rtype])
        out["resp"] = (bool(got[0]), got[1])
    finally:
        r.close()
    q = "/v1/check?recipient=%s&brand_code=%d&channel=%s&recipient_type=%s" % (
        recipient.replace("+", "%2B").replace("@", "%40"), brand,
        helpers.CHANNEL_NAMES[channel], helpers.RTYPE_NAMES[rtype])
    headers = {} if token is None else {"Authorization": "Bearer " + token}
    st, _, body = server.http_get(q, headers=headers)
    assert st == 200, (st, body)
    v = json.loads(body)
    out["http"] = (v["allow"], v["reason"])
    return out


def assert_denied(pb, server, recipient, brand, channel, rtype=BIREYSEL,
                  token=None):
    got = verdicts_everywhere(pb, server, recipient, brand, channel, rtype,
                              token)
    for port, v in got.items():
        assert v == (False, "CONSENT_REJECTED"), \
            "%s %d %s on %s: %s" % (recipient, brand, channel, port, v)


def outbox(server, token=None, limit=None):
    path = "/v1/outbox" if limit is None else "/v1/outbox?limit=%s" % limit
    st, body = http_json(server, "GET", path, token=token)
    assert st == 200, (st, body)
    return body


def outbox_keys(server, token=None):
    return [(e["recipient"], e["brand_code"], e["channel"])
            for e in outbox(server, token, limit=1000)["entries"]]


def onay_records(env, n, channel=MESAJ, rtype=BIREYSEL):
    """n records of the dataset with status ONAY: (recipient, brand)."""
    out = []
    for (brand, rec, rt, ch), val in env.oracle.records.items():
        if val[0] == ONAY and ch == channel and rt == rtype:
            out.append((rec, brand))
            if len(out) == n:
                break
    assert len(out) == n, "the dataset has too few ONAY records"
    return out


_HELD = set()


def fresh_phone(rng):
    """A landline number no record of the dataset holds."""
    while True:
        p = "+90212%07d" % rng.randrange(10 ** 7)
        if p not in _HELD:
            return p


@pytest.fixture(scope="module", autouse=True)
def held(env):
    _HELD.update(k[1] for k in env.oracle.records)


@pytest.fixture(scope="module")
def rserver(env):
    """A server of its own: Rejects turn its data directory into one of
    origins, which the session's shared servers must not become."""
    s = env.server(name="consentd-reject")
    try:
        yield s
    finally:
        rc = s.stop()
        assert rc == 0, s.log_tail()


# --- each port, denied on every port ---------------------------------------

def test_reject_on_each_port_denies_everywhere(env, rserver):
    pb = env.pb
    rng = random.Random(11)
    recs = onay_records(env, 4)
    # Consent first, on every port.
    for rec, brand in recs:
        got = verdicts_everywhere(pb, rserver, rec, brand, MESAJ)
        assert all(v == (True, "CONSENT_GIVEN") for v in got.values()), got

    # RPC, Google's runtime: an ApplyResponse once durable and served.
    rec, brand = recs[0]
    r = rpc_reject(pb, rserver.rpc, rec, brand, MESAJ)
    assert r.WhichOneof("body") == "apply", r
    assert r.apply.applied == 1 and r.apply.skipped == 0
    assert_denied(pb, rserver, rec, brand, MESAJ)
    seq_rpc = r.apply.applied_sequence

    # RESP with redis-py: *3 [applied_sequence, applied, skipped].
    rec, brand = recs[1]
    cli = redis_client(rserver)
    got = cli.execute_command("REJECT", rec, brand, "MESAJ")
    assert got == [seq_rpc + 1, 1, 0], got
    assert_denied(pb, rserver, rec, brand, MESAJ)
    # With type and source, in either order.
    rec, brand = recs[2]
    got = cli.execute_command("REJECT", rec, brand, "MESAJ",
                              "HS_CAGRI_MERKEZI", "BIREYSEL")
    assert got[1:] == [1, 0], got
    assert_denied(pb, rserver, rec, brand, MESAJ)
    # A bad argument: an error naming it, the connection serving on.
    with pytest.raises(redis.ResponseError, match="INVALID_REQUEST recipient"):
        cli.execute_command("REJECT", "not-a-number", brand, "MESAJ")
    with pytest.raises(redis.ResponseError, match="INVALID_REQUEST source"):
        cli.execute_command("REJECT", rec, brand, "MESAJ", "IYS_WEB")
    with pytest.raises(redis.ResponseError, match="wrong number"):
        cli.execute_command("REJECT", rec, brand)
    assert cli.ping()
    cli.close()

    # Pipelined behind a REJECT in one write, a CHECK of the key (RESP)
    # is answered after it, and denied.
    phone = fresh_phone(rng)
    with helpers.Resp(rserver.resp) as raw:
        raw.send_raw(helpers.resp_encode("REJECT", phone, 600126, "MESAJ") +
                     helpers.resp_encode("CHECK", phone, 600126, "MESAJ") +
                     b"PING\r\n")
        got = raw.read()
        assert isinstance(got, list) and got[1:] == [1, 0], got
        got = raw.read()
        assert got[:2] == [0, "CONSENT_REJECTED"], got
        assert raw.read() == "PONG"
    # The same on the RPC port: Reject, Check in one write.
    phone2 = fresh_phone(rng)
    with Rpc(pb, rserver.rpc) as rpc:
        a = pb.Request(id=1)
        a.reject.recipient = phone2
        a.reject.brand_code = 600126
        a.reject.channel = MESAJ
        b = pb.Request(id=2)
        b.check.checks.add(recipient=phone2, brand_code=600126, channel=MESAJ)
        rpc.sock.sendall(Rpc.frame(a.SerializeToString()) +
                         Rpc.frame(b.SerializeToString()))
        ra, rb = rpc.recv(), rpc.recv()
        assert ra.id == 1 and ra.WhichOneof("body") == "apply", ra
        assert rb.id == 2 and not rb.check.verdicts[0].allow, rb
        assert rb.check.verdicts[0].reason == helpers.CONSENT_REJECTED
        assert rb.check.applied_sequence >= ra.apply.applied_sequence

    # redis-cli, a client nobody here wrote either.
    rec, brand = recs[3]
    p = subprocess.run(["redis-cli", "-p", str(rserver.resp), "REJECT", rec,
                        str(brand), "MESAJ"], capture_output=True, text=True,
                       timeout=30)
    assert p.returncode == 0 and p.stdout.split()[1:] == ["1", "0"], p
    assert_denied(pb, rserver, rec, brand, MESAJ)

    # HTTP with JSON; a key without a record gets a denying one; e-mail.
    addr = "Ayse.%d@Example.com" % rng.randrange(10 ** 9)
    st, body = http_reject(rserver, addr, 600123, "EPOSTA",
                           recipient_type="TACIR", source="HS_WEB")
    assert st == 200 and body["applied"] == 1, body
    assert_denied(pb, rserver, addr.lower(), 600123, EPOSTA, TACIR)
    phone = fresh_phone(rng)
    got = verdicts_everywhere(pb, rserver, phone, 600124, MESAJ, TACIR)
    assert got["rpc"] == (True, "MERCHANT_NO_REJECTION"), got
    st, body = http_reject(rserver, phone, 600124, "MESAJ",
                           recipient_type="TACIR")
    assert st == 200, body
    assert_denied(pb, rserver, phone, 600124, MESAJ, TACIR)
    # Bad bodies: 400 naming what was wrong.
    for bad, word in [({"recipient": phone, "brand_code": 1, "channel":
                        "MESAJ", "purpose": "TICARI"}, "purpose"),
                      ({"recipient": phone, "brand_code": 1, "channel":
                        "SMS"}, "channel"),
                      ({"recipient": phone, "brand_code": 1, "channel":
                        "MESAJ", "source": "HS_NOPE"}, "source"),
                      ({"recipient": phone, "brand_code": 1}, "channel"),
                      ("{not json", "JSON")]:
        st, body = http_json(rserver, "POST", "/v1/reject", bad)
        assert st == 400 and word in body["error"], (bad, st, body)
    st, _ = http_json(rserver, "GET", "/v1/reject")
    assert st == 405

    # The origin's cursor is the last local batch's position.
    with Rpc(pb, rserver.rpc) as rpc:
        req = pb.Request()
        req.stats.origin = "local"
        req.stats.SetInParent()
        s = rpc.call(req).stats
        assert s.origin_cursor == str(s.applied_sequence), s

    # Every one of them is in the outbox, once, in log order.
    ob = outbox(rserver, limit=1000)
    seqs = [e["sequence"] for e in ob["entries"]]
    assert seqs == sorted(set(seqs)) and ob["depth"] == len(seqs) == 8, ob
    m = rserver.metrics()
    assert m.get("consentd_outbox_depth") == 8


def test_newer_iys_record_is_not_overridden(env, rserver):
    """İYS's ONAY with a later consent date, applied first, stands; the
    Reject is answered, skipped."""
    pb = env.pb
    phone = fresh_phone(random.Random(12))
    later = int(time.time()) + 3600
    with Rpc(pb, rserver.rpc) as rpc:
        req = pb.Request()
        c = req.apply.changes.add(recipient=phone, channel=MESAJ,
                                  recipient_type=BIREYSEL, brand_code=600125,
                                  status=ONAY, source=HS_WEB,
                                  consent_date=later, creation_date=later)
        assert c.recipient == phone
        req.apply.origin = "iys:600125:HS"
        req.apply.after_cursor = ""
        req.apply.cursor = "c1"
        r = rpc.call(req)
        assert r.WhichOneof("body") == "apply" and r.apply.applied == 1, r
    r = rpc_reject(pb, rserver.rpc, phone, 600125, MESAJ)
    assert r.WhichOneof("body") == "apply", r
    assert r.apply.applied == 0 and r.apply.skipped == 1, r
    got = verdicts_everywhere(pb, rserver, phone, 600125, MESAJ)
    assert all(v == (True, "CONSENT_GIVEN") for v in got.values()), got


# --- rights -------------------------------------------------------------------

@pytest.fixture(scope="module")
def rights(env):
    """gw may reject for brand 600123 only; feeder may apply everywhere but
    not reject; ops may apply and reject everywhere."""
    toks = {n: "%s-%s" % (n, os.urandom(12).hex()) for n in ("gw", "feeder", "ops")}
    dig = {n: hashlib.sha256(t.encode()).hexdigest() for n, t in toks.items()}
    path = os.path.join(env.tmp, "reject-tokens.txt")
    with open(path, "w") as f:
        f.write("gw %s 600123 reject\n" % dig["gw"])
        f.write("feeder %s * apply stats\n" % dig["feeder"])
        f.write("ops %s * reject apply\n" % dig["ops"])
    s = env.server(extra=["--tokens", path], name="consentd-reject-tokens")
    try:
        yield s, toks
    finally:
        rc = s.stop()
        assert rc == 0, s.log_tail()


def test_reject_right_and_brand_list(env, rights):
    pb = env.pb
    s, toks = rights
    rng = random.Random(13)
    phone = fresh_phone(rng)
    # Without the right: refused on every port, nothing applied.
    r = rpc_reject(pb, s.rpc, phone, 600123, MESAJ, token=toks["feeder"])
    assert r.WhichOneof("body") == "error" and r.error.code == 403, r
    cli = redis_client(s, toks["feeder"])
    # -NOPERM, which redis-py raises as its NoPermissionError.
    with pytest.raises(redis.exceptions.NoPermissionError,
                       match="may not reject"):
        cli.execute_command("REJECT", phone, 600123, "MESAJ")
    cli.close()
    with helpers.Resp(s.resp) as raw:
        assert raw.cmd("AUTH", toks["feeder"]) == "OK"
        got = raw.cmd("REJECT", phone, 600123, "MESAJ")
        assert isinstance(got, helpers.RespError) and \
            got.startswith("NOPERM "), got
    st, body = http_reject(s, phone, 600123, "MESAJ", token=toks["feeder"])
    assert st == 403 and "reject" in body["error"], body
    # Nor through an Apply of origin "local".
    with Rpc(pb, s.rpc) as rpc:
        rpc.auth(toks["feeder"])
        req = pb.Request()
        req.apply.changes.add(recipient=phone, channel=MESAJ,
                              recipient_type=BIREYSEL, brand_code=600123,
                              status=RET, source=HS_MESAJ,
                              consent_date=int(time.time()))
        req.apply.origin = "local"
        req.apply.cursor = "x"
        r = rpc.call(req)
        assert r.WhichOneof("body") == "error" and r.error.code == 403, r
    # A brand outside the list: refused, worded alike for any brand.
    r = rpc_reject(pb, s.rpc, phone, 600124, MESAJ, token=toks["gw"])
    assert r.WhichOneof("body") == "error" and r.error.code == 403, r
    assert "600124 is not among" in r.error.message
    cli = redis_client(s, toks["gw"])
    with pytest.raises(redis.exceptions.NoPermissionError,
                       match="600124 is not among"):
        cli.execute_command("REJECT", phone, 600124, "MESAJ")
    st, body = http_reject(s, phone, 600124, "MESAJ", token=toks["gw"])
    assert st == 403 and "not among" in body["error"], body
    # Nothing of it is served.
    got = verdicts_everywhere(pb, s, phone, 600123, MESAJ, token=toks["ops"])
    assert got["rpc"] == (False, "NO_CONSENT"), got
    # Within the list: taken, on each port.
    r = rpc_reject(pb, s.rpc, phone, 600123, MESAJ, token=toks["gw"])
    assert r.WhichOneof("body") == "apply" and r.apply.applied == 1, r
    assert cli.execute_command("REJECT", fresh_phone(rng), 600123,
                               "MESAJ")[1] == 1
    cli.close()
    st, body = http_reject(s, fresh_phone(rng), 600123, "MESAJ",
                           token=toks["gw"])
    assert st == 200 and body["applied"] == 1, body
    assert_denied(pb, s, phone, 600123, MESAJ, token=toks["ops"])
    # The outbox is the connector's: the apply right; gw may not read it.
    st, body = http_json(s, "GET", "/v1/outbox", token=toks["gw"])
    assert st == 403, body
    st, _ = http_json(s, "GET", "/v1/outbox")
    assert st == 401
    assert len(outbox(s, toks["feeder"])["entries"]) == 3


# --- kill -9 after acknowledged Rejects ---------------------------------------

def test_kill9_keeps_every_acknowledged_reject(env):
    pb = env.pb
    rng = random.Random(14)
    d = env.data_dir()
    log = os.path.join(env.tmp, "consentd-reject-kill.log")
    s = helpers.Server(d, log).start()
    acked = []  # (recipient, brand, port)
    lock = threading.Lock()
    try:
        for rnd in range(12):
            stop = threading.Event()
            errors = []

            def rejecter(kind, seed):
                r = random.Random(seed)
                # At most 10 each a round: the whole outbox stays within
                # one GET (1000 entries).
                for _ in range(10):
                    if stop.is_set():
                        return
                    phone = fresh_phone(r)
                    brand = 600100 + r.randrange(20)
                    try:
                        if kind == "rpc":
                            rep = rpc_reject(pb, s.rpc, phone, brand, MESAJ)
                            ok = rep.WhichOneof("body") == "apply"
                        elif kind == "resp":
                            c = redis_client(s)
                            try:
                                ok = c.execute_command("REJECT", phone, brand,
                                                       "MESAJ")[1] == 1
                            finally:
                                c.close()
                        else:
                            st, _ = http_reject(s, phone, brand, "MESAJ")
                            ok = st == 200
                    except (OSError, redis.RedisError, helpers.Closed,
                            http.client.HTTPException):
                        return  # the server died under us: not acknowledged
                    if ok:
                        with lock:
                            acked.append((phone, brand, kind))
                    else:
                        errors.append((kind, phone))
                        return

            ts = [threading.Thread(target=rejecter, args=(k, rnd * 10 + i))
                  for i, k in enumerate(("rpc", "resp", "http", "rpc"))]
            for t in ts:
                t.start()
            # Let some be acknowledged, then SIGKILL mid-flight.
            deadline = time.monotonic() + 30
            need = len(acked) + 3
            while len(acked) < need and time.monotonic() < deadline:
                time.sleep(0.005)
            time.sleep(rng.random() * 0.05)
            s.proc.kill()
            s.proc.wait(10)
            stop.set()
            for t in ts:
                t.join(30)
            assert not errors, errors
            assert len(acked) >= need, "round %d: too few acknowledged" % rnd
            s = helpers.Server(d, log, ports=s).start()
        # Every acknowledged RET is denied and in the outbox exactly once.
        assert len(acked) >= 36
        keys = outbox_keys(s)
        assert outbox(s, limit=1000)["depth"] == len(keys) < 1000
        assert len(keys) == len(set(keys)), "an entry twice"
        seqs = [e["sequence"] for e in outbox(s, limit=1000)["entries"]]
        assert seqs == sorted(set(seqs))
        for phone, brand, kind in acked:
            assert (phone, brand, "MESAJ") in keys, (phone, brand, kind)
        with Rpc(pb, s.rpc) as rpc:
            for phone, brand, kind in acked:
                v = rpc.check_one(phone, brand, MESAJ)
                assert (v.allow, v.reason) == (False, helpers.CONSENT_REJECTED), \
                    (phone, brand, kind)
        for phone, brand, _ in acked[:5]:
            assert_denied(pb, s, phone, brand, MESAJ)
    finally:
        rc = s.stop()
    assert rc == 0, s.log_tail()


# --- the outbox API --------------------------------------------------------------

def test_outbox_api_and_reconciliation(env):
    pb = env.pb
    rng = random.Random(15)
    d = env.data_dir()
    log = os.path.join(env.tmp, "consentd-outbox.log")
    s = helpers.Server(d, log).start()
    try:
        phones = [fresh_phone(rng) for _ in range(5)]
        for p in phones:
            r = rpc_reject(pb, s.rpc, p, 600123, MESAJ)
            assert r.WhichOneof("body") == "apply", r
        ob = outbox(s)
        assert ob["depth"] == 5 and len(ob["entries"]) == 5
        e0 = ob["entries"][0]
        assert e0["recipient"] == phones[0] and e0["brand_code"] == 600123
        assert e0["channel"] == "MESAJ" and e0["recipient_type"] == "BIREYSEL"
        assert e0["source"] == "HS_MESAJ" and e0["state"] == "queued"
        assert e0["transaction_id"] == "" and e0["iys_code"] == 0
        assert abs(e0["consent_date"] - time.time()) < 600
        assert set(e0) == {"sequence", "recipient", "brand_code", "iys_code",
                           "channel", "recipient_type", "source",
                           "consent_date", "state", "transaction_id"}
        # limit: oldest first; bounds.
        two = outbox(s, limit=2)
        assert [e["sequence"] for e in two["entries"]] == \
            [e["sequence"] for e in ob["entries"][:2]] and two["depth"] == 5
        for bad in ("0", "1001", "x", "-1"):
            st, body = http_json(s, "GET", "/v1/outbox?limit=" + bad)
            assert st == 400 and "limit" in body["error"], (bad, st, body)

        seq = [e["sequence"] for e in ob["entries"]]
        push = lambda body: http_json(s, "POST", "/v1/outbox/pushed", body)
        st, body = push({"sequence": seq[0], "transaction_id": "tx-a"})
        assert (st, body) == (200, {"sequence": seq[0], "state": "pushed"})
        st, body = push({"sequence": seq[0], "transaction_id": "tx-a"})
        assert (st, body) == (200, {"sequence": seq[0], "state": "pushed"})
        st, body = push({"sequence": seq[0], "transaction_id": "tx-b"})
        assert st == 409 and "tx-a" in body["error"], body
        st, body = push({"sequence": 999999, "transaction_id": "tx-c"})
        assert st == 404, body
        for bad in ({"sequence": seq[1]}, {"transaction_id": "x"},
                    {"sequence": seq[1], "transaction_id": "x", "more": 1},
                    {"sequence": "1", "transaction_id": "x"},
                    {"sequence": seq[1], "transaction_id": ""}):
            st, body = push(bad)
            assert st == 400, (bad, st, body)
        st, _ = http_json(s, "GET", "/v1/outbox/pushed")
        assert st == 405
        st, body = push({"sequence": seq[1], "transaction_id": "tx-d"})
        assert st == 200

        # Survives SIGTERM and SIGKILL.
        assert s.stop() == 0
        s = helpers.Server(d, log, ports=s).start()
        ob = outbox(s)
        states = {e["sequence"]: (e["state"], e["transaction_id"])
                  for e in ob["entries"]}
        assert states[seq[0]] == ("pushed", "tx-a")
        assert states[seq[1]] == ("pushed", "tx-d")
        assert states[seq[2]] == ("queued", "")
        s.proc.kill()
        s.proc.wait(10)
        s = helpers.Server(d, log, ports=s).start()
        assert outbox(s) == ob
        assert push({"sequence": seq[0], "transaction_id": "tx-b"})[0] == 409

        # İYS's copy comes back through the pull (origin iys:BRAND:HS):
        # a RET of the key at the entry's date or later reconciles it; an
        # ONAY or an earlier date does not.
        def iys_apply(changes, after, cursor):
            with Rpc(pb, s.rpc) as rpc:
                req = pb.Request()
                for rec, status, date in changes:
                    req.apply.changes.add(
                        recipient=rec, channel=MESAJ, recipient_type=BIREYSEL,
                        brand_code=600123, status=status, source=HS_MESAJ,
                        consent_date=date, creation_date=date)
                req.apply.origin = "iys:600123:HS"
                req.apply.after_cursor = after
                req.apply.cursor = cursor
                r = rpc.call(req)
                assert r.WhichOneof("body") == "apply", r
        dates = {e["sequence"]: e["consent_date"] for e in ob["entries"]}
        iys_apply([(phones[0], RET, dates[seq[0]]),
                   (phones[2], RET, dates[seq[2]] + 5),
                   (phones[3], RET, dates[seq[3]] - 5)], "", "p1")
        iys_apply([(phones[4], ONAY, dates[seq[4]] + 9)], "p1", "p2")
        ob = outbox(s)
        assert [e["sequence"] for e in ob["entries"]] == [seq[1], seq[3], seq[4]]
        assert ob["depth"] == 3
        m = s.metrics()
        assert m.get("consentd_outbox_depth") == 3
        assert m.get("consentd_outbox_oldest_age_seconds") >= 0
        st, body = http_json(s, "GET", "/v1/stats")
        assert body["outbox_depth"] == 3, body
        # A reconciled entry is gone for the connector too.
        st, body = push({"sequence": seq[0], "transaction_id": "tx-a"})
        assert st == 404, body
        # The İYS RET wins over the later local ONAY? No: the key stays
        # denied (phones[0] RET at its own date from both).
        assert_denied(pb, s, phones[0], 600123, MESAJ)
        s.proc.kill()
        s.proc.wait(10)
        s = helpers.Server(d, log, ports=s).start()
        assert [e["sequence"] for e in outbox(s)["entries"]] == \
            [seq[1], seq[3], seq[4]]
    finally:
        rc = s.stop()
    assert rc == 0, s.log_tail()


def test_sequence_kind_refuses_reject(env):
    """A data directory fed with feeder-given sequences (no origins)
    refuses a Reject with 409, as any Apply with an origin."""
    pb = env.pb
    d = env.data_dir()
    log = os.path.join(env.tmp, "consentd-reject-seq.log")
    s = helpers.Server(d, log).start()
    try:
        phone = fresh_phone(random.Random(16))
        with Rpc(pb, s.rpc) as rpc:
            req = pb.Request()
            req.apply.changes.add(recipient=phone, channel=MESAJ,
                                  recipient_type=BIREYSEL, brand_code=600123,
                                  status=ONAY, source=HS_WEB,
                                  consent_date=int(time.time()) - 60,
                                  sequence=1)
            r = rpc.call(req)
            assert r.WhichOneof("body") == "apply", r
        r = rpc_reject(pb, s.rpc, phone, 600123, MESAJ)
        assert r.WhichOneof("body") == "error" and r.error.code == 409, r
        cli = redis_client(s)
        with pytest.raises(redis.ResponseError, match="CONFLICT"):
            cli.execute_command("REJECT", phone, 600123, "MESAJ")
        cli.close()
        st, body = http_reject(s, phone, 600123, "MESAJ")
        assert st == 409, body
        assert outbox(s)["depth"] == 0
        got = verdicts_everywhere(pb, s, phone, 600123, MESAJ)
        assert got["rpc"] == (True, "CONSENT_GIVEN"), got
    finally:
        rc = s.stop()
    assert rc == 0, s.log_tail()
