#!/usr/bin/python3
"""A small client for consentd's protobuf RPC (DESIGN 3.1-3.2), built on
Google's protobuf runtime (Debian's python3-protobuf). The Python module is
generated from proto/consent.proto with protoc into a temporary directory
at every run, so it always matches the schema in the tree.

  rpc_client.py [--rpc HOST:PORT] [--token T] check RECIPIENT BRAND CHANNEL
                [BIREYSEL|TACIR] [TICARI|BILGILENDIRME]
  rpc_client.py [--rpc HOST:PORT] [--token T] stats
  rpc_client.py sample SNAPSHOT [N]

check and stats print the Response in protobuf text format and exit 0, or 1
if the server answered with an Error (or refused the token). sample prints
N (default 1) ONAY records of each kind (phone BIREYSEL MESAJ, e-mail
EPOSTA, phone TACIR ARAMA) from a snapshot stream, one per line as
"RECIPIENT BRAND CHANNEL TYPE" (the demo uses it to pick real examples).
"""

import argparse
import importlib.util
import os
import socket
import struct
import subprocess
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PROTO = os.path.join(ROOT, "proto", "consent.proto")
FRAME_MAX = 64 << 20  # what we accept from the server


def load_pb():
    with tempfile.TemporaryDirectory(prefix="consentd-pb-") as tmp:
        p = subprocess.run(["protoc", "-I", os.path.dirname(PROTO),
                            "--python_out=" + tmp, PROTO],
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        if p.returncode != 0:
            sys.exit("rpc_client: protoc failed: %s" % p.stderr.decode().strip())
        spec = importlib.util.spec_from_file_location(
            "consent_pb2", os.path.join(tmp, "consent_pb2.py"))
        mod = importlib.util.module_from_spec(spec)
        sys.modules["consent_pb2"] = mod
        spec.loader.exec_module(mod)
        return mod


def usage(msg):
    """A usage error: exit 2, as consentctl does."""
    print(msg, file=sys.stderr)
    sys.exit(2)


def recv_exact(sock, n):
    buf = bytearray()
    while len(buf) < n:
        chunk = sock.recv(n - len(buf))
        if not chunk:
            raise ConnectionError("server closed the connection")
        buf += chunk
    return bytes(buf)


def call(pb, sock, req):
    payload = req.SerializeToString()
    sock.sendall(struct.pack(">I", len(payload)) + payload)
    n = struct.unpack(">I", recv_exact(sock, 4))[0]
    if n > FRAME_MAX:
        raise ConnectionError("response frame of %d bytes" % n)
    resp = pb.Response.FromString(recv_exact(sock, n))
    if resp.id != req.id:
        raise ConnectionError("response id %d for request %d" % (resp.id, req.id))
    return resp


def enum_value(enum, name, what):
    try:
        return enum.Value(name.upper())
    except ValueError:
        names = [n for n in enum.keys() if not n.endswith("UNSPECIFIED")]
        usage("rpc_client: %s must be one of %s, not %r" % (
            what, "|".join(names), name))


def parse_addr(s):
    host, sep, port = s.rpartition(":")
    if not sep or not port.isdigit():
        usage("rpc_client: --rpc wants HOST:PORT, not %r" % s)
    return host.strip("[]") or "127.0.0.1", int(port)


def text(msg):
    from google.protobuf import text_format
    return text_format.MessageToString(msg).rstrip("\n")


def run_rpc(args):
    pb = load_pb()
    host, port = parse_addr(args.rpc)
    req = pb.Request(id=1)
    if args.command == "check":
        rest = args.args
        if len(rest) < 3 or len(rest) > 5:
            usage("usage: rpc_client.py check RECIPIENT BRAND CHANNEL "
                     "[BIREYSEL|TACIR] [TICARI|BILGILENDIRME]")
        try:
            brand = int(rest[1])
        except ValueError:
            usage("rpc_client: BRAND must be a number, not %r" % rest[1])
        if not 0 <= brand < 1 << 32:
            usage("rpc_client: BRAND out of range: %d" % brand)
        c = req.check.checks.add(recipient=rest[0], brand_code=brand,
                                 channel=enum_value(pb.Channel, rest[2], "CHANNEL"))
        for extra in rest[3:]:
            if extra.upper() in ("BIREYSEL", "TACIR"):
                c.recipient_type = pb.RecipientType.Value(extra.upper())
            else:
                c.purpose = enum_value(pb.Purpose, extra, "type or purpose")
    else:
        if args.args:
            usage("usage: rpc_client.py stats")
        req.stats.SetInParent()
    try:
        with socket.create_connection((host, port), timeout=args.timeout) as s:
            if args.token is not None:
                auth = pb.Request(id=0x7FFFFFFF)
                auth.auth.token = args.token
                r = call(pb, s, auth)
                if r.WhichOneof("body") != "auth":
                    print(text(r))
                    return 1
            resp = call(pb, s, req)
    except (OSError, ConnectionError) as e:
        sys.exit("rpc_client: %s:%d: %s" % (host, port, e))
    print(text(resp))
    return 1 if resp.WhichOneof("body") == "error" else 0


def read_varint(f):
    v, shift = 0, 0
    while True:
        b = f.read(1)
        if not b:
            if shift == 0:
                return None
            raise ValueError("truncated varint")
        v |= (b[0] & 0x7F) << shift
        if not b[0] & 0x80:
            return v
        shift += 7
        if shift > 63:
            raise ValueError("varint over 10 bytes")


def run_sample(args):
    if len(args.args) not in (1, 2):
        usage("usage: rpc_client.py sample SNAPSHOT [N]")
    n = int(args.args[1]) if len(args.args) == 2 else 1
    pb = load_pb()
    # (wanted: is e-mail, channel, type) -> records found
    kinds = [(False, pb.MESAJ, pb.BIREYSEL), (True, pb.EPOSTA, pb.BIREYSEL),
             (False, pb.ARAMA, pb.TACIR)]
    found = {k: [] for k in kinds}
    with open(args.args[0], "rb") as f:
        while any(len(v) < n for v in found.values()):
            size = read_varint(f)
            if size is None:
                break
            data = f.read(size)
            if len(data) != size:
                sys.exit("rpc_client: %s: truncated frame" % args.args[0])
            fr = pb.StreamFrame.FromString(data)
            if fr.WhichOneof("frame") != "batch":
                continue
            for c in fr.batch.consents:
                if c.status != pb.ONAY:
                    continue
                k = ("@" in c.recipient, c.channel, c.recipient_type)
                if k in found and len(found[k]) < n:
                    found[k].append(c)
    for k in kinds:
        for c in found[k]:
            print(c.recipient, c.brand_code, pb.Channel.Name(c.channel),
                  pb.RecipientType.Name(c.recipient_type))
    return 0


def main():
    ap = argparse.ArgumentParser(
        description="consentd RPC client (protobuf over 4-byte big-endian frames)")
    ap.add_argument("--rpc", default="127.0.0.1:7700", help="HOST:PORT")
    ap.add_argument("--token", help="AUTH with this token first")
    ap.add_argument("--timeout", type=float, default=10.0, help="seconds")
    ap.add_argument("command", choices=["check", "stats", "sample"])
    ap.add_argument("args", nargs="*")
    args = ap.parse_args()
    if args.command == "sample":
        return run_sample(args)
    return run_rpc(args)


if __name__ == "__main__":
    sys.exit(main())
