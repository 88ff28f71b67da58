"""The bench's load generator (bench/loadgen, bench/README.md) against a real
consentd: its io_uring and epoll clients both verify every reply (a server
that answers wrongly is caught, exit 1), the open loop sends what fell due on
a connection in one send per tick, the client's and the server's CPU are
reported, and --phases windows follow SIGUSR1/SIGUSR2. Also `consentctl gen
--new-keys`, whose keys must be absent from the dataset the load verifies
against. Nothing here asserts a speed."""

import json
import os
import select
import signal
import subprocess
import time

import pytest

import helpers
from conftest import RECORDS, SEED


def loadgen(env, server, *args, name="lg", timeout=120):
    out = os.path.join(env.tmp, name + ".json")
    p = subprocess.run([helpers.binary("loadgen"), "--records", str(RECORDS),
                        "--seed", str(SEED), "--json", out, "--quiet",
                        "--distinct", "4096", *args],
                       stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                       timeout=timeout)
    r = None
    if os.path.exists(out):
        with open(out) as f:
            r = json.load(f)
        os.unlink(out)
    return p, r


@pytest.fixture(scope="module")
def need_loadgen():
    if not os.access(helpers.binary("loadgen"), os.X_OK):
        pytest.fail("loadgen is not built (make test builds it)")


@pytest.fixture(scope="module")
def deny_server(env):
    s = env.server(extra=["--merchant-default", "deny"], name="deny")
    try:
        yield s
    finally:
        s.stop()


@pytest.mark.parametrize("io", ["uring", "epoll"])
@pytest.mark.parametrize("proto,extra", [
    ("resp-check", ["--pipeline", "8"]),
    ("rpc", ["--batch", "10", "--pipeline", "2"]),
    ("resp-mcheck", ["--batch", "10", "--pipeline", "2"]),
])
def test_closed_loop_verifies(env, server, need_loadgen, io, proto, extra):
    port = server.rpc if proto == "rpc" else server.resp
    p, r = loadgen(env, server, "--proto", proto, "--port", str(port),
                   "--io", io, "--requests", "20000", "--warmup", "0",
                   "--server-pid", str(server.proc.pid), *extra)
    assert p.returncode == 0, p.stderr.decode()
    assert r["io"] == io
    assert r["wrong_checks"] == 0 and r["lost"] == 0
    assert r["requests"] >= 20000
    batch = int(extra[1]) if extra[0] == "--batch" else 1
    assert r["checks"] == r["requests"] * batch
    assert len(r["client_threads_busy"]) == 1
    assert 0 <= r["client_busy_max"] <= 1.5
    assert r["client_bound"] == (r["client_busy_max"] > r["busy_limit"])
    assert r["client_cpu_us_per_request"] > 0
    assert "server_cpu" in r and r["server_cpu"] >= 0


@pytest.mark.parametrize("io", ["uring", "epoll"])
def test_wrong_answers_caught(env, deny_server, need_loadgen, io):
    # --merchant-default deny answers every absent TACIR check wrongly for
    # the default policy loadgen expects: both clients must say so.
    p, r = loadgen(env, deny_server, "--proto", "rpc", "--port",
                   str(deny_server.rpc), "--io", io, "--hit-ratio", "0",
                   "--requests", "5000", "--warmup", "0", "--pipeline", "4")
    assert p.returncode == 1, p.stderr.decode()
    assert r["wrong_checks"] > 0
    assert b"WRONG ANSWER" in p.stderr


def test_open_loop_one_send_per_tick(env, server, need_loadgen):
    # 20000/s over 2 connections with 1 ms ticks: about ten requests fall
    # due on a connection per tick, and they go out in one send.
    p, r = loadgen(env, server, "--proto", "resp-check", "--port",
                   str(server.resp), "--rate", "20000", "--connections", "2",
                   "--tick-us", "1000", "--duration", "1", "--warmup", "0.2")
    assert p.returncode == 0, p.stderr.decode()
    assert r["open_loop"] and r["io"] == "uring" and r["tick_us"] == 1000
    assert r["wrong_checks"] == 0 and r["lost"] == 0
    assert r["sends_per_request"] < 0.5, r
    # Latency runs from the intended send time: a request waits up to a
    # tick for its send, so the median cannot be below a few microseconds.
    assert r["latency_us"]["p50"] > 0


def test_tls_needs_epoll(env, server, need_loadgen):
    p, _ = loadgen(env, server, "--proto", "resp-check", "--port",
                   str(server.resp), "--io", "uring", "--tls-ca", "/dev/null",
                   "--requests", "10")
    assert p.returncode == 2
    assert b"--tls-ca runs over --io epoll" in p.stderr


def test_phases(env, server, need_loadgen):
    out = os.path.join(env.tmp, "phases.json")
    proc = subprocess.Popen([helpers.binary("loadgen"), "--records", str(RECORDS),
                             "--seed", str(SEED), "--proto", "rpc", "--port",
                             str(server.rpc), "--rate", "5000", "--phases",
                             "--warmup", "0", "--duration", "60", "--distinct",
                             "4096", "--json", out],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        # The handlers are installed before the requests are prepared:
        # once loadgen says they are, signals open windows.
        deadline = time.monotonic() + 30
        err = b""
        while b"prepared" not in err:
            left = deadline - time.monotonic()
            assert left > 0, "loadgen never said its requests were prepared"
            ready, _, _ = select.select([proc.stderr], [], [], left)
            if ready:
                chunk = os.read(proc.stderr.fileno(), 4096)
                assert chunk, "loadgen ended early"
                err += chunk
        # Each window gets load: the server's own count of checks says
        # when loadgen's requests are being answered.
        def answered_more(n):
            base = helpers.checks_total(server.metrics())
            end = time.monotonic() + 30
            while helpers.checks_total(server.metrics()) < base + n:
                assert time.monotonic() < end, "no checks answered"
                assert proc.poll() is None, "loadgen ended early"
                time.sleep(0.02)
        answered_more(200)
        proc.send_signal(signal.SIGUSR1)
        answered_more(200)
        proc.send_signal(signal.SIGUSR2)
        rc = proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert rc == 0
    with open(out) as f:
        r = json.load(f)
    phases = r["phases"]
    assert [p["phase"] for p in phases] == [0, 1]
    assert phases[1]["start_s"] >= 0
    assert sum(p["requests"] for p in phases) == r["requests"]
    # SIGUSR2 ended a 60 s run early.
    assert r["seconds"] < 30


def test_gen_new_keys_are_absent(env):
    path = os.path.join(env.tmp, "new-keys.bin")
    helpers.run([helpers.binary("consentctl"), "gen", "--records", str(RECORDS),
                 "--seed", str(SEED), "--new-keys", "50", "--from-sequence",
                 "10", "--out", path])
    header, consents, trailer = helpers.read_stream(env.pb, path)
    assert header.changes and trailer.record_count == 50
    assert [c.sequence for c in consents] == list(range(11, 61))
    keys = {(c.brand_code, c.recipient, c.recipient_type, c.channel)
            for c in consents}
    assert len(keys) == 50
    for c in consents:
        assert c.recipient.startswith("+1") and len(c.recipient) == 12
        assert c.status == helpers.ONAY and c.channel == helpers.MESAJ
    assert not keys & set(env.oracle.records)
