"""The text the language models are trained on, from one Debian package.

Corpus: the Python 3.11 documentation as Debian's `python3-doc` package ships it
(/usr/share/doc/python3.11/html, Sphinx HTML). Licence: the Python documentation is
distributed under the PSF License Version 2 (its code examples under the Zero-Clause
BSD licence); see /usr/share/doc/python3-doc/copyright. Only `models/train.py`
(retraining) needs the package: `apt-get install python3-doc`.

Two kinds of text, as the crosscoder paper trains on (web text and chat data):
- web: the documentation pages (tutorial, library and language reference, HOWTOs …)
  as plain text, one document per page; the FAQ pages are left out (they are chat);
- chat: questions and answers, turned into dialogues with the chat template
  (models/lm.py): every question of the Python FAQ (faq/*.html, a heading ending in
  "?" and the paragraphs under it), and "what does NAME do?"-style questions about the
  documented functions, classes and methods, answered by the first paragraph of
  their description.

Each item is assigned to train or held-out by a hash of its name (10 % held out), so
the split does not depend on file order. `python3 models/corpus.py` prints counts.
"""

import glob
import hashlib
import html.parser
import os
import re
import sys

DOC_ROOT = "/usr/share/doc/python3.11/html"
PACKAGE = "python3-doc"
HELDOUT_PERCENT = 10

# sub-trees of the documentation used as web text (the rest is indexes, changelogs
# and the C API, which are mostly lists)
WEB_DIRS = ("tutorial", "library", "reference", "howto", "using", "glossary.html",
            "extending", "installing", "distributing")


def heldout(key):
    """True for the HELDOUT_PERCENT % of items whose name hashes low."""
    h = int(hashlib.sha256(key.encode()).hexdigest()[:8], 16)
    return h % 100 < HELDOUT_PERCENT


class _Blocks(html.parser.HTMLParser):
    """Collects the text blocks of a Sphinx page's main body, in order, as
    (tag, text, attrs): tag one of h1..h4, p, pre, li, dt, plus ("dd", "", …)
    and ("/dd", "", …) markers so that a definition's first paragraph can be found."""

    BLOCK = {"h1", "h2", "h3", "h4", "p", "pre", "dt"}
    SKIP = {"script", "style"}

    def __init__(self):
        super().__init__(convert_charrefs=True)
        self.blocks = []
        self.depth_main = 0      # div nesting inside role=main (0: outside)
        self.cur = None          # (tag, attrs, [text])
        self.skip = 0
        self.dl_class = []       # class of each open <dl>

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag == "div":
            if self.depth_main:
                self.depth_main += 1
            elif a.get("role") == "main":
                self.depth_main = 1
            return
        if not self.depth_main:
            return
        if tag in self.SKIP:
            self.skip += 1
        elif tag == "a" and a.get("class") == "headerlink":
            self.skip += 1
        elif tag == "dl":
            self.dl_class.append(a.get("class", ""))
        elif tag == "dd":
            self.blocks.append(("dd", "", {"dl": self.dl_class[-1] if self.dl_class else ""}))
        elif tag in self.BLOCK and self.cur is None:
            a["dl"] = self.dl_class[-1] if self.dl_class else ""
            self.cur = (tag, a, [])
        elif tag == "br" and self.cur is not None:
            self.cur[2].append("\n")

    def handle_endtag(self, tag):
        if tag == "div" and self.depth_main:
            self.depth_main -= 1
            return
        if not self.depth_main:
            return
        if tag in self.SKIP or (tag == "a" and self.skip):
            self.skip = max(0, self.skip - 1)
        elif tag == "dl" and self.dl_class:
            self.dl_class.pop()
        elif tag == "dd":
            self.blocks.append(("/dd", "", {}))
        elif self.cur is not None and tag == self.cur[0]:
            t, a, parts = self.cur
            text = "".join(parts)
            if t != "pre":
                text = re.sub(r"\s+", " ", text).strip()
            else:
                text = text.strip("\n")
            if text:
                self.blocks.append((t, text, a))
            self.cur = None

    def handle_data(self, data):
        if self.depth_main and self.cur is not None and not self.skip:
            self.cur[2].append(data)


def page_blocks(path):
    p = _Blocks()
    with open(path, encoding="utf-8") as f:
        p.feed(f.read())
    return p.blocks


def _rel(path):
    return os.path.relpath(path, DOC_ROOT)


def _pages(dirs):
    out = []
    for d in dirs:
        full = os.path.join(DOC_ROOT, d)
        if full.endswith(".html"):
            out.append(full)
        else:
            out.extend(glob.glob(os.path.join(full, "**", "*.html"), recursive=True))
    return sorted(out)


def check_installed():
    if not os.path.isdir(DOC_ROOT):
        sys.exit(f"corpus: {DOC_ROOT} is missing; install Debian's {PACKAGE} package "
                 f"(apt-get install {PACKAGE}) to rebuild the corpus")


def web_documents():
    """[(name, text)]: one document per documentation page, blocks joined by blank
    lines (code blocks kept as they are)."""
    docs = []
    for path in _pages(WEB_DIRS):
        blocks = [t for tag, t, _ in page_blocks(path) if tag not in ("dd", "/dd")]
        text = "\n\n".join(blocks)
        if len(text) > 200:
            docs.append((_rel(path), text))
    return docs


def _clip(text, limit):
    """The first sentences of text that fit in limit characters (at least one)."""
    if len(text) <= limit:
        return text
    parts = re.split(r"(?<=[.!?:])\s+", text)
    out = parts[0]
    for s in parts[1:]:
        if len(out) + 1 + len(s) > limit:
            break
        out += " " + s
    return out[:limit * 2]


def faq_pairs():
    """[(question, answer)] from the Python FAQ: a heading that ends in '?' and the
    paragraphs under it (up to ~400 characters)."""
    pairs = []
    for path in _pages(["faq"]):
        blocks = page_blocks(path)
        for i, (tag, text, _) in enumerate(blocks):
            if tag not in ("h2", "h3", "h4") or not text.endswith("?"):
                continue
            ans = []
            for tag2, text2, _ in blocks[i + 1:]:
                if tag2 in ("h1", "h2", "h3", "h4"):
                    break
                if tag2 == "p":
                    ans.append(text2)
                if sum(len(a) for a in ans) > 300:
                    break
            if ans:
                pairs.append((text, _clip(" ".join(ans), 400)))
    return pairs


# question forms for the API pairs, chosen by a hash of the name
_ASK = {
    "function": ["What does {n}() do?", "What is {n}() for?", "Explain the function {n}.",
                 "How do I use {n}()?"],
    "method": ["What does the method {n}() do?", "Explain {n}().", "What is {n}() for?"],
    "class": ["What is {n}?", "Explain the class {n}.", "What is the class {n} for?"],
    "exception": ["When is {n} raised?", "What is the exception {n}?"],
    "data": ["What is {n}?", "What does {n} hold?"],
    "attribute": ["What is the attribute {n}?", "What does {n} hold?"],
}


def api_pairs():
    """[(question, answer)]: for each documented Python object (dl class
    "py function|method|class|exception|data|attribute" with an id), a question about it
    and the first paragraph of its description (up to ~300 characters)."""
    pairs = []
    seen = set()
    for path in _pages(["library"]):
        blocks = page_blocks(path)
        for i, (tag, _text, a) in enumerate(blocks):
            if tag != "dt" or not a.get("id") or not a.get("dl", "").startswith("py "):
                continue
            kind = a["dl"].split()[1]
            name = a["id"]
            if kind not in _ASK or name in seen or "." not in name and kind == "method":
                continue
            ans = None
            for tag2, text2, _ in blocks[i + 1:i + 8]:
                if tag2 == "p":
                    ans = text2
                    break
                if tag2 == "/dd":
                    break
            if not ans or len(ans) < 20:
                continue
            seen.add(name)
            forms = _ASK[kind]
            h = int(hashlib.sha256(name.encode()).hexdigest()[:8], 16)
            pairs.append((forms[h % len(forms)].format(n=name), _clip(ans, 300)))
    return pairs


def chat_dialogues():
    """[(name, [(role, text), …])]: each FAQ pair as a dialogue; API pairs as one-turn
    dialogues, and every fourth one joined with the next into a two-turn dialogue."""
    out = [(q, [("user", q), ("model", a)]) for q, a in faq_pairs()]
    api = api_pairs()
    i = 0
    while i < len(api):
        q, a = api[i]
        if i % 4 == 0 and i + 1 < len(api):
            q2, a2 = api[i + 1]
            out.append((q, [("user", q), ("model", a), ("user", q2), ("model", a2)]))
            i += 2
        else:
            out.append((q, [("user", q), ("model", a)]))
            i += 1
    return out


def split(items):
    """(train, heldout) by the hash of each item's name (its first element)."""
    tr = [x for x in items if not heldout(x[0])]
    ho = [x for x in items if heldout(x[0])]
    return tr, ho


if __name__ == "__main__":
    check_installed()
    web = web_documents()
    chat = chat_dialogues()
    print(f"web: {len(web)} pages, {sum(len(t) for _, t in web)} characters")
    print(f"chat: {len(chat)} dialogues ({len(faq_pairs())} FAQ pairs, {len(api_pairs())} API pairs)")
    for name, turns in chat[:3] + chat[-2:]:
        print(name, "->", turns)
