"""A real 3-node NATS JetStream cluster on loopback for the fleet tests
(DESIGN 9): Debian's nats-server, each node with JetStream and its own
store directory under the test's temporary directory. Ports are the
kernel's: every node first starts with -p -1 and cluster
nats://127.0.0.1:-1 (without JetStream) and reports what it got through
--ports_file_dir. A clustered JetStream node refuses to start without
routes, and a route names a peer's port, so the nodes are then started
again, with JetStream, on the ports they were given, each routed to the
others; a node killed and started again takes them once more (its peers
route to them). Between a node's stop and its start another process could
take its port: then the start fails loudly (nats-server exits, named in
the assertion), it never talks to a stranger. Nodes are stopped by their
PIDs."""

import glob
import json
import os
import signal
import subprocess
import time

import helpers

NATS_SERVER = "/usr/sbin/nats-server"
LOOPBACK = "127.0.0.1"


class Node:
    def __init__(self, cluster, i):
        self.cluster = cluster
        self.i = i
        self.name = "n%d" % (i + 1)
        self.dir = os.path.join(cluster.dir, self.name)
        self.store = os.path.join(self.dir, "js")
        self.ports_dir = os.path.join(self.dir, "ports")
        os.makedirs(self.ports_dir, exist_ok=True)
        self.log_path = os.path.join(self.dir, "nats.log")
        self.client_port = None
        self.cluster_port = None
        self.proc = None

    def url(self):
        return "nats://%s:%d" % (LOOPBACK, self.client_port)

    def args(self, routes, js=True):
        client = str(self.client_port) if self.client_port else "-1"
        cport = str(self.cluster_port) if self.cluster_port else "-1"
        a = [NATS_SERVER, "-a", LOOPBACK, "-p", client,
             "--name", self.name, "--cluster_name", "CONSENTTEST",
             "--cluster", "nats://%s:%s" % (LOOPBACK, cport),
             "--ports_file_dir", self.ports_dir,
             "-l", self.log_path]
        if js:
            a += ["-js", "-sd", self.store]
        if routes:
            a += ["--routes", ",".join("nats://%s:%d" % (LOOPBACK, p)
                                       for p in routes)]
        return a

    def start(self, routes, timeout=20.0, js=True):
        for f in glob.glob(os.path.join(self.ports_dir, "*.ports")):
            os.unlink(f)
        self.proc = subprocess.Popen(self.args(routes, js),
                                     stdin=subprocess.DEVNULL,
                                     stdout=subprocess.DEVNULL,
                                     stderr=subprocess.DEVNULL,
                                     preexec_fn=helpers._preexec)
        want = os.path.join(self.ports_dir, "nats-server_%d.ports" % self.proc.pid)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError("nats-server %s exited %d\n%s" % (
                    self.name, self.proc.returncode, self.log_tail()))
            if os.path.exists(want):
                try:
                    with open(want) as f:
                        p = json.load(f)
                except ValueError:
                    time.sleep(0.02)
                    continue
                self.client_port = int(p["nats"][0].rsplit(":", 1)[1])
                self.cluster_port = int(p["cluster"][0].rsplit(":", 1)[1])
                return self
            time.sleep(0.02)
        self.kill()
        raise AssertionError("nats-server %s reported no ports in %.0f s" % (
            self.name, timeout))

    def alive(self):
        return self.proc is not None and self.proc.poll() is None

    def kill(self):
        if self.proc is not None and self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)

    def stop(self):
        if self.proc is not None and self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.kill()

    def log_tail(self, n=3000):
        try:
            with open(self.log_path, "rb") as f:
                return f.read()[-n:].decode(errors="replace")
        except OSError:
            return ""


class Cluster:
    def __init__(self, tmp, n=3):
        self.dir = os.path.join(tmp, "nats")
        os.makedirs(self.dir, exist_ok=True)
        self.nodes = [Node(self, i) for i in range(n)]

    def start(self):
        for node in self.nodes:  # the kernel's ports, learnt
            node.start([], js=False)
            node.stop()
        for node in self.nodes:
            node.start([m.cluster_port for m in self.nodes if m is not node])
        return self

    def urls(self):
        return ",".join(n.url() for n in self.nodes)

    def restart(self, i):
        """Starts node i again (after a kill) on the ports it had, routed
        to the others."""
        node = self.nodes[i]
        assert not node.alive()
        node.start([m.cluster_port for m in self.nodes if m is not node])

    def stop(self):
        for n in self.nodes:
            n.stop()
