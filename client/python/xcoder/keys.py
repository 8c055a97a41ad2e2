"""CurveZMQ keys for tcp endpoints of a daemon with curve_secret_key.

Key files are those of `xcoder keygen BASE` / `xcoderd --keygen BASE`:
BASE.key (mode 0600) holds `public-key = "Z85"` and `secret-key = "Z85"`,
BASE.pub the public key only. Every client class takes server_key= (the
daemon's public key: Z85 text or the path of its .pub file) and client_key=
(this client's BASE.key path); None falls back to $XCODER_SERVER_KEY and
$XCODER_CLIENT_KEY. ipc:// endpoints never use keys (file permissions
protect them); without a server key tcp stays plain.
"""

import os
import re
import stat

import zmq
import zmq.utils.z85

from .errors import XcoderError

_LINE = re.compile(r'^\s*(public-key|secret-key)\s*=\s*"?([^"\s]{40})"?')


def _valid(z85):
    try:
        return len(z85) == 40 and len(zmq.utils.z85.decode(z85.encode())) == 32
    except Exception:
        return False


def read_key_file(path):
    """(public_z85, secret_z85 or None) of a .key or .pub file. A secret key
    file readable by group or others is refused, as the daemon does."""
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
    with os.fdopen(fd) as f:
        mode = os.fstat(f.fileno()).st_mode
        found = {}
        for line in f:
            m = _LINE.match(line)
            if m and _valid(m.group(2)):
                found[m.group(1)] = m.group(2)
    sec = found.get("secret-key")
    if sec is not None:
        if stat.S_IMODE(mode) & 0o077:
            raise XcoderError("XC_EPERM", f"secret key file {path} is readable by group or others; chmod 600 it")
        pub = zmq.curve_public(sec.encode()).decode()
        if "public-key" in found and found["public-key"] != pub:
            raise XcoderError("XC_ECORRUPT", f"key file {path}: the public key does not belong to the secret key")
        return pub, sec
    if "public-key" not in found:
        raise XcoderError("XC_ECORRUPT", f"key file {path} holds no 'public-key = \"...\"' line")
    return found["public-key"], None


def _public(text_or_path):
    if _valid(text_or_path):
        return text_or_path
    return read_key_file(text_or_path)[0]


def keygen(base):
    """Writes BASE.key (0600) and BASE.pub, never over existing files; returns
    the public key (Z85)."""
    pub, sec = (k.decode() for k in zmq.curve_keypair())
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW
    for suffix, mode, text in (
            (".key", 0o600, f'# xcoderd CURVE key pair. SECRET: keep this file private (mode 0600).\n'
                            f'public-key = "{pub}"\nsecret-key = "{sec}"\n'),
            (".pub", 0o644, f'# xcoderd CURVE public key\npublic-key = "{pub}"\n')):
        fd = os.open(base + suffix, flags, mode)
        with os.fdopen(fd, "w") as f:
            os.fchmod(f.fileno(), mode)
            f.write(text)
    return pub


def apply_curve(sock, endpoint, server_key=None, client_key=None):
    """Makes sock a CURVE client when endpoint is tcp:// and a server key is
    given (argument or $XCODER_SERVER_KEY). Call before connect."""
    server_key = server_key if server_key is not None else os.environ.get("XCODER_SERVER_KEY")
    client_key = client_key if client_key is not None else os.environ.get("XCODER_CLIENT_KEY")
    if not server_key or not str(endpoint).startswith("tcp://"):
        return False
    if not client_key:
        raise XcoderError("XC_EINVAL", "a server key is set but no client key: pass client_key= (a BASE.key "
                          "file from `xcoder keygen BASE`) or set XCODER_CLIENT_KEY")
    pub, sec = read_key_file(client_key)
    if sec is None:
        raise XcoderError("XC_EINVAL", f"client key {client_key} holds no secret key (give the .key file)")
    sock.setsockopt(zmq.CURVE_SERVERKEY, _public(server_key).encode())
    sock.setsockopt(zmq.CURVE_PUBLICKEY, pub.encode())
    sock.setsockopt(zmq.CURVE_SECRETKEY, sec.encode())
    return True
