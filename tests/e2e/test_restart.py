"""Restarts on the same ports right after a kill -9 (issue 15 item 3).

A killed consentd's ports can stay taken for a moment after the process is
gone: its io_uring is torn down by the kernel after the process exits, and
the multishot accepts it holds keep the listening sockets alive until
then. Every listener therefore waits for its port (--bind-wait-ms, logged).
Here: the first start binds port 0 everywhere and reports the ports in its
--ports-file; then, 50 times, kill -9, reap, start again at once on
exactly those ports, and answer one real check (RPC and RESP in turn)
against the oracle. No start may fail."""

import re

import redis

import helpers
from helpers import CHANNEL_NAMES, REASON_NAMES, STATUS_NAMES, Rpc

CYCLES = 50


def resp_reply(exp):
    return [1 if exp.allow else 0, REASON_NAMES[exp.reason],
            STATUS_NAMES[exp.status] if exp.status else None,
            exp.date if exp.status else None]


def check_once(env, s, i):
    o = env.oracle
    keys = sorted(o.records)
    brand, rec, rtype, channel = keys[(i * 7919) % len(keys)]
    exp = o.expect(rec, brand, channel, rtype)
    if i % 2 == 0:
        with Rpc(env.pb, s.rpc) as c:
            helpers.assert_verdict(c.check_one(rec, brand, channel, rtype),
                                   exp, "cycle %d RPC %s" % (i, rec))
    else:
        r = redis.Redis(host=helpers.LOOPBACK, port=s.resp, socket_timeout=10,
                        decode_responses=True)
        try:
            got = r.execute_command("CHECK", rec, brand, CHANNEL_NAMES[channel],
                                    helpers.RTYPE_NAMES[rtype])
        finally:
            r.close()
        assert got == resp_reply(exp), "cycle %d RESP CHECK %s: %r, want %r" % (
            i, rec, got, exp)


def test_restart_after_kill9_on_same_ports(env):
    d = env.data_dir()
    log = env.tmp + "/restart.log"
    s = helpers.Server(d, log).start()
    ports = (s.rpc, s.resp, s.http)
    assert len(set(ports)) == 3, "two listeners on one port: %s" % (ports,)
    check_once(env, s, 0)
    try:
        for i in range(1, CYCLES + 1):
            s.proc.kill()
            s.proc.wait(10)
            s.kill()
            # ports=s: the same three ports, given explicitly this time.
            s = helpers.Server(d, log, ports=s)
            try:
                s.start(timeout=20)
            except AssertionError as e:
                raise AssertionError("cycle %d: restart failed: %s" % (i, e))
            assert (s.rpc, s.resp, s.http) == ports
            check_once(env, s, i)
        text = s.log_tail(1 << 22)
        assert "giving up" not in text, text[-4000:]
        waits = re.findall(r".*: bound after \d+ ms", text)
        print("\n%d restarts, %d listener waits for a port%s" % (
            CYCLES, len(waits), "".join("\n  " + w for w in waits)))
    finally:
        rc = s.stop()
    assert rc == 0, "exit %s on SIGTERM\n%s" % (rc, s.log_tail())
