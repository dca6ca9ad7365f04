# shopmesh front door. Targets delegate to npm scripts (package.json) so the
# two stay one truth. `make help` lists them.
SHELL := /bin/bash
.DEFAULT_GOAL := help

PROTOS := $(shell find proto -name '*.proto')
# `make run PAYMENT_REPLICAS=2`: instance counts reach the runner through the environment.
export INVENTORY_REPLICAS PAYMENT_REPLICAS NOTIFICATION_REPLICAS HISTORY_REPLICAS
GEN_STAMP := gen/shopmesh/common/v1/common_pb.ts

.PHONY: help install nats generate lint typecheck test run demo token trace events dlq history-rebuild clean

help: ## List targets
	@grep -hE '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-10s %s\n", $$1, $$2}'

node_modules/.package-lock.json: package.json package-lock.json
	npm ci

install: node_modules/.package-lock.json ## Install node modules (npm ci) when missing or stale

nats: ## Make sure nats-server is installed (apt-get where possible)
	@command -v nats-server >/dev/null || { \
	  if command -v apt-get >/dev/null && [ "$$(id -u)" = 0 ]; then apt-get install -y nats-server || { apt-get update && apt-get install -y nats-server; }; \
	  else echo "nats-server missing: install it (apt-get install nats-server, brew install nats-server) and retry"; exit 1; fi; }

$(GEN_STAMP): $(PROTOS) buf.yaml buf.gen.yaml | install
	npm run generate

generate: install ## Regenerate gen/ from proto/ (buf generate)
	npm run generate

lint: install ## buf lint + biome
	npm run lint

typecheck: install ## tsc, strict
	npm run typecheck

test: install ## Everything CI checks: lint, typecheck, all tests
	npm run check

run: install nats $(GEN_STAMP) ## Start NATS, every service and the gateway; Ctrl-C stops all (PAYMENT_REPLICAS=2 for two payments)
	npm start

demo: install ## Place three orders against `make run` and print their sagas (SAGA_MODE=choreography for events only)
	SAGA_MODE=$(SAGA_MODE) npm run demo

token: install ## Print a development JWT for the gateway: make token USER=alice [ROLE=admin]
	@npx tsx scripts/token.ts "$(USER)" "$(or $(ROLE),customer)"

trace: install ## Print one order's trace as a waterfall: make trace ORDER=<order id> (or TRACE=<trace id>)
	@ORDER="$(ORDER)" TRACE="$(TRACE)" npx tsx scripts/trace.ts

events: install ## Tail every event on the bus, decoded (ARGS=--from-start for history)
	npx tsx scripts/events.ts $(ARGS)

dlq: install ## List dead-lettered events and why they failed
	npx tsx scripts/events.ts --dlq

history-rebuild: install ## Rebuild the history read model from the streams (stop `make run` first)
	DB_PATH=.data/history.db npx tsx services/history/rebuild.ts

clean: ## Remove local data (.data/: databases, NATS streams)
	rm -rf .data

# Kubernetes + Istio on kind: kind-up, images, kind-load, deploy, port-forward, kind-down (docs/deploy.md).
include deploy/deploy.mk
