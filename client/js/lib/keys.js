"use strict";
// CurveZMQ keys for tcp endpoints of a daemon with curve_secret_key: the key
// files of `xcoder keygen BASE` (BASE.key, mode 0600: public-key and
// secret-key lines; BASE.pub: the public key). Every client class takes
// {serverKey, clientKey} (the daemon's public key as Z85 text or a .pub path;
// this client's .key path), falling back to $XCODER_SERVER_KEY and
// $XCODER_CLIENT_KEY. ipc:// endpoints never use keys.

const fs = require("node:fs");
const { XcoderError } = require("./errors");

const LINE = /^\s*(public-key|secret-key)\s*=\s*"?([^"\s]{40})"?/;
const Z85 = /^[0-9a-zA-Z.\-:+=^!/*?&<>()[\]{}@%$#]{40}$/;

/** {publicKey, secretKey|null} of a .key or .pub file; a secret key file
 * readable by group or others is refused, as the daemon does. */
function readKeyFile(path) {
  const fd = fs.openSync(path, fs.constants.O_RDONLY | fs.constants.O_NOFOLLOW);
  let text, mode;
  try {
    mode = fs.fstatSync(fd).mode;
    text = fs.readFileSync(fd, "utf8");
  } finally { fs.closeSync(fd); }
  const found = {};
  for (const line of text.split("\n")) {
    const m = LINE.exec(line);
    if (m && Z85.test(m[2])) found[m[1]] = m[2];
  }
  if (found["secret-key"]) {
    if (mode & 0o077) throw new XcoderError("XC_EPERM", `secret key file ${path} is readable by group or others; chmod 600 it`);
    return { publicKey: found["public-key"] || null, secretKey: found["secret-key"] };
  }
  if (!found["public-key"]) throw new XcoderError("XC_ECORRUPT", `key file ${path} holds no 'public-key = "..."' line`);
  return { publicKey: found["public-key"], secretKey: null };
}

/** Socket options making a socket a CURVE client for endpoint, or {} (plain). */
function curveOptions(endpoint, { serverKey, clientKey } = {}) {
  serverKey = serverKey ?? process.env.XCODER_SERVER_KEY;
  clientKey = clientKey ?? process.env.XCODER_CLIENT_KEY;
  if (!serverKey || !String(endpoint).startsWith("tcp://")) return {};
  if (!clientKey) throw new XcoderError("XC_EINVAL", "a server key is set but no client key: pass clientKey (a BASE.key file from `xcoder keygen BASE`) or set XCODER_CLIENT_KEY");
  const server = Z85.test(serverKey) ? serverKey : readKeyFile(serverKey).publicKey;
  const mine = readKeyFile(clientKey);
  if (!mine.secretKey) throw new XcoderError("XC_EINVAL", `client key ${clientKey} holds no secret key (give the .key file)`);
  const publicKey = mine.publicKey;
  if (!publicKey) throw new XcoderError("XC_ECORRUPT", `client key ${clientKey} holds no public-key line`);
  return { curveServerKey: server, curvePublicKey: publicKey, curveSecretKey: mine.secretKey };
}

module.exports = { readKeyFile, curveOptions };
