# slocast developer entry points. `make install` then `make run` / `make test`.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
OUT ?= out
PYTEST_ARGS ?=
SHARED ?= ../shared
OVERLAY ?= dev
IMAGE_TAG ?= dev
LTE := $(SHARED)/datasets/lte
# Recipes and the tests they run find the venv's tools (locust, hadolint,
# kubernetes-validate, slocast) without an activated venv.
export PATH := $(abspath $(BIN)):$(PATH)

.PHONY: kubectl images deploy test-cluster undeploy k8s-check install run run-poblesec test test-fast test-integration lint format bench-pipeline bench-calibration bench-serve bench-latency bench-latency-serve bench-latency-stream bench-latency-prequential bench-services bench-sites native-check clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip

# torch is installed first and pinned: 2.13.0 is the CPU wheel on these machines
# (an unpinned torch pulls a multi-GB CUDA build).
install: $(BIN)/python
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -e '.[train,stack,test]'
	scripts/install-kubectl.sh
	scripts/install-promtool.sh

# The main job on the embedded default: synthetic data, every family, local MLflow.
run:
	$(BIN)/slocast run --out $(OUT)

# The protocol-A run on the real PobleSec data.
run-poblesec:
	$(BIN)/slocast run --data $(LTE)/PobleSec.csv --test-data $(LTE)/PobleSec_test.csv --out $(OUT)/poblesec

# Two workers (the CI machine's two cores): most suites wait on servers and
# subprocesses part of the time. Suites with server fixtures stay whole on one
# worker (tests/conftest.py).
test:
	$(BIN)/python -m pytest -n 2 $(PYTEST_ARGS)

test-fast:
	$(BIN)/python -m pytest -m "not slow and not integration" $(PYTEST_ARGS)

test-integration:
	$(BIN)/python -m pytest -m integration tests/integration $(PYTEST_ARGS)

# The native module built with ASan + UBSan: tests/native against it, then an atheris
# fuzz run of every tests/native/fuzz_*.py target (FUZZ_SECONDS each, default 90).
native-check:
	scripts/native-sanitize.sh

lint:
	$(BIN)/ruff check services tests benchmarks loadtest scripts
	$(BIN)/ruff format --check services tests benchmarks loadtest scripts

format:
	$(BIN)/ruff format services tests benchmarks loadtest scripts
	$(BIN)/ruff check --fix services tests benchmarks loadtest scripts

bench-pipeline:
	$(BIN)/python benchmarks/pipeline_bench.py --data $(LTE)/PobleSec.csv --test-data $(LTE)/PobleSec_test.csv

bench-calibration:
	mkdir -p bench-out
	$(BIN)/python benchmarks/calibration_study.py --data $(LTE)/PobleSec.csv --test-data $(LTE)/PobleSec_test.csv --json bench-out/calibration.json

# Needs wrk (apt-get install -y wrk): a C load generator, so the client is not the bottleneck.
bench-serve:
	$(BIN)/python benchmarks/serve_bench.py --data $(LTE)/PobleSec.csv --test-data $(LTE)/PobleSec_test.csv

# Protocol B (LLM latency) on the real trace, slocast vs the upstream configuration, plus
# the synthetic workloads it must generalise to.
bench-latency:
	mkdir -p bench-out
	$(BIN)/slocast bench latency --data $(SHARED)/datasets/llm-latency/sharegpt-h200.jsonl --seeds 10 --json bench-out/latency-protocol-b.json
	for w in sharegpt-like long-prompts extreme-contention; do \
		$(BIN)/slocast bench latency --synthetic $$w --rows 4000 --seeds 3 --json bench-out/latency-$$w.json || exit 1; done
	for r in light moderate saturated overloaded disaggregated; do \
		$(BIN)/slocast bench latency --simulated $$r --rows 4000 --seeds 3 --json bench-out/latency-sim-$$r.json || exit 1; done

# make bench-latency-serve UPSTREAM=/path/to/llm-d-latency-predictor: the upstream
# servers measured side by side (own venv, cached in ~/.cache/slocast), with ratios.
bench-latency-serve:
	mkdir -p bench-out
	$(BIN)/python benchmarks/latency_serve.py $(if $(UPSTREAM),--upstream $(UPSTREAM)) --json bench-out/latency-serve.json

bench-latency-stream:
	mkdir -p bench-out
	$(BIN)/python benchmarks/latency_stream.py --duration 600 --json bench-out/latency-stream.json

# The streaming trainer's served bound on arriving samples (prequential), per simulated regime.
bench-latency-prequential:
	mkdir -p bench-out
	$(BIN)/python benchmarks/latency_prequential.py --json bench-out/latency-prequential.json

# Protocol A on PobleSec and variants generated from it (level shifts, a short site,
# bursty uplink, a shift in the test file only, a small site; slocast.core.variants).
# A benchmark, not a gate: every family, ~8 min on a quiet 2-core machine.
bench-sites:
	mkdir -p bench-out
	$(BIN)/slocast bench sites --data $(LTE)/PobleSec.csv --test-data $(LTE)/PobleSec_test.csv --json bench-out/sites.json

bench-services:
	$(BIN)/python benchmarks/services_bench.py --data $(LTE)/PobleSec.csv --test-data $(LTE)/PobleSec_test.csv

clean:
	rm -rf $(OUT) .slocast .pytest_cache .ruff_cache

# Kubernetes (see docs/deploy.md). Rendering and validation need no cluster.
kubectl:
	scripts/install-kubectl.sh

images:
	scripts/images.sh $(IMAGE_TAG)

deploy:
	scripts/deploy.sh $(OVERLAY)

test-cluster:
	scripts/test-cluster.sh $(OVERLAY)

undeploy:
	scripts/undeploy.sh $(OVERLAY)

k8s-check: kubectl
	scripts/install-promtool.sh
	$(BIN)/python -m pytest tests/k8s $(PYTEST_ARGS)
