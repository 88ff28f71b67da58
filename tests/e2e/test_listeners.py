"""The listeners' addresses (issue 9 items 5 and 7): one HOST:PORT reader
for every flag (a bad address is a bad flag: exit 2, the reason said), and
--ports-file, written once rpc, resp and http are bound, whether or not
the server is ready."""

import os
import subprocess
import time

import pytest

import helpers


@pytest.mark.parametrize("flag", ["--rpc", "--resp", "--http", "--grpc"])
@pytest.mark.parametrize("addr,why", [
    ("127.0.0.1:65536", "over 65535"),
    ("127.0.0.1:", "empty port"),
    (":7700", "empty host"),
    ("127.0.0.1", "no port"),
    ("::1:7700", "brackets"),
    ("[::1]7700", "after ']'"),
    ("127.0.0.1:77x", "not a number"),
])
def test_bad_address_is_a_bad_flag(env, flag, addr, why):
    p = subprocess.run([helpers.binary("consentd"), "--data-dir",
                        os.path.join(env.tmp, "never-made"), flag, addr],
                       stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                       timeout=20)
    err = p.stderr.decode(errors="replace")
    assert p.returncode == 2, "%s %s: exit %d\n%s" % (flag, addr, p.returncode, err)
    assert flag in err and addr in err and why in err, err
    assert not os.path.exists(os.path.join(env.tmp, "never-made"))


def test_ports_file_before_ready(env):
    """A first generation still being built (its snapshot arrives on stdin
    only once the ports file is there): the file names four distinct
    ports that answer, /readyz says 503 meanwhile, and the same ports
    serve once the build is done."""
    d = os.path.join(env.tmp, "ports-before-ready")
    ports = os.path.join(env.tmp, "ports-before-ready.ports")
    log = open(os.path.join(env.tmp, "ports-before-ready.log"), "ab")
    proc = subprocess.Popen(
        [helpers.binary("consentd"), "--data-dir", d, "--snapshot", "-",
         "--rpc", "127.0.0.1:0", "--resp", "127.0.0.1:0",
         "--http", "127.0.0.1:0", "--grpc", "127.0.0.1:0",
         "--ports-file", ports, "--workers", "2"],
        stdin=subprocess.PIPE, stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 20
        while not os.path.exists(ports):
            assert proc.poll() is None, "consentd exited %d" % proc.returncode
            assert time.monotonic() < deadline, "no ports file in 20 s"
            time.sleep(0.01)
        p = helpers.read_ports(ports)
        assert sorted(p) == ["grpc", "http", "resp", "rpc"], p
        assert all(h == helpers.LOOPBACK for h, _ in p.values()), p
        nums = [port for _, port in p.values()]
        assert len(set(nums)) == 4 and 0 not in nums, p
        leftovers = [f for f in os.listdir(env.tmp)
                     if f.startswith("ports-before-ready.ports.")]
        assert not leftovers, leftovers

        s = helpers.Server(d, log.name)
        s.rpc, s.resp, s.http = p["rpc"][1], p["resp"][1], p["http"][1]
        st, _, body = s.http_get("/readyz")
        assert st == 503, "/readyz %d before the snapshot: %r" % (st, body)
        with helpers.Resp(s.resp) as r:
            assert r.cmd("PING") == "PONG"

        with open(env.snapshot, "rb") as f:
            proc.stdin.write(f.read())
        proc.stdin.close()
        deadline = time.monotonic() + 30
        while s.http_get("/readyz")[0] != 200:
            assert proc.poll() is None, "consentd exited %d" % proc.returncode
            assert time.monotonic() < deadline, "not ready 30 s after the snapshot"
            time.sleep(0.05)
        o = env.oracle
        brand, rec, rtype, channel = sorted(o.records)[0]
        with helpers.Rpc(env.pb, s.rpc) as c:
            helpers.assert_verdict(c.check_one(rec, brand, channel, rtype),
                                   o.expect(rec, brand, channel, rtype), rec)
        assert helpers.read_ports(ports) == p, "the ports file changed"
    finally:
        if proc.poll() is None:
            proc.terminate()
        rc = proc.wait(20)
        log.close()
    assert rc == 0, "exit %d on SIGTERM" % rc
