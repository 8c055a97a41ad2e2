"""xcoder: the Python client of xcoderd (a daemon that trains a crosscoder online).

    Producer(endpoint)       stream [N, 2, d] activation batches (acks, nacks, backpressure),
                             with token ids, documents, a stream tag; send_vocab(pieces)
    stream_from_models(...)  hook two torch models' layer and stream the paired activations
    Client(endpoint)         control: status, latent, top, checkpoint, pause, resume,
                             scaling, config, shutdown, examples (max-activating token
                             contexts; render_example); remote access: checkpoints,
                             fetch_checkpoint, table (dict of numpy arrays)
    subscribe(endpoint, topics)  iterator of (topic, body) events
    read_history(state_dir)  the stats history files as a list of dicts (Client.history(n):
                             the same over the control socket)
    load_checkpoint(path)    safetensors -> (dict of numpy arrays, metadata), numpy only
    reconstruct(ckpt, acts)  the crosscoder's reconstruction in numpy (encode, decode too)
    latent_scaling(ckpt, acts)  exact Latent Scaling beta / nu of a checkpoint, in numpy
    offline_examples(ckpt, acts, ids)  every latent's top examples on your data (windows with
                             the latent's activation at each token), in numpy
    SharedStats(instance)    per-latent statistics from shared memory (seqlock snapshots)
    keygen(base)             a CurveZMQ key pair BASE.key / BASE.pub; every client class takes
                             server_key= and client_key= for a daemon with curve_secret_key

Endpoints are ZeroMQ URIs or the daemon's run directory (its ipc sockets
RUN_DIR/{ingest,control,events}.sock); None means the run directory of instance
`name` (default "default"), found as the daemon makes it and as the CLI finds it:
$XCODER_RUN_DIR, else $XDG_RUNTIME_DIR/xcoderd-NAME (or /tmp/xcoderd-NAME), else the
systemd service's /run/xcoderd[-NAME] when only that one has a daemon listening.
The wire protocol is proto/PROTOCOL.md (version 1).
"""

from .errors import CODES, CheckpointError, XcoderError, XcoderNack, XcoderTimeout
from .wire import PROTO_VERSION, render_example
from .producer import Producer
from .client import Client, Subscription, subscribe
from .checkpoint import (code_normalization, decode, decoder_stats, denormalize, encode, encode_models,
                         latent_scaling, load_checkpoint, normalize, normalizer, reconstruct)
from .shm import SharedStats, Snapshot
from .examples import offline_examples
from .keys import keygen
from .history import read_history


def stream_from_models(*args, **kwargs):
    """See xcoder.torch_stream.stream_from_models (imports torch on first use)."""
    from .torch_stream import stream_from_models as f
    return f(*args, **kwargs)


def vocab_from_tokenizer(*args, **kwargs):
    """See xcoder.torch_stream.vocab_from_tokenizer (the text of every token id)."""
    from .torch_stream import vocab_from_tokenizer as f
    return f(*args, **kwargs)


def paired_activations(*args, **kwargs):
    """See xcoder.torch_stream.paired_activations (imports torch on first use)."""
    from .torch_stream import paired_activations as f
    return f(*args, **kwargs)


__version__ = "0.1.0"
__all__ = ["Producer", "Client", "Subscription", "subscribe", "load_checkpoint", "reconstruct",
           "encode", "encode_models", "decode", "code_normalization", "decoder_stats", "latent_scaling", "SharedStats", "Snapshot",
           "stream_from_models", "paired_activations", "vocab_from_tokenizer", "render_example", "offline_examples", "read_history", "XcoderError", "XcoderNack",
           "XcoderTimeout", "CheckpointError", "CODES", "PROTO_VERSION"]
