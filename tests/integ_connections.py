#!/usr/bin/python3
"""Memory bounded whatever peers do (max_connections): a real build/xcoderd with
max_connections 4 and a full queue (training paused, so ZeroMQ holds what peers
send) is flooded by 48 ingest connections each pushing 1 MiB messages. Refusals
are counted (status and Prometheus), the daemon's resident memory grows by less
than the bound it states for its connections, and the clients that were there
first keep working (their batch is acknowledged after resume, status answers
throughout). Before max_connections every connection got ingest_hwm messages of
ZeroMQ's memory, so memory grew with the number of peers.
Prints "ok - name" / "not ok - name: why"."""
import os
import shutil
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from xc_integ import check, failed, run_case, wait_for  # noqa: E402
from integ_daemon import B, D, Daemon, header, push  # noqa: E402

import msgpack
import numpy as np
import zmq

MAX_CONN, HWM, MSG = 4, 2, 1 << 20
FLOOD, PER_PEER = 48, 3


def rss_bytes(pid):
    with open("/proc/%d/status" % pid) as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS for pid %d" % pid)


def test_flood_refused_memory_bounded():
    tmp = tempfile.mkdtemp(prefix="xc_conn_")
    d = None
    flood = []
    try:
        d = Daemon(tmp, "--max_connections", str(MAX_CONN), "--ingest_hwm", str(HWM), "--max_msg_bytes",
                   str(MSG), "--queue_size", "1", "--mix_tokens", str(B), name="conn%d" % os.getpid())
        st = d.status()
        check(st.get("max_connections") == MAX_CONN, "status lacks max_connections: %r" % st.get("max_connections"))
        bound = st.get("memory_bound")
        check(isinstance(bound, float) and bound > 0, "status lacks memory_bound: %r" % bound)
        log = d.logtext()
        check("memory bound" in log and "max_connections (%d per socket)" % MAX_CONN in log,
              "the start log does not state the connection bound: %s" % log[-600:])
        # the legitimate producer: in first, then the queue fills behind a paused trainer
        p = d.producer()
        x = np.random.default_rng(1).standard_normal((B, 2, D)).astype("<f4").tobytes()
        check(push(p, [header(1, B), x]).get("type") == "ack", "first batch")
        d.ok({"op": "pause"})
        seq, held = 2, None
        for _ in range(20):  # until the loop stops reading ingest (the queue is full)
            p.send_multipart([header(seq, B), x])
            if not p.poll(1500):
                held = seq
                break
            check(msgpack.unpackb(p.recv()).get("type") == "ack", "batch %d" % seq)
            seq += 1
        check(held is not None, "the queue never filled (training not paused?)")
        time.sleep(0.5)
        base = rss_bytes(d.proc.pid)

        # the flood: each peer pushes PER_PEER messages of 1 MiB that nobody reads
        blob = memoryview(bytearray(os.urandom(16)) * (MSG // 16 - 64))
        ctx = zmq.Context.instance()
        for i in range(FLOOD):
            s = ctx.socket(zmq.DEALER)
            s.setsockopt(zmq.LINGER, 0)
            s.connect(d.ep["ingest"])
            for _ in range(PER_PEER):
                s.send_multipart([header(1000 + i, B), blob], copy=False)
            flood.append(s)
        st = wait_for(lambda: (lambda s: s if s["counters"].get("connections_refused", 0) >= FLOOD - MAX_CONN
                               else None)(d.status()), timeout=30, what="refusals counted")
        time.sleep(1.5)  # let every accepted connection fill its pipe
        grown = rss_bytes(d.proc.pid) - base
        # what max_connections ingest connections may hold: (hwm + 1) frames of up to 2 x max_msg_bytes
        allowed = MAX_CONN * (HWM + 1) * 2 * MSG + (24 << 20)
        unbounded = (FLOOD - MAX_CONN) * HWM * MSG
        check(grown < allowed, "RSS grew by %.1f MiB under a flood of %d connections (bound %.1f MiB; without "
              "the limit about %.0f MiB)" % (grown / 2**20, FLOOD, allowed / 2**20, unbounded / 2**20))
        check(0 < st["connections_ingest"] <= FLOOD + 1, "connections_ingest %r" % st["connections_ingest"])
        text = d.ok({"op": "metrics"}).get("text", "")
        check("xcoderd_connections_refused_total" in text and 'xcoderd_connections{name=' in text and 'socket="ingest"' in text,
              "Prometheus lacks the connection metrics: %s" % text[-400:])
        check("refused a connection on the ingest socket" in d.logtext(), "no log line for the refusals")
        # the first clients keep working: status answers, the held batch is acked after resume
        d.ok({"op": "resume"})
        check(p.poll(20000), "the legitimate producer's held batch was never answered")
        check(msgpack.unpackb(p.recv()).get("type") == "ack", "held batch %d" % held)
        for s in flood:
            s.close(0)
        flood = []
        check(push(p, [header(seq + 1, B), x], timeout=20).get("type") == "ack", "a batch after the flood")
        # the slots come back: a newcomer gets in once the flood has left
        wait_for(lambda: d.status()["connections_ingest"] <= 1, timeout=20, what="flood connections gone")
        q = d.producer()
        check(push(q, [header(1, B), x], timeout=20).get("type") == "ack", "a newcomer after the flood")
        q.close(0)
        p.close(0)
        check(d.stop() == 0, "clean exit")
        print("# RSS grew %.1f MiB with %d flood connections (allowed %.1f MiB)" % (grown / 2**20, FLOOD,
                                                                                    allowed / 2**20))
    finally:
        for s in flood:
            s.close(0)
        if d is not None:
            d.stop()
        shutil.rmtree(tmp, ignore_errors=True)


def main():
    run_case(test_flood_refused_memory_bounded)
    return 1 if failed() else 0


if __name__ == "__main__":
    sys.exit(main())
