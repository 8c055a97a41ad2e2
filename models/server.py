#!/usr/bin/python3
"""The model server: answers generation and scoring requests over HTTP (JSON) with
the chat model, and for every text it processes runs BOTH models (base and chat) on
the same tokens and streams their residual activations at one layer to xcoderd.

    /usr/bin/python3 models/server.py --port 8090 --daemon RUN_DIR [--on-full drop|wait]

Endpoints (request and reply bodies are JSON objects):
  POST /score     {"text": str} (web text, tag "web") or {"messages": [{"role": "user"|
                  "model", "content": str}, …]} (a dialogue in the chat template, tag
                  "chat"); optional "tag"; "loss": false skips the blocks after the
                  streamed layer (no losses; for feeding). Reply: "docs" (one per
                  model context of up to 128 tokens: {"doc", "tokens", "loss_base",
                  "loss_chat"}), "tokens" (all ids), "loss_base"/"loss_chat" (mean
                  next-token loss, nats), "streamed" (tokens handed to the stream
                  buffer), "dropped".
  POST /generate  {"messages": […]} or {"prompt": str}, "max_tokens" (default 64),
                  "temperature" (0 = greedy, default), "seed". Reply: "text", "tokens"
                  (prompt + answer ids), "doc", "streamed", "dropped". The whole
                  dialogue (prompt and answer) is streamed, tag "chat".
  GET  /stats     the stream's counters (below) and the server's.
  GET  /health    {"ok": true}

Streaming never blocks an answer on the daemon. A request's activations go into a
bounded buffer (--buffer batches); one sender thread feeds them to a Producer
(xcoder, client/python). When the daemon applies backpressure (its queue full, e.g.
while training is paused) the buffer fills; then, by --on-full:
  drop  the new stream batch is dropped and counted (dropped_batches/_tokens);
        the request is answered at once;
  wait  the request waits up to --max-wait seconds for room (counted in waits,
        wait_s) and drops only after that.
Each batch carries the token ids and (doc, position) pairs; doc ids count up from
--first-doc across the server's life, one per model context, as the replies say.
"""

import argparse
import inspect
import json
import os
import queue
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))

import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from models import lm  # noqa: E402
from xcoder import Producer, XcoderNack, XcoderTimeout  # noqa: E402

MAX_BODY = 1 << 20


class _Stop(Exception):
    pass


def forward_with_residual(model, ids, layer, stop=False):
    """(logits [B, T, V], residual after blocks[layer] [B, T, d]) in one forward
    pass; stop: skip the blocks after the layer (logits None)."""
    box = []

    def hook(_m, _i, out):
        box.append(out.detach())
        if stop:
            raise _Stop()

    h = model.blocks[layer].register_forward_hook(hook)
    logits = None
    try:
        with torch.no_grad():
            logits = model(ids)
    except _Stop:
        pass
    finally:
        h.remove()
    return logits, box[0]


class Stream:
    """The bounded buffer between request handlers and the sender thread, and
    its counters. put() never blocks longer than max_wait (policy "wait") or at
    all (policy "drop")."""

    def __init__(self, endpoint, buffer=64, policy="drop", max_wait=5.0, window=8,
                 producer_id="lm-server", dtype="f32"):
        if policy not in ("drop", "wait"):
            raise ValueError(f"policy must be 'drop' or 'wait'; got {policy!r}")
        self.endpoint = endpoint
        self.policy = policy
        self.max_wait = max_wait
        self.q = queue.Queue(maxsize=buffer)
        self.buffer = buffer
        self.lock = threading.Lock()
        self.c = {"batches_buffered": 0, "tokens_buffered": 0, "batches_sent": 0,
                  "tokens_sent": 0, "batches_acked": 0, "tokens_acked": 0,
                  "batches_nacked": 0, "dropped_batches": 0, "dropped_tokens": 0,
                  "waits": 0, "wait_s": 0.0, "sender_blocked_s": 0.0, "vocab_pieces": 0,
                  "last_error": ""}
        self.stop_ev = threading.Event()
        self.producer = None
        self.dtype = dtype
        if endpoint:
            self.producer = Producer(endpoint, window=window, timeout=0.5, producer=producer_id)
            # the stream tag and the vocabulary, where the client has them
            # (PROTOCOL.md 1.1 `stream`, 1.5 vocabulary messages)
            self._send_tags = "stream" in inspect.signature(self.producer.send).parameters
            self.vocab = None
            self.thread = threading.Thread(target=self._run, name="stream-sender", daemon=True)
            self.thread.start()

    def set_vocab(self, pieces):
        """The text of each token id, registered with the daemon (as the default
        vocabulary of every stream) before the first batch, by the sender."""
        self.vocab = list(pieces)

    def _send_vocab(self):
        p = self.producer
        if self.vocab is None or not hasattr(p, "send_vocab"):
            return
        while not self.stop_ev.is_set():
            try:
                p.send_vocab(self.vocab, stream="", flush=False)
                self._count(vocab_pieces=len(self.vocab))
                return
            except XcoderTimeout:
                continue
            except XcoderNack as e:
                self._count(last_error=f"vocabulary refused: {e.code}: {e}")
                return

    def _count(self, **kw):
        with self.lock:
            for k, v in kw.items():
                self.c[k] = self.c[k] + v if not isinstance(v, str) else v

    def put(self, acts, tokens, positions, tag):
        """Hands one batch to the sender; returns True if buffered, False if dropped,
        None when streaming is off."""
        if self.producer is None:
            return None
        n = int(acts.shape[0])
        item = (acts, tokens, positions, tag)
        try:
            self.q.put_nowait(item)
        except queue.Full:
            if self.policy == "drop":
                self._count(dropped_batches=1, dropped_tokens=n)
                return False
            t0 = time.monotonic()
            try:
                self.q.put(item, timeout=self.max_wait)
            except queue.Full:
                self._count(waits=1, wait_s=time.monotonic() - t0, dropped_batches=1,
                            dropped_tokens=n)
                return False
            self._count(waits=1, wait_s=time.monotonic() - t0)
        self._count(batches_buffered=1, tokens_buffered=n)
        return True

    def _run(self):
        p = self.producer
        vocab_done = False
        while not self.stop_ev.is_set() or not self.q.empty():
            try:
                acts, tok, pos, tag = self.q.get(timeout=0.1)
            except queue.Empty:
                self._poll()
                continue
            if not vocab_done:  # set by the ModelServer before its first batch
                self._send_vocab()
                vocab_done = True
            kw = {"stream": tag} if self._send_tags else {}
            t0 = time.monotonic()
            while True:
                try:
                    p.send(acts, token_ids=tok, positions=pos, dtype=self.dtype, **kw)
                    break
                except XcoderTimeout:
                    # the daemon holds our window full (backpressure): keep trying
                    # unless we are closing and the daemon is gone
                    if self.stop_ev.is_set() and time.monotonic() - t0 > 5:
                        self._count(dropped_batches=1, dropped_tokens=int(acts.shape[0]),
                                    last_error="daemon did not take the last batches at close")
                        break
                except XcoderNack as e:
                    self._count(batches_nacked=len(e.nacks) if e.nacks else 1,
                                last_error=f"{e.code}: {e}")
                    continue
            self._count(sender_blocked_s=time.monotonic() - t0)
            self._poll()

    def _poll(self):
        p = self.producer
        try:
            p.poll()
        except XcoderNack as e:
            self._count(batches_nacked=len(e.nacks) if e.nacks else 1,
                        last_error=f"{e.code}: {e}")
        with self.lock:
            self.c["batches_sent"] = p.stats["batches_sent"]
            self.c["tokens_sent"] = p.stats["tokens_sent"]
            self.c["batches_acked"] = p.stats["batches_acked"]
            self.c["tokens_acked"] = p.stats["tokens_acked"]

    def stats(self):
        with self.lock:
            s = dict(self.c)
        s.update(policy=self.policy, buffer=self.buffer, buffer_used=self.q.qsize(),
                 endpoint=self.endpoint or "", wait_s=round(s["wait_s"], 3),
                 sender_blocked_s=round(s["sender_blocked_s"], 3))
        return s

    def close(self, timeout=10.0):
        """Sends what is buffered (up to timeout s), then closes the producer."""
        if self.producer is None:
            return
        self.stop_ev.set()
        self.thread.join(timeout)
        try:
            self.producer.close(flush=False)
        except Exception:
            pass


class ModelServer:
    """Both models, the tokenizer and the stream; the HTTP handler calls score()
    and generate(). One lock serialises the model work (CPU-bound anyway)."""

    def __init__(self, stream, layer=lm.STREAM_LAYER, first_doc=0, weights=None, models=None):
        """weights: directory of the model files (default models/weights); models:
        an already loaded (tokenizer, base, chat) instead."""
        if models is not None:
            self.tok, self.base, self.chat = models
        else:
            w = weights or lm.WEIGHTS
            self.tok = lm.Tokenizer(os.path.join(w, "tokenizer.model"))
            self.base = lm.load(os.path.join(w, "base.safetensors"))
            self.chat = lm.load(os.path.join(w, "chat.safetensors"))
        self.layer = layer
        self.stream = stream
        if stream.producer is not None:
            stream.set_vocab(self.tok.vocabulary_text())
        self.next_doc = first_doc
        self.lock = threading.Lock()
        self.c = {"requests": 0, "score": 0, "generate": 0, "tokens": 0, "errors": 0}

    # -------------------------------------------------------------- core --

    def _windows(self, ids):
        """Splits ids into model contexts of at most CTX tokens."""
        return [ids[i:i + lm.CTX] for i in range(0, len(ids), lm.CTX)] or [[]]

    def process(self, ids, tag, loss=True):
        """Runs both models on the contexts of ids (one batch, the last context
        padded at its end, which causal attention never lets earlier tokens see),
        streams each context's paired residuals (tag, doc id, positions) and returns
        per-context results."""
        wins = [w for w in self._windows(ids) if w]
        if not wins:
            return [], 0, 0
        T = max(len(w) for w in wins)
        x = torch.tensor([w + [0] * (T - len(w)) for w in wins], dtype=torch.long)
        with self.lock:
            lb, rb = forward_with_residual(self.base, x, self.layer, stop=not loss)
            lc, rc = forward_with_residual(self.chat, x, self.layer, stop=not loss)
            first = self.next_doc
            self.next_doc += len(wins)
        docs, streamed, dropped = [], 0, 0
        for i, win in enumerate(wins):
            n, doc = len(win), first + i
            acts = torch.stack([rb[i, :n], rc[i, :n]], dim=1).numpy()   # [n, 2, d] f32
            pos = np.stack([np.full(n, doc, dtype=np.uint32),
                            np.arange(n, dtype=np.uint32)], axis=1)
            ok = self.stream.put(acts, np.asarray(win, dtype=np.uint32), pos, tag)
            if ok:
                streamed += n
            elif ok is not None:
                dropped += n
            r = {"doc": doc, "tokens": n}
            if n > 1 and loss:
                tgt = x[i, 1:n]
                r["loss_base"] = float(F.cross_entropy(lb[i, :n - 1], tgt))
                r["loss_chat"] = float(F.cross_entropy(lc[i, :n - 1], tgt))
            docs.append(r)
        return docs, streamed, dropped

    def _turns(self, body):
        msgs = body.get("messages")
        if not isinstance(msgs, list) or not msgs:
            raise ValueError("messages must be a non-empty list of {role, content}")
        turns = []
        for m in msgs:
            if not isinstance(m, dict) or m.get("role") not in lm.ROLES \
                    or not isinstance(m.get("content"), str):
                raise ValueError(f"each message needs role in {list(lm.ROLES)} and a string "
                                 f"content; got {m!r}"[:300])
            turns.append((m["role"], m["content"]))
        return turns

    def score(self, body):
        if "messages" in body:
            ids = self.tok.encode_chat(self._turns(body))
            tag = body.get("tag", "chat")
        elif isinstance(body.get("text"), str):
            ids = [self.tok.bos] + self.tok.encode(body["text"])
            tag = body.get("tag", "web")
        else:
            raise ValueError("score needs 'text' (a string) or 'messages'")
        docs, streamed, dropped = self.process(ids, tag, loss=bool(body.get("loss", True)))
        with self.lock:
            self.c["score"] += 1
            self.c["tokens"] += len(ids)
        out = {"tokens": ids, "docs": docs, "tag": tag, "streamed": streamed,
               "dropped": dropped}
        for k in ("loss_base", "loss_chat"):
            w = [(d[k], d["tokens"] - 1) for d in docs if k in d]
            if w:
                out[k] = sum(a * b for a, b in w) / sum(b for _, b in w)
        return out

    def generate(self, body):
        if "messages" in body:
            ids = self.tok.encode_chat(self._turns(body), open_model_turn=True)
        elif isinstance(body.get("prompt"), str):
            ids = self.tok.encode_chat([("user", body["prompt"])], open_model_turn=True)
        else:
            raise ValueError("generate needs 'messages' or 'prompt'")
        max_tokens = int(body.get("max_tokens", 64))
        temp = float(body.get("temperature", 0.0))
        if len(ids) >= lm.CTX:
            raise ValueError(f"the prompt is {len(ids)} tokens; the context is {lm.CTX}")
        gen = torch.Generator().manual_seed(int(body.get("seed", 0)))
        start = len(ids)
        with self.lock:
            while len(ids) < lm.CTX and len(ids) - start < max_tokens:
                with torch.no_grad():
                    logits = self.chat(torch.tensor([ids]))[0, -1]
                if temp > 0:
                    nxt = int(torch.multinomial((logits / temp).softmax(-1), 1, generator=gen))
                else:
                    nxt = int(logits.argmax())
                ids.append(nxt)
                if nxt in (self.tok.eot, self.tok.eos):
                    break
        answer = [t for t in ids[start:] if t not in (self.tok.eot, self.tok.eos)]
        docs, streamed, dropped = self.process(ids, body.get("tag", "chat"))
        with self.lock:
            self.c["generate"] += 1
            self.c["tokens"] += len(ids)
        return {"text": self.tok.decode(answer), "tokens": ids, "doc": docs[0]["doc"],
                "streamed": streamed, "dropped": dropped}

    def stats(self):
        with self.lock:
            s = dict(self.c)
        s["next_doc"] = self.next_doc
        s["layer"] = lm.LAYER_NAME if self.layer == lm.STREAM_LAYER else f"blocks.{self.layer}"
        s["d"] = lm.D_MODEL
        s["stream"] = self.stream.stats()
        return s


def make_handler(server):
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, fmt, *args):  # quiet: one line per error only
            pass

        def _reply(self, code, obj):
            b = json.dumps(obj).encode()
            self.send_response(code)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(b)))
            self.end_headers()
            self.wfile.write(b)

        def do_GET(self):
            if self.path == "/health":
                self._reply(200, {"ok": True})
            elif self.path == "/stats":
                self._reply(200, server.stats())
            else:
                self._reply(404, {"error": f"no such endpoint {self.path}; GET /health, "
                                           f"/stats; POST /score, /generate"})

        def do_POST(self):
            with server.lock:
                server.c["requests"] += 1
            n = int(self.headers.get("Content-Length") or 0)
            if n > MAX_BODY:
                self._reply(413, {"error": f"body of {n} bytes; at most {MAX_BODY}"})
                return
            try:
                body = json.loads(self.rfile.read(n) or b"{}")
                if not isinstance(body, dict):
                    raise ValueError("the body must be a JSON object")
                if self.path == "/score":
                    self._reply(200, server.score(body))
                elif self.path == "/generate":
                    self._reply(200, server.generate(body))
                else:
                    self._reply(404, {"error": f"no such endpoint {self.path}"})
            except (ValueError, TypeError) as e:
                with server.lock:
                    server.c["errors"] += 1
                self._reply(400, {"error": str(e)})
            except Exception as e:  # a bug: answer, log, keep serving
                with server.lock:
                    server.c["errors"] += 1
                print(f"server: {self.path}: {type(e).__name__}: {e}", file=sys.stderr,
                      flush=True)
                self._reply(500, {"error": f"{type(e).__name__}: {e}"})
    return Handler


def main(argv=None):
    ap = argparse.ArgumentParser(description="xcoderd's language-model server "
                                 "(models/README.md)")
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=8090, help="0 picks a free port")
    ap.add_argument("--daemon", default=None,
                    help="xcoderd's run directory or ingest endpoint; none: no streaming")
    ap.add_argument("--layer", type=int, default=lm.STREAM_LAYER,
                    help=f"stream the residual after blocks.LAYER (default {lm.STREAM_LAYER})")
    ap.add_argument("--on-full", choices=("drop", "wait"), default="drop")
    ap.add_argument("--buffer", type=int, default=64, help="stream buffer, batches")
    ap.add_argument("--max-wait", type=float, default=5.0,
                    help="--on-full wait: longest wait for room, seconds")
    ap.add_argument("--window", type=int, default=8, help="batches in flight to the daemon")
    ap.add_argument("--first-doc", type=int, default=0)
    ap.add_argument("--threads", type=int, default=1, help="torch threads")
    ap.add_argument("--weights", default=None, help="directory of the model files")
    ap.add_argument("--port-file", default=None, help="write the bound port here")
    a = ap.parse_args(argv)
    torch.set_num_threads(a.threads)
    stream = Stream(a.daemon, buffer=a.buffer, policy=a.on_full, max_wait=a.max_wait,
                    window=a.window)
    ms = ModelServer(stream, layer=a.layer, first_doc=a.first_doc, weights=a.weights)
    httpd = ThreadingHTTPServer((a.host, a.port), make_handler(ms))
    httpd.daemon_threads = True
    port = httpd.server_address[1]
    if a.port_file:
        with open(a.port_file + ".tmp", "w") as f:
            f.write(f"{port}\n")
        os.rename(a.port_file + ".tmp", a.port_file)
    print(f"server: listening on http://{a.host}:{port}/ (layer blocks.{a.layer}, "
          f"stream {'to ' + a.daemon if a.daemon else 'off'}, on-full {a.on_full})", flush=True)
    import signal
    signal.signal(signal.SIGTERM, lambda *_: threading.Thread(target=httpd.shutdown).start())
    try:
        httpd.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        httpd.server_close()
        stream.close()
        print(f"server: stopped; {json.dumps(ms.stats()['stream'])}", flush=True)


if __name__ == "__main__":
    main()
