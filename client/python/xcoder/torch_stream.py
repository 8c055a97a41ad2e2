"""Streams paired residual activations from two PyTorch models (base and chat)
to a daemon. torch is imported lazily: the rest of the package never needs it.

    from xcoder import Producer, stream_from_models
    with Producer("ipc:///run/xcoderd/ingest.sock", producer="gemma-l13") as p:
        stream_from_models(base, chat, "model.layers.13", batches, p)

Each model's submodule `layer_name` gets a forward hook that captures its output
(the first element when the module returns a tuple, as Hugging Face decoder
layers do): the residual stream after that layer. Both models run on the same
token batch; the two captures [*, d] are flattened over every leading axis and
paired into [tokens, 2, d] (base first), padded positions (attention_mask == 0)
dropped, and sent with their token ids and (sequence, position) pairs.
"""

import itertools


class _Stop(Exception):
    """Raised by a hook to skip the layers after the captured one."""


def _submodule(model, name):
    try:
        return model.get_submodule(name)
    except AttributeError:
        names = [n for n, _ in model.named_modules() if n][:20]
        raise ValueError(f"model has no submodule {name!r}; some names it has: "
                         f"{', '.join(names)}") from None


def _device_of(model):
    for p in itertools.chain(model.parameters(), model.buffers()):
        return p.device
    return None


def _to(x, device):
    import torch
    if device is None:
        return x
    if isinstance(x, torch.Tensor):
        return x.to(device)
    if isinstance(x, dict):
        return {k: _to(v, device) for k, v in x.items()}
    return x


def _run_capture(model, module, batch, stop):
    """Runs model on batch and returns the output of module (detached)."""
    import torch
    box = []

    def hook(_mod, _inp, out):
        if isinstance(out, (tuple, list)):
            out = out[0]
        out = out.detach()
        if getattr(out, "is_nested", False):
            # torch's TransformerEncoder packs padded batches into nested
            # tensors; unpack (trailing all-padding columns may be cut off)
            out = out.to_padded_tensor(0.0)
        box.append(out)
        if stop:
            raise _Stop()

    h = module.register_forward_hook(hook)
    try:
        b = _to(batch, _device_of(model))
        with torch.no_grad():
            try:
                model(**b) if isinstance(b, dict) else model(b)
            except _Stop:
                pass
    finally:
        h.remove()
    if not box:
        raise RuntimeError("the hooked layer did not run during the forward pass")
    return box[0]


def paired_activations(base_model, chat_model, layer_name, batch, stop_at_layer=True):
    """Runs both models on one token batch and returns (acts, token_ids,
    positions): acts [tokens, 2, d] (base, chat) as a CPU torch tensor;
    token_ids [tokens] and positions [tokens, 2] (sequence index in the batch,
    position in the sequence) as int64 tensors, or None when the ids do not
    line up with the activations' leading axes.

    batch: a LongTensor of token ids ([batch, seq] for batch-first models), or
    a dict of keyword arguments for the models (e.g. input_ids and
    attention_mask; positions where attention_mask == 0 are dropped).
    stop_at_layer: stop each forward pass at the hooked layer (the rest of the
    model is not computed)."""
    import torch
    a_base = _run_capture(base_model, _submodule(base_model, layer_name), batch, stop_at_layer)
    a_chat = _run_capture(chat_model, _submodule(chat_model, layer_name), batch, stop_at_layer)
    if a_base.shape != a_chat.shape:
        raise ValueError(f"layer {layer_name!r} gives shape {list(a_base.shape)} in the base "
                         f"model but {list(a_chat.shape)} in the chat model")
    ids = batch.get("input_ids") if isinstance(batch, dict) else batch
    mask = batch.get("attention_mask") if isinstance(batch, dict) else None
    if (isinstance(mask, torch.Tensor) and a_base.dim() == 3 and mask.dim() == 2
            and a_base.shape[0] == mask.shape[0] and a_base.shape[1] < mask.shape[1]):
        # a nested-tensor layer output lost the trailing padding columns: restore them
        pad = mask.shape[1] - a_base.shape[1]
        a_base = torch.nn.functional.pad(a_base, (0, 0, 0, pad))
        a_chat = torch.nn.functional.pad(a_chat, (0, 0, 0, pad))
    lead = a_base.shape[:-1]
    d = a_base.shape[-1]
    dt = a_base.dtype if a_base.dtype == a_chat.dtype else torch.float32
    acts = torch.stack([a_base.to("cpu", dt).reshape(-1, d),
                        a_chat.to("cpu", dt).reshape(-1, d)], dim=1)
    tok = pos = None
    if isinstance(ids, torch.Tensor) and tuple(ids.shape) == tuple(lead):
        tok = ids.detach().to("cpu", torch.int64).reshape(-1)
        if ids.dim() == 2:
            rows, cols = ids.shape
            r = torch.arange(rows).unsqueeze(1).expand(rows, cols).reshape(-1)
            c = torch.arange(cols).unsqueeze(0).expand(rows, cols).reshape(-1)
            pos = torch.stack([r, c], dim=1)
    if isinstance(mask, torch.Tensor) and tuple(mask.shape) == tuple(lead):
        keep = mask.detach().to("cpu").reshape(-1) != 0
        acts = acts[keep]
        tok = tok[keep] if tok is not None else None
        pos = pos[keep] if pos is not None else None
    return acts, tok, pos


def vocab_from_tokenizer(tokenizer, size=None):
    """The text of every token id of a tokenizer, as a list of str (index =
    id), for Producer.send_vocab: a Hugging Face tokenizer (each id decoded
    alone, so byte-level BPE pieces read as text; SentencePiece's word
    boundary U+2581 becomes a space), a sentencepiece.SentencePieceProcessor,
    a list of str (returned as is) or a dict {piece: id}."""
    if isinstance(tokenizer, (list, tuple)):
        return [None if p is None else str(p) for p in tokenizer]
    if isinstance(tokenizer, dict):
        n = max(tokenizer.values()) + 1 if tokenizer else 0
        out = [None] * n
        for piece, i in tokenizer.items():
            out[int(i)] = str(piece).replace("\u2581", " ")
        return out
    if hasattr(tokenizer, "id_to_piece") and hasattr(tokenizer, "get_piece_size"):
        n = size or tokenizer.get_piece_size()
        return [tokenizer.id_to_piece(i).replace("\u2581", " ") for i in range(n)]
    if hasattr(tokenizer, "convert_ids_to_tokens"):
        n = size or len(tokenizer)
        raw = tokenizer.convert_ids_to_tokens(list(range(n)))
        if any(isinstance(p, str) and p.startswith("\u2581") for p in raw[:1000]):
            return [None if p is None else p.replace("\u2581", " ") for p in raw]
        out = []
        for i, p in enumerate(raw):
            try:
                out.append(tokenizer.decode([i], clean_up_tokenization_spaces=False))
            except Exception:
                out.append(p)
        return out
    raise TypeError(f"cannot read a vocabulary from {type(tokenizer).__name__}: pass a Hugging Face "
                    f"tokenizer, a SentencePieceProcessor, a list of str or a dict {{piece: id}}")


def stream_from_models(base_model, chat_model, layer_name, token_batches, producer,
                       chunk_tokens=4096, dtype=None, stop_at_layer=True, flush=True,
                       stream=None, tokenizer=None, first_doc=0):
    """For every batch of token_batches: runs base_model and chat_model on it,
    pairs the outputs of their submodule `layer_name` into [tokens, 2, d] and
    sends them through producer (a Producer), with token ids and positions
    (the sequence's index counts across the whole stream). Batches larger than
    chunk_tokens tokens are sent in several messages. dtype forces the wire
    dtype ("f32", "f16", "bf16"); by default the models' own (bf16 models
    stream bf16). Backpressure from the daemon slows this loop down; a refusal
    raises XcoderNack. flush: wait for every ack before returning.

    stream: the stream tag of these batches ("web", "chat"; default the
    producer's). tokenizer: when given, its vocabulary is registered for that
    stream first (vocab_from_tokenizer), so the daemon's examples read as
    text. Document ids are the sequences' indices counted from first_doc.

    Both models are used as they are (put them in eval mode yourself); the
    forward passes run under torch.no_grad(). Returns {"batches", "tokens",
    "messages"}."""
    sent = {"batches": 0, "tokens": 0, "messages": 0}
    seq_base = int(first_doc)
    if tokenizer is not None:
        producer.send_vocab(vocab_from_tokenizer(tokenizer), stream=stream)
    for batch in token_batches:
        acts, tok, pos = paired_activations(base_model, chat_model, layer_name, batch,
                                            stop_at_layer)
        if pos is not None:
            ids = batch.get("input_ids") if isinstance(batch, dict) else batch
            pos = pos.clone()
            pos[:, 0] += seq_base
            seq_base += int(ids.shape[0])
        n = acts.shape[0]
        for i in range(0, n, chunk_tokens):
            j = min(n, i + chunk_tokens)
            producer.send(acts[i:j],
                          token_ids=None if tok is None else tok[i:j].numpy(),
                          positions=None if pos is None else pos[i:j].numpy(),
                          dtype=dtype, stream=stream)
            sent["messages"] += 1
        sent["batches"] += 1
        sent["tokens"] += n
    if flush:
        producer.flush()
    return sent
