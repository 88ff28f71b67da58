"""Deadlines and caps (DESIGN 4): idle and half-sent connections and slow
readers are closed on deadlines, the connection count is capped, and each
is counted (server/metrics.h). A server with short limits, so the test
waits seconds, not minutes."""

import errno
import socket
import struct
import time

import pytest

import helpers
from helpers import Rpc, Resp

PARTIAL_MS = 400
IDLE_MS = 1500
SEND_MS = 1000
MAX_CONN = 40  # per worker; the server runs 2


@pytest.fixture(scope="module")
def tight(env):
    s = env.server(extra=["--partial-timeout-ms", str(PARTIAL_MS),
                          "--idle-timeout-ms", str(IDLE_MS),
                          "--send-timeout-ms", str(SEND_MS),
                          "--max-connections", str(MAX_CONN),
                          "--conn-out-cap-bytes", str(64 << 10)],
                   name="consentd-tight")
    try:
        yield s
    finally:
        alive = s.alive()
        rc = s.stop()
        assert alive and rc == 0, "tight server: exit %s\n%s" % (rc, s.log_tail())


def total(server, name):
    return server.metrics().total(name)


def wait_counter(server, name, at_least, timeout):
    deadline = time.monotonic() + timeout
    while True:
        v = total(server, name)
        if v >= at_least:
            return v
        assert time.monotonic() < deadline, "%s stayed at %s (want >= %s)" % (
            name, v, at_least)
        time.sleep(0.1)


def assert_serves(env, server):
    o = env.oracle
    k = sorted(o.records)[5]
    with Rpc(env.pb, server.rpc) as c:
        v = c.check_one(k[1], k[0], k[3], k[2])
        helpers.assert_verdict(v, o.expect(k[1], k[0], k[3], k[2]), "tight")


def test_half_sent_frames_are_closed(env, tight):
    name = "consentd_closed_partial_total"
    before = total(tight, name)
    socks = []
    for port, data in ((tight.rpc, b"\x00\x00"),                 # half a header
                       (tight.rpc, struct.pack(">I", 100) + b"\x08"),  # half a body
                       (tight.resp, b"*2\r\n$4\r\nPI")):          # half a command
        s = socket.create_connection((helpers.LOOPBACK, port), timeout=10)
        s.sendall(data)
        socks.append(s)
    t0 = time.monotonic()
    for s in socks:
        closed, _ = helpers.wait_closed(s, 5)
        assert closed, "a half-sent request was kept open"
        s.close()
    took = time.monotonic() - t0
    assert took < PARTIAL_MS / 1000 + 2.5, "closed after %.1f s" % took
    wait_counter(tight, name, before + 3, 3)
    assert_serves(env, tight)


def test_idle_connections_are_closed(env, tight):
    name = "consentd_closed_idle_total"
    before = total(tight, name)
    idle = [socket.create_connection((helpers.LOOPBACK, p), timeout=10)
            for p in (tight.rpc, tight.resp)]
    # A client that keeps talking is not idle.
    o = env.oracle
    k = sorted(o.records)[7]
    with Rpc(env.pb, tight.rpc) as busy:
        t0 = time.monotonic()
        while time.monotonic() - t0 < IDLE_MS / 1000 * 2:
            v = busy.check_one(k[1], k[0], k[3], k[2])
            helpers.assert_verdict(v, o.expect(k[1], k[0], k[3], k[2]), "busy")
            time.sleep(IDLE_MS / 1000 / 4)
        for s in idle:
            closed, data = helpers.wait_closed(s, 3)
            assert closed and data == b"", "an idle connection was kept open"
            s.close()
        v = busy.check_one(k[1], k[0], k[3], k[2])
        helpers.assert_verdict(v, o.expect(k[1], k[0], k[3], k[2]), "still busy")
    wait_counter(tight, name, before + 2, 3)


def test_slow_reader_is_closed(env, tight):
    """A client that pipelines requests and never reads its replies: the
    server stops reading it past the output cap and closes it after the
    send deadline, while serving others."""
    name = "consentd_closed_slow_reader_total"
    before = total(tight, name)
    pb, o = env.pb, env.oracle
    req = pb.Request(id=1)
    for k in sorted(o.records)[:2000]:
        req.check.checks.add(recipient=k[1], brand_code=k[0], channel=k[3],
                             recipient_type=k[2])
    frame = Rpc.frame(req.SerializeToString())
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    s.settimeout(10)
    s.connect((helpers.LOOPBACK, tight.rpc))
    s.setblocking(False)
    sent, closed = 0, False
    deadline = time.monotonic() + SEND_MS / 1000 + 8
    while time.monotonic() < deadline:
        try:
            sent += s.send(frame[sent % len(frame):])
        except BlockingIOError:
            time.sleep(0.05)
        except (BrokenPipeError, ConnectionResetError):
            closed = True
            break
        except OSError as e:
            if e.errno in (errno.EPIPE, errno.ECONNRESET):
                closed = True
                break
            raise
        if total(tight, name) > before:
            closed = True
            break
    s.close()
    assert closed, "a client that never reads was not closed (sent %d bytes)" % sent
    wait_counter(tight, name, before + 1, 3)
    assert_serves(env, tight)


def test_connection_cap(env, tight):
    name = "consentd_connections_refused_total"
    before = total(tight, name)
    socks = []
    try:
        for _ in range(2 * MAX_CONN + 30):
            socks.append(socket.create_connection((helpers.LOOPBACK, tight.resp),
                                                  timeout=10))
        refused = wait_counter(tight, name, before + 30, 5) - before
        m = tight.metrics()
        assert m.total("consentd_connections_open") <= 2 * MAX_CONN
        # The refused ones are closed, the others answer.
        n_open = 0
        for s in socks:
            try:
                s.sendall(helpers.resp_encode("PING"))
            except (BrokenPipeError, ConnectionResetError):
                pass
        for s in socks:
            s.settimeout(5)
            try:
                d = s.recv(64)
            except (ConnectionResetError, socket.timeout):
                d = b""
            if d == b"+PONG\r\n":
                n_open += 1
            else:
                # Closed, perhaps with a word of why first.
                assert d == b"" or d.startswith(b"-"), \
                    "refused connection answered %r" % d
        assert n_open + refused == len(socks), (n_open, refused, len(socks))
        assert n_open <= 2 * MAX_CONN
    finally:
        for s in socks:
            s.close()
    # Once they are gone, new clients are served.
    deadline = time.monotonic() + 5
    while True:
        try:
            with Resp(tight.resp) as r:
                if r.cmd("PING") == "PONG":
                    break
        except (helpers.Closed, OSError):
            pass
        assert time.monotonic() < deadline, "no room after the clients left"
        time.sleep(0.1)
    assert_serves(env, tight)
