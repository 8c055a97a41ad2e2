"use strict";
// Events (PROTOCOL.md 3): [topic][body] from the daemon's PUB socket.

const zmq = require("zeromq");
const wire = require("./wire");
const { curveOptions } = require("./keys");
const { XcoderTimeout } = require("./errors");

/**
 * A subscription to the daemon's events, an async iterator of
 * {topic, body} (body: the decoded map, always v, type, name, time, then the
 * topic's fields). `for await (const ev of sub)`; `break` closes it.
 * receive({timeout}) waits for one event (XcoderTimeout after timeout ms).
 * Undecodable events arrive as {topic: "malformed", body: {type, error, raw}}
 * (counted in `malformed`), never dropped silently. ZeroMQ joins
 * asynchronously: events in the first milliseconds may be missed.
 */
class Subscription {
  constructor(endpoint, topics, { serverKey, clientKey } = {}) {
    this.endpoint = wire.endpointFor(endpoint, "events");
    this.malformed = 0;
    this._sock = new zmq.Subscriber({ linger: 0, ...curveOptions(this.endpoint, { serverKey, clientKey }) });
    const list = topics == null ? [""] : Array.isArray(topics) ? topics : [topics];
    for (const t of list) this._sock.subscribe(t || "");
    this._sock.connect(this.endpoint);
    this._closed = false;
  }

  /** The next event; rejects with XcoderTimeout when none came within timeout ms (0/undefined = forever). */
  async receive({ timeout } = {}) {
    for (;;) {
      this._sock.receiveTimeout = timeout > 0 ? timeout : -1;
      let frames;
      try {
        frames = await this._sock.receive();
      } catch (e) {
        if (e.code === "EAGAIN") throw new XcoderTimeout(`no event from ${this.endpoint} within ${timeout} ms`);
        throw e;
      }
      // nothing is dropped silently: an undecodable event surfaces as topic "malformed"
      if (frames.length !== 2) {
        this.malformed++;
        return { topic: "malformed", body: { type: "malformed", error: `an event has 2 frames; got ${frames.length}`, raw: frames } };
      }
      try {
        return { topic: frames[0].toString("utf8"), body: wire.unpackMap(frames[1], "event") };
      } catch (e) {
        this.malformed++;
        return { topic: "malformed", body: { type: "malformed", error: String(e && e.message), raw: frames } };
      }
    }
  }

  async next() {
    if (this._closed) return { value: undefined, done: true };
    try {
      return { value: await this.receive(), done: false };
    } catch (e) {
      if (this._closed) return { value: undefined, done: true };
      throw e;
    }
  }

  async return() {
    this.close();
    return { value: undefined, done: true };
  }

  [Symbol.asyncIterator]() { return this; }

  close() {
    if (this._closed) return;
    this._closed = true;
    this._sock.close();
  }
}

/** Subscribes to topic prefixes ("stats", "checkpoint", "alert", "scaling"; none = all). */
function subscribe(endpoint, topics, options) {
  return new Subscription(endpoint, topics, options);
}

module.exports = { Subscription, subscribe };
