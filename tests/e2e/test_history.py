"""The evidence store (DESIGN 10) end to end, against real consentd
processes: random histories applied through origins (DESIGN 8) and checked
against a reference model written here (DESIGN 2's order rule, 1.3's
decision table, 10's as-of rules and chain), on every port (framed RPC with
Google's protobuf runtime, RESP with redis-py, HTTP with http.client, gRPC
with grpcio), before and after a restart; consentctl audit against damaged
copies; two data directories fed the same stream; partners; as-of before the
history's start and with --history off; consentctl receipt.

The model knows nothing of consentd's code: the chain is recomputed here
with hashlib over the Consent bytes Google's runtime serializes (fields in
field-number order, sequence set to the record's), so a head the server
reports is checked against an independent computation, not against itself.

CONSENTD_HISTORY_SEED fixes the random history's seed (printed with every
failure); by default one fixed seed and one fresh seed run."""

import base64
import ctypes
import hashlib
import json
import os
import random
import re
import shutil
import signal
import subprocess
import time
import urllib.parse

import pytest
import redis

import helpers
from helpers import (ARAMA, MESAJ, EPOSTA, BIREYSEL, TACIR, ONAY, RET, Rpc,
                     CONSENT_GIVEN, CONSENT_REJECTED, NO_CONSENT,
                     MERCHANT_NO_REJECTION, INVALID_REQUEST, NOT_AUTHORIZED,
                     CHANNEL_NAMES, RTYPE_NAMES, STATUS_NAMES, REASON_NAMES)
import test_changes as tc

CLOCK0 = 1767214800          # consentctl gen's "now" (2026-01-01 00:00 +03)
DATE_MIN = 1430427600        # 2015-05-01 00:00:00 Turkey time
ZERO = b"\0" * 32
SOURCES = list(range(1, 14)) + list(range(32, 41))
SOURCE_NAMES = {1: "HS_FIZIKSEL_ORTAM", 2: "HS_ISLAK_IMZA", 3: "HS_ETKINLIK",
                4: "HS_ATM", 5: "HS_EORTAM", 6: "HS_WEB", 7: "HS_MOBIL",
                8: "HS_MESAJ", 9: "HS_EPOSTA", 10: "HS_CAGRI_MERKEZI",
                11: "HS_SOSYAL_MEDYA", 12: "HS_2015", 13: "HS_KARAR",
                32: "IYS_3338", 33: "IYS_CM", 34: "IYS_WEB", 35: "IYS_WEB_YENI",
                36: "IYS_MOBIL", 37: "IYS_KISA_LINK", 38: "IYS_KISAMESAJ",
                39: "IYS_EPOSTA", 40: "IYS_AHS_HAT_KAPATMA"}
WAIT = 30.0                   # every poll's deadline, seconds


def ctl(*args, check=True, timeout=120):
    return tc.ctl(*args, check=check, timeout=timeout)


# --- streams written here (a snapshot needs its XXH3-64 trailer) -------------

_xxh = None


def xxh3_64(data):
    """XXH3-64 by libxxhash (the library consentd links; DESIGN 3.5)."""
    global _xxh
    if _xxh is None:
        _xxh = ctypes.CDLL("libxxhash.so.0")
        _xxh.XXH3_64bits.restype = ctypes.c_uint64
        _xxh.XXH3_64bits.argtypes = (ctypes.c_char_p, ctypes.c_size_t)
    return _xxh.XXH3_64bits(data, len(data))


def frame(b):
    return tc.varint(len(b)) + b


def write_snapshot(pb, path, watermark, consents):
    """A snapshot stream (header at `watermark`, batches, trailer)."""
    out = bytearray()
    h = pb.StreamFrame()
    h.header.format_version = 1
    h.header.sequence = watermark
    h.header.created_at = CLOCK0
    h.header.origin = "test_history"
    out += frame(h.SerializeToString())
    for i in range(0, len(consents), 100):
        fr = pb.StreamFrame()
        fr.batch.consents.extend(consents[i:i + 100])
        out += frame(fr.SerializeToString())
    t = pb.StreamFrame()
    t.trailer.record_count = len(consents)
    t.trailer.checksum = xxh3_64(bytes(out))
    out += frame(t.SerializeToString())
    with open(path, "wb") as f:
        f.write(out)


# --- the reference model -------------------------------------------------------

def key_of(c):
    return (c.brand_code, c.recipient, c.recipient_type, c.channel)


def rank(c):
    """DESIGN 2: a newer consent_date wins; at an equal date RET beats ONAY,
    then the higher source (the index's order of sources)."""
    return (c.consent_date, c.status == RET, tc.src_code(c.source))


class Model:
    """Every record the history must hold, in log order, and what follows
    from them: the fold of a key's records under the order rule (as of a
    sequence, as of a time), the verdict, and the SHA-256 chain."""

    def __init__(self, pb):
        self.pb = pb
        self.records = []        # (seq, Consent with sequence set, applied_at bounds)
        self.by_key = {}         # key -> [index into records]
        self.chain = []          # chain after each record
        self.first = None

    def add(self, seq, consent, when=(0, 0)):
        c = self.pb.Consent()
        c.CopyFrom(consent)
        c.sequence = seq
        assert not self.records or seq >= self.records[-1][0]
        if self.first is None:
            self.first = seq
        prev = self.chain[-1] if self.chain else ZERO
        # DESIGN 10: fields in field-number order (Google's runtime writes
        # them so), sequence set to n.
        self.chain.append(hashlib.sha256(
            prev + c.SerializeToString(deterministic=True)).digest())
        self.by_key.setdefault(key_of(c), []).append(len(self.records))
        self.records.append((seq, c, when))

    @property
    def last(self):
        return self.records[-1][0] if self.records else 0

    def head_at(self, seq):
        """The chain after the last record with sequence <= seq."""
        h = None
        for (s, _, _), ch in zip(self.records, self.chain):
            if s > seq:
                break
            h = ch
        return h

    def entries(self, key):
        return [self.records[i] + (self.chain[i],) for i in self.by_key.get(key, [])]

    @staticmethod
    def fold(recs):
        best = None
        for c in recs:
            if best is None or rank(c) > rank(best):
                best = c
        return best

    def at_seq(self, key, seq):
        return self.fold(self.records[i][1] for i in self.by_key.get(key, [])
                         if self.records[i][0] <= seq)

    def at_time(self, key, t):
        return self.fold(self.records[i][1] for i in self.by_key.get(key, [])
                         if self.records[i][1].consent_date <= t)

    @staticmethod
    def verdict(key, rec):
        """(allow, reason, status, source, consent_date, sequence,
        transaction_id) by DESIGN 1.3 (purpose TICARI, merchant allow)."""
        if rec is None:
            if key[2] == TACIR:
                return (True, MERCHANT_NO_REJECTION, 0, 0, 0, 0, "")
            return (False, NO_CONSENT, 0, 0, 0, 0, "")
        allow = rec.status == ONAY
        return (allow, CONSENT_GIVEN if allow else CONSENT_REJECTED, rec.status,
                rec.source, rec.consent_date, rec.sequence, rec.transaction_id)


def vtuple(v):
    return (v.allow, v.reason, v.status, v.source, v.consent_date, v.sequence,
            v.transaction_id)


# --- a random history, applied through origins --------------------------------

class History:
    """A random history over a small base snapshot (with a watermark > 0):
    flips, older dates (skipped), equal dates (RET over ONAY, then the
    higher source), identical values (skipped), new keys, the same key twice
    in one batch, and replays (a batch sent again with its old cursor: a 409,
    nothing applied), in Applies of 1-6 changes."""

    def __init__(self, pb, seed, tmp):
        self.pb = pb
        self.seed = seed
        self.rng = random.Random(seed)
        self.model = Model(pb)
        self.tmp = tmp
        self.n_tx = 0
        self.cursor = ""
        self.n_cursor = 0
        self.last_batch = None
        self.watermark = self.rng.randint(1000, 5000)
        self.keys = []
        self.base = []
        brands = [self.rng.randint(100000, 99999999) for _ in range(3)]
        self.brands = brands
        for i in range(40):
            key = self.new_key(i)
            c = pb.Consent(recipient=key[1], channel=key[3],
                           recipient_type=key[2], brand_code=key[0],
                           iys_code=self.rng.randint(1, 999999),
                           status=self.rng.choice((ONAY, ONAY, RET)),
                           source=self.rng.choice(SOURCES),
                           consent_date=self.rng.randint(DATE_MIN, CLOCK0 - 86400),
                           transaction_id="snap-%d" % i)
            c.creation_date = c.consent_date + self.rng.randint(0, 86400)
            self.base.append(c)
            self.keys.append(key)
        # A key the snapshot holds twice (the builder keeps the higher
        # rank; the history holds both, in stream order).
        dup = pb.Consent()
        dup.CopyFrom(self.base[0])
        dup.consent_date -= 1
        dup.transaction_id = "snap-dup"
        self.base.append(dup)
        self.snapshot = os.path.join(tmp, "hist-base-%d.bin" % seed)
        write_snapshot(pb, self.snapshot, self.watermark, self.base)

    def new_key(self, i):
        brand = self.rng.choice(self.brands)
        rtype = self.rng.choice((BIREYSEL, TACIR))
        if self.rng.random() < 0.6:
            return (brand, "+90532%07d" % self.rng.randint(0, 9999999), rtype,
                    self.rng.choice((ARAMA, MESAJ)))
        return (brand, "h%d.%d@evidence.example" % (self.seed % 100000, i),
                rtype, EPOSTA)

    def ingest_base(self, when):
        for c in self.base:
            self.model.add(self.watermark, c, when)

    def current(self, key):
        return self.model.at_seq(key, 1 << 62)

    def change(self, pending):
        """One random change (a Consent, sequence 0)."""
        r = self.rng.random()
        self.n_tx += 1
        if r < 0.15:
            key = self.new_key(1000 + self.n_tx)
            if key in self.keys:
                return None
            self.keys.append(key)
            st, date, src = ONAY, CLOCK0 + self.n_tx * 60, self.rng.choice(SOURCES)
        else:
            key = self.rng.choice(self.keys[-25:] if self.rng.random() < 0.5
                                  else self.keys)
            cur = pending.get(key) or self.current(key)
            cst, cdate, csrc = ((cur.status, cur.consent_date, cur.source)
                                if cur is not None else (ONAY, CLOCK0, 6))
            if r < 0.50:   # a flip, newer
                st, date, src = (RET if cst == ONAY else ONAY,
                                 cdate + self.rng.randint(1, 100000),
                                 self.rng.choice(SOURCES))
            elif r < 0.62:  # older: skipped, but evidence
                st, date, src = (self.rng.choice((ONAY, RET)),
                                 max(DATE_MIN, cdate - self.rng.randint(1, 10 ** 6)),
                                 self.rng.choice(SOURCES))
            elif r < 0.74:  # an equal date, the other status
                st, date, src = (RET if cst == ONAY else ONAY, cdate,
                                 self.rng.choice(SOURCES))
            elif r < 0.86:  # an equal date and status, another source
                st, date, src = cst, cdate, self.rng.choice(SOURCES)
            else:           # the identical value again: skipped
                st, date, src = cst, cdate, csrc
        c = self.pb.Consent(recipient=key[1], channel=key[3],
                            recipient_type=key[2], brand_code=key[0],
                            iys_code=self.rng.randint(0, 999999), status=st,
                            source=src, consent_date=date,
                            creation_date=date + self.rng.randint(0, 3600),
                            transaction_id="tx-%d-%d" % (self.seed % 1000, self.n_tx))
        pending[key] = c if (key not in pending or rank(c) > rank(pending[key])) \
            else pending[key]
        return c

    def batch(self):
        pending = {}
        out = []
        n = self.rng.randint(1, 6)
        while len(out) < n:
            c = self.change(pending)
            if c is not None:
                out.append(c)
        if self.rng.random() < 0.1 and out:
            out.append(out[0])   # the same change twice in one Apply
        return out

    def apply(self, rpc, settle=None):
        """One Apply (or a replay refused with 409). Returns the
        applied_sequence after it. settle(a), when given, waits for the
        history to hold the Apply (it is appended after the change log is
        durable, maybe after the reply): the changes' applied_at lies
        between the send and its return."""
        pb = self.pb
        if self.last_batch is not None and self.rng.random() < 0.08:
            before, changes, _ = self.last_batch
            r = rpc.call(self.request(changes, before, "x"))
            assert r.WhichOneof("body") == "error" and r.error.code == 409, \
                "seed %d: a replayed batch was not refused: %s" % (self.seed, r)
            return self.model.last
        changes = self.batch()
        self.n_cursor += 1
        nxt = "c%d" % self.n_cursor
        deadline = time.monotonic() + WAIT
        while True:
            t0 = time.time()
            r = rpc.call(self.request(changes, self.cursor, nxt))
            t1 = time.time()
            # /readyz turns 200 when the first generation is served, a
            # moment before the writer takes Applies (writer_take_now
            # publishes the index, then sets has_index): a 503 saying so
            # is asked again.
            if r.WhichOneof("body") == "error" and r.error.code == 503 and \
                    "no generation is loaded yet" in r.error.message and \
                    time.monotonic() < deadline:
                time.sleep(0.01)
                continue
            break
        assert r.WhichOneof("body") == "apply", "seed %d: %s" % (self.seed, r)
        a = r.apply
        assert a.applied + a.skipped == len(changes), (self.seed, a)
        if settle is not None:
            settle(a.applied_sequence)
            t1 = time.time()
        first = a.applied_sequence - len(changes) + 1
        assert first == self.model.last + 1, \
            "seed %d: Apply of %d changes ends at %d, the log was at %d" % (
                self.seed, len(changes), a.applied_sequence, self.model.last)
        for i, c in enumerate(changes):
            self.model.add(first + i, c, (int(t0) - 1, int(t1) + 1))
        self.last_batch = (self.cursor, changes, nxt)
        self.cursor = nxt
        return a.applied_sequence

    def request(self, changes, after, cursor):
        req = self.pb.Request()
        for c in changes:
            req.apply.changes.add().CopyFrom(c)
        req.apply.origin = "test:history"
        req.apply.after_cursor = after
        req.apply.cursor = cursor
        return req


# --- the ports --------------------------------------------------------------

def stats(pb, port):
    with Rpc(pb, port) as rpc:
        return rpc.stats()


def wait_head(pb, port, seq, what=""):
    """Polls Stats until the chain head reaches seq (the writer appends to
    history after the change log is durable): the head's (sequence, hash)."""
    deadline = time.monotonic() + WAIT
    while True:
        s = stats(pb, port)
        if s.chain_sequence >= seq:
            return s.chain_sequence, s.chain_hash
        assert time.monotonic() < deadline, \
            "%s: chain head at %d, not %d, after %.0f s: %s" % (
                what, s.chain_sequence, seq, WAIT, s)
        time.sleep(0.01)


def asof_check(key, seq=0, t=0):
    return dict(recipient=key[1], brand_code=key[0], channel=key[3],
                recipient_type=key[2], as_of_sequence=seq, as_of_time=t)


def rpc_history(pb, rpc, key):
    req = pb.Request()
    req.history.recipient = key[1]
    req.history.brand_code = key[0]
    req.history.channel = key[3]
    req.history.recipient_type = key[2]
    return rpc.call(req)


def entry_tuple(c):
    return (c.sequence, c.status, c.source, c.consent_date, c.creation_date,
            c.transaction_id)


def want_entries(model, key):
    return [entry_tuple(c) for _, c, _ in
            (model.records[i] for i in model.by_key.get(key, []))]


def check_all_sequences(pb, port, model, keys, what, seed):
    """as_of_sequence at every sequence the history holds, for every key:
    the model's verdict, with the deciding change's sequence and
    transaction_id. Returns the number of checks."""
    seqs = sorted({s for s, _, _ in model.records})
    todo = [(k, s) for s in range(seqs[0], seqs[-1] + 1) for k in keys]
    with Rpc(pb, port) as rpc:
        for i in range(0, len(todo), 400):
            part = todo[i:i + 400]
            resp = rpc.check([asof_check(k, seq=s) for k, s in part])
            for (k, s), v in zip(part, resp.verdicts):
                want = Model.verdict(k, model.at_seq(k, s))
                assert vtuple(v) == want and not v.error, \
                    "seed %d, %s: %s as of sequence %d: got %s, model %s%s" % (
                        seed, what, k, s, vtuple(v), want,
                        " (%s)" % v.error if v.error else "")
    return len(todo)


def time_points(model, keys, rng, n):
    """Times around the keys' consent dates (on, just before, just after),
    never before the oldest date the history holds."""
    lo = min(c.consent_date for _, c, _ in model.records)
    pts = []
    for _ in range(n):
        k = rng.choice(keys)
        idx = model.by_key.get(k)
        if idx:
            d = model.records[rng.choice(idx)][1].consent_date
            t = d + rng.choice((-1, 0, 0, 1, 3600))
        else:
            t = rng.randint(lo, CLOCK0 + 10 ** 7)
        pts.append((k, max(lo, t)))
    pts.append((keys[0], CLOCK0 + 10 ** 8))
    return pts


def check_times(pb, port, model, pts, what, seed):
    with Rpc(pb, port) as rpc:
        for i in range(0, len(pts), 400):
            part = pts[i:i + 400]
            resp = rpc.check([asof_check(k, t=t) for k, t in part])
            for (k, t), v in zip(part, resp.verdicts):
                want = Model.verdict(k, model.at_time(k, t))
                assert vtuple(v) == want and not v.error, \
                    "seed %d, %s: %s as of time %d: got %s, model %s%s" % (
                        seed, what, k, t, vtuple(v), want,
                        " (%s)" % v.error if v.error else "")


def decode_hash(x):
    """A chain hash in JSON: hex (64 digits) or base64 (proto3's JSON)."""
    if isinstance(x, str) and re.fullmatch(r"[0-9a-fA-F]{64}", x):
        return bytes.fromhex(x)
    return base64.b64decode(x)


def http_json(server, path, token=None):
    headers = {"Authorization": "Bearer " + token} if token else {}
    st, _, body = server.http_get(path, headers=headers)
    return st, body


def http_history_path(key):
    return "/v1/history?" + urllib.parse.urlencode(dict(
        recipient=key[1], brand_code=key[0], channel=CHANNEL_NAMES[key[3]],
        recipient_type=RTYPE_NAMES[key[2]]))


def http_check_path(key, **asof):
    q = dict(recipient=key[1], brand_code=key[0], channel=CHANNEL_NAMES[key[3]],
             recipient_type=RTYPE_NAMES[key[2]])
    q.update(asof)
    return "/v1/check?" + urllib.parse.urlencode(q)


def json_entry_tuple(e):
    c = e["consent"]
    return (c.get("sequence", 0), STATUS_CODE[c.get("status", "")],
            SOURCE_CODE[c.get("source", "")], c.get("consent_date", 0),
            c.get("creation_date", 0), c.get("transaction_id", ""))


STATUS_CODE = {"ONAY": ONAY, "RET": RET, "": 0, "STATUS_UNSPECIFIED": 0}
SOURCE_CODE = dict((v, k) for k, v in SOURCE_NAMES.items())
SOURCE_CODE.update({"": 0, "SOURCE_UNSPECIFIED": 0})
REASON_CODE = dict((v, k) for k, v in REASON_NAMES.items())


def json_vtuple(v):
    return (v["allow"], REASON_CODE[v["reason"]],
            STATUS_CODE[v.get("status", "")], SOURCE_CODE[v.get("source", "")],
            v.get("consent_date", 0), v.get("sequence", 0),
            v.get("transaction_id", ""))


def resp_text(x):
    return x.decode() if isinstance(x, bytes) else x


def check_histories(pb, server, model, keys, what, seed, ports=("rpc", "resp", "http")):
    """HISTORY of every key lists exactly the model's records, oldest
    first, with every field, on each port; each entry's chain hash is the
    model's chain after it, and its applied_at lies in the Apply's time."""
    r = redis.Redis(host=helpers.LOOPBACK, port=server.resp, socket_timeout=10)
    try:
        with Rpc(pb, server.rpc) as rpc:
            for k in keys:
                want = model.entries(k)
                wt = [entry_tuple(c) for _, c, _, _ in want]
                if "rpc" in ports:
                    resp = rpc_history(pb, rpc, k)
                    assert resp.WhichOneof("body") == "history", \
                        "seed %d, %s: History %s: %s" % (seed, what, k, resp)
                    h = resp.history
                    got = [entry_tuple(e.consent) for e in h.entries]
                    assert got == wt, "seed %d, %s: RPC History of %s:\n got %s\nwant %s" % (
                        seed, what, k, got, wt)
                    assert h.applied_sequence >= model.last, (seed, what, h.applied_sequence)
                    for e, (_, c, when, ch) in zip(h.entries, want):
                        full = pb.Consent()
                        full.CopyFrom(c)
                        assert e.consent == full, "seed %d, %s: %s entry %s != %s" % (
                            seed, what, k, e.consent, full)
                        assert e.chain_hash == ch, \
                            "seed %d, %s: %s sequence %d: chain %s, model %s" % (
                                seed, what, k, c.sequence, e.chain_hash.hex(), ch.hex())
                        assert when[0] <= e.applied_at <= when[1], \
                            "seed %d, %s: %s sequence %d applied_at %d outside %s" % (
                                seed, what, k, c.sequence, e.applied_at, when)
                if "resp" in ports:
                    got = r.execute_command("HISTORY", k[1], k[0], CHANNEL_NAMES[k[3]],
                                            RTYPE_NAMES[k[2]])
                    rows = [(int(x[0]), STATUS_CODE[resp_text(x[1])],
                             SOURCE_CODE[resp_text(x[2])], int(x[3]), int(x[4]),
                             resp_text(x[5]) or "") for x in got]
                    assert rows == wt, "seed %d, %s: RESP HISTORY of %s:\n got %s\nwant %s" % (
                        seed, what, k, rows, wt)
                    for x, (_, c, when, _) in zip(got, want):
                        assert when[0] <= int(x[6]) <= when[1], (seed, what, k, x, when)
                if "http" in ports:
                    st, body = http_json(server, http_history_path(k))
                    assert st == 200, (seed, what, k, st, body)
                    doc = json.loads(body)
                    got = [json_entry_tuple(e) for e in doc["entries"]]
                    assert got == wt, "seed %d, %s: /v1/history of %s:\n got %s\nwant %s" % (
                        seed, what, k, got, wt)
                    for e, (_, c, when, ch) in zip(doc["entries"], want):
                        assert decode_hash(e["chain_hash"]) == ch, (seed, what, k, e)
                        assert when[0] <= e["applied_at"] <= when[1], (seed, what, k, e)
    finally:
        r.close()


def check_ports_sample(pb, server, model, keys, rng, what, seed, n=60):
    """as-of on RESP (CHECK … ATSEQ n / AT unix) and HTTP (as_of_sequence=,
    as_of_time= on /v1/check) for a sample: the model's verdict."""
    seqs = sorted({s for s, _, _ in model.records})
    r = redis.Redis(host=helpers.LOOPBACK, port=server.resp, socket_timeout=10)
    try:
        for _ in range(n):
            k = rng.choice(keys)
            if rng.random() < 0.5:
                s = rng.randint(seqs[0], seqs[-1])
                want = Model.verdict(k, model.at_seq(k, s))
                opt, val, q = "ATSEQ", s, {"as_of_sequence": s}
            else:
                idx = model.by_key.get(k) or [0]
                t = model.records[rng.choice(idx)][1].consent_date + rng.choice((-1, 0, 1))
                want = Model.verdict(k, model.at_time(k, t))
                opt, val, q = "AT", t, {"as_of_time": t}
            got = r.execute_command("CHECK", k[1], k[0], CHANNEL_NAMES[k[3]],
                                    RTYPE_NAMES[k[2]], opt, val)
            head = [int(got[0]), resp_text(got[1]),
                    resp_text(got[2]) if got[2] is not None else None,
                    int(got[3]) if got[3] is not None else None]
            assert head == [1 if want[0] else 0, REASON_NAMES[want[1]],
                            STATUS_NAMES.get(want[2]), want[4] or None], \
                "seed %d, %s: RESP CHECK %s %s %d: %s, model %s" % (
                    seed, what, k, opt, val, got, want)
            st, body = http_json(server, http_check_path(k, **q))
            assert st == 200, (seed, what, k, q, st, body)
            v = json.loads(body)
            assert json_vtuple(v) == want, "seed %d, %s: HTTP %s %s: %s, model %s" % (
                seed, what, k, q, v, want)
    finally:
        r.close()


def check_grpc_sample(pb, stubs, server, model, keys, rng, what, seed, n=30):
    import grpc
    seqs = sorted({s for s, _, _ in model.records})
    ch = grpc.insecure_channel("127.0.0.1:%d" % server.grpc,
                               options=[("grpc.use_local_subchannel_pool", 1)])
    try:
        stub = stubs.ConsentServiceStub(ch)
        pts = [(rng.choice(keys), rng.randint(seqs[0], seqs[-1])) for _ in range(n)]
        req = pb.CheckRequest()
        for k, s in pts:
            req.checks.add(**asof_check(k, seq=s))
        resp = stub.Check(req, timeout=10)
        for (k, s), v in zip(pts, resp.verdicts):
            want = Model.verdict(k, model.at_seq(k, s))
            assert vtuple(v) == want, "seed %d, %s: gRPC %s as of %d: %s, model %s" % (
                seed, what, k, s, vtuple(v), want)
        for k in keys[:10]:
            h = stub.History(pb.HistoryRequest(recipient=k[1], brand_code=k[0],
                                               channel=k[3], recipient_type=k[2]),
                             timeout=10)
            assert [entry_tuple(e.consent) for e in h.entries] == want_entries(model, k), \
                "seed %d, %s: gRPC History of %s" % (seed, what, k)
    finally:
        ch.close()


def audit(*args, check=True):
    return ctl("audit", *args, check=check)


def audit_head(d):
    """consentctl audit head DIR: (sequence, 32-byte hash) from its output."""
    out = audit("head", d).stdout.decode()
    m = re.search(r"([0-9a-fA-F]{64})", out)
    assert m, "audit head printed no hash: %r" % out
    seqs = [int(x) for x in re.findall(r"(?<![0-9a-fA-F])(\d+)(?![0-9a-fA-F])",
                                       out.replace(m.group(1), " "))]
    assert seqs, "audit head printed no sequence: %r" % out
    return seqs[0], bytes.fromhex(m.group(1))


# --- fixtures ----------------------------------------------------------------

@pytest.fixture(scope="module")
def stubs(env):
    """consent_pb2_grpc (its messages are env.pb)."""
    return helpers.grpc_stubs(env.tmp, "grpc-stubs-history")


def empty_dir(env, name):
    d = os.path.join(env.tmp, name)
    shutil.rmtree(d, ignore_errors=True)
    os.makedirs(d)
    return d


def start_fresh(env, hist, name, extra=()):
    """An empty data directory whose first generation is hist's snapshot
    (so the history starts with it, at its watermark)."""
    d = empty_dir(env, name)
    t0 = time.time()
    s = tc.start(d, os.path.join(env.tmp, name + ".log"),
                 ["--snapshot", hist.snapshot] + list(extra))
    t1 = time.time()
    return d, s, (int(t0) - 1, int(t1) + 1)


def seeds():
    if os.environ.get("CONSENTD_HISTORY_SEED"):
        return [int(os.environ["CONSENTD_HISTORY_SEED"])]
    return [20261208, int.from_bytes(os.urandom(4), "little")]


# --- the property -------------------------------------------------------------

@pytest.mark.parametrize("seed", seeds())
def test_random_history_matches_the_model(env, stubs, seed):
    """A random history through a real server: as-of every sequence, as-of
    sampled times, HISTORY of every key on RPC, RESP, HTTP and gRPC, the
    chain head after every Apply and every entry's chain hash, all equal to
    the model's; the same after a graceful restart (a generation written
    at the stop, the history reopened), after more changes on top, and
    after a kill -9 then (the generation plus the change log past it);
    consentctl audit verify passes on the stopped directory and audit head
    equals the server's last Stats head."""
    pb = env.pb
    hist = History(pb, seed, env.tmp)
    rng = random.Random(seed ^ 0x5eed)
    name = "hist-prop-%d" % seed
    d, s, when = start_fresh(env, hist, name)
    print("test_history seed %d (CONSENTD_HISTORY_SEED=%d to repeat)" % (seed, seed))
    try:
        hist.ingest_base(when)
        assert stats(pb, s.rpc).applied_sequence == hist.watermark, \
            "seed %d: the snapshot's watermark is not the applied sequence" % seed
        seq, head = wait_head(pb, s.rpc, hist.watermark, "seed %d, the snapshot" % seed)
        assert (seq, head) == (hist.watermark, hist.model.head_at(hist.watermark)), \
            "seed %d: head after the snapshot %d %s, model %d %s" % (
                seed, seq, head.hex(), hist.watermark,
                hist.model.head_at(hist.watermark).hex())
        with Rpc(pb, s.rpc) as rpc:
            for _ in range(150):
                a = hist.apply(rpc, lambda a: wait_head(pb, s.rpc, a, "seed %d" % seed))
                seq, head = wait_head(pb, s.rpc, a, "seed %d" % seed)
                assert seq == a and head == hist.model.head_at(a), \
                    "seed %d: Stats head %d %s after Apply to %d; model %s" % (
                        seed, seq, head.hex(), a, hist.model.head_at(a).hex())
        keys = list(hist.keys)
        n = check_all_sequences(pb, s.rpc, hist.model, keys, "live", seed)
        pts = time_points(hist.model, keys, rng, 300)
        check_times(pb, s.rpc, hist.model, pts, "live", seed)
        check_histories(pb, s, hist.model, keys, "live", seed)
        check_ports_sample(pb, s, hist.model, keys, rng, "live", seed)
        check_grpc_sample(pb, stubs, s, hist.model, keys, rng, "live", seed)
        last_stats = stats(pb, s.rpc)
    finally:
        tc.stop_ok(s)
    # Untouched: the audit passes and its head is the server's.
    audit("verify", d)
    assert audit_head(d) == (last_stats.chain_sequence, last_stats.chain_hash), \
        "seed %d: audit head %s, Stats %d %s" % (
            seed, audit_head(d), last_stats.chain_sequence, last_stats.chain_hash.hex())
    # Restarted: the same answers, then more changes on top of the chain.
    s = tc.start(d, os.path.join(env.tmp, name + ".log"), ports=s)
    try:
        assert wait_head(pb, s.rpc, hist.model.last, "seed %d restarted" % seed) == \
            (hist.model.last, hist.model.head_at(hist.model.last))
        check_all_sequences(pb, s.rpc, hist.model, keys, "restarted", seed)
        check_times(pb, s.rpc, hist.model, pts, "restarted", seed)
        check_histories(pb, s, hist.model, keys, "restarted", seed)
        with Rpc(pb, s.rpc) as rpc:
            for _ in range(40):
                a = hist.apply(rpc, lambda a: wait_head(pb, s.rpc, a, "seed %d" % seed))
                seq, head = wait_head(pb, s.rpc, a, "seed %d after restart" % seed)
                assert (seq, head) == (a, hist.model.head_at(a)), seed
        keys = list(hist.keys)
        check_all_sequences(pb, s.rpc, hist.model, keys, "restarted+more", seed)
        check_histories(pb, s, hist.model, keys, "restarted+more", seed)
        check_ports_sample(pb, s, hist.model, keys, rng, "restarted+more", seed, n=20)
        # kill -9: the next start is the generation of the last stop plus
        # the change log past it.
        s.proc.send_signal(signal.SIGKILL)
        s.proc.wait(10)
    finally:
        s.kill()
    s = tc.start(d, os.path.join(env.tmp, name + ".log"), ports=s)
    try:
        assert wait_head(pb, s.rpc, hist.model.last, "seed %d killed" % seed) == \
            (hist.model.last, hist.model.head_at(hist.model.last))
        check_all_sequences(pb, s.rpc, hist.model, keys, "killed, restarted", seed)
        check_times(pb, s.rpc, hist.model, pts, "killed, restarted", seed)
        check_histories(pb, s, hist.model, keys, "killed, restarted", seed)
        last_stats = stats(pb, s.rpc)
    finally:
        tc.stop_ok(s)
    audit("verify", d)
    assert audit_head(d) == (last_stats.chain_sequence, last_stats.chain_hash)
    print("seed %d: %d records in history, %d as-of checks per pass, %d keys" % (
        seed, len(hist.model.records), n, len(keys)))


# --- damage: consentctl audit verify ------------------------------------------

def history_files(d):
    h = os.path.join(d, "history")
    return sorted(os.path.join(h, f) for f in os.listdir(h)
                  if os.path.isfile(os.path.join(h, f)))


def record_spans(path, model):
    """The byte spans of the records of a history file, found without
    reading consentd's code: each record holds its Consent's canonical
    bytes (sequence set), so their offsets are found by search, and the
    bytes around them (framing before, checksum/links after) are the same
    size for every record: prefix + suffix = the gap between two payloads
    less the first's length, and the suffix is what follows the last
    payload before the end of the file. Returns [(start, end, seq)]."""
    with open(path, "rb") as f:
        data = f.read()
    found, pos = [], 0
    for seq, c, _ in model.records:
        b = c.SerializeToString(deterministic=True)
        at = data.find(b, pos)
        if at < 0:
            continue
        found.append((at, len(b), seq))
        pos = at + len(b)
    assert len(found) >= 4, "%s: found %d records' bytes" % (path, len(found))
    gaps = {found[i + 1][0] - found[i][0] - found[i][1] for i in range(len(found) - 1)}
    assert len(gaps) == 1, "%s: records are not [prefix][Consent][suffix] " \
        "of fixed sizes (gaps %s)" % (path, sorted(gaps)[:8])
    gap = gaps.pop()
    suffix = len(data) - found[-1][0] - found[-1][1]
    prefix = gap - suffix
    assert 0 <= prefix, (path, gap, suffix)
    return [(at - prefix, at + n + suffix, seq) for at, n, seq in found]


def named_offset(out, path):
    """'FILE: offset N (sequence S): what' -> N, checking FILE is named."""
    assert os.path.basename(path) in out, "the audit does not name %s: %r" % (path, out)
    m = re.search(r"offset (\d+)", out)
    assert m, "the audit names no offset: %r" % out
    return int(m.group(1))


def test_audit_names_the_damage(env):
    """On a stopped server's data directory: one byte changed in a history
    record, a record dropped, a copied record inserted, two records
    swapped: consentctl audit verify exits 1 naming the file and the offset
    of the first broken record. The untouched copy passes, and audit head
    equals the server's Stats chain head."""
    pb = env.pb
    hist = History(pb, 424242, env.tmp)
    d0, s, when = start_fresh(env, hist, "hist-damage")
    try:
        hist.ingest_base(when)
        with Rpc(pb, s.rpc) as rpc:
            for _ in range(25):
                hist.apply(rpc)
        wait_head(pb, s.rpc, hist.model.last, "damage")
        st = stats(pb, s.rpc)
    finally:
        tc.stop_ok(s)
    assert (st.chain_sequence, st.chain_hash) == (hist.model.last,
                                                  hist.model.head_at(hist.model.last))
    audit("verify", d0)
    assert audit_head(d0) == (st.chain_sequence, st.chain_hash)
    # The file holding the changes (the newest with records in it).
    seg = None
    for path in history_files(d0):
        with open(path, "rb") as f:
            data = f.read()
        last = hist.model.records[-1][1].SerializeToString(deterministic=True)
        if last in data:
            seg = path
    assert seg is not None, "no history file holds the last change: %s" % (
        history_files(d0),)
    spans = record_spans(seg, hist.model)
    # A record in the middle of the changes, not the last (a torn tail is
    # not damage: it is cut at open).
    i = len(spans) // 2
    a, b = spans[i], spans[i + 1]

    def damaged(how):
        d = os.path.join(env.tmp, "hist-damage-" + how)
        shutil.rmtree(d, ignore_errors=True)
        shutil.copytree(d0, d)
        path = os.path.join(d, "history", os.path.basename(seg))
        with open(path, "rb") as f:
            data = bytearray(f.read())
        rec_a, rec_b = bytes(data[a[0]:a[1]]), bytes(data[b[0]:b[1]])
        if how == "byte":
            mid = (a[0] + a[1]) // 2
            data[mid] ^= 0x01
        elif how == "drop":
            del data[a[0]:a[1]]
        elif how == "insert":
            # A copy of an earlier record put in after record a.
            data[a[1]:a[1]] = bytes(data[spans[1][0]:spans[1][1]])
        elif how == "reorder":
            data[a[0]:b[1]] = rec_b + rec_a
        with open(path, "wb") as f:
            f.write(data)
        return d, path

    for how, want_off in (("byte", a[0]), ("drop", a[0]), ("insert", a[1]),
                          ("reorder", a[0])):
        d, path = damaged(how)
        p = audit("verify", d, check=False)
        out = (p.stdout + p.stderr).decode(errors="replace")
        assert p.returncode == 1, "%s: audit verify exited %d: %s" % (
            how, p.returncode, out)
        off = named_offset(out, path)
        assert off == want_off, "%s: the audit names offset %d, the first " \
            "broken record is at %d (records %s..%s): %s" % (
                how, off, want_off, a, b, out)
        shutil.rmtree(d, ignore_errors=True)


# --- two data directories, one stream -----------------------------------------

def test_two_directories_same_heads(env):
    """Two servers, each from the same snapshot, fed the same Applies: after
    every Apply both report the same chain head (sequence and hash), and it
    is the model's."""
    pb = env.pb
    hist = History(pb, 777, env.tmp)
    _, s1, when = start_fresh(env, hist, "hist-twin1")
    s2 = None
    try:
        _, s2, _ = start_fresh(env, hist, "hist-twin2")
        hist.ingest_base(when)
        # The same Applies to both: each batch recorded once, sent twice.
        with Rpc(pb, s1.rpc) as r1, Rpc(pb, s2.rpc) as r2:
            h1 = wait_head(pb, s1.rpc, hist.watermark, "twin1")
            h2 = wait_head(pb, s2.rpc, hist.watermark, "twin2")
            assert h1 == h2 == (hist.watermark, hist.model.head_at(hist.watermark))
            for i in range(30):
                before = (hist.cursor, hist.n_cursor)
                a = hist.apply(r1)
                if hist.cursor == before[0]:
                    continue   # a replay: refused, nothing to repeat
                _, changes, nxt = hist.last_batch
                r = r2.call(hist.request(changes, before[0], nxt))
                assert r.WhichOneof("body") == "apply" and \
                    r.apply.applied_sequence == a, r
                h1 = wait_head(pb, s1.rpc, a, "twin1")
                h2 = wait_head(pb, s2.rpc, a, "twin2")
                assert h1 == h2, "Apply %d: heads differ: %d %s / %d %s" % (
                    i, h1[0], h1[1].hex(), h2[0], h2[1].hex())
                assert h1 == (a, hist.model.head_at(a)), i
    finally:
        tc.stop_ok(s1)
        if s2 is not None:
            tc.stop_ok(s2)


# --- partners ------------------------------------------------------------------

def test_partner_sees_only_its_brands(env, partners, stubs):
    """A token limited to brands [A] gets no history and no as-of verdict
    about brand B on any port: refused as a live check of B is (NOT_AUTHORIZED
    verdicts; History refused), and alike for a key of B that has records and
    a brand nobody has (no existence oracle). Its own brand answers."""
    import grpc
    pb, o = env.pb, env.oracle
    s = env.server(extra=["--tokens", partners.path], name="hist-partners")
    tok = partners.tokens["alice"]
    mine = [k for k in sorted(o.records) if k[0] in partners.alice_brands][0]
    other = [k for k in sorted(o.records) if k[0] == partners.outside][0]
    nobody = (o.absent_brand(), other[1], other[2], other[3])
    try:
        # Changes to both brands (root may apply), so that the history of B
        # holds changes as well as its snapshot record.
        with Rpc(pb, s.rpc) as rpc:
            assert rpc.auth(partners.tokens["root"]).WhichOneof("body") == "auth"
            a0 = rpc.stats().applied_sequence
            req = pb.Request()
            for i, k in enumerate((mine, other)):
                req.apply.changes.add(recipient=k[1], brand_code=k[0], channel=k[3],
                                      recipient_type=k[2], status=RET, source=8,
                                      consent_date=CLOCK0 + 10 ** 6, sequence=a0 + 1 + i,
                                      creation_date=CLOCK0 + 10 ** 6,
                                      transaction_id="partner-%d" % i)
            r = rpc.call(req)
            assert r.WhichOneof("body") == "apply", r
            h = rpc_history(pb, rpc, other)
            assert h.WhichOneof("body") == "history" and \
                [e.consent.transaction_id for e in h.history.entries][-1:] == \
                ["partner-1"], "root sees no history of brand B: %s" % h
        with Rpc(pb, s.rpc) as rpc:
            assert rpc.auth(tok).WhichOneof("body") == "auth"
            live = rpc.check([asof_check(other)]).verdicts[0]
            assert (live.allow, live.reason) == (False, NOT_AUTHORIZED), live
            st = rpc.stats()
            seq = st.applied_sequence or 1
            for k in (other, nobody):
                for kw in (dict(seq=seq), dict(t=CLOCK0)):
                    v = rpc.check([asof_check(k, **kw)]).verdicts[0]
                    assert v == live, "as-of %s of %s: %s, live %s" % (kw, k, v, live)
            refusals = []
            for k in (other, nobody):
                r = rpc_history(pb, rpc, k)
                assert r.WhichOneof("body") != "history" or not r.history.entries, \
                    "alice got history of brand %d: %s" % (k[0], r)
                # The refusal may echo the brand asked: alike but for it.
                r.id = 0
                refusals.append(str(r).replace(str(k[0]), "BRAND"))
            assert refusals[0] == refusals[1], "History refusals differ: %s" % refusals
            mine_h = rpc_history(pb, rpc, mine)
            assert mine_h.WhichOneof("body") == "history" and mine_h.history.entries, \
                "alice's own brand has no history: %s" % mine_h
        # RESP: the live refusal, the same with AT/ATSEQ; HISTORY refused.
        r = redis.Redis(host=helpers.LOOPBACK, port=s.resp, password=tok,
                        socket_timeout=10)
        try:
            def resp(*a):
                try:
                    return r.execute_command(*a)
                except redis.ResponseError as e:
                    return "error: %s" % e
            base = [other[1], other[0], CHANNEL_NAMES[other[3]], RTYPE_NAMES[other[2]]]
            live = resp("CHECK", *base)
            assert live[0] == 0 and resp_text(live[1]) == "NOT_AUTHORIZED", live
            for extra in (("ATSEQ", seq), ("AT", CLOCK0)):
                assert resp("CHECK", *(base + list(extra))) == live, extra
            hs = [resp("HISTORY", k[1], k[0], CHANNEL_NAMES[k[3]], RTYPE_NAMES[k[2]])
                  for k in (other, nobody)]
            hs = [x.replace(str(k[0]), "BRAND") if isinstance(x, str) else x
                  for x, k in zip(hs, (other, nobody))]
            assert isinstance(hs[0], str) or hs[0] == [], "RESP HISTORY leaked: %r" % hs
            assert hs[0] == hs[1], "RESP HISTORY refusals differ: %r" % hs
        finally:
            r.close()
        # HTTP.
        live = http_json(s, http_check_path(other), tok)
        outs = [http_json(s, http_check_path(k, as_of_sequence=seq), tok)
                for k in (other, nobody)]
        outs += [http_json(s, http_check_path(k, as_of_time=CLOCK0), tok)
                 for k in (other, nobody)]
        for st_, body in [live] + outs:
            assert st_ in (200, 403), (st_, body)
            if st_ == 200:
                v = json.loads(body)
                assert v["allow"] is False and v["reason"] == "NOT_AUTHORIZED", v
                assert "status" not in v and "transaction_id" not in v and \
                    not v.get("sequence"), v
        assert all(x[0] == live[0] for x in outs), (live, outs)
        hh = [http_json(s, http_history_path(k), tok) for k in (other, nobody)]
        hh = [(st_, body.replace(str(k[0]).encode(), b"BRAND"))
              for (st_, body), k in zip(hh, (other, nobody))]
        for st_, body in hh:
            assert st_ in (401, 403, 404) or not json.loads(body).get("entries"), \
                "HTTP history leaked: %d %s" % (st_, body)
        assert hh[0] == hh[1], "HTTP history refusals differ: %r" % hh
        # gRPC.
        ch = grpc.insecure_channel("127.0.0.1:%d" % s.grpc,
                                   options=[("grpc.use_local_subchannel_pool", 1)])
        try:
            stub = stubs.ConsentServiceStub(ch)
            md = (("authorization", "Bearer " + tok),)
            req = pb.CheckRequest()
            req.checks.add(**asof_check(other, seq=seq))
            req.checks.add(**asof_check(nobody, t=CLOCK0))
            resp_ = stub.Check(req, metadata=md, timeout=10)
            for v in resp_.verdicts:
                assert (v.allow, v.reason, v.status, v.sequence, v.transaction_id) == \
                    (False, NOT_AUTHORIZED, 0, 0, ""), v
            codes = []
            for k in (other, nobody):
                try:
                    h = stub.History(pb.HistoryRequest(
                        recipient=k[1], brand_code=k[0], channel=k[3],
                        recipient_type=k[2]), metadata=md, timeout=10)
                    assert not h.entries, "gRPC History leaked: %s" % h
                    codes.append(("ok", len(h.entries)))
                except grpc.RpcError as e:
                    codes.append((e.code(), (e.details() or "").replace(str(k[0]), "BRAND")))
            assert codes[0] == codes[1], "gRPC History refusals differ: %s" % codes
        finally:
            ch.close()
    finally:
        rc = s.stop()
        assert rc == 0, s.log_tail()


@pytest.mark.parametrize("how", ["consentctl-build", "snapshot-flag"])
def test_first_snapshot_is_in_history(env, server, how):
    """A data directory that began from a snapshot (made by consentctl
    build, or empty and given --snapshot) holds every record of it in its
    history, at the snapshot's watermark (0 for consentctl gen's, the common
    case), with all their fields; as of now its verdicts are the live ones,
    with the deciding record's transaction_id (DESIGN 10)."""
    pb, o = env.pb, env.oracle
    _, consents, _ = helpers.read_stream(pb, env.snapshot)
    wm = o.header.sequence
    s = server
    if how == "snapshot-flag":
        d = empty_dir(env, "hist-first-snapshot")
        s = tc.start(d, os.path.join(env.tmp, "hist-first-snapshot.log"),
                     ["--snapshot", env.snapshot])
    try:
        check_first_snapshot(env, s, consents, wm)
    finally:
        if s is not server:
            tc.stop_ok(s)


def check_first_snapshot(env, server, consents, wm):
    pb, o = env.pb, env.oracle
    count = {}
    for c in consents:
        count[key_of(c)] = count.get(key_of(c), 0) + 1
    sample = [c for c in consents if count[key_of(c)] == 1][:200]
    # Every key of the sample holds one record (no duplicates in the stream).
    with Rpc(pb, server.rpc) as rpc:
        # As of now, the legal state is the served one, record for record.
        now = int(time.time())
        live = rpc.check([asof_check(key_of(c)) for c in sample])
        asof = rpc.check([asof_check(key_of(c), t=now) for c in sample])
        for c, v, a in zip(sample, live.verdicts, asof.verdicts):
            assert vtuple(a)[:5] == vtuple(v)[:5] and not a.error, \
                "%s as of now: %s, live %s %s" % (key_of(c), vtuple(a), vtuple(v),
                                                   a.error)
            assert (a.sequence, a.transaction_id) == (wm, c.transaction_id), a
        for c in sample:
            k = key_of(c)
            r = rpc_history(pb, rpc, k)
            assert r.WhichOneof("body") == "history", r
            assert r.history.entries, "no history of %s, a record of the " \
                "snapshot the directory began from" % (k,)
            want = pb.Consent()
            want.CopyFrom(c)
            want.sequence = wm
            assert r.history.entries[0].consent == want, \
                "first history record of %s: %s, snapshot %s" % (
                    k, r.history.entries[0].consent, want)


def test_unknown_key_has_an_empty_history(env):
    """A key nobody has: an empty history on every port, the connection
    serving on; also in a data directory at sequence 0, where that reply
    packs to no bytes at all."""
    pb, o = env.pb, env.oracle
    d = empty_dir(env, "hist-empty-key")
    s = tc.start(d, os.path.join(env.tmp, "hist-empty-key.log"),
                 ["--snapshot", env.snapshot])
    try:
        k = (o.absent_brand(), "+905559990001", BIREYSEL, MESAJ)
        with Rpc(pb, s.rpc) as rpc:
            assert rpc.stats().applied_sequence == 0
            r = rpc_history(pb, rpc, k)
            assert r.WhichOneof("body") == "history" and not r.history.entries, r
            assert rpc.stats().records == len(o)
        rc = redis.Redis(host=helpers.LOOPBACK, port=s.resp, socket_timeout=10)
        try:
            assert rc.execute_command("HISTORY", k[1], k[0], "MESAJ") == []
        finally:
            rc.close()
        st, body = http_json(s, http_history_path(k))
        assert st == 200 and json.loads(body).get("entries", []) == [], (st, body)
    finally:
        tc.stop_ok(s)


# --- the history's start, and --history off --------------------------------------

def test_as_of_before_the_start_and_history_off(env):
    """A data directory that began from a snapshot at watermark W: an
    as-of sequence below W is INVALID_REQUEST naming W, on RPC, RESP and
    HTTP (and the server serves on); at W it is the snapshot's state. With
    --history off every as-of check is INVALID_REQUEST."""
    pb = env.pb
    hist = History(pb, 99, env.tmp)
    d, s, when = start_fresh(env, hist, "hist-start")
    try:
        hist.ingest_base(when)
        k = hist.keys[1]
        w = hist.watermark
        with Rpc(pb, s.rpc) as rpc:
            for seq in (1, w - 1):
                v = rpc.check([asof_check(k, seq=seq)]).verdicts[0]
                assert v.reason == INVALID_REQUEST and not v.allow, v
                assert str(w) in v.error, "the error does not name the start " \
                    "%d: %r" % (w, v.error)
            v = rpc.check([asof_check(k, seq=w)]).verdicts[0]
            assert vtuple(v) == Model.verdict(k, hist.model.at_seq(k, w)), v
            # At most one of the two.
            v = rpc.check([asof_check(k, seq=w, t=CLOCK0)]).verdicts[0]
            assert v.reason == INVALID_REQUEST and v.error, v
        r = redis.Redis(host=helpers.LOOPBACK, port=s.resp, socket_timeout=10)
        try:
            with pytest.raises(redis.ResponseError) as e:
                r.execute_command("CHECK", k[1], k[0], CHANNEL_NAMES[k[3]],
                                  RTYPE_NAMES[k[2]], "ATSEQ", w - 1)
            assert "INVALID_REQUEST" in str(e.value) and str(w) in str(e.value), e.value
        finally:
            r.close()
        st, body = http_json(s, http_check_path(k, as_of_sequence=w - 1))
        assert st in (200, 400), (st, body)
        assert str(w).encode() in body, body
        if st == 200:
            assert json.loads(body)["reason"] == "INVALID_REQUEST", body
    finally:
        tc.stop_ok(s)
    s = tc.start(d, os.path.join(env.tmp, "hist-start-off.log"),
                 ["--history", "off"])
    try:
        with Rpc(pb, s.rpc) as rpc:
            for kw in (dict(seq=hist.watermark), dict(t=CLOCK0)):
                v = rpc.check([asof_check(hist.keys[1], **kw)]).verdicts[0]
                assert v.reason == INVALID_REQUEST and v.error and not v.allow, v
            live = rpc.check([asof_check(hist.keys[1])]).verdicts[0]
            assert live.reason != INVALID_REQUEST, live
    finally:
        tc.stop_ok(s)


# --- consentctl receipt -----------------------------------------------------------

def receipt(port, *args, stdin=None, token=None):
    cmd = [helpers.binary("consentctl"), "receipt", "--server",
           "127.0.0.1:%d" % port] + (["--token", token] if token else []) + list(args)
    return subprocess.run(cmd, input=stdin, stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, timeout=60)


def parse_receipt(text):
    out = {}
    for line in text.splitlines():
        if ": " in line:
            k, v = line.split(": ", 1)
            out[k] = v
    return out


def test_receipt(env):
    """A gateway's send-log line (RECIPIENT BRAND CHANNEL TYPE SEQUENCE)
    becomes the verdict as of that sequence with the deciding change's
    sequence, transaction_id, dates and source (the model's), and the chain
    head when the line's sequence is the server's head; lines on stdin give
    one receipt each; a bad line is refused naming its field."""
    pb = env.pb
    hist = History(pb, 31337, env.tmp)
    _, s, when = start_fresh(env, hist, "hist-receipt")
    try:
        hist.ingest_base(when)
        with Rpc(pb, s.rpc) as rpc:
            for _ in range(20):
                hist.apply(rpc)
        last = hist.model.last
        wait_head(pb, s.rpc, last, "receipt")
        rng = random.Random(5)
        lines = []
        for _ in range(12):
            k = rng.choice(hist.keys)
            seq = rng.randint(hist.watermark, last)
            lines.append((k, seq))
        lines.append((hist.keys[-1], last))
        for k, seq in lines:
            line = "%s %d %s %s %d" % (k[1], k[0], CHANNEL_NAMES[k[3]],
                                       RTYPE_NAMES[k[2]], seq)
            p = receipt(s.rpc, line)
            out = p.stdout.decode()
            assert p.returncode == 0, (line, out, p.stderr.decode())
            got = parse_receipt(out)
            rec = hist.model.at_seq(k, seq)
            want = Model.verdict(k, rec)
            assert got["verdict"] == "%s %s" % ("allow" if want[0] else "deny",
                                                REASON_NAMES[want[1]]), (line, out)
            if rec is None:
                assert "deciding_sequence" not in got, out
                continue
            assert int(got["deciding_sequence"]) == rec.sequence, (line, out)
            assert got["transaction_id"] == rec.transaction_id, (line, out)
            assert got["status"] == STATUS_NAMES[rec.status], out
            assert got["source"] == SOURCE_NAMES[rec.source], out
            assert got["consent_date"].split()[0] == str(rec.consent_date), out
            assert got["creation_date"].split()[0] == str(rec.creation_date), out
            idx = [i for i in hist.model.by_key[k]
                   if hist.model.records[i][1] == rec][0]
            assert got["record_chain_hash"] == hist.model.chain[idx].hex(), out
            if seq == last:
                assert got["chain_head"] == hist.model.head_at(last).hex(), out
                assert int(got["chain_head_sequence"]) == last, out
            else:
                assert got["chain_head"].startswith("not at %d" % seq), out
        # Lines on stdin, with a comment and a blank line: one block each.
        text = "# gateway send log\n\n" + "".join(
            "%s %d %s %s %d\n" % (k[1], k[0], CHANNEL_NAMES[k[3]], RTYPE_NAMES[k[2]], q)
            for k, q in lines[:4])
        p = receipt(s.rpc, "-", stdin=text.encode())
        assert p.returncode == 0, p.stderr.decode()
        assert p.stdout.decode().count("receipt: ") == 4, p.stdout.decode()
        # Bad lines name the field; the good ones around them still answer.
        k = hist.keys[0]
        for bad, field in (("%s %d SMS BIREYSEL 5" % (k[1], k[0]), "field 3 (channel)"),
                           ("%s 0 MESAJ BIREYSEL 5" % k[1], "field 2 (brand)"),
                           ("%s %d MESAJ BIREYSEL" % (k[1], k[0]), "field 5 (sequence)"),
                           ("nobody %d MESAJ BIREYSEL 5" % k[0], "field 1 (recipient)")):
            p = receipt(s.rpc, bad)
            assert p.returncode == 1 and field in p.stderr.decode(), \
                (bad, p.returncode, p.stderr.decode())
        good = "%s %d %s %s %d\n" % (k[1], k[0], CHANNEL_NAMES[k[3]],
                                     RTYPE_NAMES[k[2]], last)
        p = receipt(s.rpc, "-", stdin=("x y z\n" + good).encode())
        assert p.returncode == 1 and "line 1: " in p.stderr.decode(), p.stderr.decode()
        assert p.stdout.decode().count("receipt: ") == 1, p.stdout.decode()
        # Before the history's start: refused, the server's reason shown.
        p = receipt(s.rpc, "%s %d %s %s 1" % (k[1], k[0], CHANNEL_NAMES[k[3]],
                                              RTYPE_NAMES[k[2]]))
        assert p.returncode == 1 and "INVALID_REQUEST" in p.stderr.decode() and \
            str(hist.watermark) in p.stderr.decode(), p.stderr.decode()
    finally:
        tc.stop_ok(s)


def test_stats_and_metrics_show_the_head(env):
    """DESIGN 10: the chain head (sequence and hash) is in Stats, /v1/stats
    and /metrics, the same in all three, and the model's."""
    pb = env.pb
    hist = History(pb, 4711, env.tmp)
    _, s, when = start_fresh(env, hist, "hist-head-ports")
    try:
        hist.ingest_base(when)
        with Rpc(pb, s.rpc) as rpc:
            for _ in range(5):
                hist.apply(rpc)
        last = hist.model.last
        head = hist.model.head_at(last)
        assert wait_head(pb, s.rpc, last, "head ports") == (last, head)
        st, body = http_json(s, "/v1/stats")
        assert st == 200, (st, body)
        doc = json.loads(body)
        assert doc.get("chain_sequence") == last, doc
        assert decode_hash(doc.get("chain_hash", "")) == head, doc
        m = s.metrics()
        assert m.total("consentd_chain_sequence") == last, \
            "consentd_chain_sequence: %s" % m.samples.get("consentd_chain_sequence")
        # A hash is no number: it can only be a label (an info metric).
        shown = [lab for samples in m.samples.values() for lab, _ in samples
                 if head.hex() in lab.values()]
        assert shown, "/metrics shows no chain hash %s (DESIGN 10: /v1/stats and " \
            "/metrics show both)" % head.hex()
    finally:
        tc.stop_ok(s)
