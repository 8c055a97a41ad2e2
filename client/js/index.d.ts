// Type declarations of the xcoder Node.js client (proto/PROTOCOL.md, version 1).

/// <reference types="node" />

export declare const PROTO_VERSION: 1;
/** Latent classes by code (the `class` table column, SHM.md). */
export declare const CLASS_NAMES: readonly ["other", "shared", "chat_only", "base_only", "dead"];
/** The daemon's cap on the data of one fetch reply (1 MiB). */
export declare const CHUNK_MAX: number;
/** The codes of include/xc_error.h, name -> number (the wire carries names). */
export declare const CODES: Readonly<Record<ErrorCode, number>>;

export type ErrorCode =
  | "XC_OK" | "XC_EINVAL" | "XC_ENOMEM" | "XC_ESHAPE" | "XC_ENONFINITE" | "XC_EIO" | "XC_EPROTO"
  | "XC_EVERSION" | "XC_EDTYPE" | "XC_ELENGTH" | "XC_ETOOBIG" | "XC_EAGAIN" | "XC_ETIMEDOUT"
  | "XC_ENOTFOUND" | "XC_EUNKNOWN" | "XC_ESTATE" | "XC_ECONFIG" | "XC_ECORRUPT" | "XC_ESYS"
  | "XC_ESHUTDOWN"
  | "XC_EPERM"
  | "XC_ERANGE"
  | "XC_EBUSY"
  | "XC_ECANCELED"
  | "XC_ECOLL";

/** An error reply from the daemon, or a failure talking to it. */
export declare class XcoderError extends Error {
  constructor(code: string, message: string, reply?: Record<string, unknown>);
  /** Symbolic code; unknown names read as "XC_EPROTO". */
  readonly code: ErrorCode;
  /** The daemon's message (or the client's). */
  readonly reason: string;
  /** The whole decoded reply, when there was one. */
  readonly reply?: Record<string, unknown>;
  /** The numeric value of code. */
  readonly errno: number;
}
/** A refused batch. */
export declare class XcoderNack extends XcoderError {
  /** seq of the refused batch (undefined if the daemon could not read it). */
  readonly seq?: number;
}
/** No reply or event within the timeout (code "XC_ETIMEDOUT"). */
export declare class XcoderTimeout extends XcoderError {}

/** A ZeroMQ URI ("tcp://host:port", "ipc:///path"), or the daemon's run directory. */
export type Endpoint = string | undefined;
export type WireDtype = "f32" | "f16" | "bf16";
/** Activations [n, 2, d] row-major: per token the base model's d values, then the chat model's. */
export type Activations = Float32Array | Float64Array | Uint16Array;

export interface BatchOptions {
  /** [n, 2, d]; or give d (n = length / 2d). */
  shape?: [number, 2, number];
  d?: number;
  /** Wire dtype; a Uint16Array holds f16/bf16 bit patterns and needs it. Default f32. */
  dtype?: WireDtype;
  /** n token ids (u32). */
  tokenIds?: ArrayLike<number>;
  /** n (doc id, position) pairs (u32). */
  positions?: ArrayLike<number> | Array<[number, number]>;
  /** Stream tag of this batch (default: the producer's). */
  stream?: string;
}

/** One example of the `examples` reply (PROTOCOL.md 2.3). */
export interface Example {
  act: number; step: number; producer: string; stream: string;
  doc: number | null; pos: number | null; token: number | null;
  /** The window of token ids around the occurrence (null: id not sent). */
  tokens: Array<number | null>;
  /** Index of the activating token in tokens. */
  at: number;
  /** Text of each window token, when the stream has a vocabulary. */
  pieces?: Array<string | null>;
}
export interface ExamplesReply extends Reply {
  j: number; window: number; top_n: number; random_n: number; seen: number;
  top: Example[]; random: Example[];
}

export interface Ack { seq: number; n: number; credit: number; }

export interface ProducerStats {
  batchesSent: number; batchesAcked: number; batchesNacked: number;
  tokensSent: number; tokensAcked: number;
  /** Last advisory credit (free queue slots) from the daemon, -1 none. */
  credit: number;
}

export interface ProducerOptions extends KeyOptions {
  /** Batches in flight before send() waits (default 8). */
  window?: number;
  /** Stream tag sent with every batch ("web", "chat"; <= 31 bytes of [A-Za-z0-9._:/-]). */
  stream?: string;
  /** ms to wait for room in the window / for flush (default 30000; 0 = forever). */
  timeout?: number;
  /** Producer id (<= 64 bytes) for the daemon's logs and alerts. */
  producer?: string;
  /** Default activation width. */
  d?: number;
  /** Default wire dtype. */
  dtype?: WireDtype;
  /** Instance name when endpoint is undefined (default "default"; see wire.runDirDefault). */
  name?: string;
}

/** Streams activation batches to the daemon's ingest socket, with backpressure. */
export declare class Producer {
  constructor(endpoint?: Endpoint, options?: ProducerOptions);
  readonly endpoint: string;
  readonly window: number;
  readonly stats: ProducerStats;
  /** Batches sent and not yet acked or nacked. */
  readonly inFlight: number;
  /**
   * Sends a batch once the window has room; resolves to its seq. Rejects with the
   * XcoderNack of an earlier refused batch (this one is then not sent), XcoderTimeout,
   * TypeError/RangeError for bad data.
   */
  send(data: Activations, options?: BatchOptions): Promise<number>;
  /** Registers the vocabulary of a stream (pieces[i] = text of token id i); resolves to the piece count once acked. */
  sendVocab(pieces: Array<string | null>, options?: { stream?: string; chunk?: number }): Promise<number>;
  /** Sends a batch and resolves to its ack; rejects with its XcoderNack. */
  sendAndWait(data: Activations, options?: BatchOptions): Promise<Ack>;
  /** Resolves when every batch in flight is acked; rejects with the first unreported nack. */
  flush(options?: { timeout?: number }): Promise<void>;
  /** Flushes (unless flush: false) and closes the socket. */
  close(options?: { flush?: boolean }): Promise<void>;
}

export type Reply = { v: 1; ok: true; op: string; id?: number } & Record<string, any>;

export interface Checkpoint { path: string; step: number; bytes: number; }
export interface CheckpointFile {
  name: string; size: number; step: number;
  /** "checkpoint" for NAME-STEP.safetensors, KIND for NAME-STEP.KIND.safetensors, else "other". */
  kind: string;
  /** unix seconds */
  mtime: number;
  /** "sha256:<hex>", when the daemon has computed it. */
  checksum?: string;
}
export interface FetchOptions {
  /** A name from checkpoints() or a path the daemon reported; default the newest. */
  name?: string;
  /** Continue from the size of outPath + ".part" (default true). */
  resume?: boolean;
  /** Bytes per request, at most CHUNK_MAX. */
  chunk?: number;
  onProgress?: (done: number, size: number) => void;
}
export interface FetchResult {
  path: string; name: string; size: number;
  /** "sha256:<64 hex digits>" of the whole file. */
  checksum: string;
  step: number;
  /** Offset this call started at (> 0 when a .part was resumed). */
  resumedFrom: number;
  /** Bytes transferred by this call. */
  fetched: number;
}

export type TableField =
  | "delta_norm" | "cosine" | "norm_base" | "norm_chat" | "freq" | "mean_act" | "max_act" | "last_step"
  | "beta_err_base" | "beta_err_chat" | "beta_rec_base" | "beta_rec_chat" | "nu_err" | "nu_rec" | "active"
  | "exact_beta_err_base" | "exact_beta_err_chat" | "exact_beta_rec_base" | "exact_beta_rec_chat"
  | "exact_nu_err" | "exact_nu_rec" | "exact_active" | "class" | "flags" | "fired" | "tokens_since_fired"
  | "dead" | "j";
export type Column = Float32Array | Float64Array | BigInt64Array | Uint8Array;
export interface TableOptions {
  /** Column names, or "a,b,c"; default all but j. */
  fields?: TableField[] | string;
  /** First latent (default 0). */
  start?: number;
  /** Latents from start (default: to the end). */
  count?: number;
  /** Latent indices instead of a range. */
  js?: number[];
}
export interface Table {
  snapshotStep: number;
  dictSize: number;
  n: number;
  /** null for a js selection. */
  start: number | null;
  /** Step of the exact Latent Scaling pass behind the exact_* columns, -1 none. */
  scalingStep: number;
  scalingTokens: number;
  fields: TableField[];
  dtypes: Record<string, "f32" | "f64" | "i64" | "u8">;
  /** f32 -> Float32Array, f64 -> Float64Array, i64 -> BigInt64Array, u8 -> Uint8Array; NaN = undefined. */
  columns: Record<string, Column>;
}

/** Request/reply with the daemon's control socket. */
export declare class Client {
  constructor(endpoint?: Endpoint, options?: { timeout?: number; name?: string } & KeyOptions);
  readonly endpoint: string;
  timeout: number;
  /** Any op: {v, op, id, ...args}; resolves to the success reply. */
  request(op: string, args?: Record<string, unknown>, options?: { timeout?: number }): Promise<Reply>;
  ping(): Promise<Reply>;
  status(): Promise<Reply>;
  latent(j: number): Promise<Record<string, any>>;
  top(options?: { by?: string; n?: number; order?: "asc" | "desc"; aliveOnly?: boolean }): Promise<Array<Record<string, any>>>;
  checkpoint(options?: { timeout?: number }): Promise<Reply & Checkpoint>;
  pause(): Promise<Reply>;
  resume(): Promise<Reply>;
  shutdown(): Promise<Reply>;
  config(): Promise<Record<string, number | string>>;
  config(key: string): Promise<number | string>;
  scaling(tokens: number): Promise<Reply>;
  /** Latent j's live examples. */
  examples(j: number, options?: { n?: number }): Promise<ExamplesReply>;
  /** Forgets latent j's examples (every latent's without j). */
  resetExamples(j?: number): Promise<Reply>;
  metrics(): Promise<string>;
  /** The newest n (default 100) stats events of the history, oldest first (undefined values null). */
  history(n?: number): Promise<Array<Record<string, any>>>;
  checkpoints(): Promise<CheckpointFile[]>;
  fetchCheckpoint(outPath: string, options?: FetchOptions): Promise<FetchResult>;
  table(options?: TableOptions): Promise<Table>;
  close(): void;
}

export interface Event { topic: string; body: { v: 1; type: string; name: string; time: number } & Record<string, any>; }

/** Events from the daemon's PUB socket; `for await (const ev of sub)`, `break` closes. */
export declare class Subscription implements AsyncIterableIterator<Event> {
  constructor(endpoint?: Endpoint, topics?: string | string[], options?: KeyOptions);
  readonly endpoint: string;
  /** Malformed events skipped. */
  readonly malformed: number;
  /** One event; XcoderTimeout after timeout ms (0/undefined = forever). */
  receive(options?: { timeout?: number }): Promise<Event>;
  next(): Promise<IteratorResult<Event>>;
  return(): Promise<IteratorResult<Event>>;
  [Symbol.asyncIterator](): AsyncIterableIterator<Event>;
  close(): void;
}
/** Subscribes to topic prefixes ("stats", "checkpoint", "alert", "scaling"; none = all). */
/** CurveZMQ for tcp endpoints of a daemon with curve_secret_key (default: $XCODER_SERVER_KEY / $XCODER_CLIENT_KEY). */
export interface KeyOptions {
  /** The daemon's public key: Z85 text or the path of its .pub file. */
  serverKey?: string;
  /** This client's key file BASE.key from `xcoder keygen BASE`. */
  clientKey?: string;
}
export declare function subscribe(endpoint?: Endpoint, topics?: string | string[], options?: KeyOptions): Subscription;
export declare function readKeyFile(path: string): { publicKey: string | null; secretKey: string | null };

/** The wire format without sockets. */
export declare namespace wire {
  const PROTO_VERSION: 1;
  const REQUEST_MAX: number;
  const PRODUCER_MAX: number;
  /** One MessagePack value; maps/arrays in their 32-bit forms (the C codec's bytes). */
  function pack(v: unknown): Buffer;
  function unpack(buf: Uint8Array): unknown;
  /** A map carrying v = 1 (XcoderError XC_EPROTO / XC_EVERSION otherwise). */
  function unpackMap(buf: Uint8Array, what?: string): Record<string, any>;
  function endpointFor(endpoint: Endpoint, which: "ingest" | "control" | "events", name?: string): string;
  /** $XCODER_RUN_DIR; else $XDG_RUNTIME_DIR/xcoderd-NAME (or /tmp/xcoderd-NAME); else the systemd /run/xcoderd[-NAME] when only it has a control socket. */
  function runDirDefault(name?: string): string;
  /** Throws XcoderError XC_ENOTFOUND when an ipc endpoint's socket file does not exist. */
  function checkIpcPresent(endpoint: string): void;
  function batchHeader(seq: number, n: number, d: number, dtype: WireDtype, producer?: string, hasTokens?: boolean, hasPos?: boolean, stream?: string): Record<string, unknown>;
  function checkStream(stream?: string): string;
  function encodeVocab(seq: number, pieces: Array<string | null>, options?: { first?: number; stream?: string; producer?: string }): { frames: Buffer[]; n: number };
  /** The one-line text of an example (the same in every client). */
  function renderExample(ex: Example): string;
  function request(op: string, id?: number, args?: Record<string, unknown>): Record<string, unknown>;
  function asPayload(data: Activations, options?: { shape?: [number, 2, number]; d?: number; dtype?: WireDtype }): { payload: Buffer; dtype: WireDtype; n: number; d: number };
  function encodeBatch(seq: number, data: Activations, options?: BatchOptions & { producer?: string }): { frames: Buffer[]; n: number; d: number; dtype: WireDtype };
  function decodePayload(buf: Uint8Array, dtype: WireDtype): Float32Array;
  function f32ToBf16(x: number): number;
  function f32ToF16(x: number): number;
  function column(bytes: Uint8Array, dtype: "f32" | "f64" | "i64" | "u8"): Column;
  const CLASS_NAMES: readonly string[];
}
