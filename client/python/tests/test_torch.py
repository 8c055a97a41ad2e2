"""stream_from_models on a tiny transformer the test builds itself (no
downloads): the activations on the wire are exactly the hooked layer's
outputs, paired base/chat, with token ids and positions; then against a real
daemon."""

import copy

import numpy as np
import pytest
import torch
import torch.nn as nn

import xcoder
from xcoder import wire
from fakes import FakeIngest
from conftest import B, D

VOCAB, T = 50, 16


class Tiny(nn.Module):
    """Embedding, a 2-layer TransformerEncoder (d_model 32), a vocabulary head."""

    def __init__(self, d=D, nested=True):
        super().__init__()
        self.emb = nn.Embedding(VOCAB, d)
        layer = nn.TransformerEncoderLayer(d, nhead=4, dim_feedforward=64, dropout=0.0,
                                           batch_first=True)
        self.enc = nn.TransformerEncoder(layer, num_layers=2, enable_nested_tensor=nested)
        self.head = nn.Linear(d, VOCAB)

    def forward(self, input_ids, attention_mask=None):
        pad = None if attention_mask is None else attention_mask == 0
        return self.head(self.enc(self.emb(input_ids), src_key_padding_mask=pad))


def models(seed=0, nested=True):
    torch.manual_seed(seed)
    base = Tiny(nested=nested).eval()
    chat = copy.deepcopy(base)
    with torch.no_grad():
        for p in chat.parameters():
            p.add_(0.05 * torch.randn_like(p))  # the "fine-tuned" model
    return base, chat


def token_batches(n, rows=4, seed=1):
    g = torch.Generator().manual_seed(seed)
    return [torch.randint(0, VOCAB, (rows, T), generator=g) for _ in range(n)]


def layer0(model, ids):
    with torch.no_grad():
        return model.enc.layers[0](model.emb(ids))


@pytest.fixture
def fake(tmp_path):
    f = FakeIngest(f"ipc://{tmp_path}/ingest.sock", d=D)
    yield f, str(tmp_path)
    f.close()


def test_wire_content_is_the_layer_output(fake):
    f, run = fake
    base, chat = models()
    batches = token_batches(3)
    with xcoder.Producer(run, producer="tiny/l0") as p:
        sent = xcoder.stream_from_models(base, chat, "enc.layers.0", batches, p)
    assert sent == {"batches": 3, "tokens": 3 * 4 * T, "messages": 3}
    assert len(f.received) == 3
    for i, (h, frames) in enumerate(f.received):
        assert (h["n"], h["d"], h["dtype"], h["producer"]) == (4 * T, D, "f32", "tiny/l0")
        assert h["has_tokens"] and h["has_pos"] and len(frames) == 3
        got = wire.decode_payload(frames[0], "f32", 4 * T, D)
        ids = batches[i]
        want = np.stack([layer0(base, ids).reshape(-1, D).numpy(),
                         layer0(chat, ids).reshape(-1, D).numpy()], axis=1)
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
        assert not np.allclose(got[:, 0], got[:, 1])  # the two models differ
        assert np.frombuffer(frames[1], "<u4").tolist() == ids.reshape(-1).tolist()
        pos = np.frombuffer(frames[2], "<u4").reshape(-1, 2)
        rows = np.repeat(np.arange(4), T) + 4 * i  # sequence index across the stream
        np.testing.assert_array_equal(pos[:, 0], rows)
        np.testing.assert_array_equal(pos[:, 1], np.tile(np.arange(T), 4))


def test_stop_at_layer_skips_the_rest():
    base, chat = models()
    calls = []
    base.head.register_forward_hook(lambda *a: calls.append(1))
    ids = token_batches(1)[0]
    a1, t1, p1 = xcoder.paired_activations(base, chat, "enc.layers.1", ids)
    assert calls == []
    a2, _, _ = xcoder.paired_activations(base, chat, "enc.layers.1", ids, stop_at_layer=False)
    assert calls == [1]
    torch.testing.assert_close(a1, a2)
    assert a1.shape == (4 * T, 2, D)
    with pytest.raises(ValueError, match="no submodule"):
        xcoder.paired_activations(base, chat, "enc.layers.7", ids)


@pytest.mark.filterwarnings("ignore:The PyTorch API of nested tensors")
@pytest.mark.parametrize("nested", [True, False])
def test_attention_mask_drops_padding(nested):
    base, chat = models(nested=nested)
    ids = token_batches(1)[0]
    mask = torch.ones_like(ids)
    mask[0, 10:] = 0
    mask[2, 3:] = 0
    acts, tok, pos = xcoder.paired_activations(
        base, chat, "enc.layers.0", {"input_ids": ids, "attention_mask": mask})
    keep = mask.reshape(-1) != 0
    assert acts.shape == (int(keep.sum()), 2, D)
    assert tok.tolist() == ids.reshape(-1)[keep].tolist()
    assert pos[:, 1].max() == T - 1 and (pos[pos[:, 0] == 2, 1] < 3).all()
    # the kept rows equal the unmasked model's rows where attention agrees:
    # row 1 and row 3 have no padding, so they match a run without a mask
    full, _, _ = xcoder.paired_activations(base, chat, "enc.layers.0", ids[1:2])
    row1 = acts[(pos[:, 0] == 1)]
    torch.testing.assert_close(row1, full, rtol=1e-4, atol=1e-4)


def test_bf16_and_chunking(fake):
    f, run = fake
    base, chat = models()
    base, chat = base.to(torch.bfloat16), chat.to(torch.bfloat16)
    with xcoder.Producer(run) as p:
        sent = xcoder.stream_from_models(base, chat, "enc.layers.0", token_batches(1), p,
                                         chunk_tokens=20)
    assert sent["messages"] == 4 and sent["tokens"] == 4 * T
    assert [h["n"] for h, _ in f.received] == [20, 20, 20, 4]
    assert all(h["dtype"] == "bf16" for h, _ in f.received)
    got = np.concatenate([wire.decode_payload(fr[0], "bf16", h["n"], D)
                          for h, fr in f.received])
    ids = token_batches(1)[0]
    want = torch.stack([layer0(base, ids).reshape(-1, D), layer0(chat, ids).reshape(-1, D)],
                       dim=1).float().numpy()
    np.testing.assert_array_equal(got, want)


def test_stream_to_real_daemon(start_daemon):
    dm = start_daemon(mix_tokens=B)
    base, chat = models()
    with xcoder.Producer(dm.run_dir, producer="tiny") as p:
        sent = xcoder.stream_from_models(base, chat, "enc.layers.1", token_batches(8), p)
    assert sent["tokens"] == 8 * 4 * T
    st = dm.wait_status(lambda s: s["tokens_trained"] == sent["tokens"],
                        what="every streamed token trained")
    assert st["tokens_acked"] == sent["tokens"]
    assert st["step"] == sent["tokens"] // B
    assert st["counters"]["batches_refused"] == 0


def test_wrong_width_is_refused_by_the_daemon(daemon):
    torch.manual_seed(0)
    base = Tiny(d=16).eval()
    chat = copy.deepcopy(base)
    with xcoder.Producer(daemon.run_dir) as p:
        with pytest.raises(xcoder.XcoderNack) as e:
            xcoder.stream_from_models(base, chat, "enc.layers.0", token_batches(1), p)
    assert e.value.code == "XC_ESHAPE"
