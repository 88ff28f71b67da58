"""The gRPC port (DESIGN 11) against a real consentd with grpcio (Debian's
python3-grpcio), a client nobody here wrote: stubs generated at test time
from proto/consent.proto with grpc_tools.protoc. Verdicts against the
oracle for every row of the decision table, many concurrent calls on one
channel, per-call tokens, brand scope, Apply and Stats, status codes,
oversize and cancelled calls; after each, the server still answers."""

import os
import socket
import subprocess
import time

import pytest

grpc = pytest.importorskip("grpc")

import helpers
from helpers import (MESAJ, ONAY, RET, NOT_AUTHORIZED, assert_verdict)
from test_rpc import invalid_checks, key_check, pick, random_checks

SERVICES = ("consent.v1.ConsentService", "consent.v1.Consent")


@pytest.fixture(scope="module")
def stubs(env):
    """consent_pb2_grpc (its messages are env.pb)."""
    return helpers.grpc_stubs(env.tmp)


def channel(server):
    """A channel of its own connection (grpcio shares connections between
    channels to one target unless told not to)."""
    return grpc.insecure_channel("127.0.0.1:%d" % server.grpc,
                                 options=[("grpc.use_local_subchannel_pool", 1)])


def bearer(token):
    return (("authorization", "Bearer " + token),)


def check_request(pb, checks, **defaults):
    req = pb.CheckRequest(**defaults)
    for c in checks:
        req.checks.add(**c)
    return req


def expect_all(o, checks, resp, what, defaults=None, **kw):
    defaults = defaults or {}
    dflt = (defaults.get("brand_code", 0), defaults.get("channel", 0),
            defaults.get("recipient_type", 0), defaults.get("purpose", 0))
    assert len(resp.verdicts) == len(checks), what
    for i, (c, v) in enumerate(zip(checks, resp.verdicts)):
        exp = o.expect(c.get("recipient", ""), c.get("brand_code", 0),
                       c.get("channel", 0), c.get("recipient_type", 0),
                       c.get("purpose", 0), defaults=dflt, **kw)
        assert_verdict(v, exp, "%s #%d %s" % (what, i, c))


def status_of(fn, *a, **kw):
    """The gRPC status code and details a failing call ends with."""
    with pytest.raises(grpc.RpcError) as e:
        fn(*a, **kw)
    return e.value.code(), e.value.details()


def still_serves(env, server, stubs, token=None):
    """One call on a fresh channel answers as the oracle says."""
    o = env.oracle
    k = pick(o.find(status=ONAY), 1, 5)[0]
    with channel(server) as ch:
        stub = stubs.ConsentServiceStub(ch)
        md = bearer(token) if token else None
        r = stub.Check(check_request(env.pb, [key_check(k)]), timeout=10,
                       metadata=md)
    expect_all(o, [key_check(k)], r, "still serves")


def test_verdicts_equal_the_oracle(env, server, stubs):
    """Every row of the decision table, batches of 1 and 100, under both
    service names, request-level defaults included."""
    pb, o = env.pb, env.oracle
    checks = random_checks(o, 1500, 11) + invalid_checks(o)
    with channel(server) as ch:
        calls = [stubs.ConsentServiceStub(ch).Check]
        for svc in SERVICES[1:]:
            calls.append(ch.unary_unary(
                "/%s/Check" % svc,
                request_serializer=pb.CheckRequest.SerializeToString,
                response_deserializer=pb.CheckResponse.FromString))
        for n, call in enumerate(calls):
            for i in range(0, len(checks), 100):
                part = checks[i:i + 100]
                r = call(check_request(pb, part), timeout=10)
                expect_all(o, part, r, "batch %d/%d" % (n, i))
                assert r.data_as_of > 0
            for c in checks[:40]:
                r = call(check_request(pb, [c]), timeout=10)
                expect_all(o, [c], r, "single %d" % n)
        brand = o.brands[0]
        keys = [k for k in o.find(channel=MESAJ) if k[0] == brand][:30]
        part = [dict(recipient=k[1], recipient_type=k[2]) for k in keys]
        d = dict(brand_code=brand, channel=MESAJ)
        r = calls[0](check_request(pb, part, **d), timeout=10)
        expect_all(o, part, r, "defaults", defaults=d)
        # An empty CheckRequest is an empty answer, as on the RPC port.
        assert len(calls[0](pb.CheckRequest(), timeout=10).verdicts) == 0
        reasons = set()
        for i in range(0, len(checks), 100):
            for v in calls[0](check_request(pb, checks[i:i + 100]),
                              timeout=10).verdicts:
                reasons.add(v.reason)
        assert len(reasons) >= 6, reasons  # the rows really were reached
    m = server.metrics()
    assert m.total("consentd_checks_total", protocol="grpc") >= 2 * len(checks)


def test_many_concurrent_calls(env, server, stubs):
    """Hundreds of calls in flight on one channel (one HTTP/2 connection,
    the server's stream limit reached): each answer is its own request's."""
    pb, o = env.pb, env.oracle
    checks = random_checks(o, 1200, 23)
    with channel(server) as ch:
        stub = stubs.ConsentServiceStub(ch)
        futs = []
        for i in range(0, len(checks), 3):
            part = checks[i:i + 3]
            futs.append((part, stub.Check.future(check_request(pb, part),
                                                 timeout=30)))
        for part, f in futs:
            expect_all(o, part, f.result(), "concurrent")
    still_serves(env, server, stubs)


def test_tokens(env, token_server, partners, stubs):
    """Per-call Bearer tokens: none or a wrong one is UNAUTHENTICATED,
    a good one on the same channel works; a brand outside the principal's
    is a NOT_AUTHORIZED verdict, the same for an absent brand; Apply
    without the 'apply' right is PERMISSION_DENIED; Stats follows the
    'stats' right."""
    pb, o = env.pb, env.oracle
    k_in = [k for k in sorted(o.records) if k[0] == partners.alice_brands[0]][0]
    k_out = [k for k in sorted(o.records) if k[0] == partners.outside][0]
    absent = o.absent_brand()
    checks = [key_check(k_in), key_check(k_out),
              key_check(k_in, brand_code=absent)]
    with channel(token_server) as ch:
        stub = stubs.ConsentServiceStub(ch)
        req = check_request(pb, checks)
        before = helpers.counter(token_server, "consentd_auth_failures_total")
        for md, words in ((None, "authorization"),
                          (bearer("not-a-token"), "bad token"),
                          ((("authorization", partners.tokens["alice"]),),
                           "bad token")):
            code, details = status_of(stub.Check, req, timeout=10, metadata=md)
            assert code == grpc.StatusCode.UNAUTHENTICATED, (code, details)
            assert words in details, details
            code, _ = status_of(stub.Stats, pb.StatsRequest(), timeout=10,
                                metadata=md)
            assert code == grpc.StatusCode.UNAUTHENTICATED
        assert helpers.counter(token_server,
                               "consentd_auth_failures_total") >= before + 4
        r = stub.Check(req, timeout=10, metadata=bearer(partners.tokens["alice"]))
        expect_all(o, checks, r, "alice", authorized=partners.may("alice"))
        assert r.verdicts[1].reason == NOT_AUTHORIZED
        assert r.verdicts[2].reason == NOT_AUTHORIZED
        assert r.verdicts[1].error == r.verdicts[2].error
        # Another principal on the same channel, call by call.
        r = stub.Check(req, timeout=10, metadata=bearer(partners.tokens["bob"]))
        expect_all(o, checks, r, "bob", authorized=partners.may("bob"))
        r = stub.Check(req, timeout=10, metadata=bearer(partners.tokens["root"]))
        expect_all(o, checks, r, "root")
        # Rights.
        code, details = status_of(
            stub.Apply, pb.ApplyRequest(), timeout=10,
            metadata=bearer(partners.tokens["alice"]))
        assert code == grpc.StatusCode.PERMISSION_DENIED, (code, details)
        assert "may not apply" in details
        s = stub.Stats(pb.StatsRequest(), timeout=10,
                       metadata=bearer(partners.tokens["alice"]))
        assert s.records == 0 and s.generation == 0 and s.checks_total > 0
        s = stub.Stats(pb.StatsRequest(), timeout=10,
                       metadata=bearer(partners.tokens["root"]))
        assert s.records == len(o) and s.generation >= 1
    still_serves(env, token_server, stubs, partners.tokens["root"])


def consent(pb, key, status, date, seq):
    brand, rec, rtype, channel = key
    return pb.Consent(recipient=rec, brand_code=brand, recipient_type=rtype,
                      channel=channel, status=status, source=6,
                      consent_date=date, sequence=seq)


def test_apply_and_stats(env, stubs):
    """Apply answers once durable and the check sees it; a bad change is
    INVALID_ARGUMENT naming it; an origin's cursor conflict is ABORTED
    naming the stored cursor; checks in flight on the same channel are
    answered around it."""
    pb, o = env.pb, env.oracle
    s = env.server(name="consentd-grpc-apply")
    try:
        with channel(s) as ch:
            stub = stubs.ConsentServiceStub(ch)
            seq0 = stub.Stats(pb.StatsRequest(), timeout=10).applied_sequence
            k = [k for k in sorted(o.records) if o.records[k][0] == ONAY][0]
            date = o.records[k][1] + 3600
            req = pb.ApplyRequest(origin="grpc:test", after_cursor="",
                                  cursor="c1")
            req.changes.append(consent(pb, k, RET, date, 1))
            checks = [key_check(k2) for k2 in pick(o.find(), 50, 3)]
            # Checks in flight with the Apply, on one connection.
            futs = [stub.Check.future(check_request(pb, [c]), timeout=30)
                    for c in checks[:25]]
            r = stub.Apply(req, timeout=30)
            futs += [stub.Check.future(check_request(pb, [c]), timeout=30)
                     for c in checks[25:]]
            assert (r.applied, r.skipped, r.applied_sequence) == \
                (1, 0, seq0 + 1), r
            for c, f in zip(checks, futs):
                res = f.result()
                if (c["brand_code"], c["recipient"], c["recipient_type"],
                        c["channel"]) != k:
                    expect_all(o, [c], res, "around the apply")
            v = stub.Check(check_request(pb, [key_check(k)]),
                           timeout=10).verdicts[0]
            assert (v.allow, v.status, v.consent_date) == (False, RET, date)
            st = stub.Stats(pb.StatsRequest(origin="grpc:test"), timeout=10)
            assert st.applied_sequence == seq0 + 1 and st.origin_cursor == "c1"
            # The same after_cursor again: a conflict, nothing applied.
            code, details = status_of(stub.Apply, req, timeout=30)
            assert code == grpc.StatusCode.ABORTED, (code, details)
            assert "c1" in details, details
            # A bad change: refused whole, named.
            bad = pb.ApplyRequest(origin="grpc:test", after_cursor="c1",
                                  cursor="c2")
            bad.changes.append(consent(pb, k, ONAY, date + 1, 1))
            bad.changes.append(consent(pb, k, ONAY, date + 1, 1))
            bad.changes[1].recipient = "nobody"
            code, details = status_of(stub.Apply, bad, timeout=30)
            assert code == grpc.StatusCode.INVALID_ARGUMENT, (code, details)
            assert "changes[1]" in details and "recipient" in details, details
            st = stub.Stats(pb.StatsRequest(origin="grpc:test"), timeout=10)
            assert st.applied_sequence == seq0 + 1 and st.origin_cursor == "c1"
            # The framed RPC sees the same state.
            with helpers.Rpc(pb, s.rpc) as rpc:
                rv = rpc.check_one(k[1], k[0], k[3], k[2])
                assert (rv.allow, rv.status) == (False, RET)
        m = s.metrics()
        assert m.total("consentd_applies_conflict_total") >= 1
    finally:
        assert s.stop() == 0


def test_status_codes(env, server, stubs):
    """An unknown method is UNIMPLEMENTED; a message that does not
    decode, a History without a brand, or a Reject of a recipient that
    does not normalise, is INVALID_ARGUMENT naming the field; the channel
    goes on."""
    pb = env.pb
    with channel(server) as ch:
        stub = stubs.ConsentServiceStub(ch)
        code, details = status_of(stub.History, pb.HistoryRequest(),
                                  timeout=10)
        assert code == grpc.StatusCode.INVALID_ARGUMENT, (code, details)
        assert "brand_code" in details, details
        code, details = status_of(stub.Reject, pb.RejectRequest(
            recipient="x", brand_code=1, channel=MESAJ), timeout=10)
        assert code == grpc.StatusCode.INVALID_ARGUMENT, (code, details)
        assert "recipient" in details, details
        raw = {}
        for m in ("Check", "Nope"):
            raw[m] = ch.unary_unary("/consent.v1.ConsentService/" + m,
                                    request_serializer=lambda b: b,
                                    response_deserializer=lambda b: b)
        code, details = status_of(raw["Nope"], b"", timeout=10)
        assert code == grpc.StatusCode.UNIMPLEMENTED and "unknown method" in details
        for junk in (b"\x0a\x05ab", b"\x0a\x02\x0a\xff", b"\x08", b"\x12\x01\x01"):
            code, details = status_of(raw["Check"], junk, timeout=10)
            assert code == grpc.StatusCode.INVALID_ARGUMENT, (junk, code, details)
            assert "CheckRequest" in details
        # Two oneof-less fields that decode are fine: unknown fields skipped.
        r = pb.CheckResponse.FromString(raw["Check"](b"\x78\x01", timeout=10))
        assert len(r.verdicts) == 0
    still_serves(env, server, stubs)


def test_oversize_message(env, server, stubs):
    """A message over --max-frame-bytes (1 MiB) is RESOURCE_EXHAUSTED
    naming the limit; the same channel then serves."""
    pb, o = env.pb, env.oracle
    before = helpers.counter(server, "consentd_frames_oversize_total")
    with channel(server) as ch:
        stub = stubs.ConsentServiceStub(ch)
        big = check_request(pb, [dict(recipient="x" * 1000, brand_code=1,
                                      channel=MESAJ)] * 1100)
        assert big.ByteSize() > 1 << 20
        code, details = status_of(stub.Check, big, timeout=30)
        assert code == grpc.StatusCode.RESOURCE_EXHAUSTED, (code, details)
        assert "1048576" in details, details
        checks = random_checks(o, 50, 5)
        expect_all(o, checks, stub.Check(check_request(pb, checks), timeout=10),
                   "after oversize")
    assert helpers.counter(server, "consentd_frames_oversize_total") > before


def test_cancelled_calls(env, server, stubs):
    """Calls cancelled while in flight (large ones still sending, small
    ones already answered, some before their headers left: gRPC's C core
    then sends RST_STREAM for a stream it never opened) leave the channel
    and the server correct."""
    pb, o = env.pb, env.oracle
    with channel(server) as ch:
        stub = stubs.ConsentServiceStub(ch)
        # Ten in flight stay under the calls' input cap (1 MiB).
        big = check_request(pb, random_checks(o, 2000, 8))
        assert 10 * big.ByteSize() < 1 << 20
        for round_ in range(5):
            futs = [stub.Check.future(big, timeout=30) for _ in range(10)]
            futs += [stub.Check.future(check_request(pb, [c]), timeout=30)
                     for c in random_checks(o, 20, round_)]
            for f in futs[::2]:
                f.cancel()
            for f in futs[1::2]:
                assert f.result() is not None
        checks = random_checks(o, 200, 99)
        expect_all(o, checks, stub.Check(check_request(pb, checks), timeout=10),
                   "after cancels")
    still_serves(env, server, stubs)


def read_until_closed(sock, timeout=5.0):
    data = b""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        chunk = sock.recv(4096)
        if not chunk:
            return data
        data += chunk
    raise AssertionError("not closed in %.0f s: %r" % (timeout, data))


def test_not_http2_and_connection_cap(env, stubs):
    """HTTP/1.1 on the gRPC port gets a GOAWAY and a close; past
    --max-connections a client gets the server's SETTINGS and a GOAWAY
    (ENHANCE_YOUR_CALM, "max connections") and its calls do not succeed,
    while the connection already there is served; once it closes, a new
    one is served."""
    pb = env.pb
    s = env.server(extra=["--max-connections", "1", "--workers", "1"],
                   name="consentd-grpc-cap")
    try:
        with socket.create_connection(("127.0.0.1", s.grpc), timeout=5) as c:
            c.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n" + b"\r\n" * 8)
            data = read_until_closed(c)
            # The server's SETTINGS, then a GOAWAY (type 7).
            assert len(data) >= 9 and data[3] == 4, data
            assert b"\x07" in data[9:], data
        first = channel(s)
        try:
            stubs.ConsentServiceStub(first).Stats(pb.StatsRequest(), timeout=10)
            with socket.create_connection(("127.0.0.1", s.grpc), timeout=5) as c:
                data = read_until_closed(c)
            settings = b"\0\0\0\x04\0\0\0\0\0"
            goaway = (b"\0\0\x17\x07\0\0\0\0\0" + b"\0\0\0\0" +
                      b"\0\0\0\x0b" + b"max connections")
            assert data == settings + goaway, data
            with channel(s) as second:
                code, _ = status_of(stubs.ConsentServiceStub(second).Stats,
                                    pb.StatsRequest(), timeout=2)
                assert code in (grpc.StatusCode.UNAVAILABLE,
                                grpc.StatusCode.DEADLINE_EXCEEDED), code
            stubs.ConsentServiceStub(first).Stats(pb.StatsRequest(), timeout=10)
        finally:
            first.close()
        assert helpers.counter(s, "consentd_connections_refused_total") >= 2
        deadline = time.monotonic() + 20
        while True:
            try:
                still_serves(env, s, stubs)
                break
            except grpc.RpcError:
                # The first connection's close may not have reached the
                # server yet: its slot is free once it has.
                assert time.monotonic() < deadline, "no new connection served"
    finally:
        assert s.stop() == 0


def test_reject(env, stubs, partners, token_server):
    """Reject (DESIGN 11) over gRPC: answered once durable, then the key is
    denied on the gRPC and the framed RPC port alike; without the 'reject'
    right it is PERMISSION_DENIED and nothing is written."""
    pb, o = env.pb, env.oracle
    s = env.server(name="consentd-grpc-reject")
    try:
        k = [k for k in sorted(o.records) if o.records[k][0] == ONAY][0]
        brand, rec, rtype, ch_ = k
        with channel(s) as ch:
            stub = stubs.ConsentServiceStub(ch)
            seq0 = stub.Stats(pb.StatsRequest(), timeout=10).applied_sequence
            r = stub.Reject(pb.RejectRequest(recipient=rec, brand_code=brand,
                                             channel=ch_, recipient_type=rtype),
                            timeout=30)
            assert (r.applied, r.skipped, r.applied_sequence) == \
                (1, 0, seq0 + 1), r
            v = stub.Check(check_request(pb, [key_check(k)]),
                           timeout=10).verdicts[0]
            assert (v.allow, v.status) == (False, RET), v
        with helpers.Rpc(pb, s.rpc) as rpc:
            rv = rpc.check_one(rec, brand, ch_, rtype)
            assert (rv.allow, rv.status) == (False, RET), rv
    finally:
        assert s.stop() == 0
    # root may apply but holds no 'reject' right.
    with channel(token_server) as ch:
        stub = stubs.ConsentServiceStub(ch)
        md = bearer(partners.tokens["root"])
        seq0 = stub.Stats(pb.StatsRequest(), timeout=10,
                          metadata=md).applied_sequence
        code, details = status_of(stub.Reject, pb.RejectRequest(
            recipient=rec, brand_code=brand, channel=ch_,
            recipient_type=rtype), timeout=10, metadata=md)
        assert code == grpc.StatusCode.PERMISSION_DENIED, (code, details)
        assert "reject" in details, details
        assert stub.Stats(pb.StatsRequest(), timeout=10,
                          metadata=md).applied_sequence == seq0


def test_grpc_over_tls(env, stubs):
    """With --tls-cert the gRPC port speaks TLS (ALPN h2, as grpcio
    demands) by configuration alone; with --tls-ca a client certificate is
    required; a plaintext channel to it gets no answer."""
    from test_tls import Certs
    pb, o = env.pb, env.oracle
    certs = Certs(os.path.join(env.tmp, "grpc-tls"))
    s = env.server(extra=["--tls-cert", certs.srv, "--tls-key", certs.srv_key,
                          "--tls-ca", certs.ca], name="consentd-grpc-tls")
    read = lambda p: open(p, "rb").read()
    target = "127.0.0.1:%d" % s.grpc
    opts = [("grpc.use_local_subchannel_pool", 1)]
    try:
        creds = grpc.ssl_channel_credentials(
            root_certificates=read(certs.ca), private_key=read(certs.cli_key),
            certificate_chain=read(certs.cli))
        with grpc.secure_channel(target, creds, options=opts) as ch:
            stub = stubs.ConsentServiceStub(ch)
            checks = [key_check(k) for k in pick(o.find(), 40, 11)]
            expect_all(o, checks, stub.Check(check_request(pb, checks),
                                             timeout=30), "over TLS")
        anon = grpc.ssl_channel_credentials(root_certificates=read(certs.ca))
        with grpc.secure_channel(target, anon, options=opts) as ch:
            code, _ = status_of(stubs.ConsentServiceStub(ch).Stats,
                                pb.StatsRequest(), timeout=10)
            assert code == grpc.StatusCode.UNAVAILABLE, code
        with grpc.insecure_channel(target, options=opts) as ch:
            code, _ = status_of(stubs.ConsentServiceStub(ch).Stats,
                                pb.StatsRequest(), timeout=10)
            assert code == grpc.StatusCode.UNAVAILABLE, code
        assert s.alive()
    finally:
        assert s.stop() == 0
