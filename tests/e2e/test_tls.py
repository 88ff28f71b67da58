"""TLS on the client ports (--tls-cert, --tls-key, --tls-ca; DESIGN 11),
with clients nobody here wrote: redis-cli --tls, redis-py over ssl, and the
framed protobuf RPC (Google's runtime) over Python's ssl module.

Certificates are made here, by the openssl command line, in the session's
scratch directory: a CA, a server certificate for 127.0.0.1 and localhost,
a renewed one (for SIGHUP), a client certificate of the same CA and one of
a CA the server does not trust. Answers are compared with the oracle."""

import os
import random
import signal
import socket
import ssl
import subprocess
import time

import pytest
import redis

import helpers
from helpers import (CHANNEL_NAMES, REASON_NAMES, RTYPE_NAMES, STATUS_NAMES,
                     LOOPBACK)


def openssl(*args, cwd):
    helpers.run(["openssl"] + list(args), cwd=cwd)


class Certs:
    """PEM files in a directory of their own."""

    def __init__(self, base):
        d = self.dir = os.path.join(base, "tls-certs")
        os.makedirs(d, exist_ok=True)
        self.ca, self.ca_key = self._ca("ca", "consentd e2e CA")
        self.other_ca, self.other_ca_key = self._ca("other-ca", "a CA nobody trusts")
        self.srv, self.srv_key = self._leaf("srv", "consentd e2e server", self.ca,
                                            self.ca_key, server=True)
        self.srv2, self.srv2_key = self._leaf("srv2", "consentd e2e renewed", self.ca,
                                              self.ca_key, server=True)
        self.cli, self.cli_key = self._leaf("cli", "partner alice", self.ca, self.ca_key)
        self.stranger, self.stranger_key = self._leaf(
            "stranger", "partner mallory", self.other_ca, self.other_ca_key)

    def path(self, name):
        return os.path.join(self.dir, name)

    def _ca(self, name, cn):
        openssl("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256",
                "-nodes", "-keyout", name + ".key", "-out", name + ".pem", "-days", "3",
                "-subj", "/CN=" + cn, cwd=self.dir)
        return self.path(name + ".pem"), self.path(name + ".key")

    def _leaf(self, name, cn, ca, ca_key, server=False):
        openssl("req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
                "-keyout", name + ".key", "-out", name + ".csr", "-subj", "/CN=" + cn,
                cwd=self.dir)
        ext = self.path(name + ".ext")
        with open(ext, "w") as f:
            if server:
                f.write("subjectAltName=IP:127.0.0.1,DNS:localhost\n"
                        "extendedKeyUsage=serverAuth\n")
            else:
                f.write("extendedKeyUsage=clientAuth\n")
        openssl("x509", "-req", "-in", name + ".csr", "-CA", ca, "-CAkey", ca_key,
                "-CAcreateserial", "-out", name + ".pem", "-days", "3", "-extfile", ext,
                cwd=self.dir)
        return self.path(name + ".pem"), self.path(name + ".key")


@pytest.fixture(scope="module")
def certs(env):
    return Certs(env.tmp)


def copy_over(src, dst):
    """dst gets src's bytes atomically (as an operator's deploy would)."""
    with open(src, "rb") as f:
        data = f.read()
    tmp = dst + ".new"
    with open(tmp, "wb") as f:
        f.write(data)
    os.rename(tmp, dst)


def stop(s):
    alive = s.alive()
    rc = s.stop()
    assert alive, "consentd died\n" + s.log_tail()
    assert rc == 0, "consentd exited %s\n%s" % (rc, s.log_tail())


@pytest.fixture(scope="module")
def tls_server(env, certs):
    """TLS on RPC and RESP (the default: every client port but policy)."""
    s = env.server(extra=["--tls-cert", certs.srv, "--tls-key", certs.srv_key,
                          "--partial-timeout-ms", "1500"], name="consentd-tls")
    try:
        yield s
    finally:
        stop(s)


@pytest.fixture(scope="module")
def mtls_server(env, certs):
    """Client certificates required (--tls-ca)."""
    s = env.server(extra=["--tls-cert", certs.srv, "--tls-key", certs.srv_key,
                          "--tls-ca", certs.ca], name="consentd-mtls")
    try:
        yield s
    finally:
        stop(s)


def client_ctx(certs, cert=None, key=None):
    ctx = ssl.create_default_context(cafile=certs.ca)
    if cert:
        ctx.load_cert_chain(cert, key)
    return ctx


def tls_socket(certs, port, cert=None, key=None, timeout=10.0):
    raw = socket.create_connection((LOOPBACK, port), timeout=timeout)
    raw.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return client_ctx(certs, cert, key).wrap_socket(raw, server_hostname=LOOPBACK)


def tls_redis(certs, port, cert=None, key=None):
    return redis.Redis(host=LOOPBACK, port=port, socket_timeout=10, decode_responses=True,
                       ssl=True, ssl_ca_certs=certs.ca, ssl_cert_reqs="required",
                       ssl_certfile=cert, ssl_keyfile=key)


def expected_reply(exp):
    return [1 if exp.allow else 0, REASON_NAMES[exp.reason],
            STATUS_NAMES[exp.status] if exp.status else None,
            exp.date if exp.status else None]


def sample(o, n, seed):
    keys = sorted(o.records)
    random.Random(seed).shuffle(keys)
    return keys[:n]


def check_args(key):
    brand, rec, rtype, channel = key
    return [rec, brand, CHANNEL_NAMES[channel], RTYPE_NAMES[rtype]]


def redis_check_all(env, r, keys):
    """CHECK of each key (and of an absent brand) through r, against the
    oracle."""
    o = env.oracle
    for key in keys:
        brand, rec, rtype, channel = key
        got = r.execute_command("CHECK", *check_args(key))
        assert got == expected_reply(o.expect(rec, brand, channel, rtype)), (key, got)
    key = keys[0]
    got = r.execute_command("CHECK", key[1], o.absent_brand(), CHANNEL_NAMES[key[3]])
    assert got == expected_reply(o.expect(key[1], o.absent_brand(), key[3])), got


def rpc_check_all(env, rpc, keys):
    o = env.oracle
    checks = [dict(recipient=rec, brand_code=brand, channel=ch, recipient_type=rt)
              for brand, rec, rt, ch in keys]
    res = rpc.check(checks)
    for k, v in zip(keys, res.verdicts):
        brand, rec, rt, ch = k
        helpers.assert_verdict(v, o.expect(rec, brand, ch, rt), "rpc %s" % (k,))


def peer_cn(sock):
    cert = sock.getpeercert()
    return dict(x[0] for x in cert["subject"])["commonName"]


def wait_for(cond, what, timeout=10.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        v = cond()
        if v:
            return v
        time.sleep(0.02)
    raise AssertionError("not within %.0f s: %s" % (timeout, what))


def wait_counter(server, name, at_least, timeout=10.0):
    return wait_for(lambda: helpers.counter(server, name) >= at_least,
                    "%s >= %d" % (name, at_least), timeout)


# --- clients nobody here wrote -------------------------------------------------

def test_redis_cli_tls(env, certs, tls_server):
    o = env.oracle
    for key in sample(o, 12, 1):
        brand, rec, rtype, channel = key
        p = subprocess.run(["redis-cli", "-h", LOOPBACK, "-p", str(tls_server.resp),
                            "--tls", "--cacert", certs.ca, "--no-raw", "CHECK"] +
                           [str(a) for a in check_args(key)],
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, timeout=20,
                           stdin=subprocess.DEVNULL)
        out = p.stdout.decode()
        assert p.returncode == 0, p.stderr.decode()
        exp = expected_reply(o.expect(rec, brand, channel, rtype))
        lines = [ln.split(") ", 1)[1] for ln in out.strip().split("\n")]
        # The reason is a status reply (unquoted), the status a bulk string.
        want = ["(integer) %d" % exp[0], exp[1],
                '"%s"' % exp[2] if exp[2] else "(nil)",
                "(integer) %d" % exp[3] if exp[3] else "(nil)"]
        assert lines == want, (key, out)
    # Without --tls the same client is refused, not answered.
    p = subprocess.run(["redis-cli", "-h", LOOPBACK, "-p", str(tls_server.resp), "PING"],
                       stdout=subprocess.PIPE, stderr=subprocess.PIPE, timeout=20,
                       stdin=subprocess.DEVNULL)
    assert "PONG" not in p.stdout.decode(), p.stdout


def test_redis_py_tls(env, certs, tls_server):
    r = tls_redis(certs, tls_server.resp)
    try:
        assert r.ping() is True
        redis_check_all(env, r, sample(env.oracle, 80, 2))
        # A pipeline large enough to span many TLS records each way.
        keys = sample(env.oracle, 600, 3)
        p = r.pipeline(transaction=False)
        for key in keys:
            p.execute_command("CHECK", *check_args(key))
        got = p.execute()
        for key, g in zip(keys, got):
            brand, rec, rtype, channel = key
            assert g == expected_reply(env.oracle.expect(rec, brand, channel, rtype)), key
    finally:
        r.close()


def test_rpc_over_tls(env, certs, tls_server):
    with helpers.Rpc.wrap(env.pb, tls_socket(certs, tls_server.rpc)) as rpc:
        rpc_check_all(env, rpc, sample(env.oracle, 200, 4))
        # Pipelined frames, each its own record or several to one.
        keys = sample(env.oracle, 50, 5)
        for i, k in enumerate(keys):
            req = env.pb.Request(id=1000 + i)
            req.check.checks.add(recipient=k[1], brand_code=k[0], channel=k[3],
                                 recipient_type=k[2])
            rpc.send(req)
        for i, k in enumerate(keys):
            r = rpc.recv()
            assert r.id == 1000 + i
            helpers.assert_verdict(r.check.verdicts[0],
                                   env.oracle.expect(k[1], k[0], k[3], k[2]), "pipelined")
        assert rpc.stats().applied_sequence >= 0
    m = tls_server.metrics()
    assert m.total("consentd_tls_handshakes_total") >= 1


def test_tls_byte_at_a_time(env, certs, tls_server):
    """The client's records reach the server split at every byte (TCP_NODELAY,
    one send per byte through a memory BIO of Python's ssl module), the
    handshake too."""
    ctx = client_ctx(certs)
    inc, out = ssl.MemoryBIO(), ssl.MemoryBIO()
    obj = ctx.wrap_bio(inc, out, server_hostname=LOOPBACK)
    sock = socket.create_connection((LOOPBACK, tls_server.rpc), timeout=10)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def flush():
        data = out.read()
        for b in data:
            sock.sendall(bytes([b]))

    def pump_until(fn):
        while True:
            try:
                return fn()
            except ssl.SSLWantReadError:
                flush()
                chunk = sock.recv(65536)
                assert chunk, "closed by the server"
                inc.write(chunk)

    pump_until(obj.do_handshake)
    flush()
    key = sample(env.oracle, 1, 6)[0]
    req = env.pb.Request(id=7)
    req.check.checks.add(recipient=key[1], brand_code=key[0], channel=key[3],
                         recipient_type=key[2])
    payload = req.SerializeToString()
    obj.write(helpers.Rpc.frame(payload))
    flush()
    buf = b""
    while len(buf) < 4 or len(buf) < 4 + int.from_bytes(buf[:4], "big"):
        buf += pump_until(lambda: obj.read(65536))
    r = env.pb.Response.FromString(buf[4:])
    assert r.id == 7
    helpers.assert_verdict(r.check.verdicts[0],
                           env.oracle.expect(key[1], key[0], key[3], key[2]), "bytewise")
    sock.close()


# --- client certificates -------------------------------------------------------------

def refused(fn):
    """True if fn fails the way a refused TLS client does."""
    try:
        fn()
    except (ssl.SSLError, ConnectionError, OSError, redis.ConnectionError,
            helpers.Closed):
        return True
    return False


def test_client_certificate_required(env, certs, mtls_server):
    before = helpers.counter(mtls_server, "consentd_tls_handshake_failures_total")

    def without():
        r = tls_redis(certs, mtls_server.resp)
        try:
            r.ping()
        finally:
            r.close()

    def stranger():
        r = tls_redis(certs, mtls_server.resp, certs.stranger, certs.stranger_key)
        try:
            r.ping()
        finally:
            r.close()

    def rpc_without():
        with helpers.Rpc.wrap(env.pb, tls_socket(certs, mtls_server.rpc)) as rpc:
            rpc.stats()

    assert refused(without), "served without a client certificate"
    assert refused(stranger), "served a certificate of an untrusted CA"
    assert refused(rpc_without), "RPC served without a client certificate"
    wait_counter(mtls_server, "consentd_tls_handshake_failures_total", before + 3)
    r = tls_redis(certs, mtls_server.resp, certs.cli, certs.cli_key)
    try:
        redis_check_all(env, r, sample(env.oracle, 30, 7))
    finally:
        r.close()
    with helpers.Rpc.wrap(env.pb, tls_socket(certs, mtls_server.rpc, certs.cli,
                                             certs.cli_key)) as rpc:
        rpc_check_all(env, rpc, sample(env.oracle, 30, 8))
    assert mtls_server.alive()


# --- refusals ----------------------------------------------------------------------------

def test_plaintext_and_garbage_refused_others_served(env, certs, tls_server):
    m0 = tls_server.metrics()
    not_tls0 = m0.total("consentd_tls_not_tls_total")
    fail0 = m0.total("consentd_tls_handshake_failures_total")
    good = tls_redis(certs, tls_server.resp)
    keys = sample(env.oracle, 20, 9)
    try:
        assert good.ping() is True
        bad = []
        # A plaintext Redis client, a plaintext RPC frame, plain HTTP.
        for port, data in ((tls_server.resp, helpers.resp_encode("PING")),
                           (tls_server.rpc, helpers.Rpc.frame(b"\x00" * 8)),
                           (tls_server.resp, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")):
            s = socket.create_connection((LOOPBACK, port), timeout=10)
            s.sendall(data)
            bad.append(s)
        # Garbage as a handshake: a handshake record header, then noise;
        # and noise alone.
        rnd = random.Random(11)
        for head in (b"\x16\x03\x01\x00\x40", b"\x16\x03\x03\x40\x00", b""):
            s = socket.create_connection((LOOPBACK, tls_server.resp), timeout=10)
            s.sendall(head + bytes(rnd.getrandbits(8) for _ in range(200)))
            bad.append(s)
        # Meanwhile the good client is served.
        redis_check_all(env, good, keys)
        for s in bad:
            closed, data = helpers.wait_closed(s, timeout=10)
            assert closed, "a bad client was not closed"
            # Nothing in plaintext came back (at most a TLS alert record).
            assert not data or data[0] == 0x15, data[:20]
            s.close()
        redis_check_all(env, good, keys)
    finally:
        good.close()
    wait_counter(tls_server, "consentd_tls_not_tls_total", not_tls0 + 4)
    wait_counter(tls_server, "consentd_tls_handshake_failures_total", fail0 + 1)
    assert "not a TLS handshake record" in tls_server.log_tail(20000)


def test_old_protocol_refused(certs, tls_server):
    """A TLS 1.1 client is refused (TLS 1.2 is the floor)."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.load_verify_locations(certs.ca)
    try:
        ctx.minimum_version = ssl.TLSVersion.TLSv1_1
        ctx.maximum_version = ssl.TLSVersion.TLSv1_1
        ctx.set_ciphers("DEFAULT:@SECLEVEL=0")
    except (ValueError, ssl.SSLError):
        pytest.skip("this Python's OpenSSL cannot offer TLS 1.1 at all")
    fail0 = helpers.counter(tls_server, "consentd_tls_handshake_failures_total")
    raw = socket.create_connection((LOOPBACK, tls_server.resp), timeout=10)
    with pytest.raises((ssl.SSLError, ConnectionError)):
        ctx.wrap_socket(raw, server_hostname=LOOPBACK)
    raw.close()
    wait_counter(tls_server, "consentd_tls_handshake_failures_total", fail0 + 1)


def test_handshake_deadline(env, certs, tls_server):
    """A client that connects and says nothing, or half a ClientHello, is
    closed on the handshake deadline (--partial-timeout-ms 1500 here)."""
    t0 = helpers.counter(tls_server, "consentd_tls_handshake_timeouts_total")
    silent = socket.create_connection((LOOPBACK, tls_server.resp), timeout=10)
    half = socket.create_connection((LOOPBACK, tls_server.rpc), timeout=10)
    half.sendall(b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03")
    for s in (silent, half):
        closed, data = helpers.wait_closed(s, timeout=15)
        assert closed and data == b"", data
        s.close()
    wait_counter(tls_server, "consentd_tls_handshake_timeouts_total", t0 + 2)


# --- SIGHUP ----------------------------------------------------------------------------

def test_sighup_reloads_certificate(env, certs):
    d = os.path.join(certs.dir, "reload")
    os.makedirs(d, exist_ok=True)
    cert, key = os.path.join(d, "cert.pem"), os.path.join(d, "key.pem")
    copy_over(certs.srv, cert)
    copy_over(certs.srv_key, key)
    s = env.server(extra=["--tls-cert", cert, "--tls-key", key], name="consentd-reload")
    try:
        old = tls_socket(certs, s.rpc)
        assert peer_cn(old) == "consentd e2e server"
        old_rpc = helpers.Rpc.wrap(env.pb, old)
        rpc_check_all(env, old_rpc, sample(env.oracle, 10, 12))

        copy_over(certs.srv2, cert)
        copy_over(certs.srv2_key, key)
        s.proc.send_signal(signal.SIGHUP)

        def new_cn():
            with tls_socket(certs, s.rpc) as t:
                return peer_cn(t) == "consentd e2e renewed"
        wait_for(new_cn, "a new connection sees the renewed certificate")
        # The connection opened before is still served, on its context.
        rpc_check_all(env, old_rpc, sample(env.oracle, 10, 13))
        assert peer_cn(old) == "consentd e2e server"

        # A bad file: the reload fails, says why, and the renewed
        # certificate stays.
        with open(key, "w") as f:
            f.write("-----BEGIN PRIVATE KEY-----\nnot a key\n-----END PRIVATE KEY-----\n")
        s.proc.send_signal(signal.SIGHUP)
        wait_for(lambda: "TLS reload failed" in s.log_tail(20000),
                 "the failed reload in the log")
        assert key in s.log_tail(20000)
        with tls_socket(certs, s.rpc) as t:
            assert peer_cn(t) == "consentd e2e renewed"
            rpc_check_all(env, helpers.Rpc.wrap(env.pb, t), sample(env.oracle, 10, 14))
        rpc_check_all(env, old_rpc, sample(env.oracle, 10, 15))
        old_rpc.close()
    finally:
        stop(s)


# --- configuration -------------------------------------------------------------------

def test_tls_listeners_choose_ports(env, certs):
    """--tls-listeners resp: RESP speaks TLS, RPC stays plaintext."""
    s = env.server(extra=["--tls-cert", certs.srv, "--tls-key", certs.srv_key,
                          "--tls-listeners", "resp"], name="consentd-tls-resp")
    try:
        with helpers.Rpc(env.pb, s.rpc) as rpc:
            rpc_check_all(env, rpc, sample(env.oracle, 10, 16))
        r = tls_redis(certs, s.resp)
        try:
            redis_check_all(env, r, sample(env.oracle, 10, 17))
        finally:
            r.close()
    finally:
        stop(s)


def test_tls_from_config_file(env, certs):
    """The same names in a --config file (server/conffile.c): TLS on RPC
    only, RESP plaintext."""
    conf = os.path.join(certs.dir, "tls.conf")
    with open(conf, "w") as f:
        f.write("# TLS for partners on the RPC port\n"
                "tls-cert = %s\ntls-key %s\ntls-ca %s\ntls-listeners rpc\n" % (
                    certs.srv, certs.srv_key, certs.ca))
    s = env.server(extra=["--config", conf], name="consentd-tls-conf")
    try:
        with helpers.Rpc.wrap(env.pb, tls_socket(certs, s.rpc, certs.cli,
                                                 certs.cli_key)) as rpc:
            rpc_check_all(env, rpc, sample(env.oracle, 10, 18))
        r = redis.Redis(host=LOOPBACK, port=s.resp, socket_timeout=10,
                        decode_responses=True)
        try:
            redis_check_all(env, r, sample(env.oracle, 10, 19))
        finally:
            r.close()
        assert "rpc listening on" in s.log_tail() and ", TLS)" in s.log_tail()
    finally:
        stop(s)


@pytest.mark.parametrize("args,words", [
    (["--tls-cert", "CERT"], "go together"),
    (["--tls-key", "KEY"], "go together"),
    (["--tls-ca", "CA"], "needs --tls-cert"),
    (["--tls-cert", "CERT", "--tls-key", "KEY", "--tls-listeners", "rpc,smtp"],
     "'smtp' is no client port"),
    (["--tls-cert", "KEY", "--tls-key", "KEY"], "KEY"),
    (["--tls-cert", "CERT", "--tls-key", "OTHERKEY"], "OTHERKEY"),
    (["--tls-cert", "CERT", "--tls-key", "KEY", "--tls-ca", "KEY"], "KEY"),
])
def test_bad_tls_flags(env, certs, args, words):
    names = {"CERT": certs.srv, "KEY": certs.srv_key, "CA": certs.ca,
             "OTHERKEY": certs.cli_key}
    args = [names.get(a, a) for a in args]
    words = names.get(words, words)
    d = os.path.join(env.tmp, "never-made-tls")
    p = subprocess.run([helpers.binary("consentd"), "--data-dir", d] + args,
                       stdout=subprocess.PIPE, stderr=subprocess.PIPE, timeout=20)
    err = p.stderr.decode(errors="replace")
    assert p.returncode == 2, "exit %d: %s" % (p.returncode, err)
    assert words in err, err
    assert not os.path.exists(d)
