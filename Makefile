# moecapd — see README.md.
export CGO_ENABLED := 1
# go-nvml's headers mark old NVML calls deprecated; the warnings are noise.
export CGO_CFLAGS := -Wno-deprecated-declarations

VERSION ?= $(shell git describe --always --dirty 2>/dev/null || echo dev)
BIN     := bin/moecapd
LDFLAGS := -X main.version=$(VERSION)

.PHONY: build test test-e2e lint demo bench gpu-e2e gpu-physics gpu-daemon-reconcile clean fuzz

build:
	go build -ldflags '$(LDFLAGS)' -o $(BIN) ./cmd/moecapd

# go vet, then every test with the race detector, minus the heavy end-to-end ones (they skip
# and say so). Minutes on a 2-core machine; README "A fresh machine" has the measured time.
test:
	go vet ./...
	go test -race -count=1 -timeout 20m ./...

# The heavy end-to-end tests that `make test` skips: the README's sim-matrix commands on the
# whole 130-cell matrix, the Slurm tests on a private cluster (root, the slurm packages), the
# report in headless Chromium. They select themselves by MOECAPD_E2E=1 (launcher.E2E).
E2E_TESTS := ^(TestReadmeCommands|TestSlurm.*|Test.*Chromium|TestDaemonWebPage)$$
test-e2e:
	MOECAPD_E2E=1 go test -race -count=1 -timeout 40m -run '$(E2E_TESTS)' ./cmd/moecapd/ ./pkg/report/

# Fuzz the parsers of other programs' output and of files a crash or a person can break
# (SSE stream, runner files, pass records, telemetry CSV, bench file, manifests, /metrics
# pages, server_metrics.csv, the daemon's bbolt store, config.json, benchmark and matrix
# YAML); seeds in */*/testdata/fuzz/. Each target runs a fixed number of inputs (a few
# seconds each on a 2-core machine), not a -fuzztime duration: Go's fuzz coordinator can
# report a spurious "context deadline exceeded" when a duration ends while a starved worker
# is mid-input (golang/go#75804, fixed in Go 1.27), and a count has no deadline to race.
# FUZZ_SCALE multiplies every count (FUZZ_SCALE=10: a longer hunt).
FUZZ_SCALE ?= 1
FUZZ_TARGETS := FuzzSSEStream:./pkg/profile:30000 FuzzRunnerFiles:./pkg/profile:3000 FuzzDecode:./pkg/records:30000 \
	FuzzTelemetryCSV:./pkg/report:5000 FuzzBenchFile:./pkg/report:10000 FuzzReadManifest:./pkg/cell:5000 \
	FuzzMetricsPage:./pkg/servermetrics:10000 FuzzServerMetricsCSV:./pkg/servermetrics:10000 \
	FuzzStoreFile:./internal/daemon/storecheck:1000 FuzzRunnerOutput:./pkg/profile:1500 FuzzPassStats:./pkg/profile:5000 \
	FuzzHFConfig:./pkg/passcost:20000 FuzzBenchConfig:./pkg/config:1500 FuzzMatrixFile:./pkg/matrix:1000 \
	FuzzCellManifest:./pkg/report:400 FuzzDeriveCAP:./pkg/capmath:1000 FuzzSlurmOutput:./pkg/slurm:10000
fuzz:
	@set -e; for t in $(FUZZ_TARGETS); do \
		name=$${t%%:*}; rest=$${t#*:}; pkg=$${rest%%:*}; n=$$(( $${rest#*:} * $(FUZZ_SCALE) )); \
		echo "fuzz $$name ($$n inputs)"; \
		go test -run '^$$' -fuzz "^$$name$$" -fuzztime $${n}x $$pkg; \
	done

# golangci-lint (depguard: the architecture rules of .golangci.yml; staticcheck), installed
# into bin/ through the Go module proxy when missing.
GOLANGCI_LINT_VERSION := v2.15.0
GOLANGCI_LINT := bin/golangci-lint

$(GOLANGCI_LINT):
	GOBIN=$(CURDIR)/bin go install github.com/golangci/golangci-lint/v2/cmd/golangci-lint@$(GOLANGCI_LINT_VERSION)

lint: $(GOLANGCI_LINT)
	@out=$$(gofmt -l $$(git ls-files '*.go')); if [ -n "$$out" ]; then echo "gofmt would change:"; echo "$$out"; exit 1; fi
	go vet ./...
	$(GOLANGCI_LINT) run ./...

# One cell on the built-in simulated backend (no GPU, no conda): Qwen1.5-MoE on a simulated
# 1xH100, 4k-1k, batch 32, then the report of the results. Both commands pick their log
# format alike (--log-format auto: console on a terminal, JSON when piped), so the output is
# never console and JSON mixed.
DEMO_RESULTS ?= results-demo
demo: build
	$(BIN) launch-and-bench --backend sim --config configs/fixed_4k_1k_qwen1_5.yaml \
		--batch-size 32 --num-samples 64 --port 0 --results $(DEMO_RESULTS)
	@if $(BIN) report --help >/dev/null 2>&1; then \
		$(BIN) report --results $(DEMO_RESULTS) --out $(DEMO_RESULTS)/report && \
		echo "report: $$(pwd)/$(DEMO_RESULTS)/report/index.html"; fi

# Benchmarks that print tables (see README "Performance").
bench: build
	go test -run '^$$' -bench . -benchtime 1x ./cmd/moecapd/ ./pkg/...

# End to end on a CUDA machine: a torch-backed test server, one GPU then TP=2.
gpu-e2e: build
	bash tools/gpu-e2e.sh

# On a CUDA GPU: kill -9 of moecapd serve mid-bench, restart, the ledger reconciled and the
# baseline proof in the rerun's manifest.
gpu-daemon-reconcile: build
	bash tools/gpu-daemon-reconcile.sh

# On one CUDA GPU: the real Qwen1.5-MoE-A2.7B architecture at real size (random weights);
# physical S-MBU/S-MFU <= 1 and measured TPOT/TTFT >= their floors.
gpu-physics: build
	bash tools/gpu-physics.sh

clean:
	rm -rf bin/moecapd results-demo
