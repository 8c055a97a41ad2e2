# xcoderd build. `make` builds everything into build/; `make test` runs every test
# (unit tests twice: optimised, and under AddressSanitizer + UBSan); `make bench`;
# `make demo`. Every target depends on `deps`, which apt-get installs what is missing.

CC      ?= cc
PY      := /usr/bin/python3
PKGS    := libzmq msgpack openblas libuv libsystemd
WARN    := -Wall -Wextra -Werror -Wshadow -Wstrict-prototypes -Wno-unused-parameter
BASEFL  := -std=c11 -D_GNU_SOURCE -fPIC -pthread -Iinclude -Iproto -Idaemon -Iclient/lib
OPT     := -O2 -g
SANFL   := -O1 -g -fno-omit-frame-pointer -fsanitize=address,undefined -fno-sanitize-recover=undefined

PKG_CFLAGS = $(shell pkg-config --cflags $(PKGS) 2>/dev/null)
PKG_LIBS   = $(shell pkg-config --libs $(PKGS) 2>/dev/null) -lm -pthread

PROTO_SRC  := $(wildcard proto/*.c)
DAEMON_SRC := $(filter-out daemon/main.c,$(wildcard daemon/*.c))
CLIB_SRC   := $(wildcard client/lib/*.c)
CLI_SRC    := $(wildcard client/cli/*.c)
TEST_SRC   := $(wildcard tests/test_*.c)
BENCH_SRC  := $(wildcard bench/*.c)
# Integration tests (a real daemon, the CLI, Python): run after the unit tests.
INTEG      := $(sort $(wildcard tests/integ_*.sh tests/integ_*.py))
HDRS       := $(wildcard include/*.h proto/*.h daemon/*.h client/lib/*.h client/cli/*.h tests/*.h)

# $(call variant,DIR,FLAGS): object rules, libraries, binaries and tests for one build flavour.
define variant
$(1)/obj/%.o: %.c $(HDRS) | deps
	@mkdir -p $$(dir $$@)
	$$(CC) $$(BASEFL) $(2) $$(WARN) $$(PKG_CFLAGS) -c $$< -o $$@
$(1)/libxcd.a: $(patsubst %.c,$(1)/obj/%.o,$(DAEMON_SRC) $(PROTO_SRC))
	@mkdir -p $$(dir $$@)
	rm -f $$@ && ar rcs $$@ $$^
$(1)/libxcoder.a: $(patsubst %.c,$(1)/obj/%.o,$(CLIB_SRC) $(PROTO_SRC))
	@mkdir -p $$(dir $$@)
	rm -f $$@ && ar rcs $$@ $$^
$(1)/tests/%: $(1)/obj/tests/%.o $(1)/libxcd.a $(1)/libxcoder.a
	@mkdir -p $$(dir $$@)
	$$(CC) $(2) -pthread $$< $(1)/libxcoder.a $(1)/libxcd.a $$(PKG_LIBS) -o $$@
endef

$(eval $(call variant,build,$(OPT)))
$(eval $(call variant,build/asan,$(SANFL)))

TESTS      := $(patsubst tests/%.c,build/tests/%,$(TEST_SRC))
ASAN_TESTS := $(patsubst tests/%.c,build/asan/tests/%,$(TEST_SRC))
BENCHES    := $(patsubst bench/%.c,build/bench/%,$(BENCH_SRC))
BINS       := $(if $(wildcard daemon/main.c),build/xcoderd) $(if $(CLI_SRC),build/xcoder) \
              $(if $(CLIB_SRC),build/libxcoder.so)

# keep objects between runs (they are intermediates of the pattern rules)
.SECONDARY:

.PHONY: all deps test bench demo clean
all: build/libxcd.a $(BINS) $(TESTS) $(BENCHES)

deps:
	@bash scripts/deps.sh

build/xcoderd: build/obj/daemon/main.o build/libxcd.a
	$(CC) $(OPT) -pthread $^ $(PKG_LIBS) -o $@
build/xcoder: $(patsubst %.c,build/obj/%.o,$(CLI_SRC)) build/libxcoder.a build/libxcd.a
	$(CC) $(OPT) -pthread $^ $(PKG_LIBS) -o $@
build/libxcoder.so: $(patsubst %.c,build/obj/%.o,$(CLIB_SRC) $(PROTO_SRC))
	$(CC) -shared -Wl,-soname,libxcoder.so.0 $^ $(PKG_LIBS) -o $@
build/bench/%: build/obj/bench/%.o build/libxcoder.a build/libxcd.a
	@mkdir -p $(dir $@)
	$(CC) $(OPT) -pthread $^ $(PKG_LIBS) -o $@

# Unit tests: optimised build first, then the sanitizer build.
test: all $(ASAN_TESTS)
	@ASAN_OPTIONS=detect_leaks=1:abort_on_error=0 UBSAN_OPTIONS=print_stacktrace=1 \
	  bash tests/run.sh $(TESTS) $(ASAN_TESTS) $(INTEG)

bench: all
	@for b in $(BENCHES); do $$b || exit 1; done

demo: all
	@bash scripts/demo.sh

clean:
	rm -rf build
