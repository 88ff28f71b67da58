"""Session fixtures of the end-to-end suite: one synthetic dataset (generated
by consentctl gen, indexed by consentctl build), its records read back as
the oracle, and real consentd processes on loopback ports the kernel chose
(port 0, read back from --ports-file). Every process is stopped with
SIGTERM at the end and must exit 0."""

import hashlib
import os
import shutil
import tempfile

import pytest

import helpers

RECORDS = 20000
SEED = 7


def pytest_configure(config):
    helpers.raise_nofile()


class Env:
    """What every test needs: the generated protobuf module, the oracle and
    a scratch directory."""

    def __init__(self, tmp):
        self.tmp = tmp
        self.pb = helpers.load_pb(tmp)
        self.snapshot = os.path.join(tmp, "snapshot.bin")
        helpers.run([helpers.binary("consentctl"), "gen", "--records",
                     str(RECORDS), "--seed", str(SEED), "--out", self.snapshot])
        header, consents, trailer = helpers.read_stream(self.pb, self.snapshot)
        assert header is not None and trailer is not None, \
            "consentctl gen wrote no header or no trailer"
        assert trailer.record_count == len(consents) == RECORDS, \
            "gen: trailer says %d, stream holds %d, asked %d" % (
                trailer.record_count, len(consents), RECORDS)
        self.oracle = helpers.Oracle(header, consents, trailer)
        self.n_dirs = 0

    def data_dir(self):
        """A fresh data directory built from the snapshot."""
        self.n_dirs += 1
        d = os.path.join(self.tmp, "data%d" % self.n_dirs)
        helpers.run([helpers.binary("consentctl"), "build", "--snapshot",
                     self.snapshot, "--out", d])
        return d

    def server(self, extra=(), name="consentd", policy_map=None):
        need_binary("consentd")
        d = self.data_dir()
        log = os.path.join(self.tmp, "%s-%d.log" % (name, self.n_dirs))
        return helpers.Server(d, log, extra=extra, policy_map=policy_map).start()


def need_binary(name):
    if not os.access(helpers.binary(name), os.X_OK):
        pytest.fail("%s is not built (CONSENTD_BUILD=%s)" % (
            helpers.binary(name), helpers.build_dir()))


@pytest.fixture(scope="session")
def env():
    need_binary("consentctl")
    tmp = tempfile.mkdtemp(prefix="consentd-e2e-")
    try:
        yield Env(tmp)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _stop(server):
    alive = server.alive()
    rc = server.stop()
    assert alive, "consentd died during the tests\n" + server.log_tail()
    assert rc == 0, "consentd exited %s on SIGTERM\n%s" % (rc, server.log_tail())


@pytest.fixture(scope="session")
def server(env):
    """The default server: every client trusted, merchant default allow."""
    s = env.server()
    try:
        yield s
    finally:
        _stop(s)


# Partners for the token server (DESIGN 3.6 token file). Brands are picked
# from the dataset so that refusals hide records that really exist.
class Partners:
    def __init__(self, env):
        o = env.oracle
        # The two most populous brands for alice, the third for bob.
        counts = {}
        for k in o.records:
            counts[k[0]] = counts.get(k[0], 0) + 1
        top = sorted(counts, key=lambda b: (-counts[b], b))
        self.alice_brands = sorted(top[:2])
        self.bob_brands = [top[2]]
        self.outside = top[2]  # a real brand alice may not ask about
        self.tokens = {
            "alice": "alice-" + os.urandom(16).hex(),
            "bob": "bob-" + os.urandom(16).hex(),
            "root": "root-" + os.urandom(16).hex(),
            "carol": "carol-" + os.urandom(16).hex(),
        }
        lines = ["# e2e partners", ""]
        lines.append("alice %s %s" % (self._digest("alice"),
                                      ",".join(map(str, self.alice_brands))))
        lines.append("bob %s %s   # one brand" % (self._digest("bob"),
                                                  self.bob_brands[0]))
        # Only root may see fleet-wide figures (the 'stats' right).
        lines.append("root %s * stats apply" % self._digest("root"))
        # carol may apply, but only to bob's brand.
        lines.append("carol %s %d apply" % (self._digest("carol"),
                                            self.bob_brands[0]))
        self.path = os.path.join(env.tmp, "tokens.txt")
        with open(self.path, "w") as f:
            f.write("\n".join(lines) + "\n")

    def _digest(self, name):
        return hashlib.sha256(self.tokens[name].encode()).hexdigest()

    def may(self, name):
        if name == "root":
            return lambda b: True
        brands = self.alice_brands if name == "alice" else self.bob_brands
        # carol holds bob's brand (and may apply to it)
        return lambda b: b in brands


@pytest.fixture(scope="session")
def partners(env):
    return Partners(env)


@pytest.fixture(scope="session")
def token_server(env, partners):
    """A server with --tokens: clients must AUTH."""
    s = env.server(extra=["--tokens", partners.path], name="consentd-tokens")
    try:
        yield s
    finally:
        _stop(s)
