# xcoderd build. `make` builds everything into build/; `make test` runs every test
# (unit tests twice: optimised, and under AddressSanitizer + UBSan); `make bench`;
# `make demo`. Every target depends on `deps`, which apt-get installs what is missing.

# `make` with no target builds everything (the rules below would otherwise make
# the first library the default goal)
.DEFAULT_GOAL := all

CC      ?= cc
PY      := /usr/bin/python3
WARN    := -Wall -Wextra -Werror -Wshadow -Wstrict-prototypes -Wno-unused-parameter
BASEFL  := -std=c11 -D_GNU_SOURCE -fPIC -pthread
OPT     := -O2 -g
SANFL   := -O1 -g -fno-omit-frame-pointer -fsanitize=address,undefined -fno-sanitize-recover=undefined

# The feature probes below (oneDNN, OpenMPI) look at what is installed when this
# file is read, so on a fresh machine the Debian packages must be in before that:
# every run but `make deps`/`clean` runs scripts/deps.sh first (quiet and quick when
# nothing is missing), or stops with its reason.
ifeq ($(filter deps clean uninstall,$(MAKECMDGOALS)),)
ifneq ($(shell bash scripts/deps.sh >&2 && echo ok),ok)
$(error scripts/deps.sh could not install the Debian packages xcoderd needs (its reason is above))
endif
endif

# OpenMPI (libopenmpi-dev) lets `mpirun -np R xcoderd` shard the latents over R
# ranks (daemon/coll_mpi.c); without it (or with XC_NO_MPI=1) xcoderd is one process.
MPI        := $(if $(XC_NO_MPI),,$(shell pkg-config --exists ompi-c 2>/dev/null && echo ompi-c))

# oneDNN (libdnnl-dev) runs the reduced-precision encoder scoring (engine/score.c);
# without it (or with XC_NO_DNNL=1) the engine is fp32 only. It runs on OpenMP.
DNNL       := $(if $(XC_NO_DNNL),,$(wildcard /usr/include/oneapi/dnnl/dnnl.h))
pkgcf = $(shell pkg-config --cflags $(1) 2>/dev/null)
pkglib = $(shell pkg-config --libs $(1) 2>/dev/null)

# ------------------------------------------------------------------ walls --
# Each part is compiled with its own include path (CF_<dir>, chosen by the
# object's source directory) and packaged as its own library, so a breach of a
# wall fails to compile or to link (ARCHITECTURE.md; tests/integ_walls.sh checks
# the include graph and the binaries' symbols):
#   include/     public headers, no implementation
#   proto/       the wire codec, shared memory, keys: include/ and proto/ only
#   format/      file formats (safetensors, checkpoint layout, .npy, atomic write)
#   engine/      pure compute: no socket, file, libuv, ZeroMQ or msgpack header
#   synth/       the planted-feature generator (the engine's PRNG, engine/xc_rng.h)
#   daemon/      the service: everything above
#   client/lib   libxcoder: include/ proto/ format/; never daemon/ or engine/
#   client/cli   the xcoder CLI: libxcoder, format/, synth/; never daemon/ or engine/
#   client/offline  xcoder-offline, the CLI's offline commands that compute with the
#                engine (exact Latent Scaling of a checkpoint): libxcoder, engine/
# A directory without a CF_ line compiles with no include path at all.
CF_proto      := -Iinclude -Iproto $(call pkgcf,libzmq msgpack)
CF_format     := -Iinclude -Iproto -Iformat
CF_engine     := -Iinclude -Iengine $(call pkgcf,openblas) $(if $(DNNL),-DXC_HAVE_DNNL)
CF_synth      := -Iinclude -Isynth -Iengine $(call pkgcf,openblas)
CF_daemon     := -Iinclude -Iproto -Iformat -Iengine -Idaemon $(call pkgcf,libzmq msgpack libuv libsystemd) \
                 $(if $(MPI),$(call pkgcf,$(MPI)) -DXC_HAVE_MPI)
CF_client/lib := -Iinclude -Iproto -Iformat -Iclient/lib $(call pkgcf,libzmq msgpack)
CF_client/cli := -Iinclude -Iproto -Iformat -Iclient/lib -Iclient/cli -Isynth $(call pkgcf,libzmq msgpack openblas)
CF_client/offline := -Iinclude -Iproto -Iformat -Iclient/lib -Iclient/cli -Iengine $(call pkgcf,libzmq msgpack)
CF_tests      := -Iinclude -Iproto -Iformat -Iengine -Isynth -Idaemon -Iclient/lib -Itests \
                 $(call pkgcf,libzmq msgpack openblas libuv libsystemd) $(if $(DNNL),-DXC_HAVE_DNNL) \
                 $(if $(MPI),$(call pkgcf,$(MPI)) -DXC_HAVE_MPI)
CF_bench      := $(CF_tests)

# What each part links against (system libraries).
LIBS_PROTO  = $(call pkglib,libzmq msgpack) -lm -pthread
LIBS_BLAS   = $(call pkglib,openblas)
LIBS_ENGINE = $(LIBS_BLAS) $(if $(DNNL),-ldnnl -lgomp) -lm -pthread
LIBS_DAEMON = $(call pkglib,libuv libsystemd) $(if $(MPI),$(call pkglib,$(MPI))) $(LIBS_ENGINE) $(LIBS_PROTO)
LIBS_CLI    = $(LIBS_BLAS) $(LIBS_PROTO)

PROTO_SRC  := $(wildcard proto/*.c)
FORMAT_SRC := $(wildcard format/*.c)
RNG_SRC    := engine/rng.c
ENGINE_SRC := $(filter-out $(RNG_SRC),$(wildcard engine/*.c))
SYNTH_SRC  := $(wildcard synth/*.c)
DAEMON_SRC := $(filter-out daemon/main.c,$(wildcard daemon/*.c))
CLIB_SRC   := $(wildcard client/lib/*.c)
CLI_SRC    := $(wildcard client/cli/*.c)
OFFLINE_SRC := $(wildcard client/offline/*.c)
TEST_SRC   := $(wildcard tests/test_*.c)
BENCH_SRC  := $(wildcard bench/*.c)
# Integration tests (a real daemon, the CLI, Python): run after the unit tests.
INTEG      := $(sort $(wildcard tests/integ_*.sh tests/integ_*.py))
HDRS       := $(wildcard bench/*.h include/*.h proto/*.h format/*.h daemon/*.h engine/*.h synth/*.h client/lib/*.h \
                client/cli/*.h tests/*.h)

# $(call variant,DIR,FLAGS): object rules, libraries, binaries and tests for one build flavour.
#   libxcproto  proto/              libxcformat  format/
#   libxcrng    engine/rng.c (the engine's pure PRNG, shared with synth/)
#   libxcengine engine/ (but rng)   libxcsynth   synth/
#   libxcd      daemon/ (but main)  libxcoder    client/lib + format/ + proto/ (installed)
# Tests and benches link every library; the binaries only their own (below).
define variant
$(1)/obj/%.o: %.c $(HDRS) | deps
	@mkdir -p $$(dir $$@)
	$$(CC) $$(BASEFL) $$(CF_$$(patsubst %/,%,$$(dir $$*))) $(2) $$(WARN) -c $$< -o $$@
$(1)/libxcproto.a: $(patsubst %.c,$(1)/obj/%.o,$(PROTO_SRC))
$(1)/libxcformat.a: $(patsubst %.c,$(1)/obj/%.o,$(FORMAT_SRC))
$(1)/libxcrng.a: $(patsubst %.c,$(1)/obj/%.o,$(RNG_SRC))
$(1)/libxcengine.a: $(patsubst %.c,$(1)/obj/%.o,$(ENGINE_SRC))
$(1)/libxcsynth.a: $(patsubst %.c,$(1)/obj/%.o,$(SYNTH_SRC))
$(1)/libxcd.a: $(patsubst %.c,$(1)/obj/%.o,$(DAEMON_SRC))
$(1)/libxcoder.a: $(patsubst %.c,$(1)/obj/%.o,$(CLIB_SRC) $(FORMAT_SRC) $(PROTO_SRC))
$(1)/%.a:
	@mkdir -p $$(dir $$@)
	rm -f $$@ && ar rcs $$@ $$^
$(1)/DAEMON_LIBS := $(addprefix $(1)/,libxcd.a libxcengine.a libxcrng.a libxcformat.a libxcproto.a)
$(1)/ALL_LIBS := $(addprefix $(1)/,libxcd.a libxcsynth.a libxcengine.a libxcrng.a libxcoder.a libxcformat.a libxcproto.a)
$(1)/tests/%: $(1)/obj/tests/%.o $$($(1)/ALL_LIBS)
	@mkdir -p $$(dir $$@)
	$$(CC) $(2) -pthread $$^ $$(LIBS_DAEMON) -o $$@
$(1)/xcoderd: $(1)/obj/daemon/main.o $$($(1)/DAEMON_LIBS)
	$$(CC) $(2) -pthread $$^ $$(LIBS_DAEMON) -o $$@
endef

$(eval $(call variant,build,$(OPT)))
$(eval $(call variant,build/asan,$(SANFL)))

TESTS      := $(patsubst tests/%.c,build/tests/%,$(TEST_SRC))
ASAN_TESTS := $(patsubst tests/%.c,build/asan/tests/%,$(TEST_SRC))
BENCHES    := $(patsubst bench/%.c,build/bench/%,$(BENCH_SRC))
BINS       := $(if $(wildcard daemon/main.c),build/xcoderd) $(if $(CLI_SRC),build/xcoder) \
              $(if $(CLIB_SRC),build/libxcoder.so) $(if $(OFFLINE_SRC),build/xcoder-offline)

# keep objects between runs (they are intermediates of the pattern rules)
.SECONDARY:

.PHONY: all deps test bench demo clean generate
all: build/libxcd.a build/libxcoder.a $(BINS) $(TESTS) $(BENCHES) build/gen_constants

# The clients' constants from the C tables (scripts/gen_constants.c); the
# generated files are checked in, tests/integ_generated.sh says when stale.
build/gen_constants: scripts/gen_constants.c $(HDRS) | deps
	@mkdir -p build
	$(CC) -std=c11 -D_GNU_SOURCE -Iinclude -Iproto $(OPT) $(WARN) $< -o $@
generate: build/gen_constants
	build/gen_constants py > client/python/xcoder/_generated.py
	build/gen_constants js > client/js/lib/generated.js

deps:
	@bash scripts/deps.sh

# The CLI: libxcoder, the planted-feature generator (and its PRNG and BLAS) for
# `xcoder synth` / `report`; no daemon or engine code.
build/xcoder: $(patsubst %.c,build/obj/%.o,$(CLI_SRC)) build/libxcoder.a build/libxcsynth.a build/libxcrng.a
	$(CC) $(OPT) -pthread $^ $(LIBS_CLI) -o $@
# The CLI's offline computing commands: libxcoder and the engine, no daemon code.
build/xcoder-offline: $(patsubst %.c,build/obj/%.o,$(OFFLINE_SRC)) build/obj/client/cli/progress.o \
  build/obj/client/cli/fmt.o build/libxcoder.a build/libxcengine.a build/libxcrng.a
	$(CC) $(OPT) -pthread $^ $(LIBS_ENGINE) $(LIBS_PROTO) -o $@
build/libxcoder.so: $(patsubst %.c,build/obj/%.o,$(CLIB_SRC) $(FORMAT_SRC) $(PROTO_SRC))
	$(CC) -shared -Wl,-soname,libxcoder.so.0 -Wl,--as-needed $^ $(LIBS_PROTO) -o $@
build/bench/%: build/obj/bench/%.o $(build/ALL_LIBS)
	@mkdir -p $(dir $@)
	$(CC) $(OPT) -pthread $^ $(LIBS_DAEMON) -o $@

# The JavaScript client's packages (zeromq, whose prebuilt addon ships inside the
# package, and @msgpack/msgpack), from the npm registry as pinned by the lockfile.
build/js.stamp: client/js/package.json client/js/package-lock.json | deps
	@mkdir -p build
	cd client/js && npm ci --no-audit --no-fund --loglevel=error
	@touch $@

# The web dashboard's packages (uPlot, served to the browser; playwright-core, which
# drives Debian's Chromium in tests/integ_dashboard.sh), pinned by its own lockfile.
build/dashboard.stamp: client/js/dashboard/package.json client/js/dashboard/package-lock.json | deps
	@mkdir -p build
	cd client/js/dashboard && npm ci --no-audit --no-fund --loglevel=error
	@touch $@

# ================================================================== fuzz ==
# libFuzzer harnesses (fuzz/) for every decoder a peer or a file reaches: ingest
# messages, control requests, MessagePack -> JSON, safetensors, .npy. Built with
# clang (Debian's clang and libclang-rt-14-dev, installed by make deps) under
# ASan + UBSan. `make fuzz FUZZ_SECONDS=600` runs each that long; make test runs
# each for a few seconds (tests/integ_fuzz.sh). Seeds: fuzz/seeds.py.
FUZZ_CC    := clang
FUZZ_SAN   := address,undefined -fno-sanitize-recover=undefined
FUZZERS    := $(patsubst fuzz/%.c,build/fuzz/%,$(wildcard fuzz/fuzz_*.c))
FUZZ_LIBSRC := $(PROTO_SRC) $(FORMAT_SRC) $(CLIB_SRC)
build/fuzz/obj/%.o: %.c $(HDRS) $(wildcard fuzz/*.h) | deps
	@mkdir -p $(dir $@)
	$(FUZZ_CC) $(BASEFL) -g -O1 -fsanitize=fuzzer-no-link,$(FUZZ_SAN) -Iinclude -Iproto -Iformat -Iclient/lib \
	  -Ifuzz $(call pkgcf,libzmq msgpack) -c $< -o $@
build/fuzz/%: build/fuzz/obj/fuzz/%.o $(patsubst %.c,build/fuzz/obj/%.o,$(FUZZ_LIBSRC))
	$(FUZZ_CC) -g -fsanitize=fuzzer,$(FUZZ_SAN) $^ $(LIBS_PROTO) -o $@
.PHONY: fuzz
fuzz: $(FUZZERS)
	@bash fuzz/run.sh $(or $(FUZZ_SECONDS),60) $(FUZZERS)

# Unit tests: optimised build first, then the sanitizer build.
test: all $(ASAN_TESTS) build/asan/xcoderd build/js.stamp build/dashboard.stamp $(FUZZERS)
	@ASAN_OPTIONS=detect_leaks=1:abort_on_error=0 UBSAN_OPTIONS=print_stacktrace=1 \
	  bash tests/run.sh $(TESTS) $(ASAN_TESTS) $(INTEG)

bench: all
	@for b in $(BENCHES); do $$b || exit 1; done
	@XC_BENCH_QUICK=1 bash bench/mpi_netns.sh 100mbit 300mbit

demo: all build/js.stamp build/dashboard.stamp
	@bash scripts/demo.sh

# The same on a real model pair: the checked-in language models (models/README.md).
.PHONY: demo-lm
demo-lm: all
	@bash scripts/demo_lm.sh

clean:
	rm -rf build

# ================================================================ install ==
# `make install` / `make uninstall` (issue 8). PREFIX (default /usr/local) and
# DESTDIR (a staging root, e.g. for packaging) as usual; every directory can be
# overridden. Installs the binaries, libxcoder (static, shared + soname links),
# its public headers in INCLUDEDIR/xcoder with libxcoder.pc, the systemd units
# (ExecStart and config paths rewritten to BINDIR / SYSCONFDIR), the sysusers.d
# file, the example configuration in SYSCONFDIR/xcoderd, and the man pages.
# Into the live system (no DESTDIR, as root) it also creates the user xcoderd
# (systemd-sysusers), runs ldconfig and `systemctl daemon-reload`.
PREFIX       ?= /usr/local
BINDIR       ?= $(PREFIX)/bin
LIBDIR       ?= $(PREFIX)/lib
INCLUDEDIR   ?= $(PREFIX)/include
PKGCONFIGDIR ?= $(LIBDIR)/pkgconfig
MANDIR       ?= $(PREFIX)/share/man
UNITDIR      ?= $(PREFIX)/lib/systemd/system
SYSUSERSDIR  ?= $(PREFIX)/lib/sysusers.d
SYSCONFDIR   ?= /etc
# The Python client for Debian's /usr/bin/python3 (pip refuses the system
# interpreter, PEP 668): /usr/lib/python3/dist-packages for PREFIX=/usr (apt's
# place), else PREFIX/lib/python3.X/dist-packages (on its sys.path for /usr/local).
PYTHONDIR    ?= $(if $(filter /usr,$(PREFIX)),/usr/lib/python3/dist-packages,$(PREFIX)/lib/python$(shell $(PY) -c 'import sys; print("%d.%d" % sys.version_info[:2])' 2>/dev/null)/dist-packages)
INSTALL      ?= install
XC_VERSION   := 0.1.0
XC_SOMAJOR   := 0

# the public headers of libxcoder (tests/integ_install.sh checks each compiles alone)
INSTALL_HDRS := include/xcoder.h include/xc_error.h include/xc_shm.h
UNITS        := systemd/xcoderd.service systemd/xcoderd@.service
SONAME       := libxcoder.so.$(XC_SOMAJOR)
SOREAL       := libxcoder.so.$(XC_VERSION)
UNIT_SED     := -e 's|/usr/local/bin/|$(BINDIR)/|g' -e 's|/etc/xcoderd/|$(SYSCONFDIR)/xcoderd/|g'

.PHONY: install uninstall FORCE
FORCE:

# regenerated on every install: it records this install's directories
build/libxcoder.pc: FORCE
	@mkdir -p $(dir $@)
	@printf '%s\n' 'prefix=$(PREFIX)' 'libdir=$(LIBDIR)' 'includedir=$(INCLUDEDIR)' '' \
	  'Name: libxcoder' 'Description: C client library of xcoderd, the crosscoder training daemon' \
	  'Version: $(XC_VERSION)' 'Requires.private: libzmq msgpack' \
	  'Cflags: -I$${includedir}/xcoder' 'Libs: -L$${libdir} -lxcoder' 'Libs.private: -lm -pthread' > $@

install: build/xcoderd build/xcoder build/xcoder-offline build/libxcoder.a build/libxcoder.so build/libxcoder.pc
	$(INSTALL) -d $(DESTDIR)$(BINDIR) $(DESTDIR)$(LIBDIR) $(DESTDIR)$(INCLUDEDIR)/xcoder \
	  $(DESTDIR)$(PKGCONFIGDIR) $(DESTDIR)$(MANDIR)/man1 $(DESTDIR)$(MANDIR)/man8 \
	  $(DESTDIR)$(UNITDIR) $(DESTDIR)$(SYSUSERSDIR) $(DESTDIR)$(SYSCONFDIR)/xcoderd
	$(INSTALL) -m 0755 build/xcoderd build/xcoder build/xcoder-offline $(DESTDIR)$(BINDIR)/
	$(INSTALL) -m 0644 build/libxcoder.a $(DESTDIR)$(LIBDIR)/libxcoder.a
	$(INSTALL) -m 0755 build/libxcoder.so $(DESTDIR)$(LIBDIR)/$(SOREAL)
	ln -sf $(SOREAL) $(DESTDIR)$(LIBDIR)/$(SONAME)
	ln -sf $(SONAME) $(DESTDIR)$(LIBDIR)/libxcoder.so
	$(INSTALL) -m 0644 $(INSTALL_HDRS) $(DESTDIR)$(INCLUDEDIR)/xcoder/
	$(INSTALL) -m 0644 build/libxcoder.pc $(DESTDIR)$(PKGCONFIGDIR)/libxcoder.pc
	$(INSTALL) -m 0644 client/xcoder.1 $(DESTDIR)$(MANDIR)/man1/xcoder.1
	$(INSTALL) -m 0644 daemon/xcoderd.8 $(DESTDIR)$(MANDIR)/man8/xcoderd.8
	$(INSTALL) -d $(DESTDIR)$(PYTHONDIR)/xcoder
	$(INSTALL) -m 0644 client/python/xcoder/*.py $(DESTDIR)$(PYTHONDIR)/xcoder/
	for u in $(UNITS); do sed $(UNIT_SED) $$u > $(DESTDIR)$(UNITDIR)/$${u##*/} && \
	  chmod 0644 $(DESTDIR)$(UNITDIR)/$${u##*/} || exit 1; done
	$(INSTALL) -m 0644 systemd/xcoderd.sysusers $(DESTDIR)$(SYSUSERSDIR)/xcoderd.conf
	$(INSTALL) -m 0644 systemd/xcoderd.conf.example $(DESTDIR)$(SYSCONFDIR)/xcoderd/xcoderd.conf.example
	@# the live configuration is the operator's: never overwritten
	test -e $(DESTDIR)$(SYSCONFDIR)/xcoderd/xcoderd.conf || \
	  $(INSTALL) -m 0644 systemd/xcoderd.conf.example $(DESTDIR)$(SYSCONFDIR)/xcoderd/xcoderd.conf
	@if [ -z "$(DESTDIR)" ] && [ "$$(id -u)" = 0 ]; then \
	  if command -v systemd-sysusers >/dev/null; then systemd-sysusers $(SYSUSERSDIR)/xcoderd.conf; fi; \
	  if command -v ldconfig >/dev/null; then ldconfig; fi; \
	  if [ -d /run/systemd/system ]; then systemctl daemon-reload; fi; \
	fi
	@echo "installed under $(DESTDIR)$(PREFIX); instances: cp $(SYSCONFDIR)/xcoderd/xcoderd.conf.example" \
	  "$(SYSCONFDIR)/xcoderd/NAME.conf && systemctl enable --now xcoderd@NAME"

uninstall:
	rm -f $(DESTDIR)$(BINDIR)/xcoderd $(DESTDIR)$(BINDIR)/xcoder $(DESTDIR)$(BINDIR)/xcoder-offline
	rm -f $(DESTDIR)$(LIBDIR)/libxcoder.a $(DESTDIR)$(LIBDIR)/$(SOREAL) $(DESTDIR)$(LIBDIR)/$(SONAME) \
	  $(DESTDIR)$(LIBDIR)/libxcoder.so $(DESTDIR)$(PKGCONFIGDIR)/libxcoder.pc
	rm -f $(addprefix $(DESTDIR)$(INCLUDEDIR)/xcoder/,$(notdir $(INSTALL_HDRS)))
	rmdir $(DESTDIR)$(INCLUDEDIR)/xcoder 2>/dev/null || true
	rm -f $(DESTDIR)$(MANDIR)/man1/xcoder.1 $(DESTDIR)$(MANDIR)/man8/xcoderd.8
	rm -rf $(DESTDIR)$(PYTHONDIR)/xcoder
	rm -f $(addprefix $(DESTDIR)$(UNITDIR)/,$(notdir $(UNITS))) $(DESTDIR)$(SYSUSERSDIR)/xcoderd.conf
	@# the configuration goes only if it is still the untouched example
	if cmp -s $(DESTDIR)$(SYSCONFDIR)/xcoderd/xcoderd.conf $(DESTDIR)$(SYSCONFDIR)/xcoderd/xcoderd.conf.example; \
	  then rm -f $(DESTDIR)$(SYSCONFDIR)/xcoderd/xcoderd.conf; \
	  elif [ -e $(DESTDIR)$(SYSCONFDIR)/xcoderd/xcoderd.conf ]; then \
	  echo "kept $(DESTDIR)$(SYSCONFDIR)/xcoderd/xcoderd.conf (edited)"; fi
	rm -f $(DESTDIR)$(SYSCONFDIR)/xcoderd/xcoderd.conf.example
	rmdir $(DESTDIR)$(SYSCONFDIR)/xcoderd 2>/dev/null || true
	@if [ -z "$(DESTDIR)" ] && [ "$$(id -u)" = 0 ] && [ -d /run/systemd/system ]; then systemctl daemon-reload; fi
	@echo "user xcoderd, /var/lib/xcoderd (checkpoints) and SYSCONFDIR/xcoderd/NAME.conf are left in place"
# ============================================================ end install ==
