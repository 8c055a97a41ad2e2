"""The CLI's JSON output against a fake daemon that answers with hostile
replies: map keys that are maps, nested to the reader's limit. An 83-byte
status reply used to make `xcoder --json status` print 134 MB (every level
re-rendered and re-escaped the key below it); the rendering must be linear in
the reply's size, valid JSON, and the command must finish promptly."""
import json
import os
import subprocess
import sys
import tempfile
import threading

import msgpack
import zmq

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from xc_integ import check, failed, run_case  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
XCODER = os.environ.get("XCODER", os.path.join(ROOT, "build", "xcoder"))


def nested_key_reply(levels):
    """{v: 1, ok: true, op: "status", x: {{{...nil: 0}: 0}: 0}} with `levels`
    maps nested as keys."""
    head = msgpack.packb({"v": 1, "ok": True, "op": "status"})
    # turn the 3-entry map into a 4-entry one and append key "x" and the value
    body = bytes([0x84]) + head[1:] + msgpack.packb("x")
    return body + bytes([0x81]) * levels + b"\xc0" + b"\x00" * levels


def serve_once(sock, reply, done):
    """Answers the first request on the ROUTER socket with `reply`."""
    poller = zmq.Poller()
    poller.register(sock, zmq.POLLIN)
    if poller.poll(20000):
        frames = sock.recv_multipart()
        sock.send_multipart(frames[:-1] + [reply])
    done.set()


def cli_against(reply, *args):
    with tempfile.TemporaryDirectory() as d:
        ctx = zmq.Context()
        sock = ctx.socket(zmq.ROUTER)
        sock.setsockopt(zmq.LINGER, 0)
        sock.bind("ipc://%s/control.sock" % d)
        done = threading.Event()
        t = threading.Thread(target=serve_once, args=(sock, reply, done), daemon=True)
        t.start()
        try:
            p = subprocess.run([XCODER, "--run-dir", d, "--timeout", "10"] + list(args),
                               capture_output=True, timeout=60)
        finally:
            done.wait(5)
            sock.close()
            ctx.term()
        return p


def test_nested_key_status_reply_is_linear():
    reply = nested_key_reply(31)
    check(len(reply) == 83, "the reply is %d bytes, want 83" % len(reply))
    for extra in ([], ["--pretty"]):
        p = cli_against(reply, "--json", *extra, "status")
        check(p.returncode == 0, "exit %d: %s" % (p.returncode, p.stderr[-300:]))
        check(len(p.stdout) <= 16 * len(reply) + 64 * 31,
              "%d bytes of output for an 83-byte reply (%s)" % (len(p.stdout), extra))
        doc = json.loads(p.stdout)
        check(doc.get("op") == "status" and doc.get("x") == {"<map>": 0},
              "rendered reply: %r" % (p.stdout[:200],))


def test_non_string_keys_render_as_strings():
    reply = msgpack.packb({"v": 1, "ok": True, "op": "status", "m": {5: "five", True: 1, None: 2}})
    p = cli_against(reply, "--json", "status")
    check(p.returncode == 0, "exit %d: %s" % (p.returncode, p.stderr[-300:]))
    doc = json.loads(p.stdout)
    check(doc["m"] == {"5": "five", "true": 1, "null": 2}, "keys: %r" % (doc["m"],))


if __name__ == "__main__":
    for case in (test_nested_key_status_reply_is_linear, test_non_string_keys_render_as_strings):
        run_case(case)
    sys.exit(1 if failed() else 0)
