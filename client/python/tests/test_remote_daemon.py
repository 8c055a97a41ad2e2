"""Remote access against a real xcoderd bound to tcp://127.0.0.1 (random free
ports): a client that uses only the sockets lists checkpoints, fetches one
whose bytes equal the file on disk (also after an interrupted transfer resumed
from an offset, and when a stale .part must be thrown away), and reads a
latent table equal to the shared-memory arrays and to `latent`
(PROTOCOL.md 2.1, 2.2)."""

import hashlib
import math
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time

import numpy as np
import pytest

import xcoder
from xcoder import XcoderError
from conftest import B, D, F, XCODERD


def free_ports(n):
    socks, ports = [], []
    for _ in range(n):
        s = socket.socket()
        s.bind(("127.0.0.1", 0))
        socks.append(s)
        ports.append(s.getsockname()[1])
    for s in socks:
        s.close()
    return ports


class TcpDaemon:
    def __init__(self, name):
        self.dir = tempfile.mkdtemp(prefix="xcrem.")
        self.state_dir = os.path.join(self.dir, "state")
        pi, pc, pe = free_ports(3)
        self.ingest, self.control, self.events = (f"tcp://127.0.0.1:{p}" for p in (pi, pc, pe))
        self.name = name
        args = [XCODERD, "--run_dir", os.path.join(self.dir, "run"), "--state_dir", self.state_dir,
                "--name", name, "--ingest", self.ingest, "--control", self.control,
                "--events", self.events, "--d", str(D), "--dict_size", str(F), "--k", "4",
                "--batch_size", str(B), "--mix_tokens", str(B), "--threads", "1",
                "--stats_interval", "0.2", "--shm_interval", "0.05"]
        self.log_path = os.path.join(self.dir, "daemon.log")
        self._log = open(self.log_path, "w")
        self.proc = subprocess.Popen(args, stdout=self._log, stderr=subprocess.STDOUT)
        self.client = xcoder.Client(self.control, timeout=10)
        deadline = time.monotonic() + 10
        while True:
            assert self.proc.poll() is None, f"xcoderd exited at start:\n{self.log()}"
            try:
                self.client.request("ping", timeout=0.2)
                break
            except xcoder.XcoderTimeout:
                assert time.monotonic() < deadline, f"no ping reply in 10 s:\n{self.log()}"

    def log(self):
        with open(self.log_path) as f:
            return f.read()[-4000:]

    def train(self, steps):
        with xcoder.Producer(self.ingest) as p:
            for i in range(steps):
                p.send(np.random.default_rng(i).standard_normal((B, 2, D)).astype(np.float32))
        deadline = time.monotonic() + 20
        while self.client.status()["step"] < steps:
            assert time.monotonic() < deadline, "training did not reach the step"
            time.sleep(0.02)

    def stop(self):
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            rc = self.proc.wait(20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            rc = self.proc.wait()
        self.client.close()
        self._log.close()
        return rc


@pytest.fixture
def tcp_daemon():
    d = TcpDaemon(f"pyrem{os.getpid()}")
    yield d
    rc = d.stop()
    log = d.log()
    shutil.rmtree(d.dir, ignore_errors=True)
    assert rc == 0, f"xcoderd exited with status {rc}:\n{log}"


def sha256_file(path):
    with open(path, "rb") as f:
        return "sha256:" + hashlib.sha256(f.read()).hexdigest()


def test_fetch_checkpoint_over_tcp(tcp_daemon, tmp_path):
    dm = tcp_daemon
    with pytest.raises(XcoderError) as e:
        dm.client.fetch_checkpoint(tmp_path / "none.safetensors")
    assert e.value.code == "XC_ENOTFOUND"
    dm.train(5)
    ck = dm.client.checkpoint()
    name = os.path.basename(ck["path"])
    on_disk = os.path.join(dm.state_dir, name)
    with open(on_disk, "rb") as f:
        want = f.read()

    listing = dm.client.checkpoints()
    entry = [c for c in listing if c["name"] == name]
    assert entry and entry[0]["size"] == len(want) and entry[0]["step"] == ck["step"]
    assert entry[0]["kind"] == "checkpoint"

    out = tmp_path / "ck.safetensors"
    r = dm.client.fetch_checkpoint(out)  # default: the newest, i.e. this one
    assert r["name"] == name and r["size"] == len(want) and r["resumed_from"] == 0
    assert r["fetched"] == len(want)
    assert out.read_bytes() == want
    assert r["checksum"] == sha256_file(on_disk)
    assert not os.path.exists(str(out) + ".part")
    # the daemon now lists the checksum it computed
    assert [c for c in dm.client.checkpoints() if c["name"] == name][0]["checksum"] == r["checksum"]
    # the file is usable: the Python loader reads the downloaded copy
    tensors, meta = xcoder.load_checkpoint(str(out))
    assert tensors["decoder.weight"].shape == (2, F, D)

    # an interrupted transfer: three 4 KiB chunks written by a client that then went away
    out2 = tmp_path / "ck2.safetensors"
    c1 = xcoder.Client(dm.control, timeout=10)
    with open(str(out2) + ".part", "wb") as f:
        for i in range(3):
            f.write(c1.request("fetch", file=name, offset=i * 4096, length=4096)["data"])
    c1.close()
    c2 = xcoder.Client(dm.control, timeout=10)
    seen = []
    r2 = c2.fetch_checkpoint(out2, name=ck["path"], chunk=4096, progress=lambda d, s: seen.append(d))
    c2.close()
    assert r2["resumed_from"] == 3 * 4096 and r2["fetched"] == len(want) - 3 * 4096
    assert seen[0] == 4 * 4096 and seen[-1] == len(want)
    assert out2.read_bytes() == want

    # a stale .part from another file: detected by the checksum, fetched again from 0
    out3 = tmp_path / "ck3.safetensors"
    with open(str(out3) + ".part", "wb") as f:
        f.write(b"\0" * 1000)
    r3 = dm.client.fetch_checkpoint(out3, name=name)
    assert r3["resumed_from"] == 0 and out3.read_bytes() == want
    # resume=False ignores a .part
    with open(str(out3) + ".part", "wb") as f:
        f.write(want[:100])
    r4 = dm.client.fetch_checkpoint(out3, name=name, resume=False)
    assert r4["resumed_from"] == 0 and r4["fetched"] == len(want)

    # chunks are capped at 1 MiB; the offset is checked; names are only file names
    r = dm.client.request("fetch", file=name, length=1 << 30)
    assert len(r["data"]) == min(len(want), 1 << 20)
    with pytest.raises(XcoderError) as e:
        dm.client.request("fetch", file=name, offset=len(want) + 1)
    assert e.value.code == "XC_EINVAL"
    for bad in ("../" + name, "/etc/passwd", os.path.join(dm.state_dir, name), "." + name):
        with pytest.raises(XcoderError) as e:
            dm.client.request("fetch", file=bad)
        assert e.value.code == "XC_EINVAL", bad
    with pytest.raises(XcoderError) as e:
        dm.client.request("fetch", file="gone-000000001.safetensors")
    assert e.value.code == "XC_ENOTFOUND"


def test_table_equals_shared_memory(tcp_daemon):
    dm = tcp_daemon
    dm.train(12)
    dm.client.pause()
    step = dm.client.status()["step"]
    shm = xcoder.SharedStats(dm.name, wait=5)
    deadline = time.monotonic() + 10
    while shm.snapshot(verify=False).header["step"] != step:
        assert time.monotonic() < deadline, "shared memory did not reach the paused step"
        time.sleep(0.02)
    t = dm.client.table()
    snap = shm.snapshot()
    shm.close()
    assert t.snapshot_step == step == snap.header["step"]
    assert t.n == F and t.start == 0 and t.dict_size == F
    shm_names = list(snap.arrays)
    assert len(shm_names) == 28
    for name in shm_names:
        assert t[name].dtype == snap[name].dtype, name
        assert t[name].tobytes() == snap[name].tobytes(), f"column {name} differs from shared memory"
    assert set(t) == set(shm_names) | {"nu_unstable", "exact_nu_unstable", "fired", "tokens_since_fired", "dead"}
    assert np.any(t["freq"] > 0) and np.any(t["last_step"] >= 0)

    # the latent op agrees (nil <-> NaN)
    for j in (0, 7, F - 1):
        lat = dm.client.latent(j)
        assert lat["snapshot_step"] == step
        assert t["delta_norm"][j] == np.float32(lat["delta_norm"])
        assert t["last_step"][j] == lat["last_step_fired"]
        assert t["fired"][j] == lat["fired"] and bool(t["dead"][j]) == lat["dead"]
        assert t["class"][j] == lat["class"] == xcoder.remote.CLASS_NAMES[t.class_code[j]]
        nu = lat["scaling"]["nu_err"]
        assert (nu is None and math.isnan(t["nu_err"][j])) or t["nu_err"][j] == np.float32(nu)

    # a range, a selection, and a field subset are slices of the whole
    r = dm.client.table(fields=["delta_norm", "class", "j"], start=10, count=20)
    assert list(r) == ["delta_norm", "class", "j"] and r.start == 10 and r.n == 20
    assert np.array_equal(r["j"], np.arange(10, 30))
    assert r["delta_norm"].tobytes() == t["delta_norm"][10:30].tobytes()
    js = [F - 1, 3, 3, 0]
    s = dm.client.table(fields="cosine,j", js=js)
    assert s.start is None and list(s["j"]) == js
    assert s["cosine"].tobytes() == t["cosine"][js].tobytes()
    assert dm.client.table(start=F - 2)["delta_norm"].shape == (2,)
    assert dm.client.table(start=F)["delta_norm"].shape == (0,)
    for kw, code in (({"fields": ["nope"]}, "XC_EINVAL"), ({"js": [F]}, "XC_ENOTFOUND"),
                     ({"start": F + 1}, "XC_ENOTFOUND")):
        with pytest.raises(XcoderError) as e:
            dm.client.table(**kw)
        assert e.value.code == code, kw
    with pytest.raises(XcoderError) as e:
        dm.client.request("table", js=[1], start=0)
    assert e.value.code == "XC_EINVAL"
    dm.client.resume()


class FakeFiles:
    """A fake control socket serving fetch from in-memory files; `swap_after`
    replaces the file's content (same name) after that many chunk requests."""

    def __init__(self, data, swap_to=None, swap_after=None, name="f-000000001.safetensors"):
        self.data, self.swap_to, self.swap_after, self.name = data, swap_to, swap_after, name
        self.chunks = 0

    def request(self, op, **args):
        assert op == "fetch"
        if self.swap_after is not None and self.chunks >= self.swap_after and self.swap_to is not None:
            self.data, self.swap_to = self.swap_to, None
        off, length = args.get("offset", 0), args.get("length", 1 << 20)
        if length:
            self.chunks += 1
        return {"name": self.name, "size": len(self.data),
                "checksum": "sha256:" + hashlib.sha256(self.data).hexdigest(), "step": 1,
                "offset": off, "eof": off + length >= len(self.data),
                "data": self.data[off:off + length]}


def test_fetch_detects_a_file_replaced_mid_transfer(tmp_path):
    from xcoder.remote import fetch_checkpoint
    old, new = os.urandom(10000), os.urandom(12000)
    fake = FakeFiles(old, swap_to=new, swap_after=3)
    r = fetch_checkpoint(fake, tmp_path / "x", chunk=1000)
    assert (tmp_path / "x").read_bytes() == new and r["size"] == len(new)
    assert r["fetched"] == 3000 + len(new)          # 3 chunks of the old file, then all of the new
    # a file that keeps changing: XC_ECORRUPT, nothing renamed into place
    class Flaky(FakeFiles):
        def request(self, op, **args):
            self.data = os.urandom(5000) if args.get("length") else self.data
            return super().request(op, **args)
    with pytest.raises(XcoderError) as e:
        fetch_checkpoint(Flaky(os.urandom(5000)), tmp_path / "y", chunk=1000)
    assert e.value.code == "XC_ECORRUPT" and not (tmp_path / "y").exists()
