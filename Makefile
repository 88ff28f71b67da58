# consentd build. Objects go to $(BUILD) (default build/); sanitizer builds
# use their own trees (build/asan, build/tsan) so they never mix.
# Sources are found by directory, so a new module needs no Makefile edit:
#   core/*.c index/*.c     -> $(BUILD)/libconsentd.a (the library)
#   server/*.c             -> $(BUILD)/consentd        (server/main.c is main)
#   ctl/*.c                -> $(BUILD)/consentctl
#   tests/*_test.c         -> $(BUILD)/tests/X_test    (one binary per module)
#   bench/*_bench.cc       -> $(BUILD)/bench/X_bench   (Google Benchmark)
#   bench/loadgen*.c       -> $(BUILD)/loadgen
#   fuzz/*_fuzz.c          -> $(BUILD)/fuzz/X_fuzz     (libFuzzer, clang)

BUILD   ?= build
ifeq ($(origin CC),default)
  CC := gcc
endif
ifeq ($(origin CXX),default)
  CXX := g++
endif
SAN     ?=
OPT     ?= -O2
PKGS    := liburing libxxhash libprotobuf-c
CPPFLAGS := -I. -I$(BUILD)/gen -D_GNU_SOURCE
WERROR  ?= -Werror
CFLAGS  := -std=c11 $(OPT) -g -march=x86-64-v2 -Wall -Wextra -Wshadow $(WERROR) \
           -Wno-missing-field-initializers -MMD -MP
CXXFLAGS := -std=c++17 $(OPT) -g -Wall -Wextra -MMD -MP
LDLIBS  := -luring -lxxhash -lprotobuf-c -lurcu-qsbr -lmicrohttpd -ljansson -lssl -lcrypto -lcurl -lnats \
           -lsystemd -lnghttp2 \
           -lpthread -lm
ifeq ($(SAN),asan)
  CFLAGS  += -fsanitize=address,undefined -fno-omit-frame-pointer -fno-sanitize-recover=all
  CXXFLAGS += -fsanitize=address,undefined -fno-omit-frame-pointer
  LDFLAGS += -fsanitize=address,undefined
  JEMALLOC :=
else ifeq ($(SAN),fuzz)
  # libFuzzer: coverage on every object, ASan+UBSan, fuzzer main at link.
  CFLAGS  += -fsanitize=fuzzer-no-link,address,undefined -fno-omit-frame-pointer
  LDFLAGS += -fsanitize=address,undefined
  JEMALLOC :=
else ifeq ($(SAN),tsan)
  CFLAGS  += -fsanitize=thread -fno-omit-frame-pointer
  CXXFLAGS += -fsanitize=thread
  LDFLAGS += -fsanitize=thread
  JEMALLOC :=
else
  JEMALLOC := -ljemalloc
endif

GEN_C   := $(BUILD)/gen/proto/consent.pb-c.c
GEN_H   := $(BUILD)/gen/proto/consent.pb-c.h
LIB_SRC := $(wildcard core/*.c index/*.c)
LIB_OBJ := $(LIB_SRC:%.c=$(BUILD)/%.o) $(BUILD)/gen/proto/consent.pb-c.o
SRV_SRC := $(wildcard server/*.c)
SRV_OBJ := $(SRV_SRC:%.c=$(BUILD)/%.o)
SRV_LIB_OBJ := $(filter-out $(BUILD)/server/main.o,$(SRV_OBJ))
CTL_OBJ := $(patsubst %.c,$(BUILD)/%.o,$(wildcard ctl/*.c))
TESTS   := $(patsubst tests/%.c,$(BUILD)/tests/%,$(wildcard tests/*_test.c))
BENCHES := $(patsubst bench/%.cc,$(BUILD)/bench/%,$(wildcard bench/*_bench.cc))
LOADGEN_OBJ := $(patsubst %.c,$(BUILD)/%.o,$(wildcard bench/loadgen*.c))
FUZZERS := $(patsubst fuzz/%.c,$(BUILD)/fuzz/%,$(wildcard fuzz/*_fuzz.c))

.PHONY: FORCE all deps test test-asan test-tsan test-unit bench bench-pull bench-fleet bench-history run fuzz fuzz-replay \
        clean help install man deb
.DEFAULT_GOAL := all
# Keep objects make would treat as intermediate (tests, fuzzers): no
# "rm" lines after the test summary, and no rebuilds.
.SECONDARY:

all: $(BUILD)/consentd $(BUILD)/consentctl ## build consentd and consentctl

deps: ## install the Debian packages the project needs (only those missing)
	@scripts/deps.sh

$(GEN_C) $(GEN_H): proto/consent.proto
	@mkdir -p $(BUILD)/gen
	protoc-c --c_out=$(BUILD)/gen $<

$(BUILD)/gen/proto/consent.pb-c.o: $(GEN_C)
	$(CC) $(CPPFLAGS) $(filter-out -Werror -Wshadow,$(CFLAGS)) -c $< -o $@

# The version and the commit the binaries report (/metrics consentd_build_info,
# --version). Rewritten only when it changes, so a new commit rebuilds only
# what includes it.
VERSION := 0.2.0
VERSION_H := $(BUILD)/gen/version.h
$(VERSION_H): FORCE
	@mkdir -p $(@D)
	@c=$$(git rev-parse --short=12 HEAD 2>/dev/null || echo unknown); \
	git diff --quiet HEAD 2>/dev/null || c="$$c-dirty"; \
	printf '#define CONSENTD_VERSION "%s"\n#define CONSENTD_COMMIT "%s"\n' \
	  "$(VERSION)" "$$c" > $@.tmp; \
	cmp -s $@.tmp $@ && rm -f $@.tmp || mv -f $@.tmp $@
FORCE:

# Every object may include the generated headers.
$(BUILD)/%.o: %.c $(GEN_H) | $(VERSION_H)
	@mkdir -p $(@D)
	$(CC) $(CPPFLAGS) $(CFLAGS) -c $< -o $@

$(BUILD)/libconsentd.a: $(LIB_OBJ)
	ar rcs $@ $^

$(BUILD)/consentd: $(SRV_OBJ) $(BUILD)/libconsentd.a
	$(CC) $(LDFLAGS) -o $@ $^ $(LDLIBS) $(JEMALLOC)

# consentctl feed and pull read --rpc HOST:PORT with the server's own parser;
# pull speaks HTTP to İYS through libcurl.
$(BUILD)/consentctl: $(CTL_OBJ) $(BUILD)/server/addr.o $(BUILD)/libconsentd.a
	$(CC) $(LDFLAGS) -o $@ $^ $(LDLIBS) $$(pkg-config --libs libcurl)

# The server's modules but main, as an archive: a test or fuzzer pulls in
# only the modules it uses.
$(BUILD)/libserver.a: $(SRV_LIB_OBJ)
	ar rcs $@ $^

# A test links the library and the server's modules (not its main).
$(BUILD)/tests/%: $(BUILD)/tests/%.o $(BUILD)/libserver.a $(BUILD)/libconsentd.a
	$(CC) $(LDFLAGS) -o $@ $^ $(LDLIBS)

$(BUILD)/bench/%: bench/%.cc $(BUILD)/libconsentd.a $(GEN_H)
	@mkdir -p $(@D)
	$(CXX) $(CPPFLAGS) $(CXXFLAGS) -o $@ $< $(BUILD)/libconsentd.a \
	  $(LDFLAGS) $$(pkg-config --cflags --libs benchmark) $(LDLIBS)

$(BUILD)/loadgen: $(LOADGEN_OBJ) $(BUILD)/libconsentd.a
	$(CC) $(LDFLAGS) -o $@ $^ $(LDLIBS)

test-unit: all $(TESTS) ## build and run the C unit tests only
	@scripts/run-tests.sh --unit-only $(BUILD)

test: deps all $(TESTS) $(BUILD)/loadgen ## unit tests, then end-to-end tests against a real server
	@scripts/run-tests.sh $(BUILD)

test-asan: deps ## the unit and end-to-end tests under ASan+UBSan
	@$(MAKE) --no-print-directory BUILD=build/asan SAN=asan OPT=-O1 all tests-built
	@scripts/run-tests.sh build/asan

test-tsan: deps ## the unit tests under TSan (threads: index readers vs writer)
	@$(MAKE) --no-print-directory BUILD=build/tsan SAN=tsan OPT=-O1 all tests-built
	@scripts/run-tests.sh --unit-only build/tsan

tests-built: $(TESTS) $(BUILD)/loadgen

benches-built: $(BENCHES) $(BUILD)/loadgen

bench: deps all benches-built ## benchmarks side by side (N=records, default 10M)
	@scripts/bench.sh $(BUILD) $(N)

bench-pull: all ## consentctl pull against the İYS stand-in: records/s and change-to-answer lag
	@/usr/bin/python3 scripts/pull_bench.py $(BUILD)
bench-history: deps all $(BUILD)/loadgen ## the evidence store: Apply and checks with history on vs off, History/as-of queries warm and cold, disk per change (N, QUICK=1; bench/results/*-history.*)
	@N=$(N) /usr/bin/python3 scripts/bench_history.py $(BUILD)
bench-fleet: deps all ## replication lag and Apply throughput of a 3-node NATS fleet (bench/results/*-fleet.*)
	@/usr/bin/python3 scripts/bench_fleet.py $(BUILD)

run: deps all ## build, generate a 1M-record demo, serve it in the foreground
	@scripts/demo.sh $(BUILD)

fuzz-build: ## build the libFuzzer targets (clang, ASan+UBSan)
	@$(MAKE) --no-print-directory BUILD=build/fuzz CC=clang SAN=fuzz OPT=-O1 \
	  build/fuzz/libconsentd.a $(patsubst fuzz/%.c,build/fuzz/fuzz/%,$(wildcard fuzz/*_fuzz.c))

# The fuzz build links fuzz/X_fuzz.c with the fuzzer's main, not ours.
$(BUILD)/fuzz/%_fuzz: $(BUILD)/fuzz/%_fuzz.o $(BUILD)/libserver.a $(BUILD)/libconsentd.a
	$(CC) -fsanitize=fuzzer,address,undefined -o $@ $^ $(LDLIBS)

fuzz: fuzz-build ## a campaign: make fuzz TARGET=x SECONDS=n
	@scripts/fuzz.sh campaign $(TARGET) $(SECONDS)

fuzz-replay: fuzz-build ## replay every fuzz corpus and regression input
	@scripts/fuzz.sh replay

# ---- installing ---------------------------------------------------------
# make install [PREFIX=/usr/local] [DESTDIR=]: the binaries, the man pages
# (help2man from --help; without help2man the --help texts under
# share/doc/consentd), the systemd unit (its ExecStart naming PREFIX/bin)
# and the example config as /etc/consentd/consentd.conf, never over one
# already there. make deb: the same under PREFIX=/usr into a Debian package.
PREFIX  ?= /usr/local
DESTDIR ?=
BINDIR  := $(PREFIX)/bin
MAN1DIR := $(PREFIX)/share/man/man1
DOCDIR  := $(PREFIX)/share/doc/consentd
ifeq ($(PREFIX),/usr)
  UNITDIR := /lib/systemd/system
else
  UNITDIR := $(PREFIX)/lib/systemd/system
endif
CONFDIR := /etc/consentd
HELP2MAN := $(shell command -v help2man 2>/dev/null)
MAN_DIR := $(BUILD)/man

man: all ## man pages consentd.1 and consentctl.1 from --help (help2man)
	@mkdir -p $(MAN_DIR)
	@rm -f $(MAN_DIR)/*.1
	@if [ -n "$(HELP2MAN)" ]; then \
	  help2man -N --version-string=$(VERSION) -n "consent-lookup server" \
	    -o $(MAN_DIR)/consentd.1 $(BUILD)/consentd && \
	  help2man -N --version-string=$(VERSION) \
	    -n "build, check and feed consentd data directories" \
	    -o $(MAN_DIR)/consentctl.1 $(BUILD)/consentctl; \
	else \
	  echo "man: no help2man: the --help texts go to $(DOCDIR)"; \
	fi
	@$(BUILD)/consentd --help > $(MAN_DIR)/consentd.help.txt
	@$(BUILD)/consentctl --help > $(MAN_DIR)/consentctl.help.txt

install: all man ## install (PREFIX=/usr/local, DESTDIR=): binaries, man pages, unit, config
	install -d $(DESTDIR)$(BINDIR) $(DESTDIR)$(UNITDIR) $(DESTDIR)$(DOCDIR) \
	  $(DESTDIR)$(CONFDIR)
	install -m 0755 $(BUILD)/consentd $(BUILD)/consentctl $(DESTDIR)$(BINDIR)/
	if [ -f $(MAN_DIR)/consentd.1 ]; then \
	  install -d $(DESTDIR)$(MAN1DIR) && \
	  install -m 0644 $(MAN_DIR)/consentd.1 $(MAN_DIR)/consentctl.1 \
	    $(DESTDIR)$(MAN1DIR)/; \
	else \
	  install -m 0644 $(MAN_DIR)/consentd.help.txt \
	    $(MAN_DIR)/consentctl.help.txt $(DESTDIR)$(DOCDIR)/; \
	fi
	sed 's|/usr/bin/consentd|$(BINDIR)/consentd|' packaging/consentd.service \
	  > $(DESTDIR)$(UNITDIR)/consentd.service.tmp
	chmod 0644 $(DESTDIR)$(UNITDIR)/consentd.service.tmp
	mv -f $(DESTDIR)$(UNITDIR)/consentd.service.tmp \
	  $(DESTDIR)$(UNITDIR)/consentd.service
	install -m 0644 packaging/consentd.conf $(DESTDIR)$(DOCDIR)/consentd.conf.example
	install -m 0644 README.md $(DESTDIR)$(DOCDIR)/
	@if [ -e $(DESTDIR)$(CONFDIR)/consentd.conf ]; then \
	  echo "install: kept $(DESTDIR)$(CONFDIR)/consentd.conf (the example:" \
	    "$(DESTDIR)$(DOCDIR)/consentd.conf.example)"; \
	else \
	  install -m 0644 packaging/consentd.conf $(DESTDIR)$(CONFDIR)/consentd.conf; \
	  echo "install -m 0644 packaging/consentd.conf $(DESTDIR)$(CONFDIR)/consentd.conf"; \
	fi

# The package: make install PREFIX=/usr into a fresh tree, the binaries
# stripped, man pages gzipped, Depends from dpkg-shlibdeps, the maintainer
# scripts of packaging/debian; built by dpkg-deb (no debhelper).
DEB_ARCH := $(shell dpkg --print-architecture 2>/dev/null || echo amd64)
DEB      := $(BUILD)/consentd_$(VERSION)_$(DEB_ARCH).deb
DEB_ROOT := $(BUILD)/deb/root

deb: all ## build build/consentd_VERSION_ARCH.deb (dpkg-deb; BUILD= moves it)
	rm -rf $(BUILD)/deb
	$(MAKE) --no-print-directory install PREFIX=/usr DESTDIR=$(abspath $(DEB_ROOT))
	strip --strip-unneeded $(DEB_ROOT)/usr/bin/consentd $(DEB_ROOT)/usr/bin/consentctl
	gzip -9n $(DEB_ROOT)/usr/share/man/man1/*.1 2>/dev/null || true
	mkdir -p $(DEB_ROOT)/DEBIAN $(BUILD)/deb/debian
	printf 'Source: consentd\n\nPackage: consentd\nArchitecture: any\n' > $(BUILD)/deb/debian/control
	cd $(BUILD)/deb && dpkg-shlibdeps -O root/usr/bin/consentd \
	  root/usr/bin/consentctl > shlibs.txt
	deps=$$(sed -n 's/^shlibs:Depends=//p' $(BUILD)/deb/shlibs.txt); \
	size=$$(du -sk --exclude=DEBIAN $(DEB_ROOT) | cut -f1); \
	sed -e 's/@VERSION@/$(VERSION)/' -e 's/@ARCH@/$(DEB_ARCH)/' \
	  -e "s/@SIZE@/$$size/" -e "s/@DEPENDS@/$$deps/" \
	  packaging/debian/control > $(DEB_ROOT)/DEBIAN/control
	install -m 0644 packaging/debian/conffiles $(DEB_ROOT)/DEBIAN/
	install -m 0755 packaging/debian/postinst packaging/debian/prerm \
	  packaging/debian/postrm $(DEB_ROOT)/DEBIAN/
	dpkg-deb --root-owner-group -Zxz --build $(DEB_ROOT) $(DEB)

clean: ## remove every build tree
	rm -rf build

help: ## list the targets
	@grep -hE '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | \
	  awk -F':.*## ' '{printf "  %-12s %s\n", $$1, $$2}'

-include $(shell find $(BUILD) -name '*.d' 2>/dev/null)
