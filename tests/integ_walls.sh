#!/usr/bin/env bash
# The build's structure (ARCHITECTURE.md, "Walls"):
#  - `make` with no target builds everything: the daemon, the CLI, libxcoder
#    (static and shared), every unit test and every benchmark (read from make's
#    database: the default goal and its prerequisites);
#  - the include graph: every `#include "..."` of each part resolves to a part
#    that part may use; the engine includes no socket, file, libuv, ZeroMQ,
#    msgpack or MPI header and calls no such function (its library's undefined
#    symbols); include/ holds no implementation;
#  - the compile walls: each part's include path (the Makefile's CF_<part>)
#    cannot even find a forbidden header;
#  - the link walls: the daemon holds no planted-feature generator;
#    build/xcoder and build/libxcoder.so define no symbol of the
#    daemon's or the engine's libraries; libxcoder.so needs no OpenBLAS, libuv,
#    systemd or oneDNN; the CLI needs BLAS only for the planted-feature
#    generator (libxcsynth), and no libuv, systemd or oneDNN;
#  - each checker is shown to catch a breach: a violation injected into a temp
#    copy of the sources, a forbidden header compiled with a part's flags, and
#    a CLI linked with an engine call.
# Prints "ok - name" / "not ok - name: why"; exits non-zero on any failure.
set -u
TEST_TMP_TAG=xc_walls
TEST_PREFIX=walls_
. "$(dirname "$0")/lib.sh"

# run NAME FUNC ARGS...: ok when FUNC succeeds, else its output as the reason
run() {
  local name=$1 out; shift
  if out=$("$@" 2>&1); then ok "$name"; else nok "$name" "$(printf '%s' "$out" | tail -c 600 | tr '\n' ' ')"; fi
}
# refute NAME FUNC ARGS...: ok when FUNC FAILS (a checker catching a breach)
refute() {
  local name=$1 out; shift
  if out=$("$@" 2>&1); then nok "$name" "the breach was not caught"; else ok "$name"; fi
}

# make's database, without running anything (-q: question mode, -p: print)
make -pq --no-print-directory 2>/dev/null >"$T/db"
mkvar() { sed -n "s|^$1 := ||p" "$T/db" | tail -1; }

# ---------------------------------------------------- default goal: all --
default_goal_builds_everything() {
  local goal prereqs missing=""
  goal=$(sed -n 's/^\.DEFAULT_GOAL := //p' "$T/db" | tail -1)
  [ "$goal" = all ] || { echo "the default goal is '$goal', not all"; return 1; }
  prereqs=" $(sed -n 's/^all: //p' "$T/db" | head -1) "
  local want="build/xcoderd build/xcoder build/libxcoder.a build/libxcoder.so"
  for f in tests/test_*.c; do want="$want build/tests/$(basename "$f" .c)"; done
  for f in bench/*.c; do want="$want build/bench/$(basename "$f" .c)"; done
  for w in $want; do
    case "$prereqs" in *" $w "*) ;; *) missing="$missing $w" ;; esac
  done
  [ -z "$missing" ] || { echo "\`make\` does not build:$missing"; return 1; }
}
run make_builds_everything default_goal_builds_everything

# ---------------------------------------------------------- include graph --
PARTS="include proto format engine synth daemon client/lib client/cli"
# allowed PART: the parts whose headers PART may include
allowed() {
  case $1 in
    include) echo "include" ;;
    proto) echo "include proto" ;;
    format) echo "include proto format" ;;
    engine) echo "include engine" ;;
    synth) echo "include synth engine/xc_rng.h" ;; # the engine's pure PRNG, nothing else of it
    daemon) echo "include proto format engine daemon" ;;
    client/lib) echo "include proto format client/lib" ;;
    client/cli) echo "include proto format client/lib client/cli synth" ;;
  esac
}
# System headers the engine must not see (sockets, files, event loops, wire codecs, MPI).
ENGINE_FORBIDDEN_SYS='^(sys/socket\.h|sys/un\.h|netinet/.*|arpa/.*|netdb\.h|poll\.h|sys/epoll\.h|fcntl\.h|dirent\.h|sys/stat\.h|sys/mman\.h|uv\.h|uv/.*|zmq\.h|czmq\.h|msgpack\.h|msgpack/.*|mpi\.h|systemd/.*)$'

# check_includes ROOT: every quoted include of every part resolves inside an allowed part
check_includes() {
  local root=$1 bad=0 part f inc home al
  for part in $PARTS; do
    [ -d "$root/$part" ] || continue
    al=" $(allowed "$part") "
    for f in "$root/$part"/*.c "$root/$part"/*.h; do
      [ -e "$f" ] || continue
      while IFS= read -r inc; do
        home=""
        for p in $PARTS; do
          if [ -e "$root/$p/$inc" ]; then home=$p; break; fi
        done
        if [ -z "$home" ]; then echo "${f#$root/}: \"$inc\" is in no part"; bad=1; continue; fi
        case "$al" in *" $home "*|*" $home/$inc "*) ;; *)
          echo "${f#$root/}: includes $home/$inc (the $part part may use: $(allowed "$part"))"; bad=1 ;;
        esac
      done < <(sed -n 's/^[[:space:]]*#[[:space:]]*include[[:space:]]*"\([^"]*\)".*/\1/p' "$f")
      if [ "$part" = engine ]; then
        while IFS= read -r inc; do
          if printf '%s\n' "$inc" | grep -Eq "$ENGINE_FORBIDDEN_SYS"; then
            echo "${f#$root/}: the engine includes <$inc> (no I/O in the engine)"; bad=1
          fi
        done < <(sed -n 's/^[[:space:]]*#[[:space:]]*include[[:space:]]*<\([^>]*\)>.*/\1/p' "$f")
      fi
    done
  done
  if ls "$root"/include/*.c >/dev/null 2>&1; then echo "include/ holds an implementation file"; bad=1; fi
  return $bad
}
run include_graph check_includes "$PWD"

# The same checker on a copy with one breach injected per wall.
inject() { # inject NAME FILE LINE: a copy of the sources with LINE added to FILE
  local d=$T/inj-$1
  mkdir -p "$d"
  for p in $PARTS; do mkdir -p "$d/$p" && cp "$p"/*.[ch] "$d/$p"/ 2>/dev/null; done
  printf '%s\n' "$3" >>"$d/$2"
  echo "$d"
}
refute include_graph_catches_cli_daemon check_includes "$(inject cli client/cli/ckpt.c '#include "xc_ckpt.h"')"
refute include_graph_catches_clib_engine check_includes "$(inject clib client/lib/client.c '#include "xc_engine.h"')"
refute include_graph_catches_proto_daemon check_includes "$(inject proto proto/proto.c '#include "xc_trainer.h"')"
refute include_graph_catches_engine_socket check_includes "$(inject esock engine/engine.c '#include <sys/socket.h>')"
refute include_graph_catches_engine_zmq check_includes "$(inject ezmq engine/pool.c '#include <zmq.h>')"
refute include_graph_catches_synth_engine check_includes "$(inject synth synth/synth.c '#include "xc_engine.h"')"
inc_dir=$(inject inc include/xc_error.h '') && touch "$inc_dir/include/impl.c"
refute include_graph_catches_include_impl check_includes "$inc_dir"

# --------------------------------------------------------- compile walls --
# compile_with PART HEADER: compiles `#include HEADER` with PART's include path
compile_with() {
  local cf
  cf=$(mkvar "CF_$1")
  printf '#include "%s"\nint xc_walls_probe;\n' "$2" >"$T/probe.c"
  # shellcheck disable=SC2086
  cc -std=c11 -D_GNU_SOURCE $cf -fsyntax-only "$T/probe.c"
}
run compile_cli_sees_libxcoder compile_with client/cli xcoder.h
refute compile_wall_cli_daemon compile_with client/cli xc_ckpt.h
refute compile_wall_cli_engine compile_with client/cli xc_engine.h
refute compile_wall_clib_daemon compile_with client/lib xc_trainer.h
refute compile_wall_proto_format compile_with proto xc_stfile.h
refute compile_wall_engine_proto compile_with engine xc_proto.h
refute compile_wall_format_engine compile_with format xc_engine.h

# ----------------------------------------------- the engine calls no I/O --
ENGINE_FORBIDDEN_CALLS='^(open|open64|openat|fopen|fopen64|creat|socket|connect|bind|listen|accept|send|recv|sendto|recvfrom|mmap|mmap64|opendir|unlink|rename|zmq_.*|uv_.*|msgpack_.*|MPI_.*|sd_.*)$'
engine_calls_no_io() {
  local lib=${1:-build/libxcengine.a} hits
  [ -f "$lib" ] || { echo "$lib is not built"; return 1; }
  hits=$(nm -u "$lib" 2>/dev/null | awk '{print $NF}' | sed 's/@.*//' | sort -u | grep -E "$ENGINE_FORBIDDEN_CALLS")
  [ -z "$hits" ] || { echo "the engine calls:" $hits; return 1; }
}
run engine_calls_no_io engine_calls_no_io
printf '#include <stdio.h>\nvoid *xc_walls_breach(void) { return fopen("x", "r"); }\n' >"$T/io.c"
cc -c "$T/io.c" -o "$T/io.o" && cp build/libxcengine.a "$T/libbad.a" && ar rcs "$T/libbad.a" "$T/io.o"
refute engine_check_catches_fopen engine_calls_no_io "$T/libbad.a"

# ------------------------------------------------------------ link walls --
# Global symbols the daemon's and the engine's libraries define.
nm -g --defined-only build/libxcd.a build/libxcengine.a 2>/dev/null | awk 'NF == 3 {print $3}' | sort -u >"$T/forbidden.syms"
no_daemon_symbols() { # no_daemon_symbols BINARY
  local hits
  [ -s "$T/forbidden.syms" ] || { echo "no symbols read from build/libxcd.a, build/libxcengine.a"; return 1; }
  hits=$(nm -g --defined-only "$1" 2>/dev/null | awk 'NF == 3 {print $3}' | sort -u | comm -12 - "$T/forbidden.syms" | head -5)
  [ -z "$hits" ] || { echo "$1 holds daemon/engine code:" $hits; return 1; }
}
needed() { readelf -d "$1" | sed -n 's/.*(NEEDED).*\[\(.*\)\]/\1/p'; }
no_needed() { # no_needed BINARY REGEX: no shared library dependency matches
  local hits
  hits=$(needed "$1" | grep -E "$2")
  [ -z "$hits" ] || { echo "$1 needs" $hits; return 1; }
}
cli_blas_only_for_synth() { # the CLI's BLAS calls are exactly those of libxcsynth and of the
  # one computing command, the offline examples pass (client/cli/examples_offline.c)
  local extra
  extra=$(comm -23 <(nm -u "$1" | awk '{print $NF}' | sed 's/@.*//' | grep -E '^(cblas_|openblas_|[sdcz]gemm)' | sort -u) \
                   <(nm -u build/libxcsynth.a build/obj/client/cli/examples_offline.o | awk '{print $NF}' | sort -u))
  [ -z "$extra" ] || { echo "$1 calls BLAS outside the synth library:" $extra; return 1; }
}
daemon_links_no_synth() {
  local hits
  hits=$(nm -g --defined-only build/xcoderd | awk 'NF == 3 {print $3}' | grep '^xc_synth_' | head -3)
  [ -z "$hits" ] || { echo "build/xcoderd holds the planted-feature generator:" $hits; return 1; }
}
run daemon_links_no_synth daemon_links_no_synth
run cli_links_no_daemon no_daemon_symbols build/xcoder
run libxcoder_links_no_daemon no_daemon_symbols build/libxcoder.so
run libxcoder_needs_no_blas no_needed build/libxcoder.so 'openblas|blas|lapack|uv|systemd|dnnl|gomp'
run cli_needs_no_service_libs no_needed build/xcoder 'libuv|systemd|dnnl|gomp'
run cli_blas_only_for_synth cli_blas_only_for_synth build/xcoder

# A CLI linked with one engine call must be caught.
printf 'extern void *xc_engine_new(const void *cfg, int *err);\nvoid *xc_walls_breach(void) { return xc_engine_new(0, 0); }\n' >"$T/breach.c"
link_bad_cli() {
  cc -c "$T/breach.c" -o "$T/breach.o" &&
  # shellcheck disable=SC2046
  cc -pthread build/obj/client/cli/*.o "$T/breach.o" build/libxcoder.a build/libxcsynth.a build/libxcengine.a \
     build/libxcrng.a build/libxcproto.a $(pkg-config --libs libzmq msgpack openblas) $([ -e /usr/include/oneapi/dnnl/dnnl.h ] && echo -ldnnl -lgomp) \
     -lm -o "$T/xcoder_bad"
}
if out=$(link_bad_cli 2>&1); then
  refute link_wall_catches_engine_in_cli no_daemon_symbols "$T/xcoder_bad"
else
  nok link_wall_catches_engine_in_cli "could not link the breached CLI: $(printf '%s' "$out" | tail -c 300)"
fi

[ "$fails" -eq 0 ]
