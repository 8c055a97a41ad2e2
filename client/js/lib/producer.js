"use strict";
// Ingest (PROTOCOL.md 1): batches of paired activations with a window of
// unacknowledged batches (backpressure) and nacks as rejected promises.

const zmq = require("zeromq");
const wire = require("./wire");
const { curveOptions } = require("./keys");
const { XcoderError, XcoderNack, XcoderTimeout } = require("./errors");

/**
 * Streams activation batches [n, 2, d] to the daemon's ingest socket.
 *
 * At most `window` batches are in flight (sent, not yet acked or nacked):
 * send() waits for a reply when the window is full, which is how the daemon
 * slows a producer down when training falls behind (no batch is dropped).
 * A nack rejects: sendAndWait() with that batch's XcoderNack (code, reason,
 * seq); otherwise the next send() or flush() rejects with it.
 * timeout (ms, 0 = forever): longest wait for room in the window or for flush.
 */
class Producer {
  constructor(endpoint, { window = 8, timeout = 30000, producer = "", d, dtype, serverKey, clientKey, name, stream = "" } = {}) {
    this.stream = wire.checkStream(stream);
    if (!(window >= 1)) throw new RangeError("window must be >= 1");
    if (Buffer.byteLength(producer) > wire.PRODUCER_MAX) throw new RangeError(`producer id longer than ${wire.PRODUCER_MAX} bytes`);
    this.endpoint = wire.endpointFor(endpoint, "ingest", name);
    this.window = window;
    this.timeout = timeout;
    this.producer = producer;
    this.d = d;
    this.dtype = dtype;
    this.stats = { batchesSent: 0, batchesAcked: 0, batchesNacked: 0, tokensSent: 0, tokensAcked: 0, credit: -1 };
    this._sock = new zmq.Dealer({ linger: 0, ...curveOptions(this.endpoint, { serverKey, clientKey }) });
    this._sock.connect(this.endpoint);
    this._seq = 0;
    this._inflight = new Map(); // seq -> {n, waiter}
    this._nacks = [];           // nacks nobody has been told about yet
    this._wakers = new Set();
    this._sendChain = Promise.resolve();
    this._closed = false;
    this._loop = this._recvLoop();
  }

  /** Batches sent and not yet acked or nacked. */
  get inFlight() { return this._inflight.size; }

  async _recvLoop() {
    try {
      for await (const frames of this._sock) {
        let m;
        try { m = wire.unpackMap(frames[frames.length - 1], "ingest reply"); } catch { continue; }
        let seq = m.seq;
        if (seq === undefined || !this._inflight.has(seq)) seq = this._inflight.keys().next().value; // oldest
        const e = this._inflight.get(seq);
        if (!e) continue;
        this._inflight.delete(seq);
        if (m.type === "ack") {
          this.stats.batchesAcked++;
          this.stats.tokensAcked += e.n;
          if (typeof m.credit === "number") this.stats.credit = m.credit;
          if (e.waiter) e.waiter.resolve({ seq, n: m.n, credit: m.credit });
        } else {
          this.stats.batchesNacked++;
          const err = new XcoderNack(m.code || "XC_EPROTO", String(m.reason ?? ""), seq, m);
          if (e.waiter) e.waiter.reject(err);
          else this._nacks.push(err);
        }
        for (const w of this._wakers) w();
      }
    } catch (e) {
      if (!this._closed) {
        const err = new XcoderError("XC_EIO", `ingest socket: ${e.message}`);
        for (const [, x] of this._inflight) if (x.waiter) x.waiter.reject(err);
      }
    }
  }

  /** Resolves when pred() holds (checked after every reply); XcoderTimeout after timeout ms. */
  _waitFor(pred, what, timeout = this.timeout) {
    if (pred()) return Promise.resolve();
    return new Promise((resolve, reject) => {
      let timer = null;
      const wake = () => {
        if (!pred() && !this._closed) return;
        this._wakers.delete(wake);
        if (timer) clearTimeout(timer);
        if (this._closed) reject(new XcoderError("XC_ESTATE", "producer closed"));
        else resolve();
      };
      if (timeout > 0) timer = setTimeout(() => {
        this._wakers.delete(wake);
        reject(new XcoderTimeout(`${what}: no reply from ${this.endpoint} within ${timeout} ms (${this._inflight.size} batches in flight)`));
      }, timeout);
      this._wakers.add(wake);
    });
  }

  _throwNack() {
    if (this._nacks.length) throw this._nacks.shift();
  }

  async _send(data, opts, waiter) {
    if (this._closed) throw new XcoderError("XC_ESTATE", "producer closed");
    if (this.stats.batchesSent === 0) wire.checkIpcPresent(this.endpoint);
    this._throwNack();
    const seq = this._seq;
    const { frames, n } = wire.encodeBatch(seq, data, {
      shape: opts.shape, d: opts.shape ? undefined : opts.d ?? this.d, dtype: opts.dtype ?? this.dtype,
      producer: this.producer, tokenIds: opts.tokenIds, positions: opts.positions,
      stream: opts.stream ?? this.stream,
    });
    await this._waitFor(() => this._inflight.size < this.window, "window full");
    this._throwNack();
    this._seq++;
    this._inflight.set(seq, { n, waiter });
    const p = this._sendChain.then(() => this._sock.send(frames));
    this._sendChain = p.catch(() => {});
    try {
      await p;
    } catch (e) {
      this._inflight.delete(seq);
      throw new XcoderError("XC_EIO", `cannot send batch ${seq}: ${e.message}`);
    }
    this.stats.batchesSent++;
    this.stats.tokensSent += n;
    return seq;
  }

  /**
   * Sends one batch; resolves to its seq once it is on its way (after waiting
   * for room in the window). Rejects with the XcoderNack of an earlier batch
   * that was refused (this one is then not sent).
   * data: Float32Array/Float64Array (or Uint16Array f16/bf16 bits with dtype),
   * opts: {shape: [n, 2, d]} or {d}, dtype ("f32" | "f16" | "bf16"), tokenIds, positions.
   */
  send(data, opts = {}) { return this._send(data, opts, null); }

  /**
   * Registers the vocabulary of a stream (default: the producer's): pieces[i] is
   * the text of token id i. Sent in chunks of at most `chunk` pieces under the
   * same window; resolves to the number of pieces once every chunk is acked.
   */
  async sendVocab(pieces, { stream, chunk = 65536 } = {}) {
    if (this._closed) throw new XcoderError("XC_ESTATE", "producer closed");
    const tag = wire.checkStream(stream ?? this.stream);
    for (let i = 0; i < pieces.length; i += chunk) {
      const seq = this._seq;
      const { frames } = wire.encodeVocab(seq, pieces.slice(i, i + chunk), { first: i, stream: tag, producer: this.producer });
      await this._waitFor(() => this._inflight.size < this.window, "window full");
      this._throwNack();
      this._seq++;
      this._inflight.set(seq, { n: 0, waiter: null });
      const p = this._sendChain.then(() => this._sock.send(frames));
      this._sendChain = p.catch(() => {});
      await p;
    }
    await this.flush();
    return pieces.length;
  }

  /** Sends one batch and resolves to its ack {seq, n, credit}; rejects with its XcoderNack. */
  sendAndWait(data, opts = {}) {
    let waiter;
    const acked = new Promise((resolve, reject) => { waiter = { resolve, reject }; });
    return this._send(data, opts, waiter).then(() => acked);
  }

  /** Resolves when every batch in flight is acked; rejects with the first unreported nack. */
  async flush({ timeout } = {}) {
    await this._waitFor(() => this._inflight.size === 0, "flush", timeout ?? this.timeout);
    this._throwNack();
  }

  /** Flushes (unless flush: false) and closes the socket. */
  async close({ flush = true } = {}) {
    if (this._closed) return;
    try {
      if (flush) await this.flush();
    } finally {
      this._closed = true;
      for (const w of [...this._wakers]) w();
      this._sock.close();
    }
  }
}

module.exports = { Producer };
