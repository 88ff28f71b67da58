"""Postfix policy delegation (DESIGN 11), for real: Debian's Postfix runs
as a private instance (its own config, queue, data and mail directories in
a temporary directory; SMTP on 127.0.0.1 only; nothing of the system's
mail set-up is read or started) with

    smtpd_recipient_restrictions = check_policy_service inet:127.0.0.1:P,
                                   permit_mynetworks, reject

against a consentd serving the e2e dataset with --policy. Python's smtplib
sends the mail: RET and no-consent recipients are refused at RCPT with
550 5.7.1, ONAY recipients are accepted and delivered into a mailbox
file, mail from an informational (or an unmapped) sender passes, and with
consentd stopped Postfix answers its smtpd_policy_service_default_action
(451 4.3.0), never an accept."""

import os
import shutil
import smtplib
import socket
import subprocess
import tempfile
import time

import pytest

import helpers
from helpers import EPOSTA, BIREYSEL, TICARI, BILGILENDIRME, ONAY, RET

POSTFIX = "/usr/sbin/postfix"
DEFAULT_ACTION = "451 4.3.0 policy service unavailable"
COMMERCIAL = "news@shop.test"       # mapped by its domain: TICARI
INFORMATIONAL = "info@bank.test"    # mapped by its address: BILGILENDIRME
UNMAPPED = "someone@elsewhere.test"
IYS = "(\u0130YS)"


def pick_records(o):
    """A brand with an ONAY and a RET e-mail record (BIREYSEL), and an
    address of the ONAY one's domain with no record for that brand."""
    onay, ret = {}, {}
    for k in o.find(status=ONAY, channel=EPOSTA, rtype=BIREYSEL):
        onay.setdefault(k[0], []).append(k[1])
    for k in o.find(status=RET, channel=EPOSTA, rtype=BIREYSEL):
        ret.setdefault(k[0], []).append(k[1])
    for brand in sorted(onay):
        for r in ret.get(brand, []):
            if r != onay[brand][0]:
                yes = onay[brand][0]
                none = "nobody.%s@%s" % (os.urandom(4).hex(),
                                         yes.split("@")[1])
                return brand, yes, r, none
    raise AssertionError("the dataset has no brand with both an ONAY and "
                         "a RET e-mail record")



def unused_port():
    """A loopback port nobody holds this instant (bind port 0, close). Only
    for Postfix, which cannot be given a bound socket; its caller retries
    when the port is taken meanwhile. consentd itself binds port 0."""
    with socket.socket() as s:
        s.bind((helpers.LOOPBACK, 0))
        return s.getsockname()[1]

class Postfix:
    """A private Postfix instance under root (a 0755 temporary directory:
    Postfix's daemons run as the postfix user and must reach it)."""

    def __init__(self, root, policy_port, recipients):
        self.root = root
        self.etc = os.path.join(root, "etc")
        self.mail = os.path.join(root, "mail")
        self.log = os.path.join(root, "maillog")
        self.policy_port = policy_port
        self.boxes = {}  # recipient -> mailbox file
        self.banner = "consentd-e2e-%s" % os.urandom(6).hex()
        self.port = None
        os.makedirs(self.etc)
        os.makedirs(self.mail)
        # Postfix makes its queue's subdirectories (and data_directory)
        # at start, with their owners; the queue directory itself is
        # root's.
        os.makedirs(os.path.join(root, "queue"))
        nobody = 65534
        os.chown(self.mail, nobody, nobody)
        with open(os.path.join(self.etc, "vmailbox"), "w") as f:
            for i, r in enumerate(recipients):
                self.boxes[r] = os.path.join(self.mail, "box%d" % i)
                f.write("%s box%d\n" % (r, i))
        domains = sorted({r.split("@")[1] for r in recipients})
        main_cf = {
            "compatibility_level": "3.6",
            "queue_directory": os.path.join(root, "queue"),
            "data_directory": os.path.join(root, "data"),
            "maillog_file": self.log,
            "maillog_file_prefixes": root,
            "myhostname": "consentd-e2e.test",
            "mydomain": "test",
            "mydestination": "",
            "inet_interfaces": "loopback-only",
            "inet_protocols": "ipv4",
            "mynetworks": "127.0.0.0/8",
            "alias_maps": "",
            "alias_database": "",
            "relayhost": "",
            "smtpd_banner": "$myhostname ESMTP %s" % self.banner,
            "virtual_mailbox_domains": " ".join(domains),
            "virtual_mailbox_maps": "texthash:%s" % os.path.join(
                self.etc, "vmailbox"),
            "virtual_mailbox_base": self.mail,
            "virtual_uid_maps": "static:%d" % nobody,
            "virtual_gid_maps": "static:%d" % nobody,
            "smtpd_recipient_restrictions":
                "check_policy_service inet:%s:%d, permit_mynetworks, reject"
                % (helpers.LOOPBACK, policy_port),
            "smtpd_policy_service_default_action": DEFAULT_ACTION,
        }
        with open(os.path.join(self.etc, "main.cf"), "w") as f:
            for k, v in main_cf.items():
                f.write("%s = %s\n" % (k, v))

    def _write_master_cf(self):
        # The smtpd listener is the only inet service; every other one is
        # a UNIX socket inside the queue directory. No chroot.
        services = [
            ("%s:%d" % (helpers.LOOPBACK, self.port), "inet", "n", "-", "-",
             "smtpd"),
            ("pickup", "unix", "n", "-", "1", "pickup"),
            ("cleanup", "unix", "n", "-", "0", "cleanup"),
            ("qmgr", "unix", "n", "-", "1", "qmgr"),
            ("rewrite", "unix", "-", "-", "-", "trivial-rewrite"),
            ("bounce", "unix", "-", "-", "0", "bounce"),
            ("defer", "unix", "-", "-", "0", "bounce"),
            ("trace", "unix", "-", "-", "0", "bounce"),
            ("verify", "unix", "-", "-", "1", "verify"),
            ("flush", "unix", "n", "-", "0", "flush"),
            ("proxymap", "unix", "-", "-", "-", "proxymap"),
            ("smtp", "unix", "-", "-", "-", "smtp"),
            ("error", "unix", "-", "-", "-", "error"),
            ("retry", "unix", "-", "-", "-", "error"),
            ("discard", "unix", "-", "-", "-", "discard"),
            ("virtual", "unix", "-", "n", "-", "virtual"),
            ("anvil", "unix", "-", "-", "1", "anvil"),
            ("scache", "unix", "-", "-", "1", "scache"),
            ("showq", "unix", "n", "-", "-", "showq"),
            ("postlog", "unix-dgram", "n", "-", "1", "postlogd"),
        ]
        with open(os.path.join(self.etc, "master.cf"), "w") as f:
            for name, kind, private, unpriv, limit, cmd in services:
                f.write("%s %s %s %s n - %s %s\n" % (
                    name, kind, private, unpriv, limit, cmd))

    def postfix(self, *args, check=True):
        p = subprocess.run([POSTFIX, "-c", self.etc] + list(args),
                           stdin=subprocess.DEVNULL, capture_output=True,
                           timeout=60)
        if check and p.returncode != 0:
            raise AssertionError("postfix %s exited %d: %s\n%s" % (
                " ".join(args), p.returncode,
                (p.stdout + p.stderr).decode(errors="replace"),
                self.log_tail()))
        return p

    def log_tail(self, n=4000):
        try:
            with open(self.log, "rb") as f:
                return f.read()[-n:].decode(errors="replace")
        except OSError:
            return ""

    def master_pid(self):
        try:
            with open(os.path.join(self.root, "queue", "pid",
                                   "master.pid")) as f:
                return int(f.read().split()[0])
        except (OSError, ValueError, IndexError):
            return None

    def _banner_ok(self, timeout=15.0):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                with socket.create_connection((helpers.LOOPBACK, self.port),
                                              timeout=5) as s:
                    return self.banner.encode() in s.recv(512)
            except OSError:
                if "in use" in self.log_tail().lower():
                    return False
                time.sleep(0.1)
        return False

    def start(self):
        """Starts on a free port. Postfix cannot take a socket bound by
        someone else, so the port is picked by binding port 0 and closing
        it; if another process takes it meanwhile (Postfix's bind fails,
        or our banner is not the one answering), start again on a new
        one."""
        for attempt in range(5):
            self.port = unused_port()
            self._write_master_cf()
            self.postfix("start", check=False)
            if self._banner_ok():
                return self
            in_use = "in use" in self.log_tail().lower()
            self.stop()
            if not in_use:
                break
        raise AssertionError("postfix did not start\n" + self.log_tail())

    def stop(self):
        """postfix stop, and make sure its master is gone (killed if it
        outlives the wait: it is ours)."""
        pid = self.master_pid()
        self.postfix("stop", check=False)
        deadline = time.monotonic() + 15
        while pid is not None:
            try:
                os.kill(pid, 0)
            except ProcessLookupError:
                return
            if time.monotonic() > deadline:
                os.kill(pid, 9)
                deadline = time.monotonic() + 15
            time.sleep(0.1)

    def smtp(self):
        s = smtplib.SMTP(helpers.LOOPBACK, self.port, timeout=60)
        s.ehlo("client.test")
        return s

    def wait_delivered(self, rcpt, token, timeout=30.0):
        box = self.boxes[rcpt]
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                with open(box, "rb") as f:
                    if token.encode() in f.read():
                        return
            except OSError:
                pass
            time.sleep(0.1)
        raise AssertionError("no mail with %s in %s's mailbox\n%s" % (
            token, rcpt, self.log_tail()))

    def mailbox(self, rcpt):
        try:
            with open(self.boxes[rcpt], "rb") as f:
                return f.read()
        except OSError:
            return b""


class Mail:
    pass


@pytest.fixture(scope="module")
def mail(env):
    if not os.access(POSTFIX, os.X_OK):
        pytest.fail("%s is not installed (make deps installs it)" % POSTFIX)
    if os.geteuid() != 0:
        pytest.skip("a private Postfix instance needs root to start")
    m = Mail()
    m.brand, m.yes, m.ret, m.none = pick_records(env.oracle)
    o = env.oracle
    assert o.expect(m.yes, m.brand, EPOSTA, BIREYSEL, TICARI).allow
    assert o.expect(m.ret, m.brand, EPOSTA, BIREYSEL, TICARI).reason == 2
    assert o.expect(m.none, m.brand, EPOSTA, BIREYSEL, TICARI).reason == 3
    map_path = os.path.join(env.tmp, "policy.map")
    with open(map_path, "w") as f:
        f.write("# senders -> brands\n"
                "@shop.test %d\n"
                "%s %d BILGILENDIRME\n" % (m.brand, INFORMATIONAL, m.brand))
    m.server = env.server(name="consentd-policy", policy_map=map_path)
    root = tempfile.mkdtemp(prefix="consentd-postfix-")
    os.chmod(root, 0o755)
    m.postfix = None
    try:
        m.postfix = Postfix(root, m.server.policy,
                            [m.yes, m.ret, m.none]).start()
        yield m
    finally:
        if m.postfix is not None:
            m.postfix.stop()
        if m.server.alive():
            assert m.server.stop() == 0, m.server.log_tail()
        shutil.rmtree(root, ignore_errors=True)


def send(s, sender, rcpts, token):
    """MAIL, one RCPT each, DATA if any was accepted; the RCPT replies."""
    code, msg = s.mail(sender)
    assert code == 250, (code, msg)
    replies = [s.rcpt(r) for r in rcpts]
    if any(c == 250 for c, _ in replies):
        code, msg = s.data("Subject: %s\r\nFrom: %s\r\n\r\n%s\r\n" % (
            token, sender, token))
        assert code == 250, (code, msg)
    else:
        s.rset()
    return replies


def refused(reply, reason):
    code, msg = reply
    text = msg.decode("utf-8", errors="replace")
    return code == 550 and text.startswith("5.7.1 ") and reason in text \
        and IYS in text


def test_onay_accepted_and_delivered(mail):
    token = "onay-" + os.urandom(6).hex()
    with mail.postfix.smtp() as s:
        (reply,) = send(s, COMMERCIAL, [mail.yes], token)
    assert reply[0] == 250, reply
    mail.postfix.wait_delivered(mail.yes, token)


def test_ret_and_no_consent_refused_at_rcpt(mail):
    token = "mixed-" + os.urandom(6).hex()
    with mail.postfix.smtp() as s:
        yes, ret, none = send(s, COMMERCIAL, [mail.yes, mail.ret, mail.none],
                              token)
    assert yes[0] == 250, yes
    assert refused(ret, "CONSENT_REJECTED"), ret
    assert refused(none, "NO_CONSENT"), none
    # The message went to the ONAY recipient only.
    mail.postfix.wait_delivered(mail.yes, token)
    assert token.encode() not in mail.postfix.mailbox(mail.ret)
    assert token.encode() not in mail.postfix.mailbox(mail.none)
    # Sender case does not matter: the domain map is case-insensitive.
    with mail.postfix.smtp() as s:
        (ret,) = send(s, "News@SHOP.Test", [mail.ret], token)
    assert refused(ret, "CONSENT_REJECTED"), ret


def test_informational_and_unmapped_senders_pass(mail):
    for sender in (INFORMATIONAL, UNMAPPED):
        token = "pass-" + os.urandom(6).hex()
        with mail.postfix.smtp() as s:
            ret, none = send(s, sender, [mail.ret, mail.none], token)
        assert ret[0] == 250 and none[0] == 250, (sender, ret, none)
        mail.postfix.wait_delivered(mail.ret, token)
        mail.postfix.wait_delivered(mail.none, token)


def test_metrics(mail):
    names = [("consentd_checks_total", dict(protocol="policy", reason=r))
             for r in ("CONSENT_GIVEN", "CONSENT_REJECTED", "NO_CONSENT",
                       "NOT_COMMERCIAL")]
    names += [(n, {}) for n in ("consentd_policy_requests_total",
                                "consentd_policy_rejected_total",
                                "consentd_policy_unmapped_total")]
    names.append(("consentd_request_latency_seconds_count",
                  dict(protocol="policy")))

    def sample():
        m = mail.server.metrics()
        return [m.total(n, **lab) for n, lab in names]

    before = sample()
    with mail.postfix.smtp() as s:
        send(s, COMMERCIAL, [mail.yes, mail.ret, mail.none], "m1")
        send(s, INFORMATIONAL, [mail.ret], "m2")
        send(s, UNMAPPED, [mail.yes], "m3")
    after = sample()
    # Postfix asks once per RCPT (the policy service is only in
    # smtpd_recipient_restrictions): five requests, four checked.
    want = [1, 1, 1, 1, 5, 2, 1, 5]
    got = [a - b for a, b in zip(after, before)]
    assert got == want, list(zip(names, got, want))


def test_bad_map_stops_start_up(env):
    """A map with a bad line, or --policy without a map: exit 2 before
    anything listens, naming the line."""
    d = env.data_dir()
    bad = os.path.join(env.tmp, "bad-policy.map")
    with open(bad, "w") as f:
        f.write("# ok so far\n@shop.test 600123\nnews@shop.test 0\n")
    base = [helpers.binary("consentd"), "--data-dir", d, "--workers", "1",
            "--rpc", "127.0.0.1:0", "--resp", "127.0.0.1:0",
            "--http", "127.0.0.1:0", "--grpc", "127.0.0.1:0",
            "--policy", "127.0.0.1:0"]
    for extra, words in (
            (["--policy-map", bad], "line 3: brand code: 0 is not a brand"),
            ([], "--policy-map FILE go together")):
        p = subprocess.run(base + extra, stdin=subprocess.DEVNULL,
                           capture_output=True, timeout=30)
        err = p.stderr.decode(errors="replace")
        assert p.returncode == 2 and words in err, (p.returncode, err)
        assert "listening" not in err, err


def test_consentd_stopped_is_the_default_action(mail):
    """Last: stops this module's consentd."""
    assert mail.server.stop() == 0, mail.server.log_tail()
    for sender in (COMMERCIAL, UNMAPPED):
        with mail.postfix.smtp() as s:
            (reply,) = send(s, sender, [mail.yes], "down")
        code, msg = reply
        assert code == 451 and msg.startswith(b"4.3.0 ") and \
            b"policy service unavailable" in msg, reply
