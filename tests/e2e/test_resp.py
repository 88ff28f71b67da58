"""The Redis protocol (DESIGN 3.3) with clients nobody here wrote:
python3-redis, redis-cli and redis-benchmark."""

import random
import subprocess

import pytest
import redis

import helpers
from helpers import (MESAJ, EPOSTA, BIREYSEL, TACIR, BILGILENDIRME,
                     CHANNEL_NAMES, RTYPE_NAMES, REASON_NAMES,
                     STATUS_NAMES, Resp, RespError)


@pytest.fixture
def r(server):
    c = redis.Redis(host=helpers.LOOPBACK, port=server.resp, socket_timeout=10,
                    decode_responses=True)
    yield c
    c.close()


def expected_reply(exp):
    """CHECK's reply for a model verdict: [allow, reason, status|None,
    date|None]."""
    return [1 if exp.allow else 0, REASON_NAMES[exp.reason],
            STATUS_NAMES[exp.status] if exp.status else None,
            exp.date if exp.status else None]


def sample_keys(o, n, seed):
    keys = sorted(o.records)
    random.Random(seed).shuffle(keys)
    return keys[:n]


def test_check(env, r):
    o = env.oracle
    absent = o.absent_brand()
    for i, (brand, rec, rtype, channel) in enumerate(sample_keys(o, 60, 1)):
        args = [rec, brand, CHANNEL_NAMES[channel]]
        if rtype == TACIR or i % 3 == 0:
            args.append(RTYPE_NAMES[rtype])
        exp = o.expect(rec, brand, channel, rtype)
        got = r.execute_command("CHECK", *args)
        assert got == expected_reply(exp), "CHECK %s: %r, want %r" % (args, got, exp)
        # Both optional arguments, lower-case names (parsing is
        # case-insensitive), an absent brand.
        got = r.execute_command("CHECK", rec, brand, CHANNEL_NAMES[channel].lower(),
                                RTYPE_NAMES[rtype], "BILGILENDIRME")
        exp = o.expect(rec, brand, channel, rtype, BILGILENDIRME)
        assert got == expected_reply(exp), "CHECK %s BILGILENDIRME: %r" % (args, got)
        got = r.execute_command("CHECK", rec, absent, CHANNEL_NAMES[channel],
                                RTYPE_NAMES[rtype], "TICARI")
        exp = o.expect(rec, absent, channel, rtype)
        assert got == expected_reply(exp), "CHECK absent brand %s: %r" % (args, got)


def test_check_invalid(env, r):
    o = env.oracle
    brand, rec, _, _ = o.find(email=False, channel=MESAJ)[0]
    for args in ([rec, brand, "EPOSTA"], ["not-a-number", brand, "MESAJ"],
                 [rec, 0, "MESAJ"], [rec, brand, "FAKS"],
                 [rec, brand, "MESAJ", "KURUM"],
                 [rec, brand, "MESAJ", "BIREYSEL", "REKLAM"]):
        try:
            got = r.execute_command("CHECK", *args)
        except redis.ResponseError:
            continue  # an error reply is a fine answer to a malformed check
        assert got[0] == 0 and got[1] == "INVALID_REQUEST", \
            "CHECK %s: %r" % (args, got)
    for args in ([], [rec], [rec, brand]):
        with pytest.raises(redis.ResponseError):
            r.execute_command("CHECK", *args)
    assert r.ping() is True


def test_mcheck(env, r):
    o = env.oracle
    for channel, rtype in ((MESAJ, BIREYSEL), (EPOSTA, TACIR)):
        keys = [k for k in o.find(channel=channel, rtype=rtype)]
        brand = keys[0][0]
        recs = [k[1] for k in keys if k[0] == brand][:20]
        recs += ["+905990000001" if channel == MESAJ else "nobody@example.invalid"]
        bad_at = len(recs) // 2
        bad = "not a recipient" if channel == MESAJ else "no-at-sign"
        recs.insert(bad_at, bad)
        for purpose in ("TICARI", "BILGILENDIRME"):
            got = r.execute_command("MCHECK", brand, CHANNEL_NAMES[channel],
                                    RTYPE_NAMES[rtype], purpose, *recs)
            assert isinstance(got, list) and len(got) == len(recs)
            pval = BILGILENDIRME if purpose == "BILGILENDIRME" else 1
            for i, (rec, g) in enumerate(zip(recs, got)):
                if i == bad_at:
                    assert isinstance(g, redis.ResponseError), \
                        "MCHECK: invalid recipient answered %r" % (g,)
                    continue
                exp = o.expect(rec, brand, channel, rtype, pval)
                assert g == (1 if exp.allow else 0), \
                    "MCHECK %s #%d %s: %r, want %r" % (purpose, i, rec, g, exp)


def test_ping_info_unknown_quit(env, server, r):
    assert r.ping() is True
    with Resp(server.resp) as c:
        assert c.cmd("PING") == "PONG"
        info = c.cmd("INFO")
        assert isinstance(info, str) and info, "INFO: %r" % (info,)
        assert "records" in info.lower(), "INFO does not mention records: %r" % info
        assert str(len(env.oracle)) in info, "INFO lacks the record count"
        err = c.cmd("FLUSHALL")
        assert isinstance(err, RespError) and err.startswith("ERR"), err
        err = c.cmd("GET", "x")
        assert isinstance(err, RespError) and err.startswith("ERR"), err
        # Still usable after the errors.
        k = sorted(env.oracle.records)[0]
        got = c.cmd("CHECK", k[1], k[0], CHANNEL_NAMES[k[3]], RTYPE_NAMES[k[2]])
        assert got == expected_reply(env.oracle.expect(k[1], k[0], k[3], k[2]))
        assert c.cmd("PING") == "PONG"
        assert c.cmd("QUIT") == "OK"
        closed, data = helpers.wait_closed(c.sock, 5)
        assert closed and data == b"", "QUIT did not close the connection"
    # The redis-py connection is unaffected by the other one.
    assert isinstance(r.info(), dict)


def test_pipelined_commands(env, server):
    """Many commands in one write, replies in order."""
    o = env.oracle
    keys = sample_keys(o, 300, 7)
    with Resp(server.resp) as c:
        data = b"".join(helpers.resp_encode("CHECK", k[1], k[0], CHANNEL_NAMES[k[3]],
                                            RTYPE_NAMES[k[2]]) for k in keys)
        c.send_raw(data + helpers.resp_encode("PING"))
        for k in keys:
            assert c.read() == expected_reply(o.expect(k[1], k[0], k[3], k[2]))
        assert c.read() == "PONG"


def test_redis_py_pipeline(env, r):
    o = env.oracle
    keys = sample_keys(o, 100, 8)
    p = r.pipeline(transaction=False)
    for k in keys:
        p.execute_command("CHECK", k[1], k[0], CHANNEL_NAMES[k[3]], RTYPE_NAMES[k[2]])
    for k, got in zip(keys, p.execute()):
        assert got == expected_reply(o.expect(k[1], k[0], k[3], k[2]))


def redis_cli(server, *args, timeout=20):
    p = subprocess.run(["redis-cli", "-h", helpers.LOOPBACK, "-p", str(server.resp)] +
                       [str(a) for a in args], stdout=subprocess.PIPE,
                       stderr=subprocess.PIPE, timeout=timeout,
                       stdin=subprocess.DEVNULL)
    return p.returncode, p.stdout.decode(), p.stderr.decode()


def test_redis_cli(env, server):
    o = env.oracle
    onay = o.find(status=helpers.ONAY, email=False, rtype=BIREYSEL)[0]
    brand, rec, rtype, channel = onay
    rc, out, err = redis_cli(server, "CHECK", rec, brand, CHANNEL_NAMES[channel])
    assert rc == 0, err
    exp = o.expect(rec, brand, channel, rtype)
    assert out.split("\n")[:4] == ["1", "CONSENT_GIVEN", "ONAY", str(exp.date)], out
    rc, out, err = redis_cli(server, "--no-raw", "CHECK", rec, o.absent_brand(),
                             CHANNEL_NAMES[channel])
    assert rc == 0, err
    lines = out.strip().split("\n")
    assert lines[0].endswith("(integer) 0") and "NO_CONSENT" in lines[1], out
    assert "(nil)" in lines[2] and "(nil)" in lines[3], out
    rc, out, err = redis_cli(server, "PING")
    assert rc == 0 and out.strip() == "PONG", (out, err)
    rc, out, err = redis_cli(server, "INFO")
    assert rc == 0 and out.strip(), (out, err)
    rc, out, err = redis_cli(server, "NOSUCHCOMMAND", "x")
    assert "ERR" in out + err, (out, err)
    other = "+905990000001"
    rc, out, err = redis_cli(server, "MCHECK", brand, CHANNEL_NAMES[channel],
                             "BIREYSEL", "TICARI", rec, other)
    want = ["1" if o.expect(x, brand, channel).allow else "0" for x in (rec, other)]
    assert rc == 0 and out.split("\n")[:2] == want, (out, err)


def test_redis_benchmark(env, server):
    o = env.oracle
    brand, rec, rtype, channel = o.find(status=helpers.ONAY, email=False,
                                        rtype=BIREYSEL, channel=MESAJ)[0]
    before = server.metrics()
    p = subprocess.run(["redis-benchmark", "-h", helpers.LOOPBACK, "-p",
                        str(server.resp), "-n", "2000", "-P", "8", "-q",
                        "CHECK", rec, str(brand), "MESAJ"],
                       stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                       timeout=90, stdin=subprocess.DEVNULL)
    out = p.stdout.decode(errors="replace") + p.stderr.decode(errors="replace")
    assert p.returncode == 0, "redis-benchmark exited %d: %s" % (p.returncode, out)
    assert "requests per second" in out, out
    after = server.metrics()
    n = helpers.checks_total(after) - helpers.checks_total(before)
    assert n >= 2000, "redis-benchmark's 2000 CHECKs counted as %d" % n
    # The server still answers right after 50 benchmark clients left.
    c = redis.Redis(host=helpers.LOOPBACK, port=server.resp, socket_timeout=10,
                    decode_responses=True)
    try:
        exp = o.expect(rec, brand, channel, rtype)
        assert c.execute_command("CHECK", rec, brand, "MESAJ") == expected_reply(exp)
    finally:
        c.close()
