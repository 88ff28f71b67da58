"""Partners with tokens (DESIGN 3.6 token file, 5.2): before AUTH only
AUTH and PING work; a principal never learns anything about a brand outside
its list, on any protocol; NOT_AUTHORIZED looks the same whether or not the
brand exists; a wrong token is refused."""

import json
import struct
import subprocess
import urllib.parse

import pytest
import redis

import helpers
from helpers import (MAX_FRAME_UNAUTH, MESAJ, TACIR, BIREYSEL, ONAY,
                     BILGILENDIRME, CHANNEL_NAMES, RTYPE_NAMES, REASON_NAMES,
                     NOT_AUTHORIZED, Rpc, Resp, RespError)


def scoped_checks(o, partners):
    """Checks across alice's brands, a real brand outside them (with ONAY
    records and absent TACIR keys, which would allow), and unknown
    brands."""
    out = []
    outside = partners.outside
    for b in partners.alice_brands + [outside]:
        keys = [k for k in sorted(o.records) if k[0] == b]
        onay = [k for k in keys if o.records[k][0] == ONAY][:15]
        rest = [k for k in keys if o.records[k][0] != ONAY][:5]
        for k in onay + rest:
            out.append(dict(recipient=k[1], brand_code=k[0], channel=k[3],
                            recipient_type=k[2]))
        for k in onay[:3]:
            out.append(dict(recipient=k[1], brand_code=k[0], channel=k[3],
                            recipient_type=k[2], purpose=BILGILENDIRME))
            out.append(dict(recipient="+905990000123", brand_code=k[0],
                            channel=MESAJ, recipient_type=TACIR))
    absent = o.absent_brand()
    for k in [k for k in sorted(o.records) if k[0] == outside][:5]:
        out.append(dict(recipient=k[1], brand_code=absent, channel=k[3],
                        recipient_type=k[2]))
    out.append(dict(recipient="bad", brand_code=outside, channel=MESAJ))
    return out


def model(o, c, authorized):
    return o.expect(c["recipient"], c["brand_code"], c["channel"],
                    c.get("recipient_type", 0), c.get("purpose", 0),
                    authorized=authorized)


def rpc_refused(conn, req):
    """Sends req; returns the Response, or None if the server closed."""
    try:
        conn.send(req)
        return conn.recv()
    except (helpers.Closed, BrokenPipeError, ConnectionResetError):
        return None


def test_rpc_before_auth(env, token_server, partners):
    pb, o = env.pb, env.oracle
    names = ("consentd_unauthenticated_refused_total", "consentd_auth_failures_total")
    m0 = token_server.metrics()
    k = sorted(o.records)[0]

    def fresh():
        return Rpc(pb, token_server.rpc)

    c = fresh()
    try:
        req = pb.Request(id=1)
        req.check.checks.add(recipient=k[1], brand_code=k[0], channel=k[3],
                             recipient_type=k[2])
        r = rpc_refused(c, req)
        assert r is None or r.WhichOneof("body") == "error", \
            "a Check before AUTH was answered: %s" % r
        if r is None:
            c.close()
            c = fresh()
        req = pb.Request(id=2)
        req.stats.SetInParent()
        r = rpc_refused(c, req)
        assert r is None or r.WhichOneof("body") == "error", \
            "Stats before AUTH was answered: %s" % r
        if r is None:
            c.close()
            c = fresh()
        for bad in ("", "wrong", partners.tokens["alice"] + "x",
                    partners.tokens["alice"].upper()):
            req = pb.Request(id=3)
            req.auth.token = bad
            r = rpc_refused(c, req)
            assert r is None or r.WhichOneof("body") == "error", \
                "token %r accepted: %s" % (bad, r)
            if r is None:
                c.close()
                c = fresh()
        r = c.auth(partners.tokens["alice"])
        assert r.WhichOneof("body") == "auth" and r.auth.principal == "alice", r
        s = c.stats()
        assert s.records == 0, "alice has no 'stats' right: %s" % s
        assert s.generation == 0 and s.data_as_of > 0, s
    finally:
        c.close()
    m1 = token_server.metrics()
    for n in names:
        assert m1.total(n) > m0.total(n), "%s did not move" % n


@pytest.mark.parametrize("who", ["alice", "bob", "root"])
def test_rpc_brand_scope(env, token_server, partners, who):
    pb, o = env.pb, env.oracle
    checks = scoped_checks(o, partners)
    may = partners.may(who)
    with Rpc(pb, token_server.rpc) as c:
        r = c.auth(partners.tokens[who])
        assert r.WhichOneof("body") == "auth" and r.auth.principal == who
        resp = c.check(checks)
        for i, (ch, v) in enumerate(zip(checks, resp.verdicts)):
            helpers.assert_verdict(v, model(o, ch, may), "%s #%d %s" % (who, i, ch))
        # A request-level brand outside the list is refused the same way.
        outside = [b for b in (partners.outside, partners.alice_brands[0],
                               o.absent_brand()) if not may(b)]
        for b in outside:
            recs = [k[1] for k in sorted(o.records) if k[0] == b and k[3] == MESAJ][:5]
            recs = recs or ["+905990000001"]
            resp = c.check([dict(recipient=x) for x in recs], brand_code=b,
                           channel=MESAJ, recipient_type=TACIR)
            for v in resp.verdicts:
                assert helpers.verdict_tuple(v) == (False, NOT_AUTHORIZED, 0, 0, 0), v
    if who == "alice":
        # No existence oracle: the real outside brand and an unknown one
        # answer byte for byte alike.
        with Rpc(pb, token_server.rpc) as c:
            c.auth(partners.tokens[who])
            k = [k for k in sorted(o.records) if k[0] == partners.outside][0]
            a = c.check([dict(recipient=k[1], brand_code=partners.outside,
                              channel=k[3], recipient_type=k[2])])
            b = c.check([dict(recipient=k[1], brand_code=o.absent_brand(),
                              channel=k[3], recipient_type=k[2])])
            assert a.verdicts[0].SerializeToString() == b.verdicts[0].SerializeToString()


def test_rpc_frame_limit_before_auth(env, token_server, partners):
    pb, o = env.pb, env.oracle
    req = pb.Request(id=5)
    keys = sorted(o.records)
    i = 0
    while req.ByteSize() <= MAX_FRAME_UNAUTH + 100:
        k = keys[i]
        req.check.checks.add(recipient=k[1], brand_code=k[0], channel=k[3],
                             recipient_type=k[2])
        i += 1
    payload = req.SerializeToString()
    s = helpers.Rpc(pb, token_server.rpc)
    try:
        try:
            s.sock.sendall(struct.pack(">I", len(payload)) + payload[:64])
        except (BrokenPipeError, ConnectionResetError):
            pass
        closed, data = helpers.wait_closed(s.sock, 5)
        assert closed, "a %d-byte frame before AUTH was not refused" % len(payload)
    finally:
        s.close()
    # After AUTH the same frame is fine.
    with Rpc(pb, token_server.rpc) as c:
        c.auth(partners.tokens["root"])
        resp = c.check([dict(recipient=x.recipient, brand_code=x.brand_code,
                             channel=x.channel, recipient_type=x.recipient_type)
                        for x in req.check.checks])
        for ch, v in zip(req.check.checks, resp.verdicts):
            helpers.assert_verdict(v, o.expect(ch.recipient, ch.brand_code, ch.channel,
                                               ch.recipient_type), "after auth")


def check_reply(exp):
    return [1 if exp.allow else 0, REASON_NAMES[exp.reason],
            helpers.STATUS_NAMES[exp.status] if exp.status else None,
            exp.date if exp.status else None]


def test_resp_before_auth(env, token_server, partners):
    o = env.oracle
    k = sorted(o.records)[0]
    with Resp(token_server.resp) as c:
        assert c.cmd("PING") == "PONG"
        for cmd in (["CHECK", k[1], k[0], CHANNEL_NAMES[k[3]]],
                    ["MCHECK", k[0], CHANNEL_NAMES[k[3]], "BIREYSEL", "TICARI", k[1]],
                    ["INFO"]):
            got = c.cmd(*cmd)
            assert isinstance(got, RespError), "%s before AUTH answered %r" % (cmd[0], got)
        for bad in ("wrong", partners.tokens["alice"] + "x"):
            got = c.cmd("AUTH", bad)
            assert isinstance(got, RespError), "AUTH %r accepted: %r" % (bad, got)
        got = c.cmd("CHECK", k[1], k[0], CHANNEL_NAMES[k[3]])
        assert isinstance(got, RespError), "CHECK after a failed AUTH: %r" % (got,)
        assert c.cmd("PING") == "PONG"
        assert c.cmd("AUTH", partners.tokens["root"]) == "OK"
        got = c.cmd("CHECK", k[1], k[0], CHANNEL_NAMES[k[3]], RTYPE_NAMES[k[2]])
        assert got == check_reply(o.expect(k[1], k[0], k[3], k[2]))
    # redis-py with a wrong password fails to connect.
    bad = redis.Redis(host=helpers.LOOPBACK, port=token_server.resp,
                      password="nope", socket_timeout=10)
    try:
        with pytest.raises(redis.RedisError):
            bad.ping()
    finally:
        bad.close()


@pytest.mark.parametrize("who", ["alice", "bob"])
def test_resp_brand_scope(env, token_server, partners, who):
    o = env.oracle
    may = partners.may(who)
    r = redis.Redis(host=helpers.LOOPBACK, port=token_server.resp,
                    password=partners.tokens[who], socket_timeout=10,
                    decode_responses=True)
    try:
        for ch in scoped_checks(o, partners):
            args = [ch["recipient"], ch["brand_code"], CHANNEL_NAMES[ch["channel"]],
                    RTYPE_NAMES[ch.get("recipient_type") or BIREYSEL],
                    "BILGILENDIRME" if ch.get("purpose") == BILGILENDIRME else "TICARI"]
            exp = model(o, ch, may)
            try:
                got = r.execute_command("CHECK", *args)
            except redis.ResponseError:
                assert exp.reason == helpers.INVALID_REQUEST, "CHECK %s refused" % args
                continue
            assert got == check_reply(exp), "CHECK %s: %r, want %r" % (args, got, exp)
        # MCHECK over a brand outside the list: recipients that would allow
        # (ONAY records, and absent TACIR keys) must not come back as 1,
        # and the answer must be the same as for an unknown brand.
        brands = [b for b in (partners.outside, partners.alice_brands[0]) if not may(b)]
        for b in brands:
            for rtype in (BIREYSEL, TACIR):
                keys = [k for k in sorted(o.records)
                        if k[0] == b and k[3] == MESAJ and k[2] == rtype]
                recs = [k[1] for k in keys if o.records[k][0] == ONAY][:10]
                recs.append("+905990000777")
                replies = []
                for brand in (b, o.absent_brand()):
                    try:
                        got = r.execute_command("MCHECK", brand, "MESAJ",
                                                RTYPE_NAMES[rtype], "TICARI", *recs)
                        got = [g if isinstance(g, int) else "error" for g in got]
                        assert 1 not in got, "MCHECK leaked brand %d: %r" % (brand, got)
                    except redis.ResponseError as e:
                        got = "refused: %s" % e
                    replies.append(got)
                assert replies[0] == replies[1], \
                    "MCHECK tells a real brand from an unknown one: %r" % replies
        # Inside the list MCHECK answers for real.
        own = [b for b in partners.alice_brands + partners.bob_brands if may(b)][0]
        keys = [k for k in sorted(o.records) if k[0] == own and k[3] == MESAJ
                and k[2] == BIREYSEL][:10]
        recs = [k[1] for k in keys]
        got = r.execute_command("MCHECK", own, "MESAJ", "BIREYSEL", "TICARI", *recs)
        assert got == [1 if o.expect(x, own, MESAJ).allow else 0 for x in recs]
    finally:
        r.close()


def bearer(token):
    return {"Authorization": "Bearer " + token}


def http_check(server, rec, brand, channel, rtype, token=None):
    q = urllib.parse.urlencode([("recipient", rec), ("brand_code", str(brand)),
                                ("channel", CHANNEL_NAMES[channel]),
                                ("recipient_type", RTYPE_NAMES[rtype])],
                               quote_via=urllib.parse.quote)
    return server.http_get("/v1/check?" + q, headers=bearer(token) if token else None)


def test_http_bearer(env, token_server, partners):
    o = env.oracle
    # Ops endpoints need no token.
    for path in ("/healthz", "/readyz", "/metrics"):
        st, _, _ = token_server.http_get(path)
        assert st == 200, "%s answered %d without a token" % (path, st)
    k = [k for k in sorted(o.records) if k[0] == partners.alice_brands[0]
         and o.records[k][0] == ONAY][0]
    for tok in (None, "wrong", partners.tokens["alice"] + "x"):
        st, _, body = http_check(token_server, k[1], k[0], k[3], k[2], tok)
        assert st in (401, 403), "/v1/check with token %r: %d %r" % (tok, st, body)
        assert b"ONAY" not in body and b"CONSENT" not in body
        st, _, body = token_server.http_get("/v1/stats",
                                            headers=bearer(tok) if tok else None)
        assert st in (401, 403), "/v1/stats with token %r: %d" % (tok, st)
        st, _, body = token_server.http_request(
            "POST", "/v1/check", body=json.dumps({"checks": [
                {"recipient": k[1], "brand_code": k[0],
                 "channel": CHANNEL_NAMES[k[3]]}]}).encode(),
            headers=dict(bearer(tok) if tok else {},
                         **{"Content-Type": "application/json"}))
        assert st in (401, 403), "POST /v1/check with token %r: %d" % (tok, st)
    # Basic auth or a bare token is not a Bearer token.
    st, _, _ = token_server.http_get("/v1/stats", headers={
        "Authorization": partners.tokens["alice"]})
    assert st in (401, 403)
    tok = partners.tokens["alice"]
    st, _, body = http_check(token_server, k[1], k[0], k[3], k[2], tok)
    assert st == 200, (st, body)
    v = json.loads(body)
    assert v["reason"] == "CONSENT_GIVEN" and v["allow"] is True, v
    st, _, body = token_server.http_get("/v1/stats", headers=bearer(tok))
    assert st == 200 and "records" not in json.loads(body), body
    # Outside the list: refused, and alike for a real and an unknown brand.
    ko = [k for k in sorted(o.records) if k[0] == partners.outside
          and o.records[k][0] == ONAY][0]
    a = http_check(token_server, ko[1], ko[0], ko[3], ko[2], tok)
    b = http_check(token_server, ko[1], o.absent_brand(), ko[3], ko[2], tok)
    c = http_check(token_server, "+905990000888", ko[0], MESAJ, TACIR, tok)
    for st, _, body in (a, b, c):
        assert st in (200, 403), (st, body)
        if st == 200:
            v = json.loads(body)
            assert v["allow"] is False and v["reason"] == "NOT_AUTHORIZED", v
        assert b"ONAY" not in body and b"consent_date\":1" not in body, body
    assert (a[0], a[2]) == (b[0], b[2]), "real vs unknown brand differ: %r %r" % (a, b)
    # POST mixing brands: each verdict scoped.
    checks = scoped_checks(o, partners)
    body = {"checks": [dict(c, channel=CHANNEL_NAMES[c["channel"]],
                            recipient_type=RTYPE_NAMES[c.get("recipient_type") or
                                                       BIREYSEL],
                            **({"purpose": "BILGILENDIRME"}
                               if c.get("purpose") == BILGILENDIRME else {}))
                       for c in checks]}
    st, _, out = token_server.http_request(
        "POST", "/v1/check", body=json.dumps(body).encode(),
        headers=dict(bearer(tok), **{"Content-Type": "application/json"}))
    assert st == 200, (st, out[:300])
    doc = json.loads(out)
    may = partners.may("alice")
    for i, (ch, v) in enumerate(zip(checks, doc["verdicts"])):
        exp = model(o, ch, may)
        assert v["reason"] == REASON_NAMES[exp.reason] and v["allow"] == exp.allow, \
            "POST #%d %s: %r, want %r" % (i, ch, v, exp)
        if exp.reason == NOT_AUTHORIZED:
            assert not v.get("status") or v.get("status") == "STATUS_UNSPECIFIED", v
            assert not v.get("consent_date"), v


def test_rpc_client_script_with_token(env, token_server, partners):
    o = env.oracle
    k = [k for k in sorted(o.records) if k[0] == partners.alice_brands[0]][0]
    base = ["/usr/bin/python3", helpers.ROOT + "/scripts/rpc_client.py", "--rpc",
            "%s:%d" % (helpers.LOOPBACK, token_server.rpc)]
    args = ["check", k[1], str(k[0]), CHANNEL_NAMES[k[3]], RTYPE_NAMES[k[2]]]
    p = subprocess.run(base + ["--token", partners.tokens["alice"]] + args,
                       stdout=subprocess.PIPE, stderr=subprocess.PIPE, timeout=30)
    exp = o.expect(k[1], k[0], k[3], k[2])
    assert p.returncode == 0 and REASON_NAMES[exp.reason] in p.stdout.decode(), p
    for tok in (["--token", "wrong"], []):
        p = subprocess.run(base + tok + args, stdout=subprocess.PIPE,
                           stderr=subprocess.PIPE, timeout=30)
        assert p.returncode != 0, "no or a wrong token got: %s" % p.stdout.decode()
        assert REASON_NAMES[exp.reason] not in p.stdout.decode()


def consent(pb, key, status, date, seq):
    brand, rec, rtype, channel = key
    return pb.Consent(recipient=rec, brand_code=brand, recipient_type=rtype,
                      channel=channel, status=status, source=6,
                      consent_date=date, sequence=seq)


def apply(c, pb, changes, rid=9):
    req = pb.Request(id=rid)
    req.apply.changes.extend(changes)
    req.apply.SetInParent()
    return c.call(req)


def test_rpc_apply_brand_scope(env, partners):
    """A principal with 'apply' limited to one brand can neither change nor
    learn anything about another brand: a change outside its list refuses
    the whole request with 403 naming the change, the words are the same
    for a brand with records and for an unknown one, and nothing of the
    request is applied."""
    pb, o = env.pb, env.oracle
    s = env.server(extra=["--tokens", partners.path], name="consentd-apply-scope")
    try:
        own = partners.bob_brands[0]
        other = partners.alice_brands[0]
        absent = o.absent_brand()
        # Keys with ONAY records, so a newer RET would flip them to deny.
        k_other = [k for k in sorted(o.records) if k[0] == other
                   and o.records[k][0] == ONAY][0]
        k_own = [k for k in sorted(o.records) if k[0] == own
                 and o.records[k][0] == ONAY][0]
        k_absent = (absent,) + k_other[1:]
        date = max(o.records[k_other][1], o.records[k_own][1]) + 3600
        RET = 2
        with Rpc(pb, s.rpc) as root:
            root.auth(partners.tokens["root"])
            seq0 = root.stats().applied_sequence

            def verdicts():
                resp = root.check([dict(recipient=k[1], brand_code=k[0],
                                        channel=k[3], recipient_type=k[2])
                                   for k in (k_other, k_own, k_absent)])
                return [v.SerializeToString() for v in resp.verdicts]

            before = verdicts()
            with Rpc(pb, s.rpc) as c:
                assert c.auth(partners.tokens["carol"]).auth.principal == "carol"
                r1 = apply(c, pb, [consent(pb, k_other, RET, date, seq0 + 1)])
                r2 = apply(c, pb, [consent(pb, k_absent, RET, date, seq0 + 1)])
                for r, brand in ((r1, other), (r2, absent)):
                    assert r.WhichOneof("body") == "error" and r.error.code == 403, r
                    assert "changes[0]" in r.error.message, r
                    assert str(brand) in r.error.message, r
                # Brand with records vs unknown brand: the same words.
                assert r1.error.message.replace(str(other), "B") == \
                    r2.error.message.replace(str(absent), "B")
                # A mixed batch: refused whole, its own change not applied.
                r = apply(c, pb, [consent(pb, k_own, RET, date, seq0 + 1),
                                  consent(pb, k_other, RET, date, seq0 + 2)])
                assert r.WhichOneof("body") == "error" and r.error.code == 403, r
                assert "changes[1]" in r.error.message, r
                assert root.stats().applied_sequence == seq0
                assert verdicts() == before, "a refused Apply changed verdicts"
                # Its own brand: applied.
                r = apply(c, pb, [consent(pb, k_own, RET, date, seq0 + 1)])
                assert r.WhichOneof("body") == "apply", r
                assert r.apply.applied == 1 and r.apply.applied_sequence == seq0 + 1, r
            after = verdicts()
            assert after[0] == before[0] and after[2] == before[2]
            v = root.check_one(k_own[1], own, k_own[3], k_own[2])
            assert (v.allow, v.status) == (False, RET), v
    finally:
        s.stop()


def test_stats_right(env, token_server, partners):
    """Issue 15 item 5: without the 'stats' right a partner's stats hold
    liveness, its own check count, applied_sequence and data_as_of, never
    the record count, the generation or other clients' traffic; root (with
    the right) sees them all, on RPC, RESP and HTTP."""
    o = env.oracle
    k = [k for k in sorted(o.records) if k[0] == partners.bob_brands[0]][0]
    one = dict(recipient=k[1], brand_code=k[0], channel=k[3],
               recipient_type=k[2])
    with Rpc(env.pb, token_server.rpc) as root:
        assert root.auth(partners.tokens["root"]).auth.principal == "root"
        # Traffic that is not bob's: bob must not see it.
        root.check([one] * 50)
        full = root.stats()
        assert full.records == len(o) and full.generation >= 1, full
        with Rpc(env.pb, token_server.rpc) as bob:
            assert bob.auth(partners.tokens["bob"]).auth.principal == "bob"
            mine0 = bob.stats().checks_total
            bob.check([one] * 7)
            s = bob.stats()
            assert (s.records, s.generation) == (0, 0), s
            assert s.checks_total == mine0 + 7, (mine0, s)
            assert s.applied_sequence == full.applied_sequence, s
            assert s.data_as_of == full.data_as_of, s
            assert root.stats().checks_total >= full.checks_total + 7
            assert s.checks_total < root.stats().checks_total
            mine = s.checks_total

    with Resp(token_server.resp) as c:
        assert c.cmd("AUTH", partners.tokens["bob"]) == "OK"
        c.cmd("CHECK", k[1], k[0], CHANNEL_NAMES[k[3]], RTYPE_NAMES[k[2]])
        info = c.cmd("INFO")
        info = info.decode() if isinstance(info, bytes) else info
        fields = dict(l.split(":", 1) for l in info.split("\r\n") if ":" in l)
        assert set(fields) == {"applied_sequence", "data_as_of", "checks"}, info
        assert int(fields["checks"]) == mine + 1, (mine, info)
        assert int(fields["data_as_of"]) == full.data_as_of
        assert c.cmd("AUTH", partners.tokens["root"]) == "OK"
        info = c.cmd("INFO")
        info = info.decode() if isinstance(info, bytes) else info
        assert "records:%d" % len(o) in info and "connections:" in info, info

    def stats(who):
        st, _, body = token_server.http_get(
            "/v1/stats", headers={"Authorization": "Bearer " + partners.tokens[who]})
        assert st == 200, (st, body)
        return json.loads(body)
    b = stats("bob")
    # The evidence chain's head says nothing of any brand (DESIGN 10): a
    # partner sees it too, to check its receipts against.
    assert set(b) == {"applied_sequence", "data_as_of", "checks_total",
                      "chain_sequence", "chain_hash"}, b
    assert b["checks_total"] == mine + 1, (mine, b)
    r = stats("root")
    assert r["records"] == len(o) and r["checks_total"] > b["checks_total"], r
