"use strict";
// Errors of the xcoder client. The daemon reports a symbolic code from
// include/xc_error.h ("XC_ESHAPE") and a human message; the errors carry both.

const CODES = Object.freeze({
  XC_OK: 0, XC_EINVAL: -1, XC_ENOMEM: -2, XC_ESHAPE: -3, XC_ENONFINITE: -4, XC_EIO: -5,
  XC_EPROTO: -6, XC_EVERSION: -7, XC_EDTYPE: -8, XC_ELENGTH: -9, XC_ETOOBIG: -10,
  XC_EAGAIN: -11, XC_ETIMEDOUT: -12, XC_ENOTFOUND: -13, XC_EUNKNOWN: -14, XC_ESTATE: -15,
  XC_ECONFIG: -16, XC_ECORRUPT: -17, XC_ESYS: -18, XC_ESHUTDOWN: -19,
  XC_EPERM: -20, XC_ERANGE: -21, XC_EBUSY: -22, XC_ECANCELED: -23,
});

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
