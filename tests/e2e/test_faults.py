"""Injected faults (DESIGN 4 and 5.1; reliability.md 4.3 and 4.5): a full
disk while a generation is published, EIO from fsync, an allocation that
fails at every point of consentctl's work, and (once the change log is
wired) a failing change log under Apply. In every case the command fails
with a clear message and an exit code of 1 (never a signal), nothing half
made is published or leaked, and what was served before stays served.

Needs root for the tmpfs mounts and strace for the EIO cases; each skips
with its reason when the machine lacks them. Mounts, processes and temp
directories are released in finalizers even when a test fails.
"""

import concurrent.futures
import hashlib
import os
import re
import shutil
import signal
import subprocess
import tempfile
import time

import pytest

import helpers
from helpers import Rpc

SHIM_SRC = os.path.join(helpers.ROOT, "tests", "fault", "alloc_shim.c")
SMALL_RECORDS = 2000   # the generation that is already there (~76 KiB)
SMALL_SEED = 11
TMPFS_SLACK = 64 << 10  # a tmpfs's room beyond the base copy: inodes, dirs
# Heap blocks a failed run may leave beyond what a clean run leaves at exit
# (libc's and protobuf-c's allocate-once internals are the same in both
# runs, so none is expected).
LEAK_ALLOWANCE = 0
EIO_TEXT = "Input/output error"
ENOSPC_TEXT = "No space left on device"


def ctl(*args, env=None, timeout=60):
    return subprocess.run([helpers.binary("consentctl")] + [str(a) for a in args],
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                          env=env, timeout=timeout)


def out(p):
    return "rc=%d\nstdout: %s\nstderr: %s" % (
        p.returncode, p.stdout.decode(errors="replace")[-1500:],
        p.stderr.decode(errors="replace")[-1500:])


def entries(d):
    return sorted(os.listdir(d))


def digest_tree(d):
    """name -> sha256 of every file under d (the generations' bytes)."""
    out_ = {}
    for root, _, files in os.walk(d):
        for f in files:
            p = os.path.join(root, f)
            with open(p, "rb") as fh:
                out_[os.path.relpath(p, d)] = hashlib.sha256(fh.read()).hexdigest()
    return out_


def gen_name(n):
    return "gen-%020d" % n


class Work:
    """A small snapshot, a data directory holding two generations of it
    (never modified: tests copy it), and its oracle; the session's
    20000-record snapshot is the one that does not fit."""

    def __init__(self, env):
        self.env = env
        self.dir = tempfile.mkdtemp(prefix="faults-", dir=env.tmp)
        self.small = os.path.join(self.dir, "small.bin")
        helpers.run([helpers.binary("consentctl"), "gen", "--records",
                     str(SMALL_RECORDS), "--seed", str(SMALL_SEED), "--out",
                     self.small])
        # Generations 2 and 3, as a server that keeps two leaves a data
        # directory: the next build must make 4 (not reuse a free number).
        self.base = os.path.join(self.dir, "base")
        for _ in range(3):
            helpers.run([helpers.binary("consentctl"), "build", "--snapshot",
                         self.small, "--out", self.base])
        shutil.rmtree(os.path.join(self.base, gen_name(1)))
        # consentctl build into the empty directory began its evidence
        # store (DESIGN 10); later builds leave it as it is.
        self.base_entries = [gen_name(2), gen_name(3), "history"]
        assert entries(self.base) == self.base_entries, entries(self.base)
        self.base_digest = digest_tree(self.base)
        self.base_bytes = tree_bytes(self.base)
        h, consents, t = helpers.read_stream(env.pb, self.small)
        self.consents = consents
        self.oracle = helpers.Oracle(h, consents, t)
        self.big = env.snapshot
        # The sizes of the big snapshot's generation files, to size disks
        # that fill up in the middle of one or the other.
        scratch = os.path.join(self.dir, "big-probe")
        helpers.run([helpers.binary("consentctl"), "build", "--snapshot",
                     self.big, "--out", scratch])
        g = os.path.join(scratch, gen_name(1))
        self.big_sizes = {f: page_up(os.path.getsize(os.path.join(g, f)))
                          for f in ("emails", "index")}
        shutil.rmtree(scratch)
        self.n = 0

    def disk_filling_in(self, name):
        """A tmpfs size that holds a copy of the base and runs out of space
        half-way through the big generation's file name (written in the
        order emails, index)."""
        room = self.big_sizes[name] // 2
        if name == "index":
            room += self.big_sizes["emails"]
        return page_up(self.base_bytes + TMPFS_SLACK + room)

    def copy_base(self, parent=None):
        self.n += 1
        d = os.path.join(parent or self.dir, "d%d" % self.n)
        shutil.copytree(self.base, d)
        return d

    def assert_base_intact(self, d, what):
        """d holds exactly the base's generations, byte for byte, and no
        temp leftovers; consentctl verify passes."""
        assert entries(d) == self.base_entries, \
            "%s: left %s in the data directory" % (what, entries(d))
        assert digest_tree(d) == self.base_digest, \
            "%s: a generation was modified" % what
        v = ctl("verify", d)
        assert v.returncode == 0, "%s: verify fails afterwards\n%s" % (what, out(v))


@pytest.fixture(scope="module")
def work(env):
    w = Work(env)
    try:
        yield w
    finally:
        shutil.rmtree(w.dir, ignore_errors=True)


def page_up(n):
    return (n + 4095) // 4096 * 4096


def tree_bytes(d):
    """Bytes d takes on a tmpfs: its files rounded to pages."""
    return sum(page_up(os.path.getsize(os.path.join(r, f)))
               for r, _, fs in os.walk(d) for f in fs)


@pytest.fixture
def tmpfs(work):
    """mount(size) -> a fresh tmpfs of size bytes; every one is unmounted
    at the end whatever happens. Skips if mounting is not allowed."""
    mounts = []

    def mount(size):
        mnt = tempfile.mkdtemp(prefix="tmpfs-", dir=work.dir)
        p = subprocess.run(["mount", "-t", "tmpfs", "-o",
                            "size=%d,mode=0755" % size, "tmpfs", mnt],
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        if p.returncode != 0:
            os.rmdir(mnt)
            pytest.skip("cannot mount a tmpfs (needs root/CAP_SYS_ADMIN): %s" %
                        p.stderr.decode(errors="replace").strip())
        mounts.append(mnt)
        return mnt

    try:
        yield mount
    finally:
        for mnt in mounts:
            if subprocess.run(["umount", mnt]).returncode != 0:
                subprocess.run(["umount", "-l", mnt])
            os.rmdir(mnt)


# --- ENOSPC ---------------------------------------------------------------------

FILLS = ["emails", "index"]


@pytest.mark.parametrize("fills", FILLS)
def test_enospc_build_leaves_no_half_generation(work, tmpfs, fills):
    """A snapshot too big for the disk (full while writing the new
    generation's emails file, or its index): consentctl build fails with a
    message that says the disk is full, and the data directory holds its
    generations as they were (no partial new one, no temp directory),
    which still verify."""
    small_fs = tmpfs(work.disk_filling_in(fills))
    d = work.copy_base(small_fs)
    p = ctl("build", "--snapshot", work.big, "--out", d)
    assert p.returncode == 1, "build on a full disk: " + out(p)
    err = p.stderr.decode(errors="replace")
    assert ENOSPC_TEXT in err, "the error does not say the disk is full: " + err
    work.assert_base_intact(d, "ENOSPC build")
    # The space came back: nothing of the failed build holds it.
    st = os.statvfs(small_fs)
    used = (st.f_blocks - st.f_bfree) * st.f_frsize
    assert used <= tree_bytes(d) + TMPFS_SLACK, \
        "%d bytes still used on the tmpfs" % used
    # And a build that fits still works there afterwards.
    p = ctl("build", "--snapshot", work.small, "--out", d)
    assert p.returncode == 0, "build after the ENOSPC: " + out(p)
    assert entries(d) == sorted(work.base_entries + [gen_name(4)])


def wait_log(server, pattern, timeout):
    deadline = time.monotonic() + timeout
    while True:
        m = re.search(pattern, server.log_tail(20000))
        if m:
            return m
        assert server.alive(), "consentd died\n" + server.log_tail()
        assert time.monotonic() < deadline, "no %r in the log within %d s\n%s" % (
            pattern, timeout, server.log_tail())
        time.sleep(0.1)


def assert_serves_small(env, work, server, what):
    """Answers are the small snapshot's: its records, and "no record" for the
    big snapshot's others."""
    o = work.oracle
    keys = sorted(o.records)[::97]
    big_only = [k for k in sorted(env.oracle.records)[::211]
                if k not in o.records][:20]
    assert big_only, "the two datasets overlap completely"
    checks = keys + big_only
    with Rpc(env.pb, server.rpc) as c:
        resp = c.check([dict(recipient=k[1], brand_code=k[0], channel=k[3],
                             recipient_type=k[2]) for k in checks])
    for k, v in zip(checks, resp.verdicts):
        helpers.assert_verdict(v, o.expect(k[1], k[0], k[3], k[2]),
                               "%s %s" % (what, k))


@pytest.mark.parametrize("fills", FILLS)
def test_enospc_server_keeps_serving_old_generation(env, work, tmpfs, fills):
    """consentd --snapshot BIG on a data directory (on a small disk) that
    holds generations: the background build fails with ENOSPC, the log
    says so and that the previous generation stays served; answers stay
    the served generation's throughout; /readyz stays 200 (a verified one
    is loaded and no freshness bound is set: a failed rebuild does not
    take a server out of rotation); nothing is left on the disk."""
    d = work.copy_base(tmpfs(work.disk_filling_in(fills)))
    s = helpers.Server(d, os.path.join(work.dir, "enospc-server-%s.log" % fills),
                       extra=["--snapshot", work.big])
    try:
        s.start()
        assert_serves_small(env, work, s, "during the build")
        m = wait_log(s, r"snapshot .*: (.*)", 60)
        line = m.group(0)
        assert ENOSPC_TEXT in line, "the build's failure does not name " \
            "ENOSPC: " + line
        assert "previous generation stays served" in line, line
        assert_serves_small(env, work, s, "after the failed build")
        st, _, body = s.http_get("/readyz")
        assert st == 200, "/readyz %d after a failed rebuild: %r" % (st, body)
        mt = s.metrics()
        assert mt.get("consentd_generation_swaps_total", 0) == 0
        assert mt.get("consentd_generations_built_total", 0) == 0
        assert s.alive()
    finally:
        alive, rc = s.alive(), s.stop()
    assert alive and rc == 0, "exit %s\n%s" % (rc, s.log_tail())
    # The server may have written its own files (a change log); what
    # matters is the generations untouched and no new one or temp dir.
    gens = [e for e in entries(d) if e.startswith("gen-") or "tmp" in e]
    assert gens == [e for e in work.base_entries if e.startswith("gen-")], \
        "left %s" % entries(d)
    for g in gens:
        assert digest_tree(os.path.join(d, g)) == {
            k.split("/", 1)[1]: v for k, v in work.base_digest.items()
            if k.startswith(g + "/")}, "%s was modified" % g
    v = ctl("verify", d)
    assert v.returncode == 0, out(v)


# --- EIO from fsync ---------------------------------------------------------------

def sanitized():
    """True when the binaries under test carry a sanitizer runtime: then
    LeakSanitizer refuses to run under ptrace (strace) and ASan must be
    first in the preload list (the allocation shim). The plain build runs
    these tests; the sanitizer legs skip them."""
    with open(helpers.binary("consentctl"), "rb") as f:
        data = f.read()
    return b"__asan_init" in data or b"__tsan_init" in data


def need_strace():
    if sanitized():
        pytest.skip("sanitizer build: LeakSanitizer cannot run under ptrace")
    path = shutil.which("strace")
    if path is None:
        pytest.skip("strace is not installed (scripts/deps.sh should list it)")
    return path


def traced_sync_calls(work):
    """The fsync/fdatasync/rename calls a clean build into a copy of the
    base makes, in order: [(syscall, first argument)]."""
    strace = need_strace()
    d = work.copy_base()
    log = os.path.join(work.dir, "strace-clean.txt")
    p = subprocess.run([strace, "-f", "-qq", "-o", log, "-e",
                        "trace=fsync,fdatasync,rename,renameat,renameat2",
                        helpers.binary("consentctl"), "build", "--snapshot",
                        work.small, "--out", d],
                       stdout=subprocess.PIPE, stderr=subprocess.PIPE, timeout=60)
    assert p.returncode == 0, "clean traced build: " + out(p)
    calls = []
    with open(log) as f:
        for line in f:
            m = re.match(r"\d+\s+(\w+)\((.*?)[,)]", line)
            if m and m.group(1) in ("fsync", "fdatasync", "rename", "renameat",
                                    "renameat2"):
                calls.append((m.group(1), m.group(2)))
    return calls


def build_with_eio(work, k):
    """Build a new generation with the k-th fsync and the k-th fdatasync
    failing with EIO (strace counts each per thread; the builder syncs
    from one thread)."""
    d = work.copy_base()
    p = subprocess.run([need_strace(), "-f", "-qq", "-o", "/dev/null",
                        "-e", "trace=fsync,fdatasync",
                        "-e", "inject=fsync,fdatasync:error=EIO:when=%d" % k,
                        helpers.binary("consentctl"), "build", "--snapshot",
                        work.small, "--out", d],
                       stdout=subprocess.PIPE, stderr=subprocess.PIPE, timeout=60)
    return d, p


def test_eio_on_fsync_publishes_nothing(work):
    """Every fsync (and fdatasync) a build makes before its generation is
    renamed into place, failed with EIO in turn: the build exits 1 naming
    the I/O error, publishes nothing and leaves no temp directory;
    the generations there stay whole. (The sync after the rename is the next
    test's.)"""
    calls = traced_sync_calls(work)
    syncs = [c for c in calls if c[0] in ("fsync", "fdatasync")]
    assert len(syncs) >= 3, "a build should sync its files and directories: %s" % calls
    # The k-th sync that precedes the final rename into gen-N.
    final_rename = max(i for i, c in enumerate(calls) if c[0].startswith("rename"))
    before = sum(1 for c in calls[:final_rename] if c[0] in ("fsync", "fdatasync"))
    assert before >= 2, calls
    for k in range(1, before + 1):
        d, p = build_with_eio(work, k)
        what = "EIO at sync %d of %d (%s)" % (k, len(syncs), syncs[k - 1])
        assert p.returncode == 1, "%s: %s" % (what, out(p))
        assert EIO_TEXT in p.stderr.decode(errors="replace"), \
            "%s: the error does not name EIO: %s" % (what, out(p))
        work.assert_base_intact(d, what)
        shutil.rmtree(d)


def test_eio_on_directory_fsync_after_rename(work):
    """The sync after the rename (of the data directory, making the rename
    durable) fails: the build must not both report failure and leave the
    generation it failed to make durable in place."""
    calls = traced_sync_calls(work)
    final_rename = max(i for i, c in enumerate(calls) if c[0].startswith("rename"))
    after = [c for c in calls[final_rename:] if c[0] in ("fsync", "fdatasync")]
    assert after, "no sync after the rename into place: not durable (%s)" % calls
    k = sum(1 for c in calls if c[0] in ("fsync", "fdatasync")) - len(after) + 1
    d, p = build_with_eio(work, k)
    try:
        assert p.returncode == 1, out(p)
        assert EIO_TEXT in p.stderr.decode(errors="replace"), out(p)
        work.assert_base_intact(d, "EIO on the directory fsync")
    finally:
        shutil.rmtree(d, ignore_errors=True)


# --- allocation failure at every point -----------------------------------------

@pytest.fixture(scope="module")
def shim(work):
    if sanitized():
        pytest.skip("sanitizer build: its runtime owns malloc and must be "
                    "first in the preload list")
    gcc = shutil.which("gcc")
    if gcc is None:
        pytest.skip("gcc is not installed: cannot build the allocation shim")
    so = os.path.join(work.dir, "alloc_shim.so")
    helpers.run([gcc, "-std=c11", "-O2", "-Wall", "-Wextra", "-Wshadow",
                 "-Werror", "-shared", "-fPIC", "-o", so, SHIM_SRC, "-ldl"])
    return so


LEAKY_C = r"""
#include <stdio.h>
#include <stdlib.h>
#include <sys/mman.h>
/* Two allocations and an anonymous mapping; with an argument, the error
 * paths forget what was already taken (the leaks the sweep must see). */
int main(int argc, char **argv)
{
	int careless = argc > 1;
	(void)argv;
	char *a = malloc(32);
	if (!a) { fprintf(stderr, "out of memory (a)\n"); return 1; }
	void *m = mmap(NULL, 1 << 20, PROT_READ | PROT_WRITE,
		       MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	if (m == MAP_FAILED) {
		fprintf(stderr, "out of memory (m)\n");
		if (!careless) free(a);
		return 1;
	}
	char *b = malloc(64);
	if (!b) {
		fprintf(stderr, "out of memory (b)\n");
		if (!careless) { free(a); munmap(m, 1 << 20); }
		return 1;
	}
	free(b);
	munmap(m, 1 << 20);
	free(a);
	return 0;
}
"""


def test_alloc_shim_sees_failures_and_leaks(work, shim):
    """The shim itself: it counts a program's allocations, fails exactly
    the N-th (malloc or anonymous mmap), and its live counts expose an
    error path that forgets to free. Without this the sweep could pass
    by measuring nothing."""
    src = os.path.join(work.dir, "leaky.c")
    exe = os.path.join(work.dir, "leaky")
    with open(src, "w") as f:
        f.write(LEAKY_C)
    helpers.run([shutil.which("gcc"), "-O1", "-o", exe, src])

    def go(n, *args):
        rep = os.path.join(work.dir, "leaky.rep")
        env = dict(os.environ, LD_PRELOAD=shim, FAULT_ALLOC_N=str(n),
                   FAULT_ALLOC_REPORT=rep)
        p = subprocess.run([exe] + list(args), env=env,
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        with open(rep) as f:
            r = dict(kv.split("=", 1) for kv in f.read().split())
        return p.returncode, p.stderr.decode(), r

    rc, _, clean = go(0)
    assert rc == 0 and clean["calls"] == "3" and clean["fired"] == "0", clean
    for n, what, kind in ((1, "(a)", "malloc"), (2, "(m)", "mmap"),
                          (3, "(b)", "malloc")):
        rc, err, r = go(n)
        assert rc == 1 and what in err and r["failed_kind"] == kind, (n, err, r)
        assert r["live_blocks"] == clean["live_blocks"], (n, r, clean)
        assert r["live_maps"] == clean["live_maps"], (n, r, clean)
    rc, _, r = go(2, "careless")
    assert int(r["live_blocks"]) == int(clean["live_blocks"]) + 1, r
    rc, _, r = go(3, "careless")
    assert int(r["live_blocks"]) == int(clean["live_blocks"]) + 1, r
    assert int(r["live_maps"]) == int(clean["live_maps"]) + 1, r


def run_shim(shim_so, args, n, report, persist=False, cwd=None):
    env = dict(os.environ, LD_PRELOAD=shim_so, FAULT_ALLOC_N=str(n),
               FAULT_ALLOC_REPORT=report)
    env.pop("FAULT_ALLOC_PERSIST", None)
    if persist:
        env["FAULT_ALLOC_PERSIST"] = "1"
    try:
        os.unlink(report)
    except FileNotFoundError:
        pass
    p = subprocess.run([helpers.binary("consentctl")] + args, env=env, cwd=cwd,
                       stdout=subprocess.PIPE, stderr=subprocess.PIPE, timeout=60)
    rep = None
    try:
        with open(report) as f:
            rep = dict(kv.split("=", 1) for kv in f.read().split())
        for k in ("calls", "fired", "live_blocks", "live_maps"):
            rep[k] = int(rep[k])
    except (OSError, ValueError):
        pass
    return p, rep


class Command:
    """One consentctl command under the sweep: its arguments for run i,
    and what a successful run must have produced."""

    def __init__(self, work, name):
        self.work, self.name = work, name
        self.scratch = tempfile.mkdtemp(prefix="sweep-%s-" % name, dir=work.dir)
        k = sorted(work.oracle.records)[len(work.oracle.records) // 2]
        self.check_args = [k[1], str(k[0]), helpers.CHANNEL_NAMES[k[3]],
                           helpers.RTYPE_NAMES[k[2]]]
        self.reference = None

    def args(self, i):
        w = self.work
        if self.name == "build":
            d = os.path.join(self.scratch, "d%d" % i)
            if not os.path.exists(d):
                shutil.copytree(w.base, d)
            return ["build", "--snapshot", w.small, "--out", d]
        if self.name == "dump":
            return ["dump", w.base, "--out", os.path.join(self.scratch, "o%d" % i)]
        if self.name == "verify":
            return ["verify", w.base]
        return ["check", w.base] + self.check_args

    def result(self, i, p):
        """What a successful run produced, to compare with the clean run."""
        if self.name == "build":
            d = os.path.join(self.scratch, "d%d" % i)
            return (entries(d), ctl("verify", d).returncode)
        if self.name == "dump":
            with open(os.path.join(self.scratch, "o%d" % i), "rb") as f:
                return f.read()
        return p.stdout

    def check_failed(self, i, what):
        """After a failed run: nothing half made."""
        if self.name == "build":
            self.work.assert_base_intact(os.path.join(self.scratch, "d%d" % i),
                                         what)

    def cleanup(self, i):
        if self.name == "build":
            shutil.rmtree(os.path.join(self.scratch, "d%d" % i),
                          ignore_errors=True)
        elif self.name == "dump":
            try:
                os.unlink(os.path.join(self.scratch, "o%d" % i))
            except FileNotFoundError:
                pass


MEMORY_WORDS = re.compile(r"memory|alloc|ENOMEM", re.I)


@pytest.mark.parametrize("mode", ["transient", "persistent"])
@pytest.mark.parametrize("name", ["build", "dump", "verify", "check"])
def test_allocation_failure_sweep(work, shim, name, mode):
    """consentctl NAME with its N-th allocation failing (transient: only
    that one; persistent: that one and every later one), for every N up to
    the count a clean run makes (persistent builds: every 8th N, the
    transient sweep covers each). Each run either fails cleanly (exit 1,
    an error naming the memory shortage, no more heap blocks or anonymous
    mappings left live at exit than the clean run leaves, nothing half
    made) or, where the code has a fallback, succeeds with the same result
    as the clean run. Never a signal, never another exit code."""
    cmd = Command(work, name)
    try:
        sweep(work, shim, cmd, mode == "persistent")
    finally:
        shutil.rmtree(cmd.scratch, ignore_errors=True)


def sweep(work, shim_so, cmd, persist):
    report0 = os.path.join(cmd.scratch, "clean.rep")
    p, clean = run_shim(shim_so, cmd.args(0), 0, report0)
    assert p.returncode == 0 and clean is not None, "clean run: " + out(p)
    assert clean["fired"] == 0
    reference = cmd.result(0, p)
    cmd.cleanup(0)
    n_calls = clean["calls"]
    assert n_calls > 0, "the shim counted no allocations: is it loaded?"
    assert n_calls <= 4000, "%d allocations: use a smaller snapshot" % n_calls
    stride = 8 if persist and cmd.name == "build" else 1
    # A few past the clean count: threads make the count vary slightly.
    ns = list(range(1, n_calls + 4, stride))

    def one(n):
        rep_path = os.path.join(cmd.scratch, "r%d.rep" % n)
        p, rep = run_shim(shim_so, cmd.args(n), n, rep_path, persist)
        return n, p, rep

    problems, fallbacks, failures = [], 0, 0
    with concurrent.futures.ThreadPoolExecutor(2) as ex:
        for n, p, rep in ex.map(one, ns):
            what = "%s, allocation %d%s failing" % (
                cmd.name, n, " and later" if persist else "")
            err = p.stderr.decode(errors="replace")
            try:
                assert p.returncode >= 0, "killed by signal %d\n%s" % (
                    -p.returncode, err[-1500:])
                assert p.returncode in (0, 1), "exit %d\n%s" % (
                    p.returncode, out(p))
                assert rep is not None, "no shim report (exited by _exit?)\n" + out(p)
                assert rep["live_blocks"] <= clean["live_blocks"] + LEAK_ALLOWANCE, \
                    "%d heap blocks live at exit, a clean run leaves %d: a " \
                    "leak on the error path (failed: %s)\n%s" % (
                        rep["live_blocks"], clean["live_blocks"],
                        rep["failed_kind"], out(p))
                assert rep["live_maps"] <= clean["live_maps"], \
                    "%d anonymous mappings live at exit, clean %d (failed: %s)" % (
                        rep["live_maps"], clean["live_maps"], rep["failed_kind"])
                if p.returncode == 1:
                    assert rep["fired"] >= 1, "failed with no fault\n" + out(p)
                    failures += 1
                    assert MEMORY_WORDS.search(err), \
                        "the error does not name the memory shortage " \
                        "(failed: %s):\n%s" % (rep["failed_kind"], err[-1500:])
                    cmd.check_failed(n, what)
                else:
                    if rep["fired"]:
                        fallbacks += 1
                    assert cmd.result(n, p) == reference, \
                        "succeeded (fault %s) with a different result" % (
                            "absorbed" if rep["fired"] else "not reached")
            except AssertionError as e:
                problems.append("%s: %s" % (what, e))
            cmd.cleanup(n)
            try:
                os.unlink(os.path.join(cmd.scratch, "r%d.rep" % n))
            except FileNotFoundError:
                pass
    assert not problems, "%d of %d runs went wrong; first ones:\n%s" % (
        len(problems), len(ns), "\n---\n".join(problems[:5]))
    assert failures > 0, "no run failed: the shim's faults never reached %s" % (
        cmd.name)


# --- the change log under Apply ---------------------------------------------------

def apply_batches(env, server, consents, batch=50):
    """Sends consents in ApplyRequests of batch changes, in order, stopping
    at the first Error. Returns (highest acknowledged sequence, the Error
    or None, the number of changes acknowledged)."""
    acked, acked_n = 0, 0
    with Rpc(env.pb, server.rpc, timeout=30) as c:
        for i in range(0, len(consents), batch):
            req = env.pb.Request()
            req.apply.changes.extend(consents[i:i + batch])
            r = c.call(req)
            kind = r.WhichOneof("body")
            if kind == "error":
                return acked, r.error, acked_n
            assert kind == "apply", "not an apply response: %s" % r
            last = consents[min(i + batch, len(consents)) - 1].sequence
            assert r.apply.applied_sequence >= last, \
                "acknowledged %d for a batch ending at %d" % (
                    r.apply.applied_sequence, last)
            acked = r.apply.applied_sequence
            acked_n += len(consents[i:i + batch])
    return acked, None, acked_n


def changes(work, n, from_seq, path):
    helpers.run([helpers.binary("consentctl"), "gen", "--records",
                 str(SMALL_RECORDS), "--seed", str(SMALL_SEED), "--changes",
                 str(n), "--from-sequence", str(from_seq), "--out", path])
    h, cs, _ = helpers.read_stream(work.env.pb, path)
    assert h.changes and len(cs) == n
    return cs


def state_after(work, applied):
    """The oracle after the snapshot and the applied changes (the index's
    order rule: newer consent date wins, RET at a tie)."""
    h, _, t = helpers.read_stream(work.env.pb, work.small)
    return helpers.Oracle(h, list(work.consents) + list(applied), t)


def assert_state(env, server, oracle, keys, what):
    with Rpc(env.pb, server.rpc) as c:
        resp = c.check([dict(recipient=k[1], brand_code=k[0], channel=k[3],
                             recipient_type=k[2]) for k in keys])
    for k, v in zip(keys, resp.verdicts):
        helpers.assert_verdict(v, oracle.expect(k[1], k[0], k[3], k[2]),
                               "%s %s" % (what, k))


def stats(env, server):
    with Rpc(env.pb, server.rpc) as c:
        return c.stats()


class Strace:
    """strace attached to every thread of a running process, failing each
    of its fsync/fdatasync calls with EIO until detached."""

    def __init__(self, pid):
        self.proc = subprocess.Popen(
            [need_strace(), "-f", "-qq", "-o", "/dev/null", "-p", str(pid),
             "-e", "trace=fsync,fdatasync",
             "-e", "inject=fsync,fdatasync:error=EIO"],
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        # Attached when every thread names a tracer.
        deadline = time.monotonic() + 10
        while True:
            tids = os.listdir("/proc/%d/task" % pid)
            traced = 0
            for t in tids:
                try:
                    with open("/proc/%d/task/%s/status" % (pid, t)) as f:
                        if re.search(r"TracerPid:\s+[1-9]", f.read()):
                            traced += 1
                except FileNotFoundError:
                    traced += 1
            if traced == len(tids):
                break
            assert self.proc.poll() is None, "strace -p failed: %s" % (
                self.proc.stderr.read().decode(errors="replace"))
            assert time.monotonic() < deadline, "strace did not attach"
            time.sleep(0.05)

    def detach(self):
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)  # detaches cleanly
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)


def changelog_fault(env, work, server, make_fault, n_good=200, n_bad=2000):
    """Applies n_good changes, then makes the fault (make_fault() returns a
    callable that clears it) and applies n_bad more, checking what the
    server claims and serves. Returns (highest acknowledged sequence, the
    good changes, the bad ones, the keys the bad ones touch)."""
    good = changes(work, n_good, 0, os.path.join(work.dir, "ch-good.bin"))
    bad = changes(work, n_bad, n_good, os.path.join(work.dir, "ch-bad.bin"))
    acked, err, _ = apply_batches(env, server, good)
    assert err is None, "Apply before the fault: %s" % err
    assert acked == n_good
    keys = sorted({(c.brand_code, helpers.normalize(c.recipient),
                    c.recipient_type, c.channel) for c in bad})[:300]
    m0 = server.metrics()
    clear = make_fault()
    try:
        acked2, err2, _ = apply_batches(env, server, bad)
    finally:
        clear()
    assert err2 is not None, "every Apply was acknowledged despite the fault"
    assert err2.code != 0 and err2.message, "Error without code/message: %s" % err2
    high = acked2 or acked
    claimed = stats(env, server).applied_sequence
    assert claimed == high, \
        "the server claims applied_sequence %d, acknowledged %d" % (claimed, high)
    now = state_after(work, list(good) + [c for c in bad if c.sequence <= high])
    assert_state(env, server, now, keys, "after the failed Apply")
    # The log stays failed: later Applies are refused too (never retried),
    # although the fault itself is gone.
    rest = [c for c in bad if c.sequence > high][:10]
    if rest:
        a3, e3, _ = apply_batches(env, server, rest)
        assert e3 is not None and a3 == 0, \
            "an Apply was acknowledged after the log failed"
    assert stats(env, server).applied_sequence == high
    st, _, body = server.http_get("/readyz")
    assert st != 200, "/readyz still 200 with a failed change log: %r" % body
    m = server.metrics()
    assert m.total("consentd_changelog_failures_total") > \
        m0.total("consentd_changelog_failures_total"), "the fault was not counted"
    return high, good, bad, keys


def restart_and_check(env, work, server, high, good, bad, keys):
    """A graceful stop and a restart on the same directory: everything
    acknowledged is there; whatever more the server says it applied (an
    unacknowledged batch its log held) is served consistently."""
    rc = server.stop()
    assert rc == 0, "exit %s after a change log fault\n%s" % (rc, server.log_tail())
    s2 = helpers.Server(server.data_dir, server.log_path + ".2",
                        ports=server).start()
    try:
        st = stats(env, s2)
        assert st.applied_sequence >= high, \
            "restart lost acknowledged changes: %d < %d" % (st.applied_sequence, high)
        applied = list(good) + [c for c in bad if c.sequence <= st.applied_sequence]
        assert_state(env, s2, state_after(work, applied), keys, "after the restart")
        assert s2.http_get("/readyz")[0] == 200
    finally:
        alive, rc = s2.alive(), s2.stop()
    assert alive and rc == 0, "restarted server: exit %s\n%s" % (rc, s2.log_tail())


def test_changelog_eio_under_apply(env, work):
    """fdatasync of the change log fails (EIO injected into the running
    server) while Applies arrive: the Apply gets an Error, nothing
    unacknowledged is claimed or served, the server keeps answering the
    previous state, refuses further Applies, and /readyz and /metrics
    show the fault; a restart comes back with everything acknowledged."""
    need_strace()
    d = work.copy_base()
    s = helpers.Server(d, os.path.join(work.dir, "cl-eio.log")).start()
    try:
        def fault():
            tr = Strace(s.proc.pid)
            return tr.detach
        restart_and_check(env, work, s, *changelog_fault(env, work, s, fault))
    finally:
        s.kill()


def test_changelog_enospc_under_apply(env, work, tmpfs):
    """The data directory's disk fills while Applies arrive (a filler file
    takes the free space): the same guarantees as for EIO."""
    small_fs = tmpfs(64 << 20)
    d = work.copy_base(small_fs)
    s = helpers.Server(d, os.path.join(work.dir, "cl-enospc.log")).start()
    filler = os.path.join(small_fs, "filler")
    try:
        def fault():
            with open(filler, "wb", buffering=0) as f:
                try:
                    while True:
                        f.write(b"\0" * 4096)
                except OSError:
                    pass

            def clear():
                os.unlink(filler)
            return clear
        restart_and_check(env, work, s, *changelog_fault(env, work, s, fault))
    finally:
        s.kill()
        if os.path.exists(filler):
            os.unlink(filler)
