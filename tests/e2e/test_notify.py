"""consentd under a service manager (systemd's Type=notify, sd_notify(3))
and from a config file: a Python datagram socket stands in for
NOTIFY_SOCKET and gets READY=1 (with a STATUS line) only once the server
answers checks, WATCHDOG=1 at half of WATCHDOG_USEC when WATCHDOG_PID is
the server's, and STOPPING=1 on SIGTERM. --config sets what the flags set,
the command line overriding it; a bad line is refused naming FILE:LINE."""

import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time

import pytest

import helpers
from helpers import LOOPBACK, TACIR, NO_CONSENT, Rpc, assert_verdict


class Manager:
    """The service manager's end: a datagram socket, each message with the
    monotonic time it arrived."""

    def __init__(self, tmp):
        self.path = os.path.join(tmp, "notify.sock")
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(self.path)
        self.got = []  # (time, {field: value})

    def close(self):
        self.sock.close()

    def recv(self, timeout):
        """The next message as a dict, or None after timeout seconds."""
        self.sock.settimeout(max(timeout, 0.001))
        try:
            data = self.sock.recv(4096)
        except socket.timeout:
            return None
        fields = dict(line.split("=", 1) for line in data.decode().splitlines())
        self.got.append((time.monotonic(), fields))
        return fields

    def wait_for(self, field, timeout):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            m = self.recv(deadline - time.monotonic())
            if m is not None and field in m:
                return m
        return None


class NotifiedServer(helpers.Server):
    """A consentd started as systemd starts a Type=notify service: with
    NOTIFY_SOCKET and, given watchdog_usec, WATCHDOG_USEC and WATCHDOG_PID
    (the shell's pid, which exec hands to consentd, unless watchdog_pid
    names another). Does not wait for readiness: the tests do."""

    def __init__(self, data_dir, log_path, manager, extra=(),
                 watchdog_usec=None, watchdog_pid=None):
        super().__init__(data_dir, log_path, extra=extra)
        self.env = dict(os.environ, NOTIFY_SOCKET=manager.path)
        self.env.pop("WATCHDOG_USEC", None)
        self.env.pop("WATCHDOG_PID", None)
        if watchdog_usec is not None:
            self.env["WATCHDOG_USEC"] = str(watchdog_usec)
        self.watchdog_pid = watchdog_pid

    def spawn(self, stdin=subprocess.DEVNULL):
        pid = "$$" if self.watchdog_pid is None else str(self.watchdog_pid)
        wrapper = ["/bin/sh", "-c", 'WATCHDOG_PID=%s exec "$@"' % pid, "sh"]
        if "WATCHDOG_USEC" not in self.env:
            wrapper = []
        self.log = open(self.log_path, "ab")
        try:
            os.unlink(self.ports_path)
        except FileNotFoundError:
            pass
        self.proc = subprocess.Popen(wrapper + self.args, stdin=stdin,
                                     stdout=self.log, stderr=subprocess.STDOUT,
                                     env=self.env, preexec_fn=helpers._preexec)
        return self.wait_ports()


@pytest.fixture
def manager():
    tmp = tempfile.mkdtemp(prefix="consentd-notify-")
    m = Manager(tmp)
    try:
        yield m
    finally:
        m.close()
        shutil.rmtree(tmp, ignore_errors=True)


def a_record(env):
    key = sorted(env.oracle.records)[len(env.oracle.records) // 2]
    brand, rec, rtype, channel = key
    return key, env.oracle.expect(rec, brand, channel, rtype)


def check_answers(env, server):
    (brand, rec, rtype, channel), exp = a_record(env)
    with Rpc(env.pb, server.rpc, timeout=5.0) as c:
        assert_verdict(c.check_one(rec, brand, channel, rtype), exp,
                       "the check right after READY=1")


def stop_with_stopping(server, manager):
    server.proc.send_signal(signal.SIGTERM)
    m = manager.wait_for("STOPPING", 20)
    rc = server.stop()
    assert m is not None and m["STOPPING"] == "1", \
        "no STOPPING=1 on SIGTERM: %s\n%s" % (manager.got, server.log_tail())
    assert rc == 0, "exit %s\n%s" % (rc, server.log_tail())


def test_ready_only_once_the_first_build_is_served(env, manager):
    """An empty data directory and --snapshot - : the listeners come up
    while the snapshot is still arriving on stdin, and /readyz says no
    index; no READY=1 is sent then. Once the rest of the stream arrives
    and the generation is built, READY=1 comes with a STATUS naming
    generation 1 and its record count, and a check answered at once holds
    the record's verdict. SIGTERM sends STOPPING=1."""
    d = os.path.join(env.tmp, "notify-empty")
    os.mkdir(d)
    with open(env.snapshot, "rb") as f:
        stream = f.read()
    s = NotifiedServer(d, os.path.join(env.tmp, "notify-build.log"), manager,
                       extra=["--snapshot", "-"])
    s.spawn(stdin=subprocess.PIPE)
    try:
        s.proc.stdin.write(stream[:-64])
        s.proc.stdin.flush()
        deadline = time.monotonic() + 30
        readyz = None
        while time.monotonic() < deadline:
            assert s.alive(), "consentd exited\n" + s.log_tail()
            try:
                readyz = s.http_get("/readyz", timeout=1.0)
                break
            except OSError:
                time.sleep(0.05)
        assert readyz is not None and readyz[0] == 503, \
            "/readyz before the snapshot ends: %s" % (readyz,)
        # The server is up and not ready: whatever it sent must not be READY.
        while manager.recv(0.3) is not None:
            pass
        assert not any("READY" in m for _, m in manager.got), \
            "READY=1 before an index is served: %s" % manager.got
        s.proc.stdin.write(stream[-64:])
        s.proc.stdin.close()
        m = manager.wait_for("READY", 60)
        assert m is not None, "no READY=1\n" + s.log_tail()
        st, _, body = s.http_get("/readyz")
        assert st == 200, "READY=1 sent but /readyz %d %s" % (st, body)
        check_answers(env, s)
        assert m["READY"] == "1"
        assert m.get("STATUS") == "serving generation 1, %d records" % len(
            env.oracle), "STATUS %r" % m.get("STATUS")
        # Without WATCHDOG_USEC no watchdog pings.
        assert not any("WATCHDOG" in x for _, x in manager.got)
        stop_with_stopping(s, manager)
    finally:
        s.kill()


def test_ready_at_start_and_watchdog(env, manager):
    """A data directory with a generation: READY=1 with its STATUS, the
    server answering; with WATCHDOG_USEC=1 s and WATCHDOG_PID its own pid,
    WATCHDOG=1 about every 0.5 s (the signal loop wakes every 0.1 s)."""
    s = NotifiedServer(env.data_dir(), os.path.join(env.tmp, "notify-wd.log"),
                       manager, watchdog_usec=1000000).spawn()
    try:
        m = manager.wait_for("READY", 30)
        assert m is not None, "no READY=1\n" + s.log_tail()
        assert m.get("STATUS") == "serving generation 1, %d records" % len(
            env.oracle), "STATUS %r" % m.get("STATUS")
        check_answers(env, s)
        pings = []
        deadline = time.monotonic() + 2.2
        while time.monotonic() < deadline:
            if manager.recv(deadline - time.monotonic()) is not None:
                t, fields = manager.got[-1]
                if fields.get("WATCHDOG") == "1":
                    pings.append(t)
        assert len(pings) >= 3, "%d watchdog pings in 2.2 s: %s\n%s" % (
            len(pings), manager.got, s.log_tail())
        gaps = [b - a for a, b in zip(pings, pings[1:])]
        assert all(0.4 <= g <= 0.8 for g in gaps), "ping gaps %s" % gaps
        stop_with_stopping(s, manager)
    finally:
        s.kill()


def test_no_watchdog_for_another_pid(env, manager):
    """WATCHDOG_PID naming another process: the watchdog is not ours, so
    no WATCHDOG=1 (sd_watchdog_enabled(3)); READY=1 still comes."""
    s = NotifiedServer(env.data_dir(), os.path.join(env.tmp, "notify-pid.log"),
                       manager, watchdog_usec=200000, watchdog_pid=1).spawn()
    try:
        assert manager.wait_for("READY", 30) is not None, s.log_tail()
        while manager.recv(1.0) is not None:
            pass
        assert not any("WATCHDOG" in m for _, m in manager.got), manager.got
        stop_with_stopping(s, manager)
    finally:
        s.kill()


# --- --config FILE ------------------------------------------------------------

def write(path, text):
    with open(path, "w") as f:
        f.write(text)
    return path


class ConfigServer(helpers.Server):
    """consentd given only --config FILE and the flags in over (the file
    names the ports, port 0, and the ports file, this server's own)."""

    def __init__(self, data_dir, log_path, conf, over=()):
        super().__init__(data_dir, log_path)
        self.conf, self.over = conf, list(over)

    @property
    def args(self):
        return [helpers.binary("consentd"), "--config", self.conf] + self.over


def test_config_file_and_flags_over_it(env):
    """A config file sets the data directory, the three ports, the
    workers and merchant-default deny (in the three line forms, with
    comments); --workers on the command line overrides the file's."""
    d = env.data_dir()
    conf = write(os.path.join(env.tmp, "consentd.conf"), (
        "# consentd test config\n"
        "\n"
        "data-dir %s\n"
        "rpc = %s:%d\n"
        "resp=%s:%d   # the Redis port\n"
        "http %s:%d\n"
        "workers 3\n"
        "merchant-default deny\n"
        "ports-file %s\n") % (d, LOOPBACK, 0, LOOPBACK, 0, LOOPBACK, 0,
                              os.path.join(env.tmp, "config.log.ports")))
    s = ConfigServer(d, os.path.join(env.tmp, "config.log"), conf,
                     ["--workers", "2"])
    s.start()
    try:
        assert "(2 workers)" in s.log_tail(), s.log_tail()
        assert "(3 workers)" not in s.log_tail()
        # merchant-default deny from the file: a TACIR with no record.
        o = env.oracle
        key = o.find(rtype=TACIR, email=False)[0]
        with Rpc(env.pb, s.rpc) as c:
            v = c.check_one(key[1], o.absent_brand(), key[3], TACIR)
        assert_verdict(v, helpers.Expected(False, NO_CONSENT), "deny by file")
        st, _, _ = s.http_get("/healthz")
        assert st == 200
        with helpers.Resp(s.resp) as r:
            assert r.cmd("PING") == "PONG"
    finally:
        assert s.stop() == 0, s.log_tail()


@pytest.mark.parametrize("text,line,says", [
    ("workers 2\n# c\nbogus 1\n", 3, "unknown name 'bogus'"),
    ("workers lots\n", 1, "--workers wants a whole number"),
    ("\nmerchant-default maybe\n", 2, "--merchant-default must be allow or deny"),
    ("workers\n", 1, "workers needs a value"),
    ("help 1\n", 1, "unknown name 'help'"),
    ("config /etc/other.conf\n", 1, "unknown name 'config'"),
    ("Workers 2\n", 1, "a name is a lower-case letter"),
])
def test_config_refusals(env, text, line, says):
    """A bad line is refused before anything starts, exit 2 (like a bad
    flag), naming the file and the line."""
    conf = write(os.path.join(env.tmp, "bad.conf"), text)
    p = subprocess.run([helpers.binary("consentd"), "--config", conf,
                        "--data-dir", env.tmp], stdout=subprocess.PIPE,
                       stderr=subprocess.PIPE, timeout=30)
    err = p.stderr.decode()
    assert p.returncode == 2, "exit %d: %s" % (p.returncode, err)
    assert "%s:%d: " % (conf, line) in err and says in err, err


def test_config_missing_file(env):
    p = subprocess.run([helpers.binary("consentd"), "--config",
                        os.path.join(env.tmp, "absent.conf")],
                       stdout=subprocess.PIPE, stderr=subprocess.PIPE, timeout=30)
    assert p.returncode == 2
    assert "absent.conf: No such file or directory" in p.stderr.decode()
