#!/usr/bin/python3
"""Integration tests of Latent Scaling and the shared-memory statistics against a
real build/xcoderd: the object's header and mode, a reader process hammering it
while the daemon writes (every stable copy passes its checksum and its invariant),
the exact-pass control op with its event, status and per-latent results (equal in
the control reply and in shared memory), and unlinking on a clean exit.
Prints "ok - name" / "not ok - name: why" lines; exits non-zero on failure."""
import multiprocessing as mp
import os
import shutil
import signal
import struct
import sys
import time

import msgpack
import numpy as np
import zmq

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import integ_daemon as idm  # noqa: E402  (its Daemon / push helpers)

shutil.rmtree(idm.TMP, ignore_errors=True)  # integ_daemon makes a temp dir on import
D, F = idm.D, idm.F
NAME = "scal%d" % os.getpid()
SHM_PATH = "/dev/shm/xcoderd." + NAME
HDR = 1024
N_ARRAYS = 28
A_DELTA, A_NU_ERR, A_EXACT_NU_ERR, A_EXACT_NU_REC, A_CLASS = 0, 12, 19, 20, 22


def fnv1a64(buf):
    """FNV-1a over 8-byte little-endian words, then the tail bytes (proto/SHM.md)."""
    h = 0xcbf29ce484222325
    mask = (1 << 64) - 1
    n8 = len(buf) // 8
    for w in np.frombuffer(buf[:n8 * 8], dtype="<u8").tolist():
        h = ((h ^ w) * 0x100000001b3) & mask
    for b in buf[n8 * 8:]:
        h = ((h ^ b) * 0x100000001b3) & mask
    return h


def snapshot(path, retries=100000):
    """A consistent copy through the seqlock, or None if it never settled."""
    with open(path, "rb") as f:
        for _ in range(retries):
            s1 = struct.unpack_from("<Q", os.pread(f.fileno(), 8, 40))[0]
            if s1 & 1:
                continue
            total = struct.unpack_from("<Q", os.pread(f.fileno(), 8, 16))[0]
            data = os.pread(f.fileno(), total, 0)
            s2 = struct.unpack_from("<Q", os.pread(f.fileno(), 8, 40))[0]
            if s1 == s2:
                return data
    return None


def header(data):
    magic, ver, hsize, narr, total, n, d, model, pid = struct.unpack_from("<IIIIQIIII", data, 0)
    seq, gen, checksum, step, tokens = struct.unpack_from("<QQQqQ", data, 40)
    counts = struct.unpack_from("<8I", data, 184)
    alive = struct.unpack_from("<I", data, 216)[0]
    scaling_step, scaling_tokens = struct.unpack_from("<qQ", data, 168)
    arrays = [struct.unpack_from("<QII", data, 256 + 16 * i) for i in range(narr)]
    return dict(magic=magic, ver=ver, hsize=hsize, narr=narr, total=total, n=n, d=d, pid=pid, gen=gen,
                checksum=checksum, step=step, tokens=tokens, counts=counts, alive=alive,
                scaling_step=scaling_step, scaling_tokens=scaling_tokens, arrays=arrays)


def array(data, h, i):
    off, dtype, size = h["arrays"][i]
    dt = {1: "<f4", 2: "<f8", 3: "<i8", 4: "u1"}[dtype]
    return np.frombuffer(data, dtype=dt, count=h["n"], offset=off)


def hammer(path, seconds, out):
    """Reader process: snapshots for `seconds`; counts good, torn and broken-invariant copies."""
    good = torn = bad = 0
    gens = set()
    t0 = time.time()
    while time.time() - t0 < seconds:
        data = snapshot(path)
        if data is None:
            continue
        h = header(data)
        if fnv1a64(data[h["hsize"]:h["total"]]) != h["checksum"]:
            torn += 1
            continue
        # invariant written with every update: class counts cover every latent and
        # agree with the class array
        cls = array(data, h, A_CLASS)
        if sum(h["counts"][:5]) != h["n"] or np.bincount(cls, minlength=5)[:5].tolist() != list(h["counts"][:5]):
            bad += 1
        good += 1
        gens.add(h["gen"])
    out.put((good, torn, bad, len(gens)))


DMN = None


def push_batches(n_batches, seed):
    rng = np.random.default_rng(seed)
    sock = DMN.producer()
    msgs = [[idm.header(i, idm.B), idm.batch(rng, idm.B)] for i in range(n_batches)]
    reps = idm.push_window(sock, msgs, window=8, timeout=60)
    sock.close(0)
    idm.check(all(r["type"] == "ack" for r in reps), "nacks: %r" % [r for r in reps if r["type"] != "ack"][:2])


def test_shm_object_and_header():
    global DMN
    DMN = idm.Daemon(idm.TMP, "--shm_interval", "0.02", "--mix_tokens", "256",
                     "--checkpoint_interval", "0", name=NAME)
    idm.wait_for(lambda: os.path.exists(SHM_PATH), what="shared-memory object")
    st = os.stat(SHM_PATH)
    idm.check(st.st_mode & 0o777 == 0o640, "mode %o, want 640" % (st.st_mode & 0o777))
    data = snapshot(SHM_PATH)
    h = header(data)
    idm.check(h["magic"] == 0x4d485358 and h["ver"] == 2 and h["hsize"] == HDR, "header %r" % h)
    idm.check(h["narr"] == N_ARRAYS and h["n"] == F and h["d"] == D, "sizes %r" % h)
    idm.check(h["pid"] == DMN.proc.pid and h["alive"] == 1, "pid/alive")
    idm.check(fnv1a64(data[HDR:h["total"]]) == h["checksum"], "checksum")
    idm.check(h["scaling_step"] == -1, "no exact pass yet")


def _tmp():
    import tempfile
    idm.TMP = tempfile.mkdtemp(prefix="xcd-scal-")
    return idm.TMP


def test_reader_never_sees_torn_snapshot():
    q = mp.Queue()
    p = mp.Process(target=hammer, args=(SHM_PATH, 4.0, q))
    p.start()
    push_batches(400, 1)  # the daemon rewrites the object every 20 ms while it trains
    p.join(30)
    good, torn, bad, gens = q.get(timeout=5)
    print("# hammer: %d snapshots, %d distinct updates, %d torn, %d invariant failures" % (good, gens, torn, bad))
    idm.check(torn == 0 and bad == 0, "%d torn and %d broken snapshots of %d" % (torn, bad, good))
    idm.check(good > 20 and gens > 5, "reader saw %d snapshots of %d updates" % (good, gens))


def test_scaling_op_arguments():
    r = DMN.req({"op": "scaling", "tokens": 0})
    idm.check(r["ok"] is False and r["code"] == "XC_EINVAL", "tokens=0: %r" % r)
    r = DMN.req({"op": "scaling", "tokens": "many"})
    idm.check(r["ok"] is False and r["code"] in ("XC_EINVAL", "XC_EPROTO"), "tokens=str: %r" % r)


def test_exact_pass_results():
    sub = DMN.subscriber(b"scaling")
    time.sleep(0.2)  # let the subscription reach the daemon
    r = DMN.ok({"op": "scaling", "tokens": 2000})
    idm.check(r["started"] is True and r["tokens"] == 2000, "reply %r" % r)
    r2 = DMN.req({"op": "scaling", "tokens": 10})
    idm.check(r2["ok"] is False and r2["code"] == "XC_ESTATE", "second pass while one runs: %r" % r2)
    st = DMN.status()["scaling"]
    idm.check(st["running"] is True and st["tokens_target"] == 2000, "status %r" % st)
    push_batches(60, 2)
    idm.check(sub.poll(20000), "no scaling event")
    topic, body = sub.recv_multipart()
    ev = msgpack.unpackb(body)
    sub.close(0)
    idm.check(topic == b"scaling" and ev["tokens"] >= 2000 and ev["step"] >= 0, "event %r" % ev)
    st = DMN.status()
    sc = st["scaling"]
    idm.check(sc["running"] is False and sc["passes"] == 1 and sc["last_step"] == ev["step"], "status %r" % sc)
    idm.check(sum(st["classes"][k] for k in ("other", "shared", "chat_only", "base_only", "dead")) == F,
              "classes %r" % st["classes"])
    # the most active latent has a defined exact nu, identical in the reply and in shared memory
    top = DMN.ok({"op": "top", "by": "fired", "n": 5})["latents"]
    j = top[0]["j"]
    lat = DMN.ok({"op": "latent", "j": j})["stats"]
    ex = lat["scaling_exact"]
    idm.check(ex is not None and ex["nu_err"] is not None and ex["active"] > 0, "latent %d exact %r" % (j, ex))
    idm.check(lat["class"] in ("other", "shared", "chat_only", "base_only", "dead"), "class %r" % lat["class"])
    data = idm.wait_for(lambda: (lambda d: d if header(d)["scaling_step"] == ev["step"] else None)(snapshot(SHM_PATH)),
                        what="exact pass in shared memory")
    h = header(data)
    idm.check(h["scaling_tokens"] == ev["tokens"], "shm scaling_tokens %d" % h["scaling_tokens"])
    idm.check(np.float32(ex["nu_err"]) == array(data, h, A_EXACT_NU_ERR)[j], "exact nu_err differs: reply %r shm %r" %
              (ex["nu_err"], array(data, h, A_EXACT_NU_ERR)[j]))
    # undefined values travel as nil, never as numbers
    dead = [x for x in DMN.ok({"op": "top", "by": "fired", "n": F, "order": "asc"})["latents"] if x["fired"] == 0]
    if dead:
        idm.check(dead[0]["scaling"]["nu_err"] is None, "never-fired latent has nu %r" % dead[0]["scaling"])
    t = DMN.ok({"op": "top", "by": "exact_nu_err", "n": 3})
    idm.check(len(t["latents"]) == 3 and t["by"] == "exact_nu_err", "top by exact_nu_err %r" % t)


EXACT = {}


def test_exact_pass_kept_with_checkpoint():
    """The next checkpoint's training-state file carries the exact pass."""
    r = DMN.ok({"op": "checkpoint"})
    tpath = r.get("train_path") or r["path"].replace(".safetensors", ".resume.safetensors")
    t, meta = read_st(tpath)
    ex, em = t["trainer.scaling_exact"], t["trainer.scaling_exact_meta"]
    st = DMN.status()["scaling"]
    idm.check(ex.shape == (F, 9) and int(em[0]) == st["last_step"] and int(em[1]) == st["last_tokens"],
              "exact pass in the checkpoint: shape %s meta %s vs %r" % (ex.shape, em, st))
    j = DMN.ok({"op": "top", "by": "fired", "n": 1})["latents"][0]["j"]
    lat = DMN.ok({"op": "latent", "j": j})["stats"]["scaling_exact"]
    idm.check(np.float32(ex[j, 4]) == np.float32(lat["nu_err"]), "nu_err %r vs %r" % (ex[j, 4], lat["nu_err"]))
    EXACT.update(j=j, nu_err=lat["nu_err"], step=st["last_step"])


def read_st(path):
    with open(path, "rb") as f:
        raw = f.read()
    (hl,) = struct.unpack("<Q", raw[:8])
    import json
    hdr = json.loads(raw[8:8 + hl])
    meta = hdr.pop("__metadata__", {})
    dt = {"F32": "<f4", "F64": "<f8", "I64": "<i8", "U64": "<u8", "I32": "<i4"}
    out = {}
    for name, t in hdr.items():
        a, b = t["data_offsets"]
        out[name] = np.frombuffer(raw[8 + hl + a:8 + hl + b], dtype=dt[t["dtype"]]).reshape(t["shape"])
    return out, meta


def test_clean_exit_unlinks():
    rc = DMN.stop()
    idm.check(rc == 0, "exit status %d" % rc)
    idm.check(not os.path.exists(SHM_PATH), "shared memory left behind after a clean exit")


def test_exact_pass_survives_restart():
    """A daemon resuming from that checkpoint publishes the same exact results."""
    global DMN
    DMN = idm.Daemon(idm.TMP, "--shm_interval", "0.02", "--mix_tokens", "256", "--checkpoint_interval", "0", name=NAME)
    st = DMN.status()["scaling"]
    idm.check(st["last_step"] == EXACT["step"], "after resume: %r, want step %d" % (st, EXACT["step"]))
    lat = DMN.ok({"op": "latent", "j": EXACT["j"]})["stats"]["scaling_exact"]
    idm.check(lat is not None and np.float32(lat["nu_err"]) == np.float32(EXACT["nu_err"]), "latent after resume %r" % lat)
    data = idm.wait_for(lambda: snapshot(SHM_PATH), what="shared memory after restart")
    h = header(data)
    idm.check(h["scaling_step"] == EXACT["step"], "shm scaling_step %d after resume" % h["scaling_step"])
    idm.check(DMN.stop() == 0, "second exit status")


def main():
    if not os.access(idm.XCODERD, os.X_OK):
        print("not ok - integ_scaling: %s not built" % idm.XCODERD)
        return 1
    _tmp()
    t0 = time.time()
    try:
        for fn in (test_shm_object_and_header, test_reader_never_sees_torn_snapshot, test_scaling_op_arguments,
                   test_exact_pass_results, test_exact_pass_kept_with_checkpoint, test_clean_exit_unlinks,
                   test_exact_pass_survives_restart):
            if DMN is None and fn is not test_shm_object_and_header:
                print("not ok - %s: daemon did not start" % fn.__name__)
                continue
            idm.run_case(fn)
    finally:
        if DMN is not None:
            if DMN.proc.poll() is None:
                DMN.stop(signal.SIGKILL)
            if idm.failed():
                print("---- daemon log ----\n" + DMN.logtext())
        shutil.rmtree(idm.TMP, ignore_errors=True)
        if os.path.exists(SHM_PATH) and idm.failed():
            os.unlink(SHM_PATH)
    print("# integ_scaling: %.1f s" % (time.time() - t0))
    return 1 if idm.failed() else 0


if __name__ == "__main__":
    zmq.Context.instance()
    sys.exit(main())
