# Weft: the one entry point. `make help` lists the targets.

SHELL := /bin/bash
.SHELLFLAGS := -euo pipefail -c
CARGO ?= cargo
TARGET_DIR := $(or $(CARGO_TARGET_DIR),$(CURDIR)/target)

.PHONY: help build unit test lint fmt crds run

help: ## List the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | sed 's/:.*## /\t/' | expand -t 16

build: ## Build every binary (debug)
	$(CARGO) build --workspace --locked

unit: ## Unit and in-process integration tests (fast, no cluster)
	$(CARGO) test --workspace --locked

test: unit ## Everything: unit, integration and end-to-end tests

lint: ## rustfmt check and clippy with warnings denied
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --workspace --all-targets --locked -- -D warnings

fmt: ## Format the code
	$(CARGO) fmt --all

crds: ## Regenerate crds/ from the Rust types
	$(CARGO) run --locked -q -p weft-api --bin crdgen -- crds

run: ## Run the operator against the cluster of $KUBECONFIG (CRDs applied first)
	kubectl apply --server-side -k crds/
	$(CARGO) run --locked -p weft-operator
