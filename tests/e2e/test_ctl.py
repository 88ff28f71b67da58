"""consentctl's offline tools (DESIGN 3.6) against the same oracle: check
decides like the model, dump gives back exactly the generated records,
verify accepts a whole data directory and refuses a damaged one, and gen is
deterministic."""

import datetime
import filecmp
import os
import random
import shutil
import subprocess

import helpers
from helpers import CHANNEL_NAMES, RTYPE_NAMES, PURPOSE_NAMES, REASON_NAMES


def ctl(*args, check=True):
    p = subprocess.run([helpers.binary("consentctl")] + [str(a) for a in args],
                       stdout=subprocess.PIPE, stderr=subprocess.PIPE, timeout=60)
    if check:
        assert p.returncode == 0, "consentctl %s: exit %d\n%s" % (
            " ".join(map(str, args)), p.returncode, p.stderr.decode())
    return p


def expected_line(pb, exp):
    words = ["allow" if exp.allow else "deny", REASON_NAMES[exp.reason]]
    if exp.status:
        date = datetime.datetime.fromtimestamp(exp.date, datetime.timezone.utc)
        words += [helpers.STATUS_NAMES[exp.status], pb.Source.Name(exp.source),
                  date.strftime("%Y-%m-%dT%H:%M:%SZ")]
    return " ".join(words)


def test_check_matches_the_model(env):
    o, pb = env.oracle, env.pb
    d = env.data_dir()
    keys = sorted(o.records)
    random.Random(8).shuffle(keys)
    absent = o.absent_brand()
    cases = []
    for i, k in enumerate(keys[:24]):
        brand, rec, rtype, channel = k
        purpose = helpers.BILGILENDIRME if i % 6 == 5 else 0
        if i % 4 == 3:
            brand = absent
        cases.append((rec, brand, channel, rtype, purpose))
    for rec, brand, channel, rtype, purpose in cases:
        args = ["check", d, rec, brand, CHANNEL_NAMES[channel], RTYPE_NAMES[rtype]]
        if purpose:
            args.append(PURPOSE_NAMES[purpose])
        out = ctl(*args).stdout.decode().strip()
        exp = o.expect(rec, brand, channel, rtype, purpose)
        assert out == expected_line(pb, exp), "%s: %r, want %r" % (args, out, exp)
    out = ctl("check", d, "12345", keys[0][0], "MESAJ").stdout.decode()
    assert out.startswith("deny INVALID_REQUEST: "), out


def test_dump_round_trip(env):
    o, pb = env.oracle, env.pb
    d = env.data_dir()
    out = os.path.join(env.tmp, "dump.bin")
    ctl("dump", d, "--out", out)
    header, consents, trailer = helpers.read_stream(pb, out)
    assert trailer is not None and trailer.record_count == len(consents)
    got = {(c.brand_code, c.recipient, c.recipient_type, c.channel):
           (c.status, c.consent_date, c.source) for c in consents}
    assert len(got) == len(consents), "dump repeats keys"
    assert got == o.records, "dump differs from the generated records " \
        "(%d vs %d)" % (len(got), len(o.records))
    # The dump builds a data directory of its own.
    d2 = os.path.join(env.tmp, "from-dump")
    ctl("build", "--snapshot", out, "--out", d2)
    ctl("verify", d2)
    shutil.rmtree(d2)
    os.unlink(out)


def test_verify_refuses_damage(env):
    d = env.data_dir()
    ctl("verify", d)
    gens = sorted(g for g in os.listdir(d) if g.startswith("gen-"))
    assert gens, "no generation in %s" % d
    index = os.path.join(d, gens[-1], "index")
    size = os.path.getsize(index)
    with open(index, "r+b") as f:
        f.seek(size // 2)
        b = f.read(1)
        f.seek(size // 2)
        f.write(bytes([b[0] ^ 0x40]))
    p = ctl("verify", d, check=False)
    assert p.returncode != 0, "verify accepted a flipped bit in %s" % index
    shutil.rmtree(d)


def test_gen_is_deterministic(env):
    a = os.path.join(env.tmp, "gen-a.bin")
    ctl("gen", "--records", 3000, "--seed", 7, "--out", a)
    b = os.path.join(env.tmp, "gen-b.bin")
    ctl("gen", "--records", 3000, "--seed", 7, "--out", b)
    assert filecmp.cmp(a, b, shallow=False), "same seed, different snapshots"
    ctl("gen", "--records", 3000, "--seed", 8, "--out", b)
    assert not filecmp.cmp(a, b, shallow=False), "seed ignored"
    os.unlink(a)
    os.unlink(b)


def test_gen_threads_make_the_same_bytes(env):
    # Blocks are 16384 records: 40000 is two whole blocks and a part, so
    # packers finish out of order and the writer must put them back.
    one = os.path.join(env.tmp, "gen-t1.bin")
    ctl("gen", "--records", 40000, "--seed", 5, "--threads", 1, "--out", one)
    for t in (2, 3, 7):
        many = os.path.join(env.tmp, "gen-t%d.bin" % t)
        ctl("gen", "--records", 40000, "--seed", 5, "--threads", t,
            "--out", many)
        assert filecmp.cmp(one, many, shallow=False), \
            "--threads %d made other bytes than --threads 1" % t
        os.unlink(many)
    dflt = os.path.join(env.tmp, "gen-tdefault.bin")
    ctl("gen", "--records", 40000, "--seed", 5, "--out", dflt)
    assert filecmp.cmp(one, dflt, shallow=False), \
        "the default --threads made other bytes than --threads 1"
    os.unlink(dflt)
    os.unlink(one)
    p = ctl("gen", "--records", 10, "--threads", 0, "--out", one, check=False)
    assert p.returncode == 2, "--threads 0 accepted"
