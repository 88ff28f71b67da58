"""Installing consentd (packaging/, make install, make deb).

The example config packaging/consentd.conf is checked on every run: it
names every flag of consentd --help, and with its commented defaults all
uncommented a server starts on it. The package test itself installs a
system package, so it runs only when CONSENTD_INSTALL_TEST=1 (.ci/run sets
it for its make test leg), as root: make deb, dpkg -i, the installed
consentd --help, systemd-analyze verify on the installed unit, the consentd
user and /var/lib/consentd, the installed server run as that user on the
installed config (READY=1 to a socket standing in for NOTIFY_SOCKET), then
dpkg -r and dpkg -P leaving nothing of it behind."""

import os
import pwd
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import time

import pytest

import helpers
from helpers import LOOPBACK

EXAMPLE = os.path.join(helpers.ROOT, "packaging", "consentd.conf")
UNIT = "/lib/systemd/system/consentd.service"


def help_flags():
    out = subprocess.run([helpers.binary("consentd"), "--help"],
                         stdout=subprocess.PIPE, check=True).stdout.decode()
    return set(re.findall(r"^  --([a-z0-9-]+)", out, re.M)) - {"help", "config"}


def example_settings():
    """name -> value of every line, commented or not, of the example."""
    got = {}
    with open(EXAMPLE) as f:
        for line in f:
            m = re.match(r"^#?([a-z][a-z0-9-]*) (\S.*)$", line.rstrip("\n"))
            if m:
                got[m.group(1)] = m.group(2)
    return got


def test_example_config_names_every_flag():
    missing = help_flags() - set(example_settings())
    assert not missing, "packaging/consentd.conf lacks %s" % sorted(missing)
    extra = set(example_settings()) - help_flags()
    assert not extra, "packaging/consentd.conf names no flag: %s" % sorted(extra)


def test_example_config_defaults_start(env):
    """Every commented default uncommented (but the snapshot, token, policy
    map and TLS files, which the example only points at): consentd takes
    them all and
    serves; the listeners, workers and data directory come from flags over
    the file."""
    text = []
    with open(EXAMPLE) as f:
        for line in f:
            m = re.match(r"^#([a-z][a-z0-9-]*) ", line)
            if m and m.group(1) not in ("snapshot", "tokens", "policy",
                                        "policy-map", "ports-file",
                                        "tls-cert", "tls-key", "tls-ca",
                                        "tls-listeners", "nats", "nats-consumer"):
                line = line[1:]
            text.append(line)
    conf = os.path.join(env.tmp, "example-defaults.conf")
    with open(conf, "w") as f:
        f.write("".join(text))
    d = env.data_dir()
    s = WithConfig(d, os.path.join(env.tmp, "example-defaults.log"), conf)
    s.start()
    try:
        st, _, _ = s.http_get("/readyz")
        assert st == 200
    finally:
        assert s.stop() == 0, s.log_tail()


# --- the Debian package -------------------------------------------------------

def sh(*args, ok=True, **kw):
    p = subprocess.run(list(args), stdout=subprocess.PIPE,
                       stderr=subprocess.STDOUT, timeout=600, **kw)
    out = p.stdout.decode(errors="replace")
    if ok:
        assert p.returncode == 0, "%s exited %d:\n%s" % (
            " ".join(args), p.returncode, out[-3000:])
    return p.returncode, out


def installed():
    p = subprocess.run(["dpkg-query", "-W", "-f=${Status}", "consentd"],
                       stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    return p.returncode == 0 and b"installed" in p.stdout.split()[-1:]


def version():
    with open(os.path.join(helpers.ROOT, "Makefile")) as f:
        return re.search(r"^VERSION := (\S+)$", f.read(), re.M).group(1)


class WithConfig(helpers.Server):
    """The harness's server with --config FILE first (its own flags, the
    ports among them, over the file's)."""

    def __init__(self, data_dir, log_path, conf):
        super().__init__(data_dir, log_path)
        self.conf = conf

    @property
    def args(self):
        a = helpers.Server.args.fget(self)
        return [a[0], "--config", self.conf] + a[1:]


def run_installed(env, tmp):
    """The installed consentd as the consentd user on the installed config,
    over a generation built by the installed consentctl, on ports of its
    choosing (port 0, read back from its ports file)."""
    sh("/usr/bin/consentctl", "build", "--snapshot", env.snapshot, "--out",
       "/var/lib/consentd")
    sh("chown", "-R", "consentd:consentd", "/var/lib/consentd")
    os.chmod(tmp, 0o755)
    path = os.path.join(tmp, "notify.sock")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(path)
    os.chmod(path, 0o777)
    sock.settimeout(30)
    # Port 0 everywhere; the server (as consentd) says where in a ports
    # file in a directory of its own.
    run = os.path.join(tmp, "run")
    os.mkdir(run)
    user = pwd.getpwnam("consentd")
    os.chown(run, user.pw_uid, user.pw_gid)
    ports_file = os.path.join(run, "ports")
    log = open(os.path.join(tmp, "installed.log"), "wb")
    proc = subprocess.Popen(
        ["setpriv", "--reuid=consentd", "--regid=consentd", "--clear-groups",
         "/usr/bin/consentd", "--config", "/etc/consentd/consentd.conf",
         "--rpc", "%s:0" % LOOPBACK, "--resp", "%s:0" % LOOPBACK,
         "--http", "%s:0" % LOOPBACK, "--grpc", "%s:0" % LOOPBACK,
         "--ports-file", ports_file,
         "--workers", "2"],
        env=dict(os.environ, NOTIFY_SOCKET=path), stdout=log,
        stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    try:
        msg = sock.recv(4096).decode()
        assert msg.startswith("READY=1\n"), msg
        srv = helpers.Server("/var/lib/consentd", log.name)
        srv.http = helpers.read_ports(ports_file)["http"][1]
        st, _, _ = srv.http_get("/readyz")
        assert st == 200
        proc.send_signal(signal.SIGTERM)
        assert sock.recv(4096).decode().startswith("STOPPING=1")
        assert proc.wait(60) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        log.close()
        sock.close()
        with open(log.name, "rb") as f:
            print(f.read().decode(errors="replace"))
    st = os.stat("/var/lib/consentd/changes")
    assert st.st_uid == pwd.getpwnam("consentd").pw_uid, \
        "the change log is not the consentd user's"


def test_deb_installs_and_removes_cleanly(env):
    if os.environ.get("CONSENTD_INSTALL_TEST") != "1":
        pytest.skip("installs a system package: set CONSENTD_INSTALL_TEST=1")
    if os.geteuid() != 0:
        pytest.fail("CONSENTD_INSTALL_TEST=1 needs root (dpkg -i)")
    if installed():
        pytest.fail("a consentd package is installed already: not replacing "
                    "it (dpkg -P consentd first)")
    build = helpers.build_dir()
    deb = os.path.join(build, "consentd_%s_%s.deb" % (
        version(), sh("dpkg", "--print-architecture")[1].strip()))
    sh("make", "--no-print-directory", "deb", "BUILD=" + build,
       cwd=helpers.ROOT)
    assert os.path.isfile(deb), deb
    tmp = tempfile.mkdtemp(prefix="consentd-install-")
    try:
        sh("dpkg", "-i", deb)
        assert installed()
        rc, out = sh("/usr/bin/consentd", "--help")
        assert "--config" in out and "--data-dir" in out
        sh("/usr/bin/consentctl", "help")
        # systemd-analyze verify exits 0 on mere warnings: none may show.
        rc, out = sh("systemd-analyze", "verify", UNIT)
        assert out.strip() == "", "systemd-analyze verify says:\n" + out
        sh("id", "consentd")
        st = os.stat("/var/lib/consentd")
        assert st.st_uid == pwd.getpwnam("consentd").pw_uid
        assert st.st_mode & 0o777 == 0o750, oct(st.st_mode)
        assert os.path.isfile("/etc/consentd/consentd.conf")
        if shutil.which("help2man"):
            assert os.path.isfile("/usr/share/man/man1/consentd.1.gz")
        run_installed(env, tmp)

        sh("dpkg", "-r", "consentd")
        for p in ("/usr/bin/consentd", "/usr/bin/consentctl", UNIT):
            assert not os.path.exists(p), "%s left after dpkg -r" % p
        # A removed package keeps its conffile until purged.
        assert os.path.isfile("/etc/consentd/consentd.conf")
        sh("dpkg", "-P", "consentd")
        for p in ("/usr/bin/consentd", "/etc/consentd", "/var/lib/consentd",
                  "/usr/share/doc/consentd"):
            assert not os.path.exists(p), "%s left after dpkg -P" % p
        assert not installed()
    finally:
        if installed() or os.path.exists("/usr/bin/consentd"):
            sh("dpkg", "-P", "consentd", ok=False)
        shutil.rmtree(tmp, ignore_errors=True)
