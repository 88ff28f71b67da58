#!/usr/bin/python3
"""A TEST STAND-IN of İYS's API, for consentd's tests: it follows İYS's
documented requests and answers (İYS's developer documentation as
summarised in the project's reference notes: OAuth2 token, the pull of
consent changes, add one consent, query one consent's status, the error
body) so consentctl pull can be tested without any address outside the
machine. It is not İYS and knows nothing İYS does not document; where
İYS's documentation is silent it makes the choices written below.

Python standard library only; run with /usr/bin/python3. It listens on
127.0.0.1 (HTTPS with --tls-cert/--tls-key), port 0 unless --port, and reports the port it got as its first
line of stdout ("port N") and in --ports-file FILE ("iys 127.0.0.1:N",
written atomically).

İYS's contract served:
  POST /oauth2/token  {"username","password","grant_type":"password"} or
                      {"refresh_token","grant_type":"refresh_token"}
      -> {"access_token","refresh_token","expires_in","refresh_expires_in",
          "token_type":"bearer"}
  GET  /sps/{iysCode}/brands/{brandCode}/consents/changes?source=HS|IYS
       &after=&limit=   -> {"after": ..., "list": [record, ...]}
       in creationDate order; "after" is opaque ("<epoch ms>_<64 hex>");
       an empty page answers the after it was asked with.
  POST /sps/{iysCode}/brands/{brandCode}/consents  record
       -> {"transactionId","creationDate"}; 422 {"errors":[...]} when
       İYS's rules refuse it (H174 same status again, H175 a first RET,
       H178 an older consentDate, H162 a future date, H119 a source that
       is not HS_*); the added record then appears in the HS changes.
  POST /sps/{iysCode}/brands/{brandCode}/consents/status
       {"recipient","recipientType","type"} -> the record, or 404.
  Errors: {"errors":[{"code","location","message","value"}]}; 401 H351
  (missing or invalid token), 429 H124 with Retry-After, 422 as above.
  Records: recipient, type, source, status, consentDate, recipientType,
  creationDate, transactionId (and citizenName on some IYS records);
  dates "YYYY-MM-DD HH:MM:SS" in Turkey time (UTC+3).

Choices where İYS is silent: limit 1..--max-limit (default 1000); an
unknown after is a 400 with code STANDIN_BAD_AFTER (the stand-in's own);
the no-record status answer is 404 with code STANDIN_NO_RECORD; records
are visible at once (--visibility-delay-s emulates İYS's hour).

Test control (not İYS's; under /_standin/, never counted as API
requests):
  POST /_standin/faults  JSON, merged: slow_ms + slow_count (pages),
       status_burst {"code","count"}, storm429 {"count","retry_after"},
       drop_mid_page N, add_drop_after_commit N, token_h084 N (the token
       endpoint's hourly quota, H084, on the next N), expire_tokens true,
       revoke true, token_ttl S, refuse_password true|false,
       bad_record {"brand","source","field"}, append {"brand","count"}
  GET  /_standin/requests   [{"t","method","path","status"}] (t: monotonic s
       at arrival; status null while answering, -200 for a cut answer)
  GET  /_standin/ledger?brand=B   every record with its "class" (HS|IYS)
  GET  /_standin/state      {"brands":{B:{"HS":after,"IYS":after}},
                             "adds":[...], "rate_violations":N, ...}
"""

import argparse
import hashlib
import json
import os
import random
import socket
import sys
import threading
import time
import uuid
from datetime import datetime, timedelta, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit

TR = timezone(timedelta(hours=3))
HS_SOURCES = ["HS_FIZIKSEL_ORTAM", "HS_ISLAK_IMZA", "HS_ETKINLIK", "HS_ATM",
              "HS_EORTAM", "HS_WEB", "HS_MOBIL", "HS_MESAJ", "HS_EPOSTA",
              "HS_CAGRI_MERKEZI", "HS_SOSYAL_MEDYA"]
IYS_SOURCES = ["IYS_3338", "IYS_CM", "IYS_WEB", "IYS_MOBIL", "IYS_KISA_LINK",
               "IYS_KISAMESAJ"]


def tr_text(unix_s):
    return datetime.fromtimestamp(unix_s, TR).strftime("%Y-%m-%d %H:%M:%S")


def tr_parse(text):
    d = datetime.strptime(text, "%Y-%m-%d %H:%M:%S").replace(tzinfo=TR)
    return int(d.timestamp())


def error_body(code, message, location=None, value=None):
    e = {"code": code, "message": message}
    if location is not None:
        e["location"] = location
    if value is not None:
        e["value"] = value
    return {"errors": [e]}


class Ledger:
    """Every movement of every brand, in creationDate order, with the
    current record per key (İYS's state)."""

    def __init__(self):
        self.records = {}   # brand -> [record dict incl. "_class", "_ct"]
        self.by_class = {}  # (brand, cls) -> [index into records[brand]]
        self.tokens = {}    # after token -> (brand, cls, count consumed)
        self.state = {}     # (brand, recipient, rtype, type) -> record
        self.last_ct = {}   # brand -> last creation time (unix s)

    def add(self, brand, rec, cls):
        lst = self.records.setdefault(brand, [])
        rec["_class"] = cls
        lst.append(rec)
        self.by_class.setdefault((brand, cls), []).append(len(lst) - 1)
        key = (brand, rec["recipient"], rec["recipientType"], rec["type"])
        if rec.get("_bad"):
            return
        self.state[key] = rec

    def token(self, brand, cls, k):
        idx = self.by_class[(brand, cls)][k - 1]
        rec = self.records[brand][idx]
        h = hashlib.sha256(("%d:%s:%d" % (brand, cls, k)).encode()).hexdigest()
        t = "%d_%s" % (rec["_ct"] * 1000, h)
        self.tokens[t] = (brand, cls, k)
        return t


def generate(ledger, brands, n, seed, now):
    """n changes per brand over the last six days: keys first ONAY, then
    flipping; consent dates increase per key and never pass the record's
    creationDate; 70 % HS sources, 30 % İYS's own."""
    for brand in brands:
        rng = random.Random("%d:%d" % (seed, brand))
        n_keys = max(1, n // 3)
        keys = []
        for i in range(n_keys):
            r = rng.random()
            rtype = "TACIR" if rng.random() < 0.1 else "BIREYSEL"
            if r < 0.15:
                keys.append(("u%d.%d@example.com.tr" % (brand, i), rtype, "EPOSTA"))
            else:
                num = "+905%02d%07d" % (rng.randrange(30, 60), rng.randrange(10 ** 7))
                keys.append((num, rtype, "MESAJ" if r < 0.75 else "ARAMA"))
        keys = list(dict.fromkeys(keys))
        last = {}
        start = now - 6 * 86400
        step = (6 * 86400 - 7200) / max(1, n)
        for i in range(n):
            ct = int(start + i * step)
            k = keys[rng.randrange(len(keys))]
            prev = last.get(k)
            lo = max(prev[0] + 1 if prev else ct - 3 * 86400, ct - 3 * 86400)
            if prev and prev[0] >= ct:
                ct = prev[0] + 1  # never happens with step > 0, kept safe
            cd = rng.randint(min(lo, ct), ct)
            if prev is None:
                status = "ONAY"
            else:
                status = "RET" if rng.random() < 0.5 else "ONAY"
            cls = "IYS" if prev is not None and rng.random() < 0.3 else "HS"
            src = rng.choice(IYS_SOURCES if cls == "IYS" else HS_SOURCES)
            rec = {"consentDate": tr_text(cd), "creationDate": tr_text(ct),
                   "source": src, "recipient": k[0], "recipientType": k[1],
                   "status": status, "type": k[2],
                   "transactionId": hashlib.sha256(
                       ("%d:%d:%d" % (seed, brand, i)).encode()).hexdigest(),
                   "_ct": ct}
            if cls == "IYS" and rng.random() < 0.2:
                rec["citizenName"] = "Vatandaş %d" % i
            ledger.add(brand, rec, cls)
            last[k] = (cd, status)
        ledger.last_ct[brand] = int(start + n * step)


class Standin:
    def __init__(self, args):
        self.a = args
        self.lock = threading.Lock()
        self.ledger = Ledger()
        self.now0 = int(time.time())
        brands = [int(b) for b in args.brands.split(",") if b]
        generate(self.ledger, brands, args.changes, args.seed, self.now0)
        for b in brands:
            self.ledger.records.setdefault(b, [])
        self.access = {}   # token -> expiry (monotonic)
        self.refresh = {}  # token -> expiry (monotonic)
        self.token_ttl = args.token_ttl
        self.refuse_password = False
        self.faults = {"slow_ms": 0, "slow_count": 0, "status_burst": None,
                       "storm429": None, "drop_mid_page": 0,
                       "add_drop_after_commit": 0}
        self.requests = []
        self.adds = []
        self.rate_violations = 0
        self.api_times = []

    # -- rate ---------------------------------------------------------------
    def note_request(self, t):
        """Counts a violation when more than limit + 1 requests fall in one
        window (one extra forgives arrival jitter on a loaded machine)."""
        if not self.a.rate_limit:
            return
        n, w = self.a.rate_limit, self.a.rate_window_s
        self.api_times.append(t)
        if len(self.api_times) > n + 1 and t - self.api_times[-(n + 2)] < w:
            self.rate_violations += 1


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "iys-standin"

    def log_message(self, fmt, *args):
        pass

    def setup(self):
        super().setup()
        # Headers and body go out as two writes: without this, Nagle's
        # algorithm holds the body's tail for the client's delayed ACK
        # (40 ms a page).
        self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    @property
    def s(self):
        return self.server.standin

    def send_json(self, code, obj, headers=None, drop_half=False):
        body = json.dumps(obj, ensure_ascii=False).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json; charset=utf-8")
        self.send_header("Content-Length", str(len(body)))
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.end_headers()
        if drop_half:
            self.wfile.write(body[:len(body) // 2])
            self.wfile.flush()
            self.close_connection = True
            try:
                self.connection.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            return
        self.wfile.write(body)

    def body_json(self):
        n = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(n) if n else b""
        try:
            return json.loads(raw.decode() or "null")
        except (ValueError, UnicodeDecodeError):
            return None

    def record(self, status):
        """The request's entry, logged at its arrival, gets its answer."""
        self.entry["status"] = status

    # -- dispatch --------------------------------------------------------------
    def do_GET(self):
        self.dispatch()

    def do_POST(self):
        self.dispatch()

    def dispatch(self):
        self.t0 = time.monotonic()
        u = urlsplit(self.path)
        parts = [p for p in u.path.split("/") if p]
        if parts[:1] == ["_standin"]:
            return self.control(parts[1:], parse_qs(u.query))
        body = self.body_json() if self.command == "POST" else None
        self.entry = {"t": self.t0, "method": self.command, "path": self.path,
                      "status": None}
        with self.s.lock:
            self.s.note_request(self.t0)
            self.s.requests.append(self.entry)
        if parts == ["oauth2", "token"] and self.command == "POST":
            return self.token(body)
        fault = self.injected()
        if fault:
            return
        if not self.authorised():
            self.record(401)
            return self.send_json(401, error_body(
                "H351", "Geçersiz veya süresi dolmuş erişim jetonu"))
        if (len(parts) >= 5 and parts[0] == "sps" and parts[2] == "brands"
                and parts[4] == "consents"):
            try:
                iys, brand = int(parts[1]), int(parts[3])
            except ValueError:
                return self.fail(404, "STANDIN_NOT_FOUND", "no such path")
            if iys != self.s.a.iys_code or brand not in self.s.ledger.records:
                return self.fail(404, "STANDIN_NOT_FOUND",
                                 "iysCode or brandCode unknown")
            rest = parts[5:]
            if rest == ["changes"] and self.command == "GET":
                return self.changes(brand, parse_qs(u.query))
            if rest == [] and self.command == "POST":
                return self.add(brand, body)
            if rest == ["status"] and self.command == "POST":
                return self.status(brand, body)
        return self.fail(404, "STANDIN_NOT_FOUND", "no such path")

    def fail(self, code, ecode, msg, **kw):
        self.record(code)
        return self.send_json(code, error_body(ecode, msg, **kw))

    def injected(self):
        with self.s.lock:
            f = self.s.faults
            storm = f["storm429"]
            if storm and storm["count"] > 0:
                storm["count"] -= 1
                ra = str(storm.get("retry_after", 1))
                self.record(429)
                self.send_json(429, error_body(
                    "H124", "Saniyede kabul edilen istek limitine ulaşıldı"),
                    headers={"Retry-After": ra})
                return True
            burst = f["status_burst"]
            if burst and burst["count"] > 0:
                burst["count"] -= 1
                code = burst.get("code", 503)
                self.record(code)
                self.send_json(code, error_body(
                    "H192" if code == 503 else "H101",
                    "İşleminiz şu anda gerçekleştirilemiyor"))
                return True
        return False

    def authorised(self):
        h = self.headers.get("Authorization") or ""
        if not h.startswith("Bearer "):
            return False
        with self.s.lock:
            exp = self.s.access.get(h[7:])
        return exp is not None and time.monotonic() < exp

    # -- İYS's endpoints -------------------------------------------------------
    def token(self, body):
        s = self.s
        if not isinstance(body, dict):
            return self.fail(400, "STANDIN_BAD_BODY", "a JSON object expected")
        with s.lock:
            if s.faults.get("token_h084", 0) > 0:
                s.faults["token_h084"] -= 1
                self.record(400)
                return self.send_json(400, error_body(
                    "H084", "Saatte kabul edilen kimlik doğrulama istek "
                    "limitine ulaşıldı"))
            g = body.get("grant_type")
            if g == "password":
                if (s.refuse_password or body.get("username") != s.a.username
                        or body.get("password") != s.a.password):
                    self.record(401)
                    return self.send_json(401, error_body(
                        "STANDIN_BAD_CREDENTIALS", "kullanıcı adı veya şifre hatalı"))
            elif g == "refresh_token":
                exp = s.refresh.get(body.get("refresh_token"))
                if exp is None or time.monotonic() >= exp:
                    self.record(401)
                    return self.send_json(401, error_body(
                        "H351", "geçersiz yenileme jetonu"))
            else:
                return self.fail(400, "STANDIN_BAD_GRANT", "grant_type?")
            at, rt = uuid.uuid4().hex, uuid.uuid4().hex
            now = time.monotonic()
            s.access[at] = now + s.token_ttl
            s.refresh[rt] = now + 2 * s.token_ttl
            self.record(200)
            return self.send_json(200, {
                "access_token": at, "refresh_token": rt,
                "expires_in": s.token_ttl,
                "refresh_expires_in": 2 * s.token_ttl,
                "token_type": "bearer"})

    def changes(self, brand, q):
        s = self.s
        source = (q.get("source") or [""])[0]
        if source not in ("HS", "IYS"):
            return self.fail(400, "STANDIN_BAD_SOURCE", "source is HS or IYS",
                             location=["query", "source"], value=source)
        try:
            limit = int((q.get("limit") or ["100"])[0])
        except ValueError:
            limit = 0
        if not 1 <= limit <= s.a.max_limit:
            return self.fail(400, "STANDIN_BAD_LIMIT",
                             "limit is 1..%d" % s.a.max_limit,
                             location=["query", "limit"])
        after = (q.get("after") or [""])[0]
        slow = 0
        with s.lock:
            if after:
                pos = s.ledger.tokens.get(after)
                if pos is None or pos[0] != brand or pos[1] != source:
                    return self.fail(400, "STANDIN_BAD_AFTER",
                                     "after is not one this brand and source "
                                     "answered", value=after)
                k = pos[2]
            else:
                k = 0
            idx = s.ledger.by_class.get((brand, source), [])
            horizon = time.time() - s.a.visibility_delay_s
            recs = s.ledger.records[brand]
            out = []
            j = k
            while j < len(idx) and len(out) < limit:
                r = recs[idx[j]]
                if r["_ct"] > horizon:
                    break
                out.append({kk: v for kk, v in r.items() if not kk.startswith("_")})
                j += 1
            next_after = s.ledger.token(brand, source, j) if j > k else (after or None)
            f = s.faults
            if f["slow_count"] != 0 and f["slow_ms"] > 0:
                slow = f["slow_ms"] / 1000.0
                if f["slow_count"] > 0:
                    f["slow_count"] -= 1
            drop = f["drop_mid_page"] > 0 and len(out) > 0
            if drop:
                f["drop_mid_page"] -= 1
        if slow:
            time.sleep(slow)
        self.record(200 if not drop else -200)
        return self.send_json(200, {"after": next_after, "list": out},
                              drop_half=drop)

    def add(self, brand, body):
        s = self.s
        if not isinstance(body, dict):
            return self.fail(400, "STANDIN_BAD_BODY", "a JSON object expected")
        need = ["recipient", "type", "source", "status", "consentDate",
                "recipientType"]
        for k in need:
            if not isinstance(body.get(k), str) or not body[k]:
                return self.fail(422, "H110", "%s eksik veya hatalı" % k,
                                 location=["body", k])
        if not body["source"].startswith("HS_"):
            return self.fail(422, "H119", "source HS_* olmalıdır",
                             location=["body", "source"], value=body["source"])
        if body["status"] not in ("ONAY", "RET"):
            return self.fail(422, "H115", "status ONAY veya RET olmalıdır")
        try:
            cd = tr_parse(body["consentDate"])
        except ValueError:
            return self.fail(422, "H158", "consentDate biçimi hatalı",
                             value=body["consentDate"])
        if cd > time.time() + 1:
            return self.fail(422, "H162", "ileri tarihli izin eklenemez")
        key = (brand, body["recipient"], body["recipientType"], body["type"])
        with s.lock:
            cur = s.ledger.state.get(key)
            if cur is None and body["status"] == "RET":
                return self.fail(422, "H175", "daha önce ONAY kaydedilmemişse "
                                 "RET kaydedilemez")
            if cur is not None and cur["status"] == body["status"]:
                return self.fail(422, "H174", "aynı durumla güncelleme yapılamaz")
            if cur is not None and tr_parse(cur["consentDate"]) > cd:
                return self.fail(422, "H178", "Sistemdeki iznin tarihinden önceki "
                                 "tarihli izinlerle güncelleme yapılamaz")
            ct = max(int(time.time()), s.ledger.last_ct.get(brand, 0) + 1)
            s.ledger.last_ct[brand] = ct
            tx = str(uuid.uuid4())
            rec = {"consentDate": body["consentDate"], "creationDate": tr_text(ct),
                   "source": body["source"], "recipient": body["recipient"],
                   "recipientType": body["recipientType"],
                   "status": body["status"], "type": body["type"],
                   "transactionId": tx, "_ct": ct}
            s.ledger.add(brand, rec, "HS")
            s.adds.append(dict(rec, brand=brand, t=self.t0))
            drop = s.faults["add_drop_after_commit"] > 0
            if drop:
                s.faults["add_drop_after_commit"] -= 1
        if drop:
            # Committed, and the answer lost: the crash window of a push.
            self.record(-200)
            self.close_connection = True
            try:
                self.connection.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            return
        self.record(200)
        return self.send_json(200, {"transactionId": tx,
                                    "creationDate": tr_text(ct)})

    def status(self, brand, body):
        s = self.s
        if not isinstance(body, dict):
            return self.fail(400, "STANDIN_BAD_BODY", "a JSON object expected")
        key = (brand, body.get("recipient"), body.get("recipientType"),
               body.get("type"))
        with s.lock:
            cur = s.ledger.state.get(key)
        if cur is None:
            return self.fail(404, "STANDIN_NO_RECORD", "izin bulunamadı")
        self.record(200)
        out = {k: v for k, v in cur.items() if not k.startswith("_")}
        out.pop("citizenName", None)
        return self.send_json(200, out)

    # -- the test's controls ---------------------------------------------------
    def control(self, parts, q):
        s = self.s
        if parts == ["faults"] and self.command == "POST":
            body = self.body_json() or {}
            with s.lock:
                for k, v in body.items():
                    if k == "expire_tokens" and v:
                        for t in s.access:
                            s.access[t] = 0
                    elif k == "revoke" and v:
                        s.access.clear()
                        s.refresh.clear()
                    elif k == "token_ttl":
                        s.token_ttl = int(v)
                    elif k == "refuse_password":
                        s.refuse_password = bool(v)
                    elif k == "bad_record":
                        b = int(v["brand"])
                        rec = {"consentDate": "2026-13-45 99:00:00",
                               "creationDate": tr_text(s.ledger.last_ct[b] + 1),
                               "source": "HS_WEB", "recipient": "+905301112233",
                               "recipientType": "BIREYSEL", "status": "ONAY",
                               "type": "MESAJ", "transactionId": uuid.uuid4().hex,
                               "_ct": s.ledger.last_ct[b] + 1, "_bad": True}
                        if v.get("field") == "recipient":
                            rec["consentDate"] = rec["creationDate"]
                            rec["recipient"] = "not-a-number"
                        s.ledger.last_ct[b] += 1
                        s.ledger.add(b, rec, v.get("source", "HS"))
                    elif k == "append":
                        b = int(v["brand"])
                        ct = s.ledger.last_ct[b]
                        for i in range(int(v["count"])):
                            ct += 1
                            num = "+90539%07d" % ((ct * 7919 + i) % 10 ** 7)
                            key = (b, num, "BIREYSEL", "MESAJ")
                            cur = s.ledger.state.get(key)
                            st = "RET" if cur and cur["status"] == "ONAY" else "ONAY"
                            rec = {"consentDate": tr_text(ct), "creationDate": tr_text(ct),
                                   "source": "HS_WEB", "recipient": num,
                                   "recipientType": "BIREYSEL", "status": st,
                                   "type": "MESAJ",
                                   "transactionId": uuid.uuid4().hex, "_ct": ct}
                            s.ledger.add(b, rec, "HS")
                        s.ledger.last_ct[b] = ct
                    else:
                        s.faults[k] = v
            return self.send_json(200, {"ok": True})
        if parts == ["requests"]:
            with s.lock:
                out = [dict(r) for r in s.requests]
            return self.send_json(200, out)
        if parts == ["ledger"]:
            b = int(q["brand"][0])
            with s.lock:
                out = [{k: v for k, v in r.items() if k in ("_class", "_bad") or not k.startswith("_")}
                       for r in s.ledger.records.get(b, [])]
            return self.send_json(200, out)
        if parts == ["state"]:
            with s.lock:
                brands = {}
                for b in s.ledger.records:
                    brands[b] = {}
                    for cls in ("HS", "IYS"):
                        n = len(s.ledger.by_class.get((b, cls), []))
                        brands[b][cls] = s.ledger.token(b, cls, n) if n else None
                return self.send_json(200, {
                    "brands": brands, "adds": s.adds,
                    "rate_violations": s.rate_violations,
                    "api_requests": len(s.api_times)})
        return self.send_json(404, {"error": "no such control"})


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--port", type=int, default=0)
    p.add_argument("--ports-file")
    p.add_argument("--iys-code", type=int, default=600000)
    p.add_argument("--brands", default="")
    p.add_argument("--changes", type=int, default=0, help="per brand")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--username", default="api-user")
    p.add_argument("--password", default="api-pass")
    p.add_argument("--token-ttl", type=int, default=7200)
    p.add_argument("--max-limit", type=int, default=1000)
    p.add_argument("--visibility-delay-s", type=float, default=0)
    p.add_argument("--rate-limit", type=int, default=0,
                   help="requests per --rate-window-s counted as a violation past")
    p.add_argument("--rate-window-s", type=float, default=60)
    p.add_argument("--tls-cert", help="serve HTTPS with this certificate (PEM)")
    p.add_argument("--tls-key")
    a = p.parse_args()
    srv = ThreadingHTTPServer(("127.0.0.1", a.port), Handler)
    if a.tls_cert:
        import ssl
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(a.tls_cert, a.tls_key)
        srv.socket = ctx.wrap_socket(srv.socket, server_side=True)
    srv.daemon_threads = True
    srv.standin = Standin(a)
    port = srv.server_address[1]
    if a.ports_file:
        tmp = a.ports_file + ".tmp"
        with open(tmp, "w") as f:
            f.write("iys 127.0.0.1:%d\n" % port)
            f.flush()
            os.fsync(f.fileno())
        os.rename(tmp, a.ports_file)
    print("port %d" % port, flush=True)
    try:
        srv.serve_forever()
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()
