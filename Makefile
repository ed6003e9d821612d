# Short commands for mpreg. Every target that builds first runs
# scripts/bootstrap, which installs missing Debian packages (and does nothing
# when all are there).
#
#   make            build (RelWithDebInfo) into build/
#   make test       build and run every test
#   make test-asan  the same suite under AddressSanitizer + UBSan (build-asan/)
#   make fuzz       build the libFuzzer targets with clang and run each for
#                   FUZZ_SECONDS (default 20)
#   make bench      micro-benchmarks (BENCH lines)
#   make bench-compare
#                   mpreg-bench against nats-server, side by side
#                   (bench/compare/compare.sh; ROUNDS=3 by default)
#   make run        build and start a node
#   make install    install library, headers, binaries (PREFIX=/usr/local)
#   make format     clang-format every C file in place; format-check only checks
#   make clean      remove all build directories

BUILD      ?= build
ASAN_BUILD ?= build-asan
FUZZ_BUILD ?= build-fuzz
PREFIX     ?= /usr/local
FUZZ_SECONDS ?= 20
JOBS       ?= $(shell nproc 2>/dev/null || echo 2)
CTEST_ARGS ?=

.PHONY: all build test test-asan fuzz bench bench-compare run install clean format format-check bootstrap

all: build

bootstrap:
	@scripts/bootstrap build

$(BUILD)/build.ninja:
	@scripts/bootstrap build
	cmake -S . -B $(BUILD) -G Ninja -DCMAKE_INSTALL_PREFIX=$(PREFIX)

build: $(BUILD)/build.ninja
	@scripts/bootstrap build
	cmake --build $(BUILD) -j $(JOBS)

test: build
	cd $(BUILD) && ctest --output-on-failure -j $(JOBS) $(CTEST_ARGS)

$(ASAN_BUILD)/build.ninja:
	@scripts/bootstrap build
	cmake -S . -B $(ASAN_BUILD) -G Ninja -DCMAKE_BUILD_TYPE=Debug -DMPREG_SANITIZE=ON -DMPREG_BENCH=OFF

test-asan: $(ASAN_BUILD)/build.ninja
	@scripts/bootstrap build
	cmake --build $(ASAN_BUILD) -j $(JOBS)
	cd $(ASAN_BUILD) && ASAN_OPTIONS=detect_leaks=1:abort_on_error=1 \
	  UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1 \
	  ctest --output-on-failure -j $(JOBS) $(CTEST_ARGS)

$(FUZZ_BUILD)/build.ninja:
	@scripts/bootstrap fuzz
	CC=clang cmake -S . -B $(FUZZ_BUILD) -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo -DMPREG_FUZZ=ON

fuzz: $(FUZZ_BUILD)/build.ninja
	@scripts/bootstrap fuzz
	cmake --build $(FUZZ_BUILD) -j $(JOBS)
	FUZZ_SECONDS=$(FUZZ_SECONDS) scripts/run-fuzzers $(FUZZ_BUILD)

bench: build
	scripts/run-benches $(BUILD)

# The side-by-side comparison: the peers' load generators and the script
# that alternates them with ours (bench/compare/README.md).
COMPARE ?= $(CURDIR)/bench/compare/compare.sh
ROUNDS  ?= 3

bench-compare: build
	@scripts/bootstrap bench
	@test -f $(COMPARE) || { echo "bench-compare: $(COMPARE) not found (set COMPARE=path/to/compare.sh)" >&2; exit 2; }
	ROUNDS=$(ROUNDS) bash $(COMPARE) pubsub 2000000 16 -- $(BUILD)/bench/mpreg-bench
	ROUNDS=$(ROUNDS) bash $(COMPARE) pubsub 500000 1024 -- $(BUILD)/bench/mpreg-bench
	ROUNDS=$(ROUNDS) bash $(COMPARE) fanout 500000 128 4 -- $(BUILD)/bench/mpreg-bench
	ROUNDS=$(ROUNDS) bash $(COMPARE) reqrep 20000 16 -- $(BUILD)/bench/mpreg-bench

run: build
	@scripts/run-node $(BUILD)

install: build
	cmake --install $(BUILD)

format:
	clang-format -i $$(git ls-files '*.c' '*.h')

format-check:
	clang-format --dry-run --Werror $$(git ls-files '*.c' '*.h')

clean:
	rm -rf $(BUILD) $(ASAN_BUILD) $(FUZZ_BUILD)
