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
LDLIBS  := -luring -lxxhash -lprotobuf-c -lurcu-qsbr -lmicrohttpd -ljansson -lcrypto \
           -lsystemd \
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

.PHONY: FORCE all deps test test-asan test-tsan test-unit bench run fuzz fuzz-replay \
        clean help
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

$(BUILD)/consentctl: $(CTL_OBJ) $(BUILD)/libconsentd.a
	$(CC) $(LDFLAGS) -o $@ $^ $(LDLIBS)

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

test: deps all $(TESTS) ## unit tests, then end-to-end tests against a real server
	@scripts/run-tests.sh $(BUILD)

test-asan: deps ## the unit and end-to-end tests under ASan+UBSan
	@$(MAKE) --no-print-directory BUILD=build/asan SAN=asan OPT=-O1 all tests-built
	@scripts/run-tests.sh build/asan

test-tsan: deps ## the unit tests under TSan (threads: index readers vs writer)
	@$(MAKE) --no-print-directory BUILD=build/tsan SAN=tsan OPT=-O1 all tests-built
	@scripts/run-tests.sh --unit-only build/tsan

tests-built: $(TESTS)

benches-built: $(BENCHES) $(BUILD)/loadgen

bench: deps all benches-built ## benchmarks side by side (N=records, default 10M)
	@scripts/bench.sh $(BUILD) $(N)

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

clean: ## remove every build tree
	rm -rf build

help: ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | \
	  awk -F':.*## ' '{printf "  %-12s %s\n", $$1, $$2}'

-include $(shell find $(BUILD) -name '*.d' 2>/dev/null)
