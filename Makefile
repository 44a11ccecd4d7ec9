# Weft: the one entry point. `make help` lists the targets.

SHELL := /bin/bash
.SHELLFLAGS := -euo pipefail -c
CARGO ?= cargo
TARGET_DIR := $(or $(CARGO_TARGET_DIR),$(CURDIR)/target)
WEFT_CACHE ?= $(HOME)/.cache/weft
KUBECONFIG_E2E := $(WEFT_CACHE)/cluster/admin.kubeconfig

.PHONY: help build unit test e2e bench fuzz lint fmt crds run cluster-up cluster-down install

help: ## List the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | sed 's/:.*## /\t/' | expand -t 16

build: ## Build every binary (debug)
	$(CARGO) build --workspace --locked

unit: ## Unit and in-process integration tests (fast, no cluster)
	$(CARGO) test --workspace --locked --exclude weft-e2e

test: unit e2e ## Everything: unit, integration and end-to-end tests

e2e: cluster-up install ## End-to-end tests on the local cluster (brought up if needed)
	KUBECONFIG=$(KUBECONFIG_E2E) $(CARGO) test --locked --no-fail-fast -p weft-e2e -- --test-threads=2

cluster-up: ## Build (first time only) and start the local single-node cluster
	e2e/cluster/up.sh

cluster-down: ## Stop the local cluster and remove everything it made
	e2e/cluster/down.sh

install: build ## Build the images and install Weft into the local cluster from deploy/
	KUBECONFIG=$(KUBECONFIG_E2E) e2e/install.sh

bench: ## Benchmarks; each prints its figures
	$(CARGO) bench --locked -p weft-operator --bench certify --bench webhook --bench discovery
	proxy/benches/setup.sh
	$(CARGO) bench --locked -p weft-proxy --bench dataplane

FUZZ_SECONDS ?= 60
fuzz: ## Fuzz protocol detection, HTTP input and HTTP/1 framing, FUZZ_SECONDS per target (nightly)
	proxy/fuzz/setup.sh
	cd proxy/fuzz && for target in detect http framing; do \
	  PATH="$(WEFT_CACHE)/tools/bin:$$PATH" $(CARGO) +nightly fuzz run $$target -- \
	    -max_total_time=$(FUZZ_SECONDS); \
	done

lint: ## rustfmt check, clippy with warnings denied, and no import circle between modules
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --workspace --all-targets --locked -- -D warnings
	WEFT_CACHE=$(WEFT_CACHE) tools/module-cycles.sh

fmt: ## Format the code
	$(CARGO) fmt --all

crds: ## Regenerate crds/ from the Rust types
	$(CARGO) run --locked -q -p weft-api --bin crdgen -- crds

run: ## Run the operator against the cluster of $KUBECONFIG (CRDs applied first)
	kubectl apply --server-side -k crds/
	$(CARGO) run --locked -p weft-operator
