"""The HTTP ops port (DESIGN 3.4): health, readiness, Prometheus metrics and
the JSON checks."""

import json
import os
import random
import re
import shutil
import subprocess
import time
import urllib.parse

import helpers
from helpers import (CHANNEL_NAMES, RTYPE_NAMES, PURPOSE_NAMES, BILGILENDIRME,
                     TACIR, MESAJ, EPOSTA)


def metrics_h_names():
    """The Prometheus names of server/metrics.h's METRICS_COUNTERS."""
    with open(os.path.join(helpers.ROOT, "server", "metrics.h")) as f:
        text = f.read()
    names = re.findall(r'X\(\s*\w+\s*,\s*"(consentd_\w+)"', text)
    assert len(names) >= 10, "could not read METRICS_COUNTERS"
    return names


def json_verdict(pb, v):
    """A JSON verdict as the tuple helpers.verdict_tuple gives."""
    def enum(e, key):
        x = v.get(key)
        if x is None or x == 0:
            return 0
        assert isinstance(x, str), "%s should be an enum name: %r" % (key, v)
        return e.Value(x)
    assert isinstance(v.get("allow"), bool), "allow must be a boolean: %r" % v
    assert isinstance(v.get("reason"), str), "reason must be a name: %r" % v
    date = v.get("consent_date") or 0
    assert isinstance(date, int), "consent_date must be an integer: %r" % v
    return (v["allow"], pb.Reason.Value(v["reason"]), enum(pb.Status, "status"),
            enum(pb.Source, "source"), date)


def assert_json_verdict(pb, v, exp, what):
    got = json_verdict(pb, v)
    assert got == exp.tuple(), "%s: got %r, want %r" % (what, v, exp)
    if exp.reason == helpers.INVALID_REQUEST:
        assert v.get("error"), "%s: no error text in %r" % (what, v)


def get_json(server, path, headers=None):
    st, hdr, body = server.http_get(path, headers=headers)
    try:
        doc = json.loads(body)
    except ValueError:
        raise AssertionError("%s: not JSON (%d): %r" % (path, st, body[:200]))
    return st, hdr, doc


def post_json(server, path, doc, headers=None, raw=None):
    h = {"Content-Type": "application/json"}
    h.update(headers or {})
    body = raw if raw is not None else json.dumps(doc).encode()
    st, hdr, out = server.http_request("POST", path, body=body, headers=h)
    try:
        return st, hdr, json.loads(out)
    except ValueError:
        raise AssertionError("%s: not JSON (%d): %r" % (path, st, out[:200]))


def check_query(rec, brand, channel, rtype=0, purpose=0):
    q = [("recipient", rec), ("brand_code", str(brand)),
         ("channel", CHANNEL_NAMES[channel])]
    if rtype:
        q.append(("recipient_type", RTYPE_NAMES[rtype]))
    if purpose:
        q.append(("purpose", PURPOSE_NAMES[purpose]))
    # quote_via=quote: '+' becomes %2B, ' ' %20 (a raw '+' would mean space).
    return "/v1/check?" + urllib.parse.urlencode(q, quote_via=urllib.parse.quote)


def test_health_and_readiness(server):
    for path in ("/healthz", "/readyz"):
        st, _, _ = server.http_get(path)
        assert st == 200, "%s answered %d" % (path, st)


def test_metrics(env, server):
    m = server.metrics()
    assert m.total("consentd_records") == len(env.oracle), \
        "consentd_records %s, dataset %d" % (m.get("consentd_records"), len(env.oracle))
    missing = [n for n in metrics_h_names() if n not in m.samples]
    assert not missing, "counters of server/metrics.h missing: %s" % missing
    # Latency histogram and the gauges DESIGN 3.4 lists.
    assert any(n.endswith("_bucket") and any("le" in lab for lab, _ in s)
               for n, s in m.samples.items()), "no latency histogram"
    text = m.text
    for word in ("generation", "applied_sequence", "connections"):
        assert word in text, "/metrics has nothing about %s" % word
    # checks_total moves by exactly the checks made, with their reasons.
    o = env.oracle
    keys = sorted(o.records)[:25]
    before = helpers.checks_total(m)
    for k in keys:
        st, _, _ = server.http_get(check_query(k[1], k[0], k[3], k[2]))
        assert st == 200
    with helpers.Rpc(env.pb, server.rpc) as c:
        c.check([dict(recipient=k[1], brand_code=k[0], channel=k[3],
                      recipient_type=k[2]) for k in keys])
    m2 = server.metrics()
    after = helpers.checks_total(m2)
    assert after - before == 2 * len(keys), \
        "checks_total %s -> %s after %d checks" % (before, after, 2 * len(keys))
    labels = [lab for lab, _ in m2.samples["consentd_checks_total"]]
    values = {v for lab in labels for v in lab.values()}
    assert "CONSENT_GIVEN" in values or "consent_given" in values, \
        "checks are not labelled by reason: %s" % labels[:5]
    assert m2.total("consentd_http_requests_total") > \
        m.total("consentd_http_requests_total")


def test_metrics_conventions(env, server):
    """/metrics passes Prometheus's own linter (promtool check metrics:
    names, units, HELP and TYPE), names the build, and gives a Unix
    timestamp only under a _timestamp_seconds name."""
    promtool = shutil.which("promtool")
    assert promtool, "promtool is missing (make deps installs Debian's prometheus)"
    m = server.metrics()
    r = subprocess.run([promtool, "check", "metrics"], input=m.text.encode(),
                       stdout=subprocess.PIPE, stderr=subprocess.STDOUT, timeout=60)
    assert r.returncode == 0, "promtool check metrics:\n" + r.stdout.decode()
    (labels, value), = m.samples["consentd_build_info"]
    assert value == 1 and labels["version"] and labels["commit"], labels
    assert m.total("consentd_data_as_of_timestamp_seconds") == env.oracle.header.created_at
    assert m.total("consentd_index_bytes") > 0
    assert abs(m.total("consentd_start_time_seconds") - time.time()) < 24 * 3600


def test_get_check(env, server):
    o = env.oracle
    pb = env.pb
    keys = sorted(o.records)
    random.Random(3).shuffle(keys)
    absent = o.absent_brand()
    for i, (brand, rec, rtype, channel) in enumerate(keys[:40]):
        cases = [(rec, brand, channel, rtype, 0),
                 (rec, absent, channel, rtype, 0),
                 (rec, brand, channel, rtype, BILGILENDIRME)]
        if rec.startswith("+90"):
            cases.append(("0 (%s) %s" % (rec[3:6], rec[6:]), brand, channel, rtype, 0))
        if "@" in rec:
            cases.append((rec.upper(), brand, channel, rtype, 0))
        for c in cases:
            st, hdr, v = get_json(server, check_query(*c))
            assert st == 200, "GET %s: %d %r" % (c, st, v)
            assert hdr.get("content-type", "").startswith("application/json")
            assert_json_verdict(pb, v, o.expect(*c), "GET %s" % (c,))
    # The exact shape DESIGN 3.4 shows, for a record.
    k = o.find(status=helpers.ONAY)[0]
    st, _, v = get_json(server, check_query(k[1], k[0], k[3], k[2]))
    assert v["allow"] is True and v["reason"] == "CONSENT_GIVEN"
    assert v["status"] == "ONAY"
    assert v["source"] == pb.Source.Name(o.records[k][2])
    assert v["consent_date"] == o.records[k][1]


def test_get_check_invalid_recipient(env, server):
    brand = env.oracle.brands[0]
    for rec in ("12345", "a@", "+90 532 12"):
        st, _, v = get_json(server, check_query(rec, brand, MESAJ if "@" not in rec
                                                else EPOSTA))
        if st == 200:
            assert v.get("reason") == "INVALID_REQUEST" and v.get("allow") is False, v
            assert v.get("error"), v
        else:
            assert st == 400 and v.get("error"), (st, v)


def test_post_check(env, server):
    o = env.oracle
    pb = env.pb
    keys = sorted(o.records)
    random.Random(4).shuffle(keys)
    checks, model = [], []
    for i, (brand, rec, rtype, channel) in enumerate(keys[:150]):
        c = {"recipient": rec, "brand_code": brand,
             "channel": CHANNEL_NAMES[channel], "recipient_type": RTYPE_NAMES[rtype]}
        p = 0
        if i % 10 == 3:
            c["purpose"] = "BILGILENDIRME"
            p = BILGILENDIRME
        if i % 10 == 5:
            c["brand_code"] = o.absent_brand()
        if i % 10 == 7:
            del c["recipient_type"]
            rtype = 0
        checks.append(c)
        model.append(o.expect(rec, c["brand_code"], channel, rtype, p))
    checks.append({"recipient": "bad@", "brand_code": 5, "channel": "EPOSTA"})
    model.append(o.expect("bad@", 5, EPOSTA))
    st, _, doc = post_json(server, "/v1/check", {"checks": checks})
    assert st == 200, (st, doc)
    assert len(doc["verdicts"]) == len(checks)
    for i, (v, exp) in enumerate(zip(doc["verdicts"], model)):
        assert_json_verdict(pb, v, exp, "POST #%d %s" % (i, checks[i]))
    assert doc["applied_sequence"] == o.header.sequence
    assert doc["data_as_of"] == o.header.created_at
    # Request-level defaults.
    tk = o.find(rtype=TACIR, channel=MESAJ)
    brand = tk[0][0]
    recs = [k[1] for k in tk if k[0] == brand][:10] + ["+905990000002"]
    st, _, doc = post_json(server, "/v1/check", {
        "checks": [{"recipient": r} for r in recs], "brand_code": brand,
        "channel": "MESAJ", "recipient_type": "TACIR", "purpose": "TICARI"})
    assert st == 200, (st, doc)
    for r, v in zip(recs, doc["verdicts"]):
        assert_json_verdict(pb, v, o.expect(r, brand, MESAJ, TACIR), "defaults " + r)


def test_stats(env, server):
    st, _, doc = get_json(server, "/v1/stats")
    assert st == 200, doc
    assert doc["records"] == len(env.oracle)
    assert doc["generation"] >= 1
    assert doc["data_as_of"] == env.oracle.header.created_at
    assert "checks_total" in doc and "applied_sequence" in doc


def test_malformed_is_400_with_json_error(env, server):
    brand = env.oracle.brands[0]
    cases = [
        ("POST", "/v1/check", b"{not json"),
        ("POST", "/v1/check", b'{"checks": 5}'),
        ("POST", "/v1/check", b'{"checks": [{"recipient": 5}]}'),
        ("POST", "/v1/check", b'[1, 2, 3]'),
        ("POST", "/v1/check", b'{"checks": [{"recipient": "+905321234567", '
                              b'"brand_code": "abc", "channel": "MESAJ"}]}'),
        ("GET", "/v1/check?recipient=%2B905321234567&brand_code=abc&channel=MESAJ", None),
        ("GET", "/v1/check?recipient=%%2B905321234567&brand_code=%d&channel=MESAJ"
                "&brand_code=-1" % brand, None),
        ("GET", "/v1/check?recipient=%2B905321234567&brand_code=99999999999&"
                "channel=MESAJ", None),
    ]
    before = server.metrics().total("consentd_http_bad_requests_total")
    n400 = 0
    for method, path, body in cases:
        st, _, out = server.http_request(method, path, body=body,
                                         headers={"Content-Type": "application/json"})
        if path.endswith("brand_code=-1") and st == 200:
            continue  # a repeated parameter may reasonably take the first one
        assert st == 400, "%s %s %r: %d %r" % (method, path, body, st, out[:200])
        n400 += 1
        doc = json.loads(out)
        assert isinstance(doc, dict) and isinstance(doc.get("error"), str) and \
            doc["error"], "400 without a JSON error: %r" % out
    after = server.metrics().total("consentd_http_bad_requests_total")
    assert after - before >= n400


def test_not_found(server):
    for method, path in (("GET", "/"), ("GET", "/nope"), ("GET", "/v1/checks"),
                         ("GET", "/v1/stats/x"), ("POST", "/metricsx")):
        st, _, _ = server.http_request(method, path, body=b"" if method == "POST"
                                       else None)
        assert st == 404, "%s %s answered %d" % (method, path, st)
    # Still serving.
    st, _, _ = server.http_get("/healthz")
    assert st == 200
