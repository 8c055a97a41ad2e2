#!/usr/bin/python3
"""Integration tests of the language-model pair and its model server (models/),
from the checked-in weights: what the server streams equals a direct forward of
both models with hooks, with the token ids, documents and positions it answered;
it keeps answering while the daemon (a real build/xcoderd) is paused and reports
what it dropped or waited; the spliced-in loss with an identity crosscoder equals
the unspliced loss; the chat fine-tune lowered the loss on held-out chat text and
not on web text; generation and bad requests; the make demo-lm report on an L1
crosscoder.
Prints "ok - name" / "not ok - name: why" lines; exits non-zero on failure."""
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import urllib.error
import urllib.request

import numpy as np
import torch
import zmq

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, HERE)
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.join(ROOT, "client", "python"))
from xc_integ import check, failed, run_case, wait_for  # noqa: E402

import xcoder  # noqa: E402
from xcoder import wire  # noqa: E402
from models import data, evaluate, lm, server  # noqa: E402

torch.set_num_threads(1)
XCODERD = os.path.join(ROOT, "build", "xcoderd")
TMP = tempfile.mkdtemp(prefix="xcd-lm-")
TOK = lm.Tokenizer()
BASE, CHAT = lm.load("base"), lm.load("chat")


def start_server(endpoint, **kw):
    """An in-process model server on a free port: (httpd, ModelServer, url)."""
    st = server.Stream(endpoint, **kw)
    ms = server.ModelServer(st, models=(TOK, BASE, CHAT))
    httpd = server.ThreadingHTTPServer(("127.0.0.1", 0), server.make_handler(ms))
    httpd.daemon_threads = True
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    return httpd, ms, "http://127.0.0.1:%d" % httpd.server_address[1]


def stop_server(httpd, ms):
    httpd.shutdown()
    httpd.server_close()
    ms.stream.close(timeout=2)


def post(url, body, timeout=60):
    req = urllib.request.Request(url, data=json.dumps(body).encode(),
                                 headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


def get(url):
    with urllib.request.urlopen(url, timeout=30) as r:
        return json.loads(r.read())


class FakeIngest(threading.Thread):
    """A ROUTER that acks every batch and keeps (header, acts, tokens, positions)."""

    def __init__(self, endpoint):
        super().__init__(daemon=True)
        self.sock = zmq.Context.instance().socket(zmq.ROUTER)
        self.sock.setsockopt(zmq.LINGER, 0)
        self.sock.bind(endpoint)
        self.got = []
        self.vocab, self.vocab_headers = [], []
        self.stop = threading.Event()
        self.start()

    def run(self):
        while not self.stop.is_set():
            if not self.sock.poll(20):
                continue
            ident, *body = self.sock.recv_multipart()
            h = wire.unpack_map(body[0])
            if h.get("type") == "vocab":
                lens = np.frombuffer(body[1], dtype="<u4")
                blob, off = body[2], 0
                for ln in lens.tolist():
                    self.vocab.append(blob[off:off + ln].decode())
                    off += ln
                self.vocab_headers.append(h)
                self.sock.send_multipart([ident, wire.pack({"v": 1, "type": "ack",
                                                            "seq": h["seq"], "n": 0})])
                continue
            n, d = h["n"], h["d"]
            acts = np.frombuffer(body[1], dtype="<f4").reshape(n, 2, d)
            rest = body[2:]
            tok = np.frombuffer(rest.pop(0), dtype="<u4") if h.get("has_tokens") else None
            pos = np.frombuffer(rest.pop(0), dtype="<u4").reshape(n, 2) if h.get("has_pos") else None
            self.got.append((h, acts, tok, pos))
            self.sock.send_multipart([ident, wire.pack({"v": 1, "type": "ack", "seq": h["seq"],
                                                        "n": n, "credit": 8})])

    def close(self):
        self.stop.set()
        self.join()
        self.sock.close(0)


def test_lm_models_shipped():
    """The checked-in files load; the template tokens exist; metadata names the corpus."""
    check(TOK.vocab_size == lm.VOCAB, "vocabulary %d, expected %d" % (TOK.vocab_size, lm.VOCAB))
    check(TOK.sot != TOK.sp.unk_id() and TOK.eot != TOK.sp.unk_id(), "template tokens missing")
    ids = TOK.encode_chat([("user", "What does len() do?")])
    check(ids[:2] == [TOK.bos, TOK.sot] and TOK.eot in ids, "chat template ids %r" % ids[:8])
    mask = TOK.template_mask(ids)
    check(mask[0] and mask[1] and mask[2] and not all(mask), "template mask %r" % mask[:8])
    _, meta = xcoder.load_checkpoint(os.path.join(lm.WEIGHTS, "chat.safetensors"))
    check("python3-doc" in meta.get("corpus", ""), "metadata %r" % meta)
    diff = sum(float((a - b).abs().sum()) for a, b in zip(BASE.parameters(), CHAT.parameters()))
    check(diff > 0, "chat weights equal the base weights")


def test_lm_stream_equals_direct_forward():
    """Streamed residuals = paired_activations (hooks, a separate forward) to 1e-6
    relative; token ids, doc ids and positions as the replies say."""
    ep = "ipc://%s/fake-ingest.sock" % TMP
    fake = FakeIngest(ep)
    httpd, ms, url = start_server(ep, buffer=16)
    try:
        text = data.web_docs("eval")[0][1][:1200]           # > 128 tokens: several contexts
        turns = data.chat_dialogues("eval")[0][1]
        code, r1 = post(url + "/score", {"text": text})
        check(code == 200 and len(r1["docs"]) >= 2, "score web: %r %r" % (code, r1)[:300])
        code, r2 = post(url + "/score", {"messages": [{"role": a, "content": b} for a, b in turns]})
        check(code == 200 and r2["tag"] == "chat", "score chat: %r" % (r2,))
        check(r2["tokens"] == TOK.encode_chat(turns)[:len(r2["tokens"])], "chat tokens differ")
        expect = []
        for r in (r1, r2):
            ids, i = r["tokens"], 0
            for dd in r["docs"]:
                expect.append((dd["doc"], ids[i:i + dd["tokens"]]))
                i += dd["tokens"]
            check(i == len(ids), "docs cover %d of %d tokens" % (i, len(ids)))
        wait_for(lambda: len(fake.got) >= len(expect), timeout=30, what="batches at the fake ingest")
        check(len(fake.got) == len(expect), "%d batches for %d contexts" % (len(fake.got), len(expect)))
        worst = 0.0
        for (h, acts, tok, pos), (doc, ids) in zip(fake.got, expect):
            check(h["d"] == lm.D_MODEL and h["n"] == len(ids), "header %r" % h)
            check(tok is not None and tok.tolist() == ids, "token ids differ from the reply's")
            check(pos is not None and (pos[:, 0] == doc).all()
                  and pos[:, 1].tolist() == list(range(len(ids))), "positions %r" % pos[:3])
            ref, rtok, _ = xcoder.paired_activations(BASE, CHAT, lm.LAYER_NAME,
                                                     torch.tensor([ids]))
            ref = ref.numpy()
            check(rtok.tolist() == ids, "reference ids")
            rel = np.abs(acts - ref).max() / np.abs(ref).max()
            worst = max(worst, rel)
        check(worst <= 1e-6, "largest relative difference %.3g > 1e-6" % worst)
        if hasattr(xcoder.Producer, "send_vocab"):
            tags = [h.get("stream") for h, _, _, _ in fake.got]
            want = ["web"] * len(r1["docs"]) + ["chat"] * len(r2["docs"])
            check(tags == want, "stream tags %r, expected %r" % (tags, want))
            check(fake.vocab == TOK.vocabulary_text(), "vocabulary: %d pieces, first %r"
                  % (len(fake.vocab), fake.vocab[:5]))
        else:
            print("# stream tags and vocabulary not checked: this client has no "
                  "Producer.send_vocab (PROTOCOL.md 1.5)")
        s = get(url + "/stats")["stream"]
        n = sum(len(ids) for _, ids in expect)
        check(s["tokens_buffered"] == n and s["dropped_batches"] == 0, "stats %r" % s)
        print("# %d contexts, %d tokens, largest relative difference %.2g" % (len(expect), n, worst))
    finally:
        stop_server(httpd, ms)
        fake.close()


def start_daemon(name, extra=()):
    run = os.path.join(TMP, name)
    log = open(os.path.join(TMP, name + ".log"), "w")
    p = subprocess.Popen([XCODERD, "--run_dir", run, "--state_dir", run + "-state", "--name", name,
                          "--d", str(lm.D_MODEL), "--dict_size", "256", "--k", "4",
                          "--batch_size", "64", "--mix_tokens", "64", "--queue_size", "2",
                          "--threads", "1", "--checkpoint_interval", "0", "--stats_interval", "0.2",
                          *extra],
                         stdout=log, stderr=subprocess.STDOUT)
    wait_for(lambda: os.path.exists(os.path.join(run, "control.sock")) or p.poll() is not None,
             timeout=20, what="daemon control socket")
    check(p.poll() is None, "daemon exited at start: " + open(log.name).read()[-2000:])
    c = xcoder.Client(run, timeout=10)
    wait_for(lambda: c.ping(), timeout=10, what="ping")
    return p, c, run


def stop_daemon(p, c):
    try:
        c.shutdown()
        p.wait(timeout=20)
    except Exception:
        p.kill()
        p.wait()
    c.close()


def test_lm_backpressure_drop_and_wait():
    """With training paused the daemon stops acking; the server still answers every
    request, drops (policy drop) or waits then drops (policy wait) stream batches and
    counts them; after resume what it buffered reaches the daemon."""
    p, c, run = start_daemon("lmbp")
    servers = []
    try:
        c.pause()
        hd, md, ud = start_server(run, buffer=2, policy="drop", window=2)
        servers.append((hd, md))
        hw, mw, uw = start_server(run, buffer=2, policy="wait", max_wait=0.3, window=2)
        servers.append((hw, mw))
        turns = next(t for _, t in data.chat_dialogues("eval")
                     if len(TOK.encode_chat(t)) <= lm.CTX)      # one context: one batch
        body = {"messages": [{"role": a, "content": b} for a, b in turns]}
        answered = 0
        for _ in range(25):
            for u in (ud, uw):
                code, r = post(u + "/score", body, timeout=30)
                check(code == 200 and "loss_chat" in r, "no answer while paused: %r" % (r,))
                answered += 1
        sd, sw = get(ud + "/stats")["stream"], get(uw + "/stats")["stream"]
        check(sd["dropped_batches"] > 0 and sd["waits"] == 0, "drop policy stats %r" % sd)
        check(sw["waits"] > 0 and sw["wait_s"] > 0 and sw["dropped_batches"] > 0,
              "wait policy stats %r" % sw)
        for s in (sd, sw):
            check(s["batches_buffered"] + s["dropped_batches"] == 25, "batches %r" % s)
        print("# paused: %d answers; drop policy dropped %d, wait policy waited %d times "
              "(%.1f s) and dropped %d" % (answered, sd["dropped_batches"], sw["waits"],
                                           sw["wait_s"], sw["dropped_batches"]))
        c.resume()
        for u in (ud, uw):
            wait_for(lambda: (lambda s: s["tokens_acked"] == s["tokens_buffered"])(
                get(u + "/stats")["stream"]), timeout=60, what="buffered batches acked")
        acked = sum(get(u + "/stats")["stream"]["tokens_acked"] for u in (ud, uw))
        st = c.status()
        check(st["tokens_acked"] == acked, "daemon acked %d tokens, servers %d"
              % (st["tokens_acked"], acked))
    finally:
        for h, m in servers:
            stop_server(h, m)
        stop_daemon(p, c)


def test_lm_report_l1():
    """The make demo-lm report (models/report.py) on an L1 crosscoder trained briefly
    from the server's stream: every section, L0 by ReLU, no daemon examples claimed."""
    import contextlib
    import io
    from models import report
    p, c, run = start_daemon("lmrep", ("--model", "l1", "--l1_coef", "0.1", "--lr", "1e-3",
                                       "--warmup_steps", "10"))
    httpd, ms = None, None
    try:
        httpd, ms, url = start_server(run, policy="wait", max_wait=5)
        dialogues = data.chat_dialogues("feed")[:12]
        docs = data.web_docs("feed")[:2]
        for (_, turns), (_, text) in zip(dialogues, docs * 6):
            post(url + "/score", {"messages": [{"role": a, "content": b} for a, b in turns]})
            post(url + "/score", {"text": text[:600]})
        wait_for(lambda: c.status()["step"] >= 10, timeout=60, what="10 training steps")
        ck = c.checkpoint()["path"]
        out = io.StringIO()
        with contextlib.redirect_stdout(out):
            report.main(["--run-dir", run, "--checkpoint", ck, "--rows", "8", "--top", "2"])
        text = out.getvalue()
        for want in ("crosscoder: l1 (μ = l1_coef 0.1), 256 latents", "spliced-in loss",
                     "relative decoder norm", "L0 (ReLU, as the L1 model encodes)",
                     "daemon collects examples while training BatchTopK models only",
                     "chat-only latents (Δ ≥ 0.9)", "chat-specific latents", "template:"):
            check(want in text, "report lacks %r:\n%s" % (want, text[-1500:]))
        check("[daemon's examples]" not in text, "daemon examples claimed for L1:\n" + text[-800:])
    finally:
        if httpd:
            stop_server(httpd, ms)
        stop_daemon(p, c)


def test_lm_spliced_identity():
    """An identity crosscoder spliced in leaves the loss unchanged (KL 0)."""
    rows, mask = data.chat_rows(TOK, data.chat_dialogues("eval")[:8])
    ck = evaluate.identity_crosscoder(lm.D_MODEL)
    r = evaluate.spliced_loss(BASE, CHAT, rows, mask, lambda a: xcoder.reconstruct(ck, a))
    for m in ("base", "chat"):
        x = r[m]
        check(abs(x["loss_spliced"] - x["loss"]) <= 1e-5 * max(1.0, x["loss"]),
              "%s: spliced %.7f vs %.7f" % (m, x["loss_spliced"], x["loss"]))
        check(abs(x["kl"]) <= 1e-6, "%s: KL %.3g" % (m, x["kl"]))
        check(x["loss_zero"] > x["loss"] + 0.5, "%s: zeroing hardly hurts: %r" % (m, x))
    # and a crosscoder that is not the identity moves the loss
    ck2 = dict(ck, **{"decoder.weight": ck["decoder.weight"] * 0.5})
    r2 = evaluate.spliced_loss(BASE, CHAT, rows, mask, lambda a: xcoder.reconstruct(ck2, a))
    check(r2["chat"]["kl"] > 1e-3, "halved reconstruction: KL %.3g" % r2["chat"]["kl"])


def test_lm_chat_finetune_effect():
    """Held-out chat text: the chat model's loss is lower than the base model's.
    Held-out web text: it is not."""
    sets = evaluate.eval_sets(TOK, "eval", rows=48)
    r = {}
    for kind, (rows, mask) in sets.items():
        for name, model in (("base", BASE), ("chat", CHAT)):
            lt = lm.token_losses(model, torch.as_tensor(rows))
            m = torch.as_tensor(mask)[:, 1:]
            r[kind, name] = float((lt * m).sum() / m.sum())
    print("# held-out loss (nats/token): chat text base %.3f chat %.3f; web text base %.3f "
          "chat %.3f" % (r["chat", "base"], r["chat", "chat"], r["web", "base"], r["web", "chat"]))
    check(r["chat", "chat"] < r["chat", "base"] - 0.2, "chat text: %r" % r)
    check(r["web", "chat"] >= r["web", "base"], "web text: %r" % r)


def test_lm_generate_and_errors():
    """/generate answers in the template and streams the dialogue; bad requests get
    400 with a reason; the server keeps serving."""
    ep = "ipc://%s/fake-ingest2.sock" % TMP
    fake = FakeIngest(ep)
    httpd, ms, url = start_server(ep)
    try:
        code, r = post(url + "/generate", {"prompt": "What does len() do?", "max_tokens": 24})
        check(code == 200 and isinstance(r["text"], str), "generate: %r" % (r,))
        ids = r["tokens"]
        prompt = TOK.encode_chat([("user", "What does len() do?")], open_model_turn=True)
        check(ids[:len(prompt)] == prompt and len(prompt) < len(ids) <= len(prompt) + 24,
              "generated ids %r" % ids)
        wait_for(lambda: len(fake.got) == 1, timeout=20, what="the dialogue's batch")
        check(fake.got[0][2].tolist() == ids, "streamed ids differ from the generated ones")
        for body, what in (({"text": 5}, "text"), ({"messages": [{"role": "x", "content": ""}]},
                                                   "role")):
            code, e = post(url + "/score", body)
            check(code == 400 and what in e["error"], "bad request: %r %r" % (code, e))
        code, e = post(url + "/nope", {})
        check(code == 404, "unknown path: %r" % code)
        code, r = post(url + "/score", {"text": "still serving"})
        check(code == 200, "after errors: %r" % code)
        check(get(url + "/stats")["errors"] == 2, "error count")
    finally:
        stop_server(httpd, ms)
        fake.close()


def main():
    if not os.path.exists(XCODERD):
        print("not ok - lm tests: %s is missing (make build/xcoderd)" % XCODERD)
        return 1
    try:
        for t in (test_lm_models_shipped, test_lm_stream_equals_direct_forward,
                  test_lm_backpressure_drop_and_wait, test_lm_spliced_identity,
                  test_lm_chat_finetune_effect, test_lm_generate_and_errors, test_lm_report_l1):
            run_case(t)
    finally:
        shutil.rmtree(TMP, ignore_errors=True)
    return 1 if failed() else 0


if __name__ == "__main__":
    sys.exit(main())
