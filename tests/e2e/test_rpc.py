"""The protobuf RPC (DESIGN 3.1-3.2) against a real consentd: every row of
the decision table (DESIGN 1.3), checked against the generator's own
records with Google's protobuf runtime."""

import random
import socket
import subprocess

import pytest
from google.protobuf import text_format

import helpers
from helpers import (ARAMA, MESAJ, EPOSTA, BIREYSEL, TACIR, ONAY, RET, TICARI,
                     BILGILENDIRME, INVALID_REQUEST, NO_CONSENT,
                     MERCHANT_NO_REJECTION, NOT_COMMERCIAL, CONSENT_GIVEN,
                     Rpc, assert_verdict)


@pytest.fixture
def rpc(env, server):
    with Rpc(env.pb, server.rpc) as c:
        yield c


def pick(keys, n, seed):
    keys = list(keys)
    random.Random(seed).shuffle(keys)
    return keys[:n]


def key_check(key, **over):
    brand, rec, rtype, channel = key
    d = dict(recipient=rec, brand_code=brand, channel=channel,
             recipient_type=rtype)
    d.update(over)
    return d


def verify(rpc, oracle, checks, what, defaults=None, **model_kw):
    """Sends checks in one request and compares every verdict."""
    defaults = defaults or {}
    resp = rpc.check(checks, **defaults)
    dflt = (defaults.get("brand_code", 0), defaults.get("channel", 0),
            defaults.get("recipient_type", 0), defaults.get("purpose", 0))
    for i, (c, v) in enumerate(zip(checks, resp.verdicts)):
        exp = oracle.expect(c.get("recipient", ""), c.get("brand_code", 0),
                            c.get("channel", 0), c.get("recipient_type", 0),
                            c.get("purpose", 0), defaults=dflt, **model_kw)
        assert_verdict(v, exp, "%s #%d %s" % (what, i, c))
    return resp


def test_dataset_is_what_the_tests_need(env):
    """The generator's records: canonical recipients, and every kind the
    decision table distinguishes (else the tests below prove little)."""
    o = env.oracle
    for (brand, rec, rtype, channel) in o.records:
        assert helpers.normalize(rec) == rec, "gen wrote a non-canonical %r" % rec
        assert brand > 0 and rtype in (BIREYSEL, TACIR)
        assert (channel == EPOSTA) == ("@" in rec), "channel %d for %r" % (
            channel, rec)
    for status in (ONAY, RET):
        for rtype in (BIREYSEL, TACIR):
            for channel in (ARAMA, MESAJ, EPOSTA):
                assert o.find(status=status, rtype=rtype, channel=channel), \
                    "no %d/%d/%d record" % (status, rtype, channel)
    assert o.find(turkish=True)


def test_consent_given_and_rejected(env, rpc):
    o = env.oracle
    checks = []
    for status in (ONAY, RET):
        for rtype in (BIREYSEL, TACIR):
            for channel in (ARAMA, MESAJ, EPOSTA):
                keys = o.find(status=status, rtype=rtype, channel=channel)
                checks += [key_check(k) for k in pick(keys, 5, channel * 10 + rtype)]
    verify(rpc, o, checks, "found")
    # One check per request too, and the reasons really are the two rows.
    for c in checks[:6] + checks[-6:]:
        v = rpc.check([c]).verdicts[0]
        st = o.records[(c["brand_code"], c["recipient"], c["recipient_type"],
                        c["channel"])][0]
        assert v.reason == (CONSENT_GIVEN if st == ONAY else helpers.CONSENT_REJECTED)
        assert v.allow == (st == ONAY)


def test_absent_records(env, rpc):
    """No record: BIREYSEL -> NO_CONSENT, TACIR -> MERCHANT_NO_REJECTION;
    the key is the whole quadruple (another type, channel or brand of a
    stored record is another key)."""
    o = env.oracle
    absent = o.absent_brand()
    checks = []
    for k in pick(o.find(), 60, 1):
        brand, rec, rtype, channel = k
        checks.append(key_check(k, brand_code=absent))
        checks.append(key_check(k, brand_code=absent, recipient_type=TACIR))
        checks.append(key_check(k, brand_code=absent, recipient_type=BIREYSEL))
        other = TACIR if rtype == BIREYSEL else BIREYSEL
        if (brand, rec, other, channel) not in o.records:
            checks.append(key_check(k, recipient_type=other))
        if channel != EPOSTA:
            och = ARAMA if channel == MESAJ else MESAJ
            if (brand, rec, rtype, och) not in o.records:
                checks.append(key_check(k, channel=och))
    # Numbers nobody has.
    for n in range(10):
        rec = "+90599%07d" % (1234567 + n)
        if not any(k[1] == rec for k in o.records):
            for rtype in (BIREYSEL, TACIR):
                checks.append(dict(recipient=rec, brand_code=o.brands[0],
                                   channel=MESAJ, recipient_type=rtype))
    resp = verify(rpc, o, checks, "absent")
    reasons = {v.reason for v in resp.verdicts}
    assert NO_CONSENT in reasons and MERCHANT_NO_REJECTION in reasons


def test_not_commercial(env, rpc):
    """BILGILENDIRME allows whatever is stored, and carries the record."""
    o = env.oracle
    checks = []
    for status in (ONAY, RET):
        for k in pick(o.find(status=status), 10, status):
            checks.append(key_check(k, purpose=BILGILENDIRME))
    for k in pick(o.find(), 5, 3):
        checks.append(key_check(k, brand_code=o.absent_brand(),
                                purpose=BILGILENDIRME))
    resp = verify(rpc, o, checks, "informational")
    assert all(v.allow and v.reason == NOT_COMMERCIAL for v in resp.verdicts)
    assert any(v.status == RET for v in resp.verdicts)


def invalid_checks(o):
    """Malformed checks, each with what makes it so."""
    phone = o.find(email=False, channel=MESAJ)[0]
    email = o.find(email=True)[0]
    b = phone[0]
    return [
        dict(recipient="", brand_code=b, channel=MESAJ),
        dict(recipient="   ", brand_code=b, channel=MESAJ),
        dict(recipient="not a phone", brand_code=b, channel=MESAJ),
        dict(recipient="12345", brand_code=b, channel=MESAJ),
        dict(recipient="+90532123456", brand_code=b, channel=MESAJ),
        dict(recipient="+905321234567890", brand_code=b, channel=MESAJ),
        dict(recipient="+0123456789", brand_code=b, channel=MESAJ),
        dict(recipient="0532+1234567", brand_code=b, channel=MESAJ),
        dict(recipient="532.123.4567", brand_code=b, channel=MESAJ),
        dict(recipient="a@", brand_code=b, channel=EPOSTA),
        dict(recipient="@example.com", brand_code=b, channel=EPOSTA),
        dict(recipient="a b@example.com", brand_code=b, channel=EPOSTA),
        dict(recipient="a@@example.com", brand_code=b, channel=EPOSTA),
        dict(recipient="a@b@example.com", brand_code=b, channel=EPOSTA),
        dict(recipient="x" * 250 + "@example.com", brand_code=b, channel=EPOSTA),
        dict(recipient="ay\u015fe@example.com", brand_code=b, channel=EPOSTA),
        # channel / recipient mismatch
        key_check(phone, channel=EPOSTA),
        key_check(email, channel=MESAJ),
        key_check(email, channel=ARAMA),
        # unknown or missing enums, brand 0
        key_check(phone, channel=0),
        key_check(phone, channel=7),
        key_check(phone, recipient_type=3),
        key_check(phone, purpose=9),
        key_check(phone, brand_code=0),
        key_check(email, brand_code=0),
        key_check(phone, brand_code=0, purpose=BILGILENDIRME),
    ]


def test_invalid_requests(env, rpc):
    o = env.oracle
    checks = invalid_checks(o)
    resp = verify(rpc, o, checks, "invalid")
    for c, v in zip(checks, resp.verdicts):
        assert v.reason == INVALID_REQUEST and not v.allow, c
        assert v.error.strip(), "no error text for %s" % c
    # An invalid check in a batch does not spoil its neighbours.
    good = [key_check(k) for k in pick(o.find(status=ONAY), 4, 9)]
    mixed = [good[0], checks[3], good[1], checks[16], good[2], checks[23], good[3]]
    verify(rpc, o, mixed, "mixed")


def test_request_level_defaults(env, rpc):
    o = env.oracle
    # One campaign: one brand and channel, recipients only.
    brand = o.brands[0]
    keys = [k for k in o.find(channel=MESAJ, rtype=BIREYSEL) if k[0] == brand]
    assert keys, "no MESAJ/BIREYSEL record of brand %d" % brand
    checks = [dict(recipient=k[1]) for k in keys[:50]]
    checks.append(dict(recipient="+905999999999"))
    resp = verify(rpc, o, checks, "defaults",
                  defaults=dict(brand_code=brand, channel=MESAJ))
    assert any(v.reason in (CONSENT_GIVEN, helpers.CONSENT_REJECTED)
               for v in resp.verdicts)
    # Request-level type and purpose, and checks that override each field.
    tkeys = o.find(channel=ARAMA, rtype=TACIR)
    checks = [dict(recipient=k[1], brand_code=k[0]) for k in tkeys[:20]]
    checks += [dict(recipient=k[1], brand_code=k[0], channel=k[3],
                    recipient_type=k[2]) for k in o.find(channel=MESAJ)[:10]]
    checks += [dict(recipient=k[1], brand_code=k[0], channel=EPOSTA,
                    recipient_type=k[2]) for k in o.find(channel=EPOSTA)[:10]]
    checks += [dict(recipient=k[1], brand_code=k[0], purpose=TICARI)
               for k in tkeys[20:25]]
    verify(rpc, o, checks, "defaults2",
           defaults=dict(channel=ARAMA, recipient_type=TACIR))
    resp = verify(rpc, o, checks, "defaults3",
                  defaults=dict(channel=ARAMA, recipient_type=TACIR,
                                purpose=BILGILENDIRME))
    assert resp.verdicts[-1].reason == helpers.CONSENT_GIVEN or \
        resp.verdicts[-1].reason == helpers.CONSENT_REJECTED
    # No channel anywhere is malformed.
    verify(rpc, o, [dict(recipient=keys[0][1])], "no channel",
           defaults=dict(brand_code=brand))


def random_checks(o, n, seed):
    """A realistic mix: stored keys (in any accepted form), misses, other
    purposes and types, and a few malformed ones."""
    rnd = random.Random(seed)
    keys = sorted(o.records)
    absent = o.absent_brand()
    bad = invalid_checks(o)
    out = []
    for _ in range(n):
        k = rnd.choice(keys)
        brand, rec, rtype, channel = k
        roll = rnd.random()
        if rec.startswith("+90") and len(rec) == 13 and rnd.random() < 0.5:
            rec = rnd.choice(helpers.phone_forms(rec))
        elif "@" in rec and rnd.random() < 0.3:
            rec = rec.upper()
        c = dict(recipient=rec, brand_code=brand, channel=channel,
                 recipient_type=rtype)
        if roll < 0.55:
            pass
        elif roll < 0.65:
            c["brand_code"] = absent if rnd.random() < 0.5 else rnd.choice(o.brands)
        elif roll < 0.75:
            c["recipient_type"] = TACIR if rtype == BIREYSEL else BIREYSEL
        elif roll < 0.82:
            c["purpose"] = BILGILENDIRME
        elif roll < 0.90:
            c["recipient_type"] = 0
        elif roll < 0.95:
            c = dict(rnd.choice(bad))
        else:
            c["purpose"] = TICARI
        out.append(c)
    return out


def test_batch_of_500_in_order(env, rpc):
    o = env.oracle
    checks = random_checks(o, 500, 500)
    resp = verify(rpc, o, checks, "batch")
    reasons = {v.reason for v in resp.verdicts}
    assert {CONSENT_GIVEN, helpers.CONSENT_REJECTED, NO_CONSENT,
            MERCHANT_NO_REJECTION, NOT_COMMERCIAL, INVALID_REQUEST} <= reasons
    # The same batch again answers the same (nothing drifts).
    again = rpc.check(checks)
    assert [helpers.verdict_tuple(v) for v in again.verdicts] == \
        [helpers.verdict_tuple(v) for v in resp.verdicts]


def test_pipelining(env, server):
    o = env.oracle
    pb = env.pb
    batches = [random_checks(o, 1 + 37 * i, 77 + i) for i in range(12)]
    ids = [1000 + 7 * i for i in range(len(batches))]
    data = b""
    for i, (rid, checks) in enumerate(zip(ids, batches)):
        req = pb.Request(id=rid)
        for c in checks:
            req.check.checks.add(**c)
        data += Rpc.frame(req.SerializeToString())
        if i == 5:
            st = pb.Request(id=5)
            st.stats.SetInParent()
            data += Rpc.frame(st.SerializeToString())
    with Rpc(pb, server.rpc) as c:
        c.sock.sendall(data)
        order = ids[:6] + [5] + ids[6:]
        for rid in order:
            r = c.recv()
            assert r.id == rid, "response id %d, expected %d (in order)" % (r.id, rid)
            if rid == 5:
                assert r.WhichOneof("body") == "stats"
                continue
            checks = batches[ids.index(rid)]
            assert r.WhichOneof("body") == "check"
            assert len(r.check.verdicts) == len(checks)
            for ch, v in zip(checks, r.check.verdicts):
                exp = o.expect(ch["recipient"], ch["brand_code"], ch["channel"],
                               ch.get("recipient_type", 0), ch.get("purpose", 0))
                assert_verdict(v, exp, "pipelined %d" % rid)
    # Many small requests in one write, across two connections at once.
    conns = [Rpc(pb, server.rpc) for _ in range(2)]
    try:
        keys = pick(o.find(), 200, 5)
        for c in conns:
            data = b""
            for i, k in enumerate(keys):
                req = pb.Request(id=i + 1)
                req.check.checks.add(**key_check(k))
                data += Rpc.frame(req.SerializeToString())
            c.sock.sendall(data)
        for c in conns:
            for i, k in enumerate(keys):
                r = c.recv()
                assert r.id == i + 1
                assert_verdict(r.check.verdicts[0], o.expect(k[1], k[0], k[3], k[2]),
                               "small pipelined")
    finally:
        for c in conns:
            c.close()


def test_stats(env, rpc):
    o = env.oracle
    s1 = rpc.stats()
    assert s1.records == len(o), "stats.records %d, dataset %d" % (s1.records, len(o))
    assert s1.generation >= 1
    assert s1.applied_sequence == o.header.sequence
    assert s1.data_as_of == o.header.created_at
    checks = random_checks(o, 123, 4)
    resp = rpc.check(checks)
    assert resp.applied_sequence == o.header.sequence
    assert resp.data_as_of == o.header.created_at
    s2 = rpc.stats()
    assert s2.checks_total - s1.checks_total == len(checks), \
        "checks_total went %d -> %d after %d checks" % (
            s1.checks_total, s2.checks_total, len(checks))
    assert s2.records == s1.records and s2.generation == s1.generation


def test_email_case_folding(env, rpc):
    o = env.oracle
    keys = pick(o.find(email=True), 20, 11)
    checks = []
    for k in keys:
        rec = k[1]
        mixed = "".join(ch.upper() if i % 2 else ch for i, ch in enumerate(rec))
        for form in (rec.upper(), mixed, "  %s\t" % rec.upper()):
            checks.append(key_check(k, recipient=form))
    resp = verify(rpc, o, checks, "email case")
    found = {CONSENT_GIVEN, helpers.CONSENT_REJECTED}
    assert all(v.reason in found for v in resp.verdicts), \
        "an upper-cased address did not find its record"


def test_phone_forms(env, rpc):
    o = env.oracle
    keys = pick(o.find(turkish=True, channel=MESAJ), 8, 12) + \
        pick(o.find(turkish=True, channel=ARAMA), 8, 13)
    checks = []
    for k in keys:
        for form in helpers.phone_forms(k[1]):
            checks.append(key_check(k, recipient=form))
    resp = verify(rpc, o, checks, "phone forms")
    found = {CONSENT_GIVEN, helpers.CONSENT_REJECTED}
    assert all(v.reason in found for v in resp.verdicts), \
        "a phone form did not find its record"
    # Non-Turkish E.164 numbers are kept as they are.
    foreign = [k for k in o.find(email=False, turkish=False)][:10]
    if foreign:
        verify(rpc, o, [key_check(k) for k in foreign], "foreign")


def test_connection_survives_many_requests(env, server):
    """One connection, many sequential requests, verdicts right each time."""
    o = env.oracle
    with Rpc(env.pb, server.rpc) as c:
        for i, k in enumerate(pick(o.find(), 300, 21)):
            v = c.check([key_check(k)]).verdicts[0]
            assert_verdict(v, o.expect(k[1], k[0], k[3], k[2]), "seq %d" % i)
        c.sock.shutdown(socket.SHUT_WR)
        closed, data = helpers.wait_closed(c.sock, 5)
        assert closed and data == b"", "server did not close after our FIN"


@pytest.fixture(scope="module")
def deny_server(env):
    s = env.server(extra=["--merchant-default", "deny"], name="consentd-deny")
    try:
        yield s
    finally:
        alive = s.alive()
        rc = s.stop()
        assert alive and rc == 0, "deny server: exit %s\n%s" % (rc, s.log_tail())


def test_merchant_default_deny(env, deny_server):
    o = env.oracle
    absent = o.absent_brand()
    checks = []
    for k in pick(o.find(), 40, 31):
        checks.append(key_check(k))
        checks.append(key_check(k, brand_code=absent, recipient_type=TACIR))
        checks.append(key_check(k, brand_code=absent, recipient_type=BIREYSEL))
        checks.append(key_check(k, brand_code=absent, recipient_type=TACIR,
                                purpose=BILGILENDIRME))
    with Rpc(env.pb, deny_server.rpc) as c:
        resp = verify(c, o, checks, "merchant deny", merchant_deny=True)
    assert not any(v.reason == MERCHANT_NO_REJECTION for v in resp.verdicts)
    assert sum(1 for ch, v in zip(checks, resp.verdicts)
               if ch.get("recipient_type") == TACIR and v.reason == NO_CONSENT) >= 40


def rpc_client(server, *args):
    p = subprocess.run(["/usr/bin/python3", helpers.ROOT + "/scripts/rpc_client.py",
                        "--rpc", "%s:%d" % (helpers.LOOPBACK, server.rpc)] +
                       [str(a) for a in args], stdout=subprocess.PIPE,
                       stderr=subprocess.PIPE, timeout=30)
    return p.returncode, p.stdout.decode(), p.stderr.decode()


def test_rpc_client_script(env, server):
    """scripts/rpc_client.py prints the Response as protobuf text."""
    o, pb = env.oracle, env.pb
    k = o.find(status=ONAY, rtype=TACIR, channel=ARAMA)[0]
    rc, out, err = rpc_client(server, "check", k[1], k[0], "ARAMA", "TACIR")
    assert rc == 0, err
    r = text_format.Parse(out, pb.Response())
    assert_verdict(r.check.verdicts[0], o.expect(k[1], k[0], ARAMA, TACIR), "script")
    rc, out, err = rpc_client(server, "check", k[1], k[0], "arama", "TACIR",
                              "BILGILENDIRME")
    r = text_format.Parse(out, pb.Response())
    assert rc == 0 and r.check.verdicts[0].reason == NOT_COMMERCIAL
    rc, out, err = rpc_client(server, "stats")
    assert rc == 0 and text_format.Parse(out, pb.Response()).stats.records == len(o)
    rc, out, err = rpc_client(server, "check", k[1], k[0], "FAKS")
    assert rc == 2 and "CHANNEL" in err
