#!/usr/bin/env bash
# Installs the Debian packages xcoderd needs, only when some are missing.
# Idempotent and quiet when everything is present; `make deps` calls it.
set -euo pipefail
pkgs=(build-essential pkg-config libzmq3-dev libmsgpack-dev libopenblas-dev libuv1-dev
      libsystemd-dev python3-numpy python3-zmq python3-msgpack python3-pytest python3-torch
      # the language-model pair's tokenizer (models/, tests/integ_lm.py)
      python3-sentencepiece
      # service tests (tests/integ_service.py, integ_install.sh): systemd-analyze and
      # systemd-sysusers; the text-format parser of prometheus_client (200 kB, where the
      # prometheus package with promtool is 96 MB); groff to lint the man pages
      systemd python3-prometheus-client groff-base
      # the web dashboard's browser test (tests/integ_dashboard.sh) drives Debian's Chromium
      chromium
      # oneDNN: int8 (VNNI) / bf16 encoder scoring (engine/score.c); optional at build time
      libdnnl-dev
      # libFuzzer harnesses (fuzz/, make fuzz, tests/integ_fuzz.sh): clang and its runtimes
      clang libclang-rt-14-dev
      # MPI: `mpirun -np R xcoderd` shards the latents over R ranks (daemon/coll_mpi.c);
      # optional at build time, tested on 2 ranks when present
      libopenmpi-dev openmpi-bin)
missing=()
for p in "${pkgs[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
# node + npm for the JavaScript client (client/js): any install will do (Debian 12's
# nodejs 18 and npm 9, or NodeSource's nodejs, which bundles npm)
if ! command -v node >/dev/null 2>&1 || ! command -v npm >/dev/null 2>&1; then missing+=(nodejs npm); fi
[ ${#missing[@]} -eq 0 ] && exit 0
echo "deps: installing ${missing[*]}" >&2
SUDO=""
if [ "$(id -u)" -ne 0 ]; then
  command -v sudo >/dev/null || { echo "deps: need root (or sudo) to apt-get install ${missing[*]}" >&2; exit 1; }
  SUDO=sudo
fi
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq
$SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
