#!/usr/bin/python3
"""Live max-activating examples against a real xcoderd (PROTOCOL.md 2.3).

A planted stream: documents of random token ids, where token t fires feature
t mod NF (its own direction, in both models, with a random amplitude), sent
with token ids, (document, position) pairs, a stream tag and a vocabulary.
- After training, the latent that recovered feature f (decoder cosine >= 0.9)
  lists as its top examples occurrences of feature f's tokens; each window
  equals the streamed document's ids, pieces come from the vocabulary.
- The examples (and the vocabulary) survive a restart, unchanged.
- With the dictionary frozen (restart with lr = 1e-12), examples collected afresh
  (examples_reset) carry activations equal (1e-5 relative) to the encoding of
  their tokens by the checkpoint, and the offline pass
  (xcoder.offline_examples) over the same data gives the same top examples;
  so does `xcoder examples --checkpoint` (the C pass), window activations too.
- Bad requests: a latent out of range, a bad stream tag, a vocabulary over
  the arena's size.
Prints "ok - NAME" / "not ok - NAME: why"."""

import json
import os
import shutil
import subprocess
import sys
import tempfile

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "client", "python"))
sys.path.insert(0, os.path.join(ROOT, "tests"))
import xcoder  # noqa: E402
from xc_integ import check, failed, run_case, wait_for  # noqa: E402

XCODERD = os.environ.get("XCODERD", os.path.join(ROOT, "build", "xcoderd"))
XCODER = os.path.join(ROOT, "build", "xcoder")
D, F, K, B = 16, 64, 1, 256
NF, V, DOCLEN, W, TOP = 12, 48, 32, 4, 8
TMP = tempfile.mkdtemp(prefix="xcd-examples-")
NAME = "ex%d" % os.getpid()
PROCS = []


def start(*extra):
    run = os.path.join(TMP, "run")
    log = open(os.path.join(TMP, "daemon.log"), "a")
    p = subprocess.Popen([XCODERD, "--run_dir", run, "--state_dir", os.path.join(TMP, "state"), "--name", NAME,
                          "--d", str(D), "--dict_size", str(F), "--k", str(K), "--batch_size", str(B),
                          "--mix_tokens", str(B), "--threads", "1", "--shm", "off", "--lr", "0.01",
                          "--warmup_steps", "20", "--threshold_start_step", "100", "--examples_window", str(W),
                          "--examples_top", str(TOP), "--examples_random", "3", "--examples_vocab_bytes", "65536",
                          "--stats_interval", "0.2"] + list(extra), stdout=log, stderr=subprocess.STDOUT)
    PROCS.append(p)
    wait_for(lambda: os.path.exists(os.path.join(run, "control.sock")) or p.poll() is not None, what="socket")
    check(p.poll() is None, "daemon exited at start: " + open(os.path.join(TMP, "daemon.log")).read()[-600:])
    c = xcoder.Client(run, timeout=30)
    wait_for(lambda: _pings(c), what="ping")
    return p, c, run


def _pings(c):
    try:
        c.ping()
        return True
    except xcoder.XcoderError:
        return False


def stop(p, c):
    c.shutdown()
    rc = p.wait(60)
    c.close()
    check(rc == 0, "daemon exit %s" % rc)


def planted(rng, n_docs, first_doc):
    """acts [n, 2, d], ids [n], positions [n, 2] of n_docs documents."""
    n = n_docs * DOCLEN
    ids = rng.integers(0, V, n)
    amp = 1.0 + rng.random(n).astype(np.float32)
    x = (0.01 * rng.standard_normal((n, 2, D))).astype(np.float32)
    f = ids % NF
    x[np.arange(n), 0, f] += amp
    x[np.arange(n), 1, f] += 0.8 * amp
    pos = np.stack([first_doc + np.arange(n) // DOCLEN, np.arange(n) % DOCLEN], 1)
    return x, ids, pos


VOCAB = ["t%d " % i for i in range(V)]
STATE = {}


def send(run, x, ids, pos):
    with xcoder.Producer(run, producer="planted", stream="chat") as pr:
        for i in range(0, len(ids), B):
            pr.send(x[i:i + B], token_ids=ids[i:i + B], positions=pos[i:i + B])


def wait_trained(c, n):
    wait_for(lambda: c.status()["tokens_trained"] >= n, timeout=120, what="%d tokens trained" % n)


def test_train_planted():
    p, c, run = start("--fresh")
    STATE.update(p=p, c=c, run=run)
    rng = np.random.default_rng(7)
    with xcoder.Producer(run, producer="planted", stream="chat") as pr:
        check(pr.send_vocab(VOCAB) == V, "vocab sent")
    x, ids, pos = planted(rng, 6400, 0)  # 204,800 tokens = 800 steps
    send(run, x, ids, pos)
    wait_trained(c, len(ids))
    STATE["train"] = (x, ids, pos)


def latent_of_features(ckpt):
    """feature -> latent whose decoder row (both models) has cosine >= 0.9 with it."""
    t, _ = ckpt
    dec = np.concatenate([t["decoder.weight"][0], t["decoder.weight"][1]], axis=1)  # (F, 2d)
    out = {}
    for f in range(NF):
        v = np.zeros(2 * D, np.float32)
        v[f], v[D + f] = 1.0, 0.8
        cos = dec @ v / (np.linalg.norm(dec, axis=1) * np.linalg.norm(v) + 1e-30)
        j = int(np.argmax(cos))
        if cos[j] >= 0.9:
            out[f] = j
    return out


def test_top_examples_are_the_feature_tokens():
    c = STATE["c"]
    ck = c.checkpoint()
    ckpt = xcoder.load_checkpoint(ck["path"])
    lat = latent_of_features(ckpt)
    check(len(lat) >= NF - 1, "features recovered: %d of %d" % (len(lat), NF))
    _, ids, pos = STATE["train"]
    doc_ids = ids.reshape(-1, DOCLEN)
    for f, j in lat.items():
        r = c.examples(j)
        check(len(r["top"]) == TOP and r["seen"] > 0, "latent %d: %d top examples" % (j, len(r["top"])))
        for e in r["top"]:
            check(e["token"] % NF == f, "latent %d (feature %d): top example token %d" % (j, f, e["token"]))
            check(e["stream"] == "chat" and e["producer"] == "planted", "names %r" % e)
            lo = e["pos"] - e["at"]
            check(lo == max(0, e["pos"] - W) and lo + len(e["tokens"]) - 1 == min(DOCLEN - 1, e["pos"] + W),
                  "window bounds pos %d at %d len %d" % (e["pos"], e["at"], len(e["tokens"])))
            check(e["tokens"] == [int(t) for t in doc_ids[e["doc"], lo:lo + len(e["tokens"])]],
                  "window ids equal the streamed document's")
            check(e["pieces"] == [VOCAB[t] for t in e["tokens"]], "pieces from the vocabulary")
            check("[[t%d ]]" % e["token"] in xcoder.render_example(e), "rendered")
        check(len(r["random"]) == 3, "3 random examples")
    STATE["lat"] = lat


def test_examples_survive_restart():
    p, c = STATE["p"], STATE["c"]
    lat = STATE["lat"]
    before = {j: c.examples(j) for j in lat.values()}
    stop(p, c)
    p, c, run = start("--lr", "1e-12")  # resume; a vanishing lr freezes the dictionary for what follows
    STATE.update(p=p, c=c, run=run)
    for j, r in before.items():
        a = c.examples(j)
        for k in ("top", "random", "seen"):
            check(a[k] == r[k], "latent %d: %s differs after the restart" % (j, k))


def test_frozen_examples_equal_encoding_and_offline_pass():
    c, run = STATE["c"], STATE["run"]
    c.reset_examples()
    rng = np.random.default_rng(8)
    x, ids, pos = planted(rng, 64, 5000)  # 2,048 tokens = 8 steps, documents 5000..5063
    t0 = c.status()["tokens_trained"]
    # the reset is applied between steps, before these are trained
    wait_for(lambda: all(not c.examples(j)["top"] for j in STATE["lat"].values()), what="reset applied")
    send(run, x, ids, pos)
    wait_trained(c, t0 + len(ids))
    ck = c.checkpoint()
    ckpt = xcoder.load_checkpoint(ck["path"])
    f = xcoder.encode(ckpt, x)
    off = xcoder.offline_examples(ckpt, x, ids, docs=pos[:, 0], top_n=TOP, window=W, chunk=300)
    compared = 0
    for feat, j in STATE["lat"].items():
        live = c.examples(j)["top"]
        check(len(live) == TOP, "latent %d: %d live examples" % (j, len(live)))
        for e in live:
            check(e["doc"] >= 5000, "a reset example from before: doc %d" % e["doc"])
            i = (e["doc"] - 5000) * DOCLEN + e["pos"]
            check(ids[i] == e["token"], "token id")
            check(abs(e["act"] - f[i, j]) <= 1e-5 * abs(f[i, j]), "latent %d token %d: act %.9g, encoding %.9g"
                  % (j, i, e["act"], f[i, j]))
            compared += 1
        o = off.get(j, [])
        check([(e["doc"], e["pos"]) for e in o] == [(e["doc"], e["pos"]) for e in live],
              "latent %d: offline top %s vs live %s" % (j, [(e["doc"], e["pos"]) for e in o][:4],
                                                       [(e["doc"], e["pos"]) for e in live][:4]))
        for a, b in zip(o, live):
            check(abs(a["act"] - b["act"]) <= 1e-5 * abs(b["act"]), "offline act %.9g vs live %.9g" % (a["act"], b["act"]))
            check(a["tokens"] == b["tokens"], "offline window equals live")
            check(abs(a["acts"][a["at"]] - a["act"]) <= 1e-6 * a["act"], "window acts hold the example's")
    check(compared >= (NF - 1) * TOP, "compared %d examples" % compared)
    STATE["frozen"] = (ck["path"], x, ids, pos, off)


def test_cli_offline_equals_python_offline():
    """xcoder examples --checkpoint (C, BLAS) gives the Python offline pass's examples."""
    path, x, ids, pos, off = STATE["frozen"]
    for name, arr in (("acts", x), ("ids", ids.astype(np.int64)), ("docs", pos[:, 0].astype(np.int32))):
        np.save(os.path.join(TMP, name + ".npy"), arr)
    with open(os.path.join(TMP, "vocab.json"), "w") as fh:
        json.dump(VOCAB, fh)
    out = subprocess.run([XCODER, "examples", "--checkpoint", path, "--data", os.path.join(TMP, "acts.npy"),
                          "--tokens", os.path.join(TMP, "ids.npy"), "--docs", os.path.join(TMP, "docs.npy"),
                          "--vocab", os.path.join(TMP, "vocab.json"), "--n", str(TOP), "--window", str(W), "--json"],
                         capture_output=True, text=True, timeout=120)
    check(out.returncode == 0, "exit %d: %s" % (out.returncode, out.stderr[-500:]))
    got = {l["j"]: l["examples"] for l in json.loads(out.stdout)["latents"]}
    check(set(got) == set(off), "latents with examples: C %d, Python %d" % (len(got), len(off)))
    n = 0
    for j, exs in off.items():
        c = got[j]
        check([e["index"] for e in c] == [e["index"] for e in exs], "latent %d: C %s vs Python %s" %
              (j, [e["index"] for e in c][:5], [e["index"] for e in exs][:5]))
        for a, b in zip(c, exs):
            check(abs(a["act"] - b["act"]) <= 1e-5 * b["act"], "act %.9g vs %.9g" % (a["act"], b["act"]))
            check(a["tokens"] == b["tokens"] and a["at"] == b["at"] and a["pos"] == b["pos"] and a["doc"] == b["doc"],
                  "window")
            check(np.allclose(a["acts"], b["acts"], rtol=1e-5, atol=1e-6), "window activations")
            check(a["pieces"] == [VOCAB[t] for t in a["tokens"]], "pieces")
            n += 1
    check(n >= (NF - 1) * TOP, "compared %d examples" % n)
    text = subprocess.run([XCODER, "examples", "--checkpoint", path, "--data", os.path.join(TMP, "acts.npy"),
                           "--tokens", os.path.join(TMP, "ids.npy"), "--n", "2", "--window", "1"],
                          capture_output=True, text=True, timeout=120)
    check(text.returncode == 0 and "[[<" in text.stdout and "acts:" in text.stdout, "text view: %s" % text.stdout[:300])


def test_bad_requests():
    c, run = STATE["c"], STATE["run"]
    for args, code in (({"j": F}, "XC_ENOTFOUND"), ({}, "XC_EINVAL"), ({"j": "x"}, "XC_EINVAL")):
        try:
            c.request("examples", **args)
            check(False, "examples %r accepted" % args)
        except xcoder.XcoderError as e:
            check(e.code == code, "examples %r: %s, want %s" % (args, e.code, code))
    with xcoder.Producer(run, producer="bad") as pr:
        hdr = xcoder.wire.batch_header(pr._next_seq, 1, D, "f32", "bad")
        hdr["stream"] = "has space"
        pr.send_raw(hdr, [np.zeros((1, 2, D), np.float32).tobytes()])
        try:
            pr.flush()
            check(False, "a bad stream tag was accepted")
        except xcoder.XcoderNack as e:
            check(e.code == "XC_EPROTO" and "stream" in str(e), "bad tag: %s" % e)
    with xcoder.Producer(run, producer="big") as pr:
        try:
            pr.send_vocab(["x" * 1000] * 200, stream="web")  # 200 kB > examples_vocab_bytes
            check(False, "an oversized vocabulary was accepted")
        except xcoder.XcoderNack as e:
            check(e.code == "XC_ETOOBIG" and "examples_vocab_bytes" in str(e), "big vocab: %s" % e)


def main():
    try:
        for t in (test_train_planted, test_top_examples_are_the_feature_tokens, test_examples_survive_restart,
                  test_frozen_examples_equal_encoding_and_offline_pass, test_cli_offline_equals_python_offline,
                  test_bad_requests):
            run_case(t)
    finally:
        for p in PROCS:
            if p.poll() is None:
                p.kill()
                p.wait()
        if failed():
            print("# daemon log tail:\n" + "".join("# " + l for l in open(os.path.join(TMP, "daemon.log"))
                                                   .readlines()[-15:]))
        shutil.rmtree(TMP, ignore_errors=True)
    return 1 if failed() else 0


if __name__ == "__main__":
    sys.exit(main())
