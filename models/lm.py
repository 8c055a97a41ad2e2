"""The project's own small language models: a base model and its chat fine-tune.

    from models import lm
    tok = lm.Tokenizer()                       # models/weights/tokenizer.model
    base, chat = lm.load("base"), lm.load("chat")
    ids = tok.encode_chat([("user", "What does len() do?")], open_model_turn=True)
    logits = chat(torch.tensor([ids]))

Architecture (GPT-2 style, pre-LayerNorm): token + learned position embeddings,
N_LAYER blocks of causal self-attention and a GELU MLP, a final LayerNorm, output
projection tied to the token embedding. `model.blocks.L` returns the residual stream
after block L: the layer the model server hooks and streams (STREAM_LAYER, the middle).

Tokenizer: a SentencePiece unigram model (Debian's python3-sentencepiece) with byte
fallback and the chat template's special tokens. Chat template (as Gemma's, its
newlines folded away by the tokenizer's whitespace normalisation):

    <bos><start_of_turn>user {question}<end_of_turn><start_of_turn>model {answer}<end_of_turn>

The base model never saw <start_of_turn>/<end_of_turn> in its input (through the
tied output layer it only learnt never to predict them); the chat fine-tune learns them. Both models are fed the same tokens.

Weights: models/weights/{base,chat}.safetensors (float16, read with numpy by
xcoder.load_checkpoint, computed in float32). models/train.py reproduces them.
"""

import math
import os
import sys

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

HERE = os.path.dirname(os.path.abspath(__file__))
WEIGHTS = os.path.join(HERE, "weights")
sys.path.insert(0, os.path.join(os.path.dirname(HERE), "client", "python"))
from xcoder.checkpoint import load_checkpoint, save_safetensors  # noqa: E402

# model shape (every checked-in model has it; train.py writes it into the metadata)
VOCAB = 2048
CTX = 128
D_MODEL = 128
N_LAYER = 4
N_HEAD = 4
D_FF = 512
STREAM_LAYER = 1          # blocks.1: the residual after the second of four blocks
LAYER_NAME = f"blocks.{STREAM_LAYER}"

SOT, EOT = "<start_of_turn>", "<end_of_turn>"
ROLES = ("user", "model")


class Tokenizer:
    """SentencePiece wrapper: plain text, chat dialogues, and which ids are the
    template's (special tokens and the role words right after <start_of_turn>)."""

    def __init__(self, path=None):
        import sentencepiece as spm
        self.path = path or os.path.join(WEIGHTS, "tokenizer.model")
        if not os.path.exists(self.path):
            raise FileNotFoundError(f"{self.path} is missing; run models/train.py")
        self.sp = spm.SentencePieceProcessor(model_file=self.path)
        self.bos = self.sp.bos_id()
        self.eos = self.sp.eos_id()
        self.sot = self.sp.piece_to_id(SOT)
        self.eot = self.sp.piece_to_id(EOT)
        self.vocab_size = self.sp.get_piece_size()

    def encode(self, text):
        return self.sp.encode(text)

    def decode(self, ids):
        return self.sp.decode([int(i) for i in ids])

    def piece(self, i):
        return self.sp.id_to_piece(int(i))

    def vocabulary(self):
        """[piece of id 0, piece of id 1, …] (SentencePiece's '▁' marks a word start)."""
        return [self.sp.id_to_piece(i) for i in range(self.vocab_size)]

    def vocabulary_text(self):
        """The text of each piece as it reads in running text ('▁' as a space)."""
        return [p.replace("▁", " ") for p in self.vocabulary()]

    def encode_chat(self, turns, open_model_turn=False):
        """Token ids of a dialogue [(role, text), …] in the chat template, starting
        with <bos>: per turn <start_of_turn>, the role word, the text, <end_of_turn>
        (the newlines of the template are folded away by the tokenizer's whitespace
        normalisation). open_model_turn: end with <start_of_turn> and "model" (a
        prompt for generation)."""
        ids = [self.bos]
        for role, text in turns:
            if role not in ROLES:
                raise ValueError(f"role must be one of {ROLES}; got {role!r}")
            ids += [self.sot] + self.encode(role) + self.encode(text) + [self.eot]
        if open_model_turn:
            ids += [self.sot] + self.encode("model")
        return ids

    def template_mask(self, ids):
        """Boolean per id: part of the chat template (<bos>, <start_of_turn>, the
        pieces of the role word after it, <end_of_turn>)."""
        ids = [int(i) for i in ids]
        out = [False] * len(ids)
        roles = [self.encode(r) for r in ROLES]
        for i, t in enumerate(ids):
            if t in (self.bos, self.sot, self.eot):
                out[i] = True
            if t == self.sot:
                for r in roles:
                    if ids[i + 1:i + 1 + len(r)] == r:
                        for k in range(i + 1, i + 1 + len(r)):
                            out[k] = True
        return out


class Block(nn.Module):
    def __init__(self, d, n_head, d_ff):
        super().__init__()
        self.ln1 = nn.LayerNorm(d)
        self.qkv = nn.Linear(d, 3 * d)
        self.proj = nn.Linear(d, d)
        self.ln2 = nn.LayerNorm(d)
        self.fc = nn.Linear(d, d_ff)
        self.out = nn.Linear(d_ff, d)
        self.n_head = n_head

    def forward(self, x):
        B, T, d = x.shape
        h = self.ln1(x)
        q, k, v = self.qkv(h).split(d, dim=2)
        hd = d // self.n_head
        q = q.view(B, T, self.n_head, hd).transpose(1, 2)
        k = k.view(B, T, self.n_head, hd).transpose(1, 2)
        v = v.view(B, T, self.n_head, hd).transpose(1, 2)
        att = (q @ k.transpose(-2, -1)) * (1.0 / math.sqrt(hd))
        causal = torch.ones(T, T, dtype=torch.bool, device=x.device).tril()
        att = att.masked_fill(~causal, float("-inf")).softmax(dim=-1)
        y = (att @ v).transpose(1, 2).reshape(B, T, d)
        x = x + self.proj(y)
        return x + self.out(F.gelu(self.fc(self.ln2(x))))


class LM(nn.Module):
    """Decoder-only transformer; forward(ids [B, T]) -> logits [B, T, vocab]."""

    def __init__(self, vocab=VOCAB, ctx=CTX, d=D_MODEL, n_layer=N_LAYER, n_head=N_HEAD,
                 d_ff=D_FF):
        super().__init__()
        self.ctx = ctx
        self.tok = nn.Embedding(vocab, d)
        self.pos = nn.Embedding(ctx, d)
        self.blocks = nn.ModuleList([Block(d, n_head, d_ff) for _ in range(n_layer)])
        self.ln_f = nn.LayerNorm(d)

    def init_weights(self):
        for name, p in self.named_parameters():
            if name.endswith("bias"):
                nn.init.zeros_(p)
            elif "ln" in name:
                nn.init.ones_(p)
            else:
                nn.init.normal_(p, std=0.02)
        for b in self.blocks:  # GPT-2: scale the residual projections by depth
            nn.init.normal_(b.proj.weight, std=0.02 / math.sqrt(2 * len(self.blocks)))
            nn.init.normal_(b.out.weight, std=0.02 / math.sqrt(2 * len(self.blocks)))

    def forward(self, ids):
        T = ids.shape[1]
        if T > self.ctx:
            raise ValueError(f"sequence of {T} tokens; the model's context is {self.ctx}")
        x = self.tok(ids) + self.pos(torch.arange(T, device=ids.device))
        for b in self.blocks:
            x = b(x)
        return self.ln_f(x) @ self.tok.weight.t()


def save(model, path, metadata=None):
    """Writes the model's parameters as float16 safetensors."""
    tensors = {k: v.detach().cpu().to(torch.float16).numpy()
               for k, v in model.state_dict().items()}
    save_safetensors(path, tensors, metadata)


def load(name_or_path):
    """A model from models/weights/NAME.safetensors ("base", "chat") or a path, in
    float32 and eval mode."""
    path = name_or_path
    if os.sep not in path and not path.endswith(".safetensors"):
        path = os.path.join(WEIGHTS, path + ".safetensors")
    tensors, _meta = load_checkpoint(path)
    model = LM()
    state = {k: torch.from_numpy(np.asarray(v, dtype=np.float32)) for k, v in tensors.items()}
    model.load_state_dict(state)
    model.eval()
    return model


def token_losses(model, ids):
    """Next-token losses (nats) [B, T-1] of ids [B, T] (no reduction)."""
    with torch.no_grad():
        logits = model(ids)
    return F.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]),
                           ids[:, 1:].reshape(-1), reduction="none").view(ids.shape[0], -1)
