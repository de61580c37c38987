# edgepack: `make demo` and `make test` set everything up on a fresh machine, then run.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

OLD_ORT := .venv-ort-old
OLD_ORT_VERSION := 1.20.1
TFLITE214 := .venv-tflite214

.PHONY: setup kernels demo test test-python test-c lint bench clean fuzz generate

setup: $(STAMP)

$(STAMP): setup.py pyproject.toml requirements.txt scripts/setup-system.sh
	bash scripts/setup-system.sh
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --disable-pip-version-check -r requirements.txt
	$(BIN)/pip install --quiet --disable-pip-version-check --no-build-isolation --no-deps -e .
	touch $(STAMP)

# Rebuild the host C libraries into runtime_kernels/lib (incremental; the editable install
# loads them from there).
kernels: $(STAMP)
	cmake -S runtime_kernels -B build/host -DCMAKE_BUILD_TYPE=Release > /dev/null
	cmake --build build/host -j 2 > /dev/null

demo: kernels
	$(BIN)/edgepack demo

lint: $(STAMP)
	$(BIN)/ruff check .

# Regenerate runtime_kernels/include/edgepack/ops.inc and docs/ops.md's op tables from the op
# spec (runtime_kernels/op_spec.py); tests/runtime_kernels/test_op_spec.py fails when they are stale.
generate: $(STAMP)
	$(BIN)/python -m edgepack.runtime_kernels.op_spec --write

# C tests under ASan + UBSan, then cross-compiled for aarch64 and run under qemu (kernels,
# libedgepack_ort with the arm64 libonnxruntime.so from the npm package onnxruntime-node, and
# the TFLite delegate), the portability builds (aarch64-macos with zig cc, link only; armv7 NEON
# with its tests under qemu-arm), then each libFuzzer harness for 20 s (`make fuzz` below).
test-c: $(STAMP)
	bash runtime_kernels/scripts/ci_native.sh
	bash runtime_kernels/scripts/ci_aarch64.sh
	bash runtime_kernels/scripts/ci_ort_aarch64.sh
	bash runtime_kernels/scripts/ci_portability.sh
	bash runtime_kernels/scripts/ci_tflite.sh
	bash runtime_kernels/scripts/ci_fuzz.sh

# libFuzzer harnesses (clang, ASan/UBSan) for the options reader, the kernels (every variant
# against ref), the TFLite delegate and the ORT library: each runs FUZZ_SECONDS from its seed
# corpus (test-c runs each for 20 s).
FUZZ_SECONDS ?= 60
fuzz: $(STAMP)
	FUZZ_SECONDS=$(FUZZ_SECONDS) bash runtime_kernels/scripts/ci_fuzz.sh

# A second, small venv with an older ONNX Runtime: the exported files must run there too.
$(OLD_ORT)/.installed:
	test -x $(OLD_ORT)/bin/python || $(PYTHON) -m venv $(OLD_ORT)
	$(OLD_ORT)/bin/pip install --quiet --disable-pip-version-check onnxruntime==$(OLD_ORT_VERSION) numpy
	touch $@

# The classic tflite-runtime 2.14 needs numpy < 2: its own small venv.
$(TFLITE214)/.installed:
	test -x $(TFLITE214)/bin/python || $(PYTHON) -m venv $(TFLITE214)
	$(TFLITE214)/bin/pip install --quiet --disable-pip-version-check tflite-runtime==2.14.0 'numpy<2' \
		flatbuffers tflite pytest xxhash
	touch $@

test-python: kernels $(OLD_ORT)/.installed $(TFLITE214)/.installed
	$(BIN)/python -m pytest --durations=25
	$(TFLITE214)/bin/python -m pytest -p no:cacheprovider tests/runtime_kernels/test_tflite_delegate.py

test: lint test-c test-python

bench: kernels
	$(BIN)/python -m edgepack.benchmarks.layers

# Every build folder: build/ (make kernels, setup.py, fuzz) and runtime_kernels/build/ (the ci
# scripts' sanitizer and cross builds, the npm ONNX Runtime cache); tests/runtime_kernels/
# test_artifacts.py checks that the scripts write nowhere else.
clean:
	rm -rf $(VENV) $(OLD_ORT) $(TFLITE214) build dist runtime_kernels/build runtime_kernels/lib *.egg-info src/*.egg-info
