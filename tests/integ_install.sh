#!/usr/bin/env bash
# `make install` / `make uninstall` into a DESTDIR (issue 8), and the systemd units:
#  - install with PREFIX=/usr: every file where it belongs, soname links, units rewritten
#    to /usr/bin, the live config not overwritten, the same with the default PREFIX;
#  - the installed binaries run (xcoderd --help / --print-example / --config FILE, xcoder --help);
#  - each installed header compiles alone; a tiny program built with `pkg-config libxcoder`
#    (shared, and static libxcoder via --static) pings an installed xcoderd;
#  - systemd-analyze verify on the repository's and the installed units (ExecStart pointed
#    at the built / installed binary: verify needs it to exist), the hardening exposure
#    (systemd-analyze security --offline), the sysusers.d file (systemd-sysusers --dry-run),
#    the man pages (groff -ww, no warnings);
#  - uninstall leaves nothing but an edited configuration.
# Prints "ok - name" / "not ok - name: why"; exits non-zero on any failure.
set -u
ROOT=$(cd "$(dirname "$0")/.." && pwd)
T=$(mktemp -d /tmp/xcd-install.XXXXXX)
FAIL=0
DPID=
cleanup() { [ -n "$DPID" ] && kill "$DPID" 2>/dev/null; rm -rf "$T"; }
trap cleanup EXIT

ok() { echo "ok - $1"; }
fail() { echo "not ok - $1: $2"; FAIL=$((FAIL + 1)); }
# check NAME CMD...: runs CMD (output to $T/out), ok when it succeeds
check() {
  local name=$1; shift
  if "$@" >"$T/out" 2>&1; then ok "$name"; else fail "$name" "$(tail -c 600 "$T/out" | tr '\n' ' ')"; fi
}

D=$T/root
mk() { make -C "$ROOT" --no-print-directory "$@"; }

# --------------------------------------------------------------- install --
check install_prefix_usr mk install DESTDIR="$D" PREFIX=/usr

files_present() {
  local missing=""
  for f in usr/bin/xcoderd usr/bin/xcoder usr/bin/xcoder-offline usr/lib/python3/dist-packages/xcoder/__init__.py \
           usr/lib/libxcoder.a usr/lib/libxcoder.so.0.1.0 \
           usr/include/xcoder/xcoder.h usr/include/xcoder/xc_error.h usr/include/xcoder/xc_shm.h \
           usr/lib/pkgconfig/libxcoder.pc usr/share/man/man1/xcoder.1 usr/share/man/man8/xcoderd.8 \
           usr/lib/systemd/system/xcoderd.service usr/lib/systemd/system/xcoderd@.service \
           usr/lib/sysusers.d/xcoderd.conf etc/xcoderd/xcoderd.conf etc/xcoderd/xcoderd.conf.example; do
    [ -f "$D/$f" ] || missing="$missing $f"
  done
  [ -z "$missing" ] || { echo "missing:$missing"; return 1; }
  [ "$(readlink "$D/usr/lib/libxcoder.so.0")" = libxcoder.so.0.1.0 ] || { echo "bad soname link"; return 1; }
  [ "$(readlink "$D/usr/lib/libxcoder.so")" = libxcoder.so.0 ] || { echo "bad dev link"; return 1; }
  readelf -d "$D/usr/lib/libxcoder.so.0.1.0" | grep -q 'SONAME.*\[libxcoder.so.0\]' || { echo "SONAME"; return 1; }
  [ -x "$D/usr/bin/xcoderd" ] && [ -x "$D/usr/bin/xcoder" ] || { echo "binaries not executable"; return 1; }
  cmp "$ROOT/systemd/xcoderd.conf.example" "$D/etc/xcoderd/xcoderd.conf"
}
check installed_files files_present
# the Python client where Debian's python3 looks (PREFIX=/usr: apt's dist-packages)
check installed_python_package sh -c "cd / && PYTHONPATH='$D/usr/lib/python3/dist-packages' /usr/bin/python3 -c \
  'import xcoder, sys; assert xcoder.__file__.startswith(sys.argv[1]), xcoder.__file__' '$D'"

units_rewritten() {
  for u in xcoderd.service xcoderd@.service; do
    grep -q '^ExecStart=/usr/bin/xcoderd --config /etc/xcoderd/' "$D/usr/lib/systemd/system/$u" ||
      { echo "$u: ExecStart not rewritten to /usr/bin"; return 1; }
    ! grep -q /usr/local "$D/usr/lib/systemd/system/$u" || { echo "$u still names /usr/local"; return 1; }
  done
}
check units_point_at_installed_binary units_rewritten

# the operator's configuration survives a reinstall
echo "# edited" >>"$D/etc/xcoderd/xcoderd.conf"
check reinstall_keeps_config sh -c "make -C '$ROOT' --no-print-directory install DESTDIR='$D' PREFIX=/usr &&
  tail -n 1 '$D/etc/xcoderd/xcoderd.conf' | grep -q '# edited'"

# ----------------------------------------------------- installed binaries --
check installed_xcoderd_help sh -c "'$D/usr/bin/xcoderd' --help | grep -q '^usage: '"
check installed_xcoder_help sh -c "'$D/usr/bin/xcoder' --help | grep -q '^usage: xcoder'"
check installed_example_matches sh -c "'$D/usr/bin/xcoderd' --print-example | cmp - '$D/etc/xcoderd/xcoderd.conf.example'"
check installed_config_loads sh -c "'$D/usr/bin/xcoderd' --config '$D/etc/xcoderd/xcoderd.conf' --print-config >/dev/null"

# -------------------------------------------------- headers and pkg-config --
headers_alone() {
  for h in xcoder.h xc_error.h xc_shm.h; do
    printf '#include <%s>\n' "$h" | cc -std=c11 -Wall -Werror -fsyntax-only -I"$D/usr/include/xcoder" -x c - ||
      { echo "$h does not compile alone"; return 1; }
  done
}
check installed_headers_self_contained headers_alone

export PKG_CONFIG_PATH=$D/usr/lib/pkgconfig PKG_CONFIG_SYSROOT_DIR=$D
cat >"$T/hello.c" <<'EOF'
/* links against the installed libxcoder and pings a daemon: argv[1] = run_dir */
#include <stdio.h>
#include <string.h>
#include <xcoder.h>
#include <xc_shm.h>
int main(int argc, char **argv)
{
    xc_client_options_t o;
    xc_client_value_t *r = NULL;
    int err;
    xc_client_options_default(&o);
    o.run_dir = argc > 1 ? argv[1] : NULL;
    o.timeout_ms = 10000;
    xc_client_t *c = xc_client_new(&o, &err);
    if (!c) { printf("xc_client_new: %s\n", xc_strerror(err)); return 1; }
    int rc = xc_client_ping(c, &r);
    if (rc) { printf("ping: %s\n", xc_client_last_error(c)); return 1; }
    printf("pong from %s (layout %u)\n", xc_client_value_getstr(r, "name", "?"), XC_SHM_LAYOUT_VERSION);
    xc_client_value_free(&r);
    xc_client_destroy(&c);
    return strcmp(xc_strerror(XC_ESHAPE), "") == 0;
}
EOF
pc_flags() {
  pkg-config --exists libxcoder || { echo "pkg-config does not find libxcoder"; return 1; }
  pkg-config --cflags libxcoder | grep -q -- "-I$D/usr/include/xcoder" || { pkg-config --cflags libxcoder; return 1; }
  pkg-config --libs libxcoder | grep -q -- "-L$D/usr/lib" || { pkg-config --libs libxcoder; return 1; }
  [ "$(pkg-config --modversion libxcoder)" = 0.1.0 ]
}
check pkg_config_file pc_flags
# shellcheck disable=SC2046
check link_shared cc -std=c11 -Wall -Werror "$T/hello.c" $(pkg-config --cflags --libs libxcoder) -o "$T/hello"
# static libxcoder, its dependencies (Requires.private) shared: Debian's libzmq.pc asks for
# static archives it does not ship when linked with --static
check pc_requires_private sh -c "test \"\$(pkg-config --print-requires-private libxcoder | tr '\n' ' ')\" = 'libzmq msgpack '"
check link_static sh -c "cc -std=c11 -Wall -Werror '$T/hello.c' \$(pkg-config --cflags libxcoder) \
  '$D/usr/lib/libxcoder.a' \$(pkg-config --libs \$(pkg-config --print-requires-private libxcoder)) -lm -pthread \
  -o '$T/hello-static' && ! ldd '$T/hello-static' | grep -q libxcoder"
check shared_binary_uses_installed_lib sh -c "LD_LIBRARY_PATH='$D/usr/lib' ldd '$T/hello' | grep -q '$D/usr/lib/libxcoder.so.0'"

mkdir -p "$T/run"
"$D/usr/bin/xcoderd" --config "$D/etc/xcoderd/xcoderd.conf" --name inst$$ --run_dir "$T/run" \
  --state_dir "$T/state" --d 16 --dict_size 64 --k 4 --batch_size 32 --threads 1 --shm off \
  >"$T/daemon.log" 2>&1 &
DPID=$!
for _ in $(seq 100); do [ -S "$T/run/control.sock" ] && break; sleep 0.05; done
check installed_daemon_answers_shared sh -c "LD_LIBRARY_PATH='$D/usr/lib' '$T/hello' '$T/run' | grep -q 'pong from inst$$'"
check installed_daemon_answers_static sh -c "'$T/hello-static' '$T/run' | grep -q 'pong from inst$$'"
check installed_cli_metrics sh -c "'$D/usr/bin/xcoder' --run-dir '$T/run' metrics | grep -q '^xcoderd_step{name=\"inst$$\"} 0$'"
kill -TERM "$DPID"
check installed_daemon_clean_exit wait "$DPID"
DPID=

# --------------------------------------------------------------- systemd --
verify_units() {  # dir with units whose ExecStart is /usr/local/bin or /usr/bin; $2 = binary to use
  local v=$T/verify.$RANDOM
  mkdir -p "$v"
  for u in xcoderd.service xcoderd@.service; do
    sed -e "s|^ExecStart=/usr/local/bin/xcoderd|ExecStart=$2|" -e "s|^ExecStart=/usr/bin/xcoderd|ExecStart=$2|" \
      "$1/$u" >"$v/$u"
    grep -q "^ExecStart=$2 " "$v/$u" || { echo "$u: ExecStart not found"; return 1; }
  done
  # verify prints nothing for clean units; any warning (unknown key, bad value) fails the test
  (cd "$v" && systemd-analyze verify --man=no xcoderd.service xcoderd@.service xcoderd@lab-1.service) \
    >"$v/log" 2>&1 || { cat "$v/log"; return 1; }
  [ ! -s "$v/log" ] || { cat "$v/log"; return 1; }
  # hardening: overall exposure at most 2.5 ("OK") on systemd's 0-10 scale
  (cd "$v" && systemd-analyze security --offline=true --threshold=25 xcoderd@.service) >"$v/sec" 2>&1 ||
    { tail -n 3 "$v/sec"; return 1; }
  grep -q 'Overall exposure level' "$v/sec"
}
if command -v systemd-analyze >/dev/null; then
  check systemd_analyze_verify_repo_units verify_units "$ROOT/systemd" "$ROOT/build/xcoderd"
  check systemd_analyze_verify_installed_units verify_units "$D/usr/lib/systemd/system" "$D/usr/bin/xcoderd"
  check sysusers_file_parses sh -c "mkdir -p '$T/sysroot/etc' && systemd-sysusers --root='$T/sysroot' --dry-run \
    '$D/usr/lib/sysusers.d/xcoderd.conf' 2>&1 | grep -q \"Creating user 'xcoderd'\""
else
  fail systemd_analyze_verify "systemd-analyze not installed (scripts/deps.sh installs the systemd package)"
fi

man_clean() {
  for m in usr/share/man/man1/xcoder.1 usr/share/man/man8/xcoderd.8; do
    groff -man -ww -z "$D/$m" >"$T/groff" 2>&1 && [ ! -s "$T/groff" ] || { echo "$m:"; cat "$T/groff"; return 1; }
  done
}
check man_pages_without_warnings man_clean

# ----------------------------------------------------- default PREFIX too --
D2=$T/root2
check install_default_prefix sh -c "make -C '$ROOT' --no-print-directory install DESTDIR='$D2' >/dev/null &&
  test -x '$D2/usr/local/bin/xcoderd' && test -f '$D2/usr/local/lib/pkgconfig/libxcoder.pc' &&
  grep -q '^ExecStart=/usr/local/bin/xcoderd --config /etc/xcoderd/' '$D2/usr/local/lib/systemd/system/xcoderd@.service' &&
  test -f '$D2/etc/xcoderd/xcoderd.conf.example' && grep -q '^prefix=/usr/local$' '$D2/usr/local/lib/pkgconfig/libxcoder.pc'"
# PREFIX=/usr/local: a directory on /usr/bin/python3's own sys.path (no PYTHONPATH needed once installed)
py_local_on_path() {
  local dir
  dir=$(ls -d "$D2"/usr/local/lib/python3.*/dist-packages 2>/dev/null | head -1)
  [ -f "$dir/xcoder/__init__.py" ] || { echo "no xcoder package under $D2/usr/local/lib"; return 1; }
  /usr/bin/python3 -c 'import sys; sys.exit(sys.argv[1] not in sys.path)' "${dir#$D2}" ||
    { echo "${dir#$D2} is not on /usr/bin/python3's sys.path"; return 1; }
}
check install_default_prefix_python_on_path py_local_on_path

# ------------------------------------------------------------- uninstall --
check uninstall_keeps_only_edited_config sh -c "make -C '$ROOT' --no-print-directory uninstall DESTDIR='$D' PREFIX=/usr >/dev/null &&
  test \"\$(find '$D' \\( -type f -o -type l \\) | sed 's|^$D/||')\" = etc/xcoderd/xcoderd.conf"
check uninstall_default_prefix_leaves_nothing sh -c "make -C '$ROOT' --no-print-directory uninstall DESTDIR='$D2' >/dev/null &&
  test -z \"\$(find '$D2' \\( -type f -o -type l \\))\""

[ "$FAIL" -eq 0 ]
