"use strict";
// Errors of the xcoder client. The daemon reports a symbolic code from
// include/xc_error.h ("XC_ESHAPE") and a human message; the errors carry both.

// The codes of include/xc_error.h, generated from the C table (generated.js).
const CODES = require("./generated").ERROR_CODES;

/** A wire code as a known name; unknown names read as XC_EPROTO (PROTOCOL.md 0). */
function normalizeCode(code) {
  return typeof code === "string" && Object.prototype.hasOwnProperty.call(CODES, code) ? code : "XC_EPROTO";
}

/** An error reply from the daemon, or a failure talking to it. */
class XcoderError extends Error {
  constructor(code, message, reply) {
    const c = normalizeCode(code);
    super(`${c}: ${message}`);
    this.name = "XcoderError";
    this.code = c;
    this.reason = String(message);
    this.reply = reply;
  }
  /** The numeric value of code in include/xc_error.h. */
  get errno() { return CODES[this.code]; }
}

/** A refused batch: code and the daemon's reason; seq of the batch (if known). */
class XcoderNack extends XcoderError {
  constructor(code, reason, seq, reply) {
    super(code, reason, reply);
    this.name = "XcoderNack";
    this.seq = seq;
  }
}

/** No reply (or no event) within the timeout. code XC_ETIMEDOUT. */
class XcoderTimeout extends XcoderError {
  constructor(message) {
    super("XC_ETIMEDOUT", message);
    this.name = "XcoderTimeout";
  }
}

module.exports = { CODES, normalizeCode, XcoderError, XcoderNack, XcoderTimeout };
