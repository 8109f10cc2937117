# dualflow: one plain Makefile. `make` builds the static library, tests and examples;
# `make test` runs the tests; `make demo` runs the main demo. Missing Debian packages are
# installed when run as root, otherwise the command that would install them is printed.
CXX      ?= g++
BUILD    ?= build
OPT      ?= -O2
CXXFLAGS ?= $(OPT) -g0 -std=c++17 -Wall -Wno-unknown-pragmas -Wextra -Wno-unused-parameter -Wno-sign-compare -Wno-missing-field-initializers -MMD -MP
INCLUDES := -I. $(if $(wildcard .deps/include),-isystem .deps/include,)
LDLIBS   := -lopenblas -lz -lpthread

NPROC := $(shell nproc 2>/dev/null || echo 2)
PKGS := g++ make doctest-dev nlohmann-json3-dev libstb-dev libopenblas-dev zlib1g-dev

LIB_SRCS  := $(wildcard core/*.cpp ops/*.cpp models/*.cpp train/*.cpp)
LIB_OBJS  := $(LIB_SRCS:%.cpp=$(BUILD)/%.o)
TEST_SRCS := $(wildcard tests/*.cpp)
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

.PHONY: all test demo examples bench clean deps dualflow
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

-include $(LIB_OBJS:.o=.d) $(TEST_OBJS:.o=.d) $(EX_BINS:%=%.d) $(BUILD)/tools/dualflow.d
