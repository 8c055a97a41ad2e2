#!/usr/bin/python3
"""The feeder: sends the model server a mix of web text and chat dialogues (50/50 by
tokens by default, as the crosscoder paper trained), from the checked-in held-out
text (models/data/), looping over it until a time or token budget is spent.

    /usr/bin/python3 models/feeder.py --server http://127.0.0.1:8090 --seconds 120
    /usr/bin/python3 models/feeder.py --server … --only chat --split eval --tokens 50000

Web documents go to POST /score as {"text"} in slices of ~SLICE characters (the
server cuts them into 128-token contexts); dialogues as {"messages"}. The next
request is of whichever kind is behind its share. Prints one JSON summary line.
"""

import argparse
import itertools
import json
import os
import sys
import time
import urllib.request

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))

from models import data  # noqa: E402

SLICE = 1500


def post(url, body, timeout=60):
    req = urllib.request.Request(url, data=json.dumps(body).encode(),
                                 headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=timeout) as r:
        return json.loads(r.read())


def web_requests(split):
    for name, text in itertools.cycle(data.web_docs(split)):
        for i in range(0, len(text), SLICE):
            yield {"text": text[i:i + SLICE]}


def chat_requests(split):
    for name, turns in itertools.cycle(data.chat_dialogues(split)):
        yield {"messages": [{"role": r, "content": t} for r, t in turns]}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--server", default="http://127.0.0.1:8090")
    ap.add_argument("--seconds", type=float, default=None)
    ap.add_argument("--tokens", type=int, default=None)
    ap.add_argument("--chat-share", type=float, default=0.5,
                    help="share of tokens from chat dialogues (default 0.5)")
    ap.add_argument("--only", choices=("web", "chat"), default=None)
    ap.add_argument("--split", choices=data.SPLITS, default="feed")
    ap.add_argument("--with-loss", action="store_true",
                    help="ask for the losses too (by default the server stops each "
                         "forward pass at the streamed layer)")
    a = ap.parse_args(argv)
    if a.seconds is None and a.tokens is None:
        ap.error("give --seconds and/or --tokens")
    share = {"web": 0.0, "chat": 1.0}.get(a.only, a.chat_share)
    gens = {"web": web_requests(a.split), "chat": chat_requests(a.split)}
    tokens = {"web": 0, "chat": 0}
    s = {"requests": 0, "streamed": 0, "dropped": 0, "errors": 0}
    t0 = time.monotonic()
    url = a.server.rstrip("/") + "/score"
    while True:
        total = tokens["web"] + tokens["chat"]
        if a.tokens is not None and total >= a.tokens:
            break
        if a.seconds is not None and time.monotonic() - t0 >= a.seconds:
            break
        kind = "chat" if tokens["chat"] < share * max(1, total) or share >= 1.0 else "web"
        if share <= 0.0:
            kind = "web"
        try:
            r = post(url, dict(next(gens[kind]), loss=a.with_loss))
        except OSError as e:
            s["errors"] += 1
            if s["errors"] > 20:
                sys.exit(f"feeder: {url}: {e} (giving up after 20 errors)")
            time.sleep(0.2)
            continue
        tokens[kind] += len(r["tokens"])
        s["requests"] += 1
        s["streamed"] += r.get("streamed", 0)
        s["dropped"] += r.get("dropped", 0)
    el = time.monotonic() - t0
    s.update(tokens_web=tokens["web"], tokens_chat=tokens["chat"], seconds=round(el, 1),
             tokens_per_s=round((tokens["web"] + tokens["chat"]) / max(el, 1e-9)))
    print(json.dumps(s), flush=True)


if __name__ == "__main__":
    main()
