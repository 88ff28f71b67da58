"""Bad input over real sockets (DESIGN 3.2, 4): whatever a client sends, the
server answers what it can, closes what it must, counts what it refused in
/metrics (server/metrics.h METRICS_COUNTERS), and keeps serving everyone
else correctly."""

import random
import socket
import struct
import time

import pytest
import redis

import helpers
from helpers import MAX_FRAME, Rpc, Resp, CHANNEL_NAMES, RTYPE_NAMES


def known_keys(o, n=20, seed=99):
    keys = sorted(o.records)
    random.Random(seed).shuffle(keys)
    return keys[:n]


def assert_still_serving(env, server):
    """A correct check on every protocol, from a fresh client."""
    assert server.alive(), "consentd died\n" + server.log_tail()
    o = env.oracle
    keys = known_keys(o)
    with Rpc(env.pb, server.rpc) as c:
        resp = c.check([dict(recipient=k[1], brand_code=k[0], channel=k[3],
                             recipient_type=k[2]) for k in keys])
        for k, v in zip(keys, resp.verdicts):
            helpers.assert_verdict(v, o.expect(k[1], k[0], k[3], k[2]), "after")
    with Resp(server.resp) as r:
        k = keys[0]
        exp = o.expect(k[1], k[0], k[3], k[2])
        got = r.cmd("CHECK", k[1], k[0], CHANNEL_NAMES[k[3]], RTYPE_NAMES[k[2]])
        assert got[:2] == [1 if exp.allow else 0, helpers.REASON_NAMES[exp.reason]]
    st, _, _ = server.http_get("/healthz")
    assert st == 200


def parse_responses(pb, data):
    out, pos = [], 0
    while pos + 4 <= len(data):
        n = struct.unpack(">I", data[pos:pos + 4])[0]
        if pos + 4 + n > len(data):
            break
        out.append(pb.Response.FromString(data[pos + 4:pos + 4 + n]))
        pos += 4 + n
    return out


def raw(port, timeout=10.0):
    s = socket.create_connection((helpers.LOOPBACK, port), timeout=timeout)
    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return s


def send_quietly(sock, data):
    """Sends what the server will take; it may close on us half-way."""
    try:
        sock.sendall(data)
    except (BrokenPipeError, ConnectionResetError):
        pass


def counters(server, *names):
    m = server.metrics()
    return {n: m.total(n) for n in names}


def test_garbage_bytes(env, server):
    names = ("consentd_frames_oversize_total", "consentd_frames_undecodable_total")
    before = counters(server, *names)
    rnd = random.Random(1234)
    # RPC: a length of 0xdeadbeef, then junk.
    s = raw(server.rpc)
    send_quietly(s, b"\xde\xad\xbe\xef" + bytes(rnd.randrange(256) for _ in range(300)))
    closed, data = helpers.wait_closed(s, 5)
    s.close()
    assert closed, "RPC: garbage did not close the connection"
    for r in parse_responses(env.pb, data):
        assert r.WhichOneof("body") == "error", r
    # RPC: a plausible length, then bytes that are not a Request.
    s = raw(server.rpc)
    junk = b"\xff" * 40
    send_quietly(s, struct.pack(">I", len(junk)) + junk)
    closed, data = helpers.wait_closed(s, 5)
    s.close()
    assert closed, "RPC: undecodable frame did not close the connection"
    rs = parse_responses(env.pb, data)
    assert rs and rs[0].WhichOneof("body") == "error", "no Error response: %r" % data
    # RESP: a broken multibulk header and random bytes.
    for junk in (b"*x\r\n", b"*2\r\n$abc\r\n", b"*1\r\n$3\r\nPINGPONG\r\n",
                 bytes(rnd.randrange(256) for _ in range(4096))):
        s = raw(server.resp)
        send_quietly(s, junk)
        closed, data = helpers.wait_closed(s, 3)
        s.close()
        assert all(line.startswith(b"-") for line in data.split(b"\r\n") if line), \
            "RESP answered garbage %r with %r" % (junk[:20], data[:200])
    # HTTP port: not HTTP. (A request line with a NUL byte is left to
    # libmicrohttpd's 10 s connection timeout; we only check that it does
    # not disturb anyone else.)
    hold = raw(server.http)
    send_quietly(hold, b"\x00\x01\x02garbage\r\n\r\n")
    for junk in (b"garbage\r\n\r\n", b"\x01\x02 \xff\xfe HTTP/1.1\r\n\r\n"):
        s = raw(server.http)
        send_quietly(s, junk)
        closed, data = helpers.wait_closed(s, 5)
        s.close()
        assert closed, "HTTP port kept %r open" % junk
        assert data == b"" or data.startswith(b"HTTP/1.1 4"), data[:100]
    st, _, _ = server.http_get("/healthz")
    assert st == 200
    hold.close()
    after = counters(server, *names)
    assert after[names[0]] > before[names[0]], "oversize garbage not counted"
    assert after[names[1]] > before[names[1]], "undecodable garbage not counted"
    assert_still_serving(env, server)


def varint_len(v):
    n = 1
    while v >= 0x80:
        v >>= 7
        n += 1
    return n


def exact_frame(pb, o, size):
    """A valid check Request serialising to exactly size bytes: as many real
    checks as fit, and a last check padded to the byte."""
    req = pb.Request(id=77)
    keys = sorted(o.records)
    i = 0
    while i % 1000 or req.ByteSize() < size - 2000:
        k = keys[i % len(keys)]
        req.check.checks.add(recipient=k[1], brand_code=k[0], channel=k[3],
                             recipient_type=k[2])
        i += 1
    while req.ByteSize() > size - 1000:
        del req.check.checks[-10:]
    content = req.check.ByteSize()
    head = 1 + varint_len(req.id)
    for pad in range(1, 2000):
        c = pb.Check(recipient="x" * pad, brand_code=1, channel=2).ByteSize()
        body = content + 1 + varint_len(c) + c
        if head + 1 + varint_len(body) + body == size:
            req.check.checks.add(recipient="x" * pad, brand_code=1, channel=2)
            assert req.ByteSize() == size
            return req
    raise AssertionError("no padding gives %d bytes" % size)


@pytest.mark.parametrize("length", [0, MAX_FRAME, MAX_FRAME + 1, 1 << 31,
                                    (1 << 32) - 1])
def test_rpc_length_prefix(env, server, length):
    pb, o = env.pb, env.oracle
    over_before = counters(server, "consentd_frames_oversize_total")
    s = raw(server.rpc, timeout=60)
    try:
        if length == 0:
            # An empty frame decodes to a Request with no body: an Error.
            s.sendall(b"\0\0\0\0")
            c = Rpc.wrap(pb, s)
            r = c.recv()
            assert r.WhichOneof("body") == "error", r
            assert r.error.message, "Error without a message"
        elif length == MAX_FRAME:
            req = exact_frame(pb, o, MAX_FRAME)
            payload = req.SerializeToString()
            assert len(payload) == MAX_FRAME
            s.sendall(Rpc.frame(payload))
            c = Rpc.wrap(pb, s)
            r = c.recv()
            assert r.id == 77 and r.WhichOneof("body") == "check", \
                "a frame of exactly the limit was refused: %s" % str(r)[:300]
            assert len(r.check.verdicts) == len(req.check.checks)
            for i, (ch, v) in enumerate(zip(req.check.checks, r.check.verdicts)):
                exp = o.expect(ch.recipient, ch.brand_code, ch.channel,
                               ch.recipient_type, ch.purpose)
                helpers.assert_verdict(v, exp, "1 MiB frame #%d" % i)
            # The connection goes on serving.
            first = req.check.checks[0]
            v = c.check_one(first.recipient, first.brand_code, first.channel,
                            first.recipient_type)
            helpers.assert_verdict(v, o.expect(first.recipient, first.brand_code,
                                               first.channel, first.recipient_type),
                                   "after the 1 MiB frame")
        else:
            # Only the header and a little: the server must not wait for
            # (or buffer) the rest before refusing.
            send_quietly(s, struct.pack(">I", length) + b"\x08\x01" * 8)
            closed, data = helpers.wait_closed(s, 5)
            assert closed, "oversize frame (%d) did not close the connection" % length
            rs = parse_responses(pb, data)
            assert len(rs) == 1 and rs[0].WhichOneof("body") == "error", \
                "oversize frame: want one Error response, got %r" % data[:200]
            over_after = counters(server, "consentd_frames_oversize_total")
            assert over_after["consentd_frames_oversize_total"] > \
                over_before["consentd_frames_oversize_total"]
    finally:
        s.close()
    assert_still_serving(env, server)


def test_frame_byte_by_byte(env, server):
    pb, o = env.pb, env.oracle
    keys = known_keys(o, 3, 5)
    req = pb.Request(id=4242)
    for k in keys:
        req.check.checks.add(recipient=k[1], brand_code=k[0], channel=k[3],
                             recipient_type=k[2])
    frame = Rpc.frame(req.SerializeToString())
    with Rpc(pb, server.rpc) as c:
        for b in frame:
            c.sock.sendall(bytes([b]))
            time.sleep(0.002)
        r = c.recv()
        assert r.id == 4242 and r.WhichOneof("body") == "check"
        for k, v in zip(keys, r.check.verdicts):
            helpers.assert_verdict(v, o.expect(k[1], k[0], k[3], k[2]), "dribbled")
        # Split in two at every position, on the same connection.
        for cut in range(1, len(frame)):
            c.sock.sendall(frame[:cut])
            time.sleep(0.001)
            c.sock.sendall(frame[cut:])
            r = c.recv()
            assert r.id == 4242 and len(r.check.verdicts) == len(keys), cut
    # RESP, byte by byte too.
    k = keys[0]
    cmd = helpers.resp_encode("CHECK", k[1], k[0], CHANNEL_NAMES[k[3]], RTYPE_NAMES[k[2]])
    with Resp(server.resp) as r:
        r.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        for b in cmd:
            r.sock.sendall(bytes([b]))
            time.sleep(0.002)
        exp = o.expect(k[1], k[0], k[3], k[2])
        assert r.read()[:2] == [1 if exp.allow else 0, helpers.REASON_NAMES[exp.reason]]


def test_undecodable_payload(env, server):
    pb, o = env.pb, env.oracle
    bad = b"\x12\x7f\x01"  # field 2 (check) claims 127 bytes, has 1
    with pytest.raises(Exception):
        pb.Request.FromString(bad)
    before = counters(server, "consentd_frames_undecodable_total")
    k = known_keys(o, 1)[0]
    good = pb.Request(id=9)
    good.check.checks.add(recipient=k[1], brand_code=k[0], channel=k[3],
                          recipient_type=k[2])
    s = raw(server.rpc)
    # A good request first, pipelined with the bad one: it is still answered.
    send_quietly(s, Rpc.frame(good.SerializeToString()) + Rpc.frame(bad))
    closed, data = helpers.wait_closed(s, 5)
    s.close()
    assert closed, "undecodable frame did not close the connection"
    rs = parse_responses(pb, data)
    assert len(rs) == 2, "want the good answer and an Error, got %d" % len(rs)
    assert rs[0].id == 9 and rs[0].WhichOneof("body") == "check"
    helpers.assert_verdict(rs[0].check.verdicts[0], o.expect(k[1], k[0], k[3], k[2]),
                           "before the bad frame")
    assert rs[1].WhichOneof("body") == "error" and rs[1].error.message
    after = counters(server, "consentd_frames_undecodable_total")
    assert after["consentd_frames_undecodable_total"] > \
        before["consentd_frames_undecodable_total"]
    assert_still_serving(env, server)


def test_http_on_binary_ports(env, server):
    name = "consentd_http_on_binary_port_total"
    before = counters(server, name)[name]
    req = b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nUser-Agent: e2e\r\n\r\n"
    for port, what in ((server.rpc, "RPC"), (server.resp, "RESP")):
        s = raw(port)
        send_quietly(s, req)
        closed, data = helpers.wait_closed(s, 5)
        s.close()
        assert closed, "%s port kept an HTTP client open (got %r)" % (what, data[:100])
    after = counters(server, name)[name]
    assert after - before == 2, "%s went %s -> %s" % (name, before, after)
    assert_still_serving(env, server)


def test_resp_size_limits(env, server):
    """Argument counts and lengths over the limits are refused before any
    buffer is sized by them."""
    name = "consentd_frames_oversize_total"
    before = counters(server, name)[name]
    for junk in (b"*1000000\r\n", b"*2\r\n$5\r\nCHECK\r\n$1000000000\r\n",
                 b"*9999999999999999999999\r\n"):
        s = raw(server.resp)
        send_quietly(s, junk)
        closed, data = helpers.wait_closed(s, 5)
        s.close()
        assert closed, "RESP %r left the connection open" % junk
        assert all(line.startswith(b"-") for line in data.split(b"\r\n") if line), data
    after = counters(server, name)[name]
    assert after - before >= 2, "%s went %s -> %s" % (name, before, after)
    assert_still_serving(env, server)


def test_resp_million_args_before_auth(env, token_server, partners):
    names = ("consentd_frames_oversize_total", "consentd_unauthenticated_refused_total")
    before = counters(token_server, *names)
    s = raw(token_server.resp)
    send_quietly(s, b"*1000000\r\n$4\r\nAUTH\r\n")
    closed, data = helpers.wait_closed(s, 5)
    s.close()
    assert closed, "a million-argument header before AUTH was not refused"
    assert all(line.startswith(b"-") for line in data.split(b"\r\n") if line), data
    after = counters(token_server, *names)
    assert sum(after.values()) > sum(before.values()), "refusal not counted"
    # Authenticated clients are still served.
    c = redis.Redis(host=helpers.LOOPBACK, port=token_server.resp,
                    password=partners.tokens["root"], socket_timeout=10,
                    decode_responses=True)
    try:
        k = known_keys(env.oracle, 1)[0]
        exp = env.oracle.expect(k[1], k[0], k[3], k[2])
        got = c.execute_command("CHECK", k[1], k[0], CHANNEL_NAMES[k[3]],
                                RTYPE_NAMES[k[2]])
        assert got[:2] == [1 if exp.allow else 0, helpers.REASON_NAMES[exp.reason]]
    finally:
        c.close()


def test_idle_connections(env, server):
    """2000 idle connections held open; a fresh client is still answered
    right on every protocol, and the connections are accounted for."""
    n_each = 1000
    m0 = server.metrics()
    acc0 = m0.total("consentd_connections_accepted_total")
    socks = []
    try:
        for port in (server.rpc, server.resp):
            for _ in range(n_each):
                socks.append(socket.create_connection((helpers.LOOPBACK, port),
                                                      timeout=10))
        deadline = time.monotonic() + 20
        while True:
            m = server.metrics()
            got = m.total("consentd_connections_accepted_total") - acc0
            if got >= 2 * n_each:
                break
            assert time.monotonic() < deadline, \
                "only %d of %d connections accepted" % (got, 2 * n_each)
            time.sleep(0.1)
        gauge = m.get("consentd_connections_open")
        if gauge is not None:
            assert gauge >= 2 * n_each, "connections_open %s" % gauge
        t0 = time.monotonic()
        assert_still_serving(env, server)
        # And a proper batch over RPC.
        o = env.oracle
        keys = known_keys(o, 300, 17)
        with Rpc(env.pb, server.rpc) as c:
            resp = c.check([dict(recipient=k[1], brand_code=k[0], channel=k[3],
                                 recipient_type=k[2]) for k in keys])
            for k, v in zip(keys, resp.verdicts):
                helpers.assert_verdict(v, o.expect(k[1], k[0], k[3], k[2]), "busy")
        assert time.monotonic() - t0 < 10
        # The idle ones are still open (idle deadline is minutes) and usable.
        s = socks[0]
        req = env.pb.Request(id=3)
        req.stats.SetInParent()
        s.sendall(Rpc.frame(req.SerializeToString()))
        c = Rpc.wrap(env.pb, s)
        assert c.recv().WhichOneof("body") == "stats"
    finally:
        for s in socks:
            s.close()
    # Closing them is noticed.
    deadline = time.monotonic() + 15
    while True:
        m = server.metrics()
        closed = m.total("consentd_connections_closed_total") - \
            m0.total("consentd_connections_closed_total")
        if closed >= 2 * n_each:
            break
        assert time.monotonic() < deadline, "only %d closes seen" % closed
        time.sleep(0.1)
    assert_still_serving(env, server)


@pytest.mark.parametrize("framing,why", [
    (b"Content-Length: 2\r\nContent-Length: 40\r\n", b"more than once"),
    (b"Content-Length: 40\r\nContent-Length: 40\r\n", b"more than once"),
    # libmicrohttpd refuses this one itself, before consentd sees it
    # (a 400 naming Content-Length, and the connection closed).
    (b"Content-Length: 2, 40\r\n", b"Content-Length"),
    (b"Content-Length: 40\r\nTransfer-Encoding: chunked\r\n",
     b"together with Transfer-Encoding"),
    (b"Transfer-Encoding: chunked\r\nContent-Length: 40\r\n",
     b"together with Transfer-Encoding"),
])
def test_http_ambiguous_body_length(env, server, framing, why):
    """RFC 9112 6.3: a body whose length is stated twice, or by both
    Content-Length and Transfer-Encoding, is refused with a 400 naming
    the header, and the connection is closed (where the next request
    would start is unknown), on every path."""
    o = env.oracle
    k = known_keys(o, 1)[0]
    body = ('{"checks":[{"recipient":"%s","brand_code":%d}]}' % (k[1], k[0])).encode()
    body = body.ljust(40)[:40]
    for path in (b"/v1/check", b"/healthz"):
        s = raw(server.http)
        try:
            send_quietly(s, b"POST " + path + b" HTTP/1.1\r\nHost: x\r\n"
                         b"Content-Type: application/json\r\n" + framing +
                         b"\r\n" + body)
            got = b""
            while True:
                chunk = s.recv(65536)
                if not chunk:
                    break  # closed by the server, as it must
                got += chunk
        finally:
            s.close()
        assert got.startswith(b"HTTP/1.1 400"), got[:200]
        assert why in got, got
        if why != b"Content-Length":  # consentd's refusal, not MHD's own
            assert got.count(b"HTTP/1.1 ") == 1, "a second reply: %r" % got
    assert_still_serving(env, server)
