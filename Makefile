# dualflow: one plain Makefile. `make` builds the static library, tests and examples;
# `make test` runs the tests; `make demo` runs the main demo. Missing Debian packages are
# installed when run as root, otherwise the command that would install them is printed.
CXX      ?= g++
# `make SANITIZE=1 ...`: ASan + UBSan build in build-san (any target; `make sanitize-test` runs the suite).
ifeq ($(SANITIZE),1)
BUILD    ?= build-san
OPT      ?= -O1
endif
BUILD    ?= build
OPT      ?= -O2
CXXFLAGS ?= $(OPT) -g0 -std=c++17 -Wall -Wno-unknown-pragmas -Wextra -Wno-unused-parameter -Wno-sign-compare -Wno-missing-field-initializers -MMD -MP
INCLUDES := -I. $(if $(wildcard .deps/include),-isystem .deps/include,)
# -rdynamic: anomaly mode's stack traces show function names.
LDLIBS   := -rdynamic -lopenblas -lz -lpthread
ifeq ($(SANITIZE),1)
override CXXFLAGS += -fsanitize=address,undefined -fno-sanitize-recover=all -fno-omit-frame-pointer -g
endif

NPROC := $(shell nproc 2>/dev/null || echo 2)
PKGS := g++ make doctest-dev nlohmann-json3-dev libstb-dev libopenblas-dev zlib1g-dev

LIB_SRCS  := $(wildcard core/*.cpp ops/*.cpp models/*.cpp train/*.cpp)
LIB_OBJS  := $(LIB_SRCS:%.cpp=$(BUILD)/%.o)
TEST_SRCS := $(wildcard tests/*.cpp) fuzz/targets.cpp fuzz/seeds.cpp
TEST_OBJS := $(TEST_SRCS:%.cpp=$(BUILD)/%.o)
EX_SRCS   := $(wildcard examples/*.cpp)
EX_BINS   := $(EX_SRCS:examples/%.cpp=$(BUILD)/examples/%)
BENCH_SRCS := $(wildcard bench/*.cpp)
BENCH_BINS := $(BENCH_SRCS:bench/%.cpp=$(BUILD)/bench/%)
LIB       := $(BUILD)/libdualflow.a
# A plain `make` builds everything (without this the first explicit rule, the wgmma object's, would
# be the default goal when nvcc is found).
.DEFAULT_GOAL := all

# ---- CUDA backend: built into the library when nvcc is found (CUDA_ARCH ?= 90 for H100/H200);
# otherwise the library is CPU-only. `make NVCC=` forces a CPU-only build.
ifeq ($(origin NVCC),undefined)
NVCC := $(shell command -v nvcc 2>/dev/null || { [ -x /usr/local/cuda/bin/nvcc ] && echo /usr/local/cuda/bin/nvcc; })
endif
CUDA_ARCH ?= 90
ifneq ($(strip $(NVCC)),)
comma := ,
CUDA_HOME ?= $(patsubst %/bin/nvcc,%,$(NVCC))
CUDA_LIBDIR := $(firstword $(wildcard $(CUDA_HOME)/lib64 $(CUDA_HOME)/lib))
NVCCFLAGS ?= -O3 -std=c++17 -gencode=arch=compute_$(CUDA_ARCH),code=sm_$(CUDA_ARCH) -Xcompiler -Wall -MMD -MP
CU_SRCS  := $(wildcard cuda/*.cu)
CU_OBJS  := $(CU_SRCS:%.cu=$(BUILD)/%.o)
LIB_OBJS += $(CU_OBJS)
override CXXFLAGS += -DDF_WITH_CUDA
# -u pulls the member with the static hook registration out of the archive.
CUDA_LDIR := $(if $(CUDA_LIBDIR),-L$(CUDA_LIBDIR) -Wl$(comma)-rpath$(comma)$(CUDA_LIBDIR))
LDLIBS   += -Wl,-u,df_cuda_anchor $(CUDA_LDIR) -lcublas -lcudart
$(BUILD)/cuda/%.o: cuda/%.cu
	@mkdir -p $(dir $@)
	$(NVCC) $(NVCCFLAGS) -DDF_WITH_CUDA $(INCLUDES) -c $< -o $@
# The wgmma attention kernels are Hopper-only instructions: sm_90a machine code whatever CUDA_ARCH
# or NVCCFLAGS name (the launchers refuse other devices at run time).
$(BUILD)/cuda/attention_wgmma.o: cuda/attention_wgmma.cu
	@mkdir -p $(dir $@)
	$(NVCC) $(filter-out -gencode=% -arch=%,$(NVCCFLAGS)) -gencode=arch=compute_90a,code=sm_90a -DDF_WITH_CUDA $(INCLUDES) -c $< -o $@
endif

.PHONY: all test demo examples bench clean deps dualflow sanitize-test fuzz fuzz-build fuzz-corpus
dualflow: deps $(BUILD)/dualflow
all: deps $(LIB) $(BUILD)/tests/run_tests $(EX_BINS) $(BENCH_BINS) $(BUILD)/dualflow

deps:
	@missing=""; \
	for h in doctest/doctest.h nlohmann/json.hpp stb/stb_image_write.h cblas.h zlib.h; do \
	  found=0; for d in /usr/include /usr/include/x86_64-linux-gnu /usr/include/openblas .deps/include; do \
	    [ -f $$d/$$h ] && found=1; done; \
	  [ $$found = 1 ] || missing="$$missing $$h"; done; \
	if [ -n "$$missing" ]; then \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	    echo "installing missing packages ($$missing)"; \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $(PKGS) >/dev/null; \
	  else echo "missing headers:$$missing; run: sudo apt-get install -y $(PKGS)"; exit 1; fi; \
	fi

$(LIB): $(LIB_OBJS)
	@mkdir -p $(dir $@)
	ar rcs $@ $^

# Elementwise loops: allow vector math (libmvec exp/log/tanh); keep inf/NaN semantics.
$(BUILD)/ops/elementwise_kernels.o: CXXFLAGS += -O3 -ffast-math -fno-finite-math-only

$(BUILD)/%.o: %.cpp
	@mkdir -p $(dir $@)
	$(CXX) $(CXXFLAGS) $(INCLUDES) -c $< -o $@

$(BUILD)/tests/run_tests: $(TEST_OBJS) $(LIB)
	$(CXX) $(CXXFLAGS) $^ -o $@ $(LDLIBS)

$(BUILD)/examples/%: $(BUILD)/examples/%.o $(LIB)
	$(CXX) $(CXXFLAGS) $^ -o $@ $(LDLIBS)

# The CLI: dualflow train | sample | eval.
$(BUILD)/dualflow: $(BUILD)/tools/dualflow.o $(LIB)
	$(CXX) $(CXXFLAGS) $^ -o $@ $(LDLIBS)

$(BUILD)/bench/%: $(BUILD)/bench/%.o $(LIB)
	$(CXX) $(CXXFLAGS) $^ -o $@ $(LDLIBS)

test: deps
	@$(MAKE) --no-print-directory $(LIB) $(BUILD)/tests/run_tests
	$(BUILD)/tests/run_tests $(TEST_ARGS)

examples: deps $(EX_BINS)

bench: deps $(BENCH_BINS)

# The demo: a TrigFlow teacher, then sCD, sCT, rCM (and CD, CT) students on two 2-D sets, on CPU;
# prints the tables and writes demo.png and demo_nfe.png.
demo: deps
	@$(MAKE) --no-print-directory -j$(NPROC) $(BUILD)/examples/toy2d_consistency
	$(BUILD)/examples/toy2d_consistency --quick

clean:
	rm -rf $(BUILD)

# ---- robustness checks (README, "Reliability") ----
# The whole suite under ASan + UBSan (CPU build; slow: about 4x the normal run).
SAN_ENV := ASAN_OPTIONS=detect_leaks=1:abort_on_error=1 UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1
sanitize-test: deps
	@$(MAKE) --no-print-directory SANITIZE=1 NVCC= BUILD=build-san build-san/libdualflow.a build-san/tests/run_tests
	$(SAN_ENV) build-san/tests/run_tests $(TEST_ARGS)

# libFuzzer binaries, one per target in fuzz/targets.cpp, built with clang and ASan + UBSan against a
# library compiled the same way (build-fuzz). `make fuzz` builds them and runs each for FUZZ_SECONDS
# from the checked-in corpus (new inputs go to build-fuzz/corpus/<target>, crashes to build-fuzz/).
FUZZ_TARGETS := safetensors config idx cifar image folder gzip
FUZZ_CXX     ?= clang++
FUZZ_SECONDS ?= 60
FUZZ_FLAGS   := -O1 -g -std=c++17 -fsanitize=address,undefined -fno-sanitize-recover=all -fno-omit-frame-pointer
FUZZ_LIB_OBJS := $(LIB_SRCS:%.cpp=build-fuzz/%.o) build-fuzz/fuzz/targets.o build-fuzz/fuzz/seeds.o
build-fuzz/%.o: %.cpp
	@mkdir -p $(dir $@)
	$(FUZZ_CXX) $(FUZZ_FLAGS) -fsanitize=fuzzer-no-link -MMD -MP $(INCLUDES) -c $< -o $@
build-fuzz/libfuzzed.a: $(FUZZ_LIB_OBJS)
	ar rcs $@ $^
build-fuzz/fuzz_%: fuzz/fuzz_entry.cpp build-fuzz/libfuzzed.a
	$(FUZZ_CXX) $(FUZZ_FLAGS) -fsanitize=fuzzer $(INCLUDES) -DDF_FUZZ_TARGET='"$*"' $^ -o $@ $(LDLIBS)
fuzz-build: deps $(FUZZ_TARGETS:%=build-fuzz/fuzz_%)
# -timeout: an input that takes over 10 s counts as a hang; -rss_limit_mb: over 2 GB as a memory bomb.
fuzz: fuzz-build
	@for t in $(FUZZ_TARGETS); do mkdir -p build-fuzz/corpus/$$t; \
	  echo "fuzz $$t: $(FUZZ_SECONDS) s"; \
	  (cd build-fuzz && ./fuzz_$$t -max_total_time=$(FUZZ_SECONDS) -timeout=10 -rss_limit_mb=2048 \
	    -max_len=300000 -print_final_stats=1 corpus/$$t ../fuzz/corpus/$$t 2>&1 | \
	    grep -E "stat::number_of_executed_units|Done|ERROR|SUMMARY") || exit 1; done
# Rewrites fuzz/corpus from fuzz/seeds.cpp (the suite checks the two agree).
fuzz-corpus:
	@$(MAKE) --no-print-directory $(BUILD)/tests/run_tests
	DF_WRITE_FUZZ_CORPUS=1 $(BUILD)/tests/run_tests -tc="*checked-in corpus*"
-include $(FUZZ_LIB_OBJS:.o=.d)

-include $(LIB_OBJS:.o=.d) $(TEST_OBJS:.o=.d) $(EX_BINS:%=%.d) $(BUILD)/tools/dualflow.d
