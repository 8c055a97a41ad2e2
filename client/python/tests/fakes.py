"""Scripted stand-ins for the daemon's sockets (PROTOCOL.md), for tests that
pin the client's behaviour down without a real daemon."""

import threading
import time

import zmq

from xcoder import wire


class FakeIngest:
    """Acks every batch unless told to hold replies or nack a given seq."""

    def __init__(self, endpoint, d=4):
        self.ctx = zmq.Context.instance()
        self.sock = self.ctx.socket(zmq.ROUTER)
        self.sock.setsockopt(zmq.LINGER, 0)
        self.sock.bind(endpoint)
        self.d = d
        self.hold = threading.Event()      # while set, do not read (queue full)
        self.nack_seqs = {}
        self.received = []                 # (header, frames)
        self.stop = threading.Event()
        self.t = threading.Thread(target=self.run, daemon=True)
        self.t.start()

    def run(self):
        while not self.stop.is_set():
            if self.hold.is_set() or not self.sock.poll(20) or self.hold.is_set():
                time.sleep(0.005)
                continue
            ident, *body = self.sock.recv_multipart()
            h = wire.unpack_map(body[0])
            self.received.append((h, body[1:]))
            seq = h["seq"]
            if seq in self.nack_seqs:
                code, reason = self.nack_seqs[seq]
                r = {"v": 1, "type": "nack", "seq": seq, "code": code, "reason": reason}
            elif h["d"] != self.d:
                r = {"v": 1, "type": "nack", "seq": seq, "code": "XC_ESHAPE",
                     "reason": f"batch has d = {h['d']} but this daemon trains d = {self.d}"}
            else:
                r = {"v": 1, "type": "ack", "seq": seq, "n": h["n"], "credit": 3}
            self.sock.send_multipart([ident, wire.pack(r)])

    def close(self):
        self.stop.set()
        self.t.join()
        self.sock.close(0)


class FakeControl(threading.Thread):
    def __init__(self, endpoint):
        super().__init__(daemon=True)
        self.sock = zmq.Context.instance().socket(zmq.ROUTER)
        self.sock.setsockopt(zmq.LINGER, 0)
        self.sock.bind(endpoint)
        self.requests = []
        self.stop = threading.Event()
        self.start()

    def run(self):
        while not self.stop.is_set():
            if not self.sock.poll(20):
                continue
            ident, *body = self.sock.recv_multipart()
            req = wire.unpack_map(body[-1])
            self.requests.append(req)
            op = req["op"]
            base = {"v": 1, "ok": True, "op": op, "id": req.get("id")}
            if op == "slow":
                time.sleep(0.3)
            if op == "latent":
                r = dict(base, j=req["j"], stats={"delta_norm": 0.5, "dead": False}) \
                    if req["j"] < 8 else {"v": 1, "ok": False, "op": op, "id": req.get("id"),
                                          "code": "XC_ENOTFOUND", "message": "latent 99 >= 8"}
            elif op == "top":
                r = dict(base, by=req["by"], order=req.get("order"),
                         latents=[{"j": 3, req["by"]: 1.0}][:req["n"]])
            elif op == "config":
                r = dict(base, config={"d": 4} if "key" in req else {"d": 4, "k": 2})
            elif op in ("status", "pause", "slow"):
                r = dict(base, step=1)
            else:
                r = {"v": 1, "ok": False, "op": op, "id": req.get("id"), "code": "XC_EUNKNOWN",
                     "message": f'unknown op "{op}"'}
            self.sock.send_multipart([ident] + body[:-1] + [wire.pack(r)])

    def close(self):
        self.stop.set()
        self.join()
        self.sock.close(0)
