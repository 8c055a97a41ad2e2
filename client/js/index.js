"use strict";
// xcoder: the Node.js client of xcoderd (a daemon that trains a crosscoder
// online). Wire protocol: proto/PROTOCOL.md (version 1).
//
//   new Producer(endpoint, {window})   stream [n, 2, d] activation batches
//   new Client(endpoint)               control ops, fetchCheckpoint, table
//   subscribe(endpoint, topics)        async iterator of {topic, body}
//   {serverKey, clientKey} options     CurveZMQ on tcp (lib/keys.js; or $XCODER_SERVER_KEY,
//                                      $XCODER_CLIENT_KEY) for a daemon with curve_secret_key
//
// Endpoints are ZeroMQ URIs (tcp://host:port, ipc://path) or the daemon's
// run directory (its ipc sockets DIR/{ingest,control,events}.sock).

const wire = require("./lib/wire");
const errors = require("./lib/errors");
const { Producer } = require("./lib/producer");
const { Client, CHUNK_MAX } = require("./lib/client");
const { Subscription, subscribe } = require("./lib/subscribe");
const keys = require("./lib/keys");

module.exports = {
  PROTO_VERSION: wire.PROTO_VERSION,
  CLASS_NAMES: wire.CLASS_NAMES,
  CHUNK_MAX,
  Producer,
  Client,
  Subscription,
  subscribe,
  XcoderError: errors.XcoderError,
  XcoderNack: errors.XcoderNack,
  XcoderTimeout: errors.XcoderTimeout,
  CODES: errors.CODES,
  wire,
  readKeyFile: keys.readKeyFile,
};
