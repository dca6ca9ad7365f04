# shopmesh front door. Targets with an npm script (lint, typecheck, generate, check, bench) delegate to it
# so the two stay one truth; the commands run from the build in dist/. `make help` lists them.
SHELL := /bin/bash
.DEFAULT_GOAL := help

PROTOS := $(shell find proto -name '*.proto')
# `make run PAYMENT_REPLICAS=2 DB=postgres`: make puts variables given on its command line in the
# recipes' environment, where the runner reads them (scripts/run.ts), so no list of them is kept here.

.PHONY: help install nats postgres python-client chromium node24 generate gen-fresh build lint typecheck breaking contracts-baseline prometheus test run bench footprint compare load demo token trace events dlq alerts history-rebuild backup restore clean

help: ## List targets
	@grep -hE '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-10s %s\n", $$1, $$2}'

node_modules/.package-lock.json: package.json package-lock.json
	npm ci >&2 # on stderr: `TOKEN=$$(make -s token)` captures only the token

install: node_modules/.package-lock.json ## Install node modules (npm ci) when missing or stale

nats: ## Make sure nats-server is installed (apt-get where possible)
	@command -v nats-server >/dev/null || { \
	  if command -v apt-get >/dev/null && [ "$$(id -u)" = 0 ]; then apt-get install -y nats-server || { apt-get update && apt-get install -y nats-server; }; \
	  else echo "nats-server missing: install it (apt-get install nats-server, brew install nats-server) and retry"; exit 1; fi; }

postgres: ## Make sure PostgreSQL's server binaries are installed (apt-get where possible)
	@ls /usr/lib/postgresql/*/bin/postgres >/dev/null 2>&1 || command -v postgres >/dev/null || { \
	  if command -v apt-get >/dev/null && [ "$$(id -u)" = 0 ]; then apt-get install -y postgresql || { apt-get update && apt-get install -y postgresql; }; \
	  else echo "PostgreSQL missing: install it (apt-get install postgresql, brew install postgresql@16) and retry"; exit 1; fi; }

PYTHON_PACKAGES := protobuf-compiler protobuf-compiler-grpc python3-grpcio python3-protobuf python3-pytest
python-client: ## Make sure protoc, grpc_python_plugin and Python's grpcio, protobuf and pytest are installed (clients/python)
	@{ command -v protoc && command -v grpc_python_plugin && { python3 -c 'import grpc, google.protobuf, pytest' || /usr/bin/python3 -c 'import grpc, google.protobuf, pytest'; }; } >/dev/null 2>&1 || { \
	  if command -v apt-get >/dev/null && [ "$$(id -u)" = 0 ]; then apt-get install -y $(PYTHON_PACKAGES) || { apt-get update && apt-get install -y $(PYTHON_PACKAGES); }; \
	  else echo "the Python client's toolchain is missing: install $(PYTHON_PACKAGES) (Debian/Ubuntu) and retry"; exit 1; fi; }

prometheus: ## Make sure Prometheus is installed (apt-get where possible): make alerts and its test run it
	@command -v prometheus >/dev/null && command -v promtool >/dev/null || { \
	  if command -v apt-get >/dev/null && [ "$$(id -u)" = 0 ]; then apt-get install -y --no-install-recommends prometheus || { apt-get update && apt-get install -y --no-install-recommends prometheus; }; \
	  else echo "Prometheus missing: install it (apt-get install prometheus, brew install prometheus) and retry"; exit 1; fi; }

# gen/ is committed; it is regenerated only when what it is generated from changed — by content, recorded
# in GEN_HASH (a fresh clone's file times say nothing). test/generated.test.ts keeps the record honest.
GEN_INPUTS := $(sort $(PROTOS)) buf.yaml buf.gen.yaml package-lock.json
GEN_HASH := proto/.generated-from
gen_hash = $$(cat $(GEN_INPUTS) | { sha256sum 2>/dev/null || shasum -a 256; } | cut -c1-64)

# Builds rewrite gen/ and dist/ in place, and two at once (make run in one terminal, make demo or make
# test in another, after an edit or a git pull) raced: one deleted dist/chunks while the other wrote it,
# and two buf generate with `clean: true` emptied gen/ under each other. So every build runs under one
# lock (scripts/build-lock.sh: a link made atomically, naming its owner's pid, taken over when that
# process is gone); a second build waits, saying so after a second, and its make then decides afresh
# what is stale: nothing, when the first built what it would have.
BUILD_LOCK := sh scripts/build-lock.sh

gen-fresh: | install
	@[ "$(gen_hash)" = "$$(cat $(GEN_HASH) 2>/dev/null)" ] || $(MAKE) --no-print-directory generate

# What `make run` executes: every non-test source compiled to dist/ by esbuild (no type check: that is
# `make typecheck`), again only when a source is newer than the last build. `build` asks for it in a
# make of its own, after gen-fresh: the list of sources is read then, generated files included.
SOURCES := $(shell find gen contracts platform services gateway scripts bench -name '*.ts' ! -name '*.test.ts')
# The system's processes (the services and the gateway) then run one bundle each, over their main.js:
# what each imports, tree-shaken, comments and indentation dropped, code shared between them in
# dist/chunks — ~110 MB less for the six than ~200 modules apiece (docs/performance.md). Kept as
# packages: native addons, and packages that read their own files at run time (grpc-js, reflection,
# health: .proto files; pino: its workers; OpenTelemetry: loaded only when tracing). The banner gives
# the CommonJS packages bundled into ES modules the `require` they call. A non-ASCII character left
# in a regular expression would make V8 hold a whole chunk's source at two bytes a character:
# escaped. Source maps are written beside them (NODE_OPTIONS=--enable-source-maps).
# All of it is written aside, in dist/.next (the mains only as bundles), and moved into dist/ a rename a
# file, chunks first (scripts/publish-build.ts): a service make run restarts meanwhile reads whole files
# of one build or the other, never a main.js cut short or naming a chunk not there yet or any more.
MAINS := $(sort $(wildcard services/*/main.ts)) gateway/main.ts
BUNDLE_EXTERNAL := better-sqlite3 pg-native pino pino-pretty @grpc/grpc-js @grpc/reflection grpc-health-check '@opentelemetry/*'
STAGE := dist/.next
dist/.built: $(SOURCES) | install
	@echo "esbuild: $(words $(SOURCES)) sources -> dist/, $(words $(MAINS)) bundles"
	@rm -rf $(STAGE)
	@node_modules/.bin/esbuild $(filter-out $(MAINS),$(SOURCES)) --outdir=$(STAGE) --outbase=. --format=esm --platform=node \
	  --target=node20 --sourcemap --log-level=warning
	@node_modules/.bin/esbuild $(MAINS) --bundle --splitting --chunk-names='chunks/[name]-[hash]' --outdir=$(STAGE) \
	  --outbase=. --format=esm --platform=node --target=node20 --minify-whitespace --sourcemap --log-level=warning \
	  $(addprefix --external:,$(BUNDLE_EXTERNAL)) \
	  '--banner:js=import { createRequire as __createRequire } from "node:module"; const require = __createRequire(import.meta.url);'
	@node -e 'for (const f of process.argv.slice(1)) { const s = fs.readFileSync(f, "utf8"), a = s.replace(/[^\0-\x7f]/g, (c) => `\\u$${c.charCodeAt(0).toString(16).padStart(4, "0")}`); if (a !== s) fs.writeFileSync(f, a); }' \
	  $(patsubst %.ts,$(STAGE)/%.js,$(MAINS)) $(STAGE)/chunks/*.js
	@node $(STAGE)/scripts/publish-build.js $(STAGE) dist
	@touch $@

# The web shop (web/), which the gateway serves at /: web/build.ts bundles it into dist/web (content-hashed
# assets, index.html, manifest.json) when web/, the generated clients it uses or the lock changed.
WEB_SOURCES := $(shell find web -type f) $(shell find gen -name '*.ts')
dist/web/manifest.json: $(WEB_SOURCES) package-lock.json | install
	@node_modules/.bin/tsx web/build.ts

build: install ## Compile the sources to JavaScript in dist/ and bundle the web shop into dist/web (esbuild, ~1 s; make run and make bench do it)
	@$(BUILD_LOCK) sh -c '$(MAKE) --no-print-directory gen-fresh && $(MAKE) --no-print-directory dist/.built dist/web/manifest.json'

generate: install ## Regenerate gen/ from proto/ (buf generate)
	@$(BUILD_LOCK) sh -c 'npm run generate && echo $(gen_hash) > $(GEN_HASH)'

lint: install ## buf lint + biome
	npm run lint

typecheck: install ## tsc, strict
	npm run typecheck

# The contracts as last released: a buf image of proto/ (descriptors with their imports, no source info), committed.
# `make breaking` compares proto/ against it, and so does test/breaking.test.ts in `make test`.
CONTRACTS_BASELINE := contracts/baseline.binpb

breaking: install ## buf breaking: proto/ against the released contracts (FILE rules; part of make test)
	npx buf breaking proto --against $(CONTRACTS_BASELINE) --exclude-imports

contracts-baseline: install ## Record the contracts as released (when cutting a release): make breaking compares against this
	npx buf build proto --exclude-source-info -o $(CONTRACTS_BASELINE)

chromium: ## Make sure Chromium is installed (the web shop's browser tests drive it with playwright-core)
	@[ -x /usr/bin/chromium ] || { \
	  if command -v apt-get >/dev/null && [ "$$(id -u)" = 0 ]; then apt-get install -y chromium || { apt-get update && apt-get install -y chromium; }; \
	  else echo "Chromium missing: install it (apt-get install chromium) and retry"; exit 1; fi; }

# The image's Node (the Dockerfile's node:24): the node24 vitest project starts the services and the
# gateway it spawns on it, where Node 24 behaves otherwise than the Node 20 the suites run on (its
# http2 server.close() ends the sessions itself: grpc-js's drain then "finished" at once). The
# official binary, from npm's node-<os>-<arch> package: no download from nodejs.org.
NODE24_VERSION := 24.22.3
node24: ## Install the image's Node (24) under .cache/node24, for the node24 test project
	@[ -x .cache/node24/node_modules/.bin/node ] || npm install --no-save --no-audit --no-fund --no-package-lock \
	  --prefix .cache/node24 node-$$(node -p 'process.platform + "-" + process.arch')@$(NODE24_VERSION) >&2

# dist/ is built once, before the suites that spawn it run side by side (each one's own `make build` is then a no-op).
test: install nats postgres python-client chromium prometheus node24 build ## Everything CI checks: lint, typecheck, all tests
	npm run check

# stdout is the runner's alone (LOG_FORMAT=json make run | jq): what installing and building say goes to stderr.
run: ## Start NATS, every service and the gateway; Ctrl-C stops all (DB=postgres ORDER_REPLICAS=3 PAYMENT_REPLICAS=2 ...)
	@$(MAKE) -s --no-print-directory install nats $(if $(filter postgres,$(DB)),postgres) build >&2
	@node dist/scripts/run.js

bench: install nats build ## Measure every path side by side from a separate load generator, and read issue 14's targets off the run (BENCH_SECONDS, BENCH_REPEAT, BENCH_PROFILE=gateway): bench/results/bench.json
	npm run bench

footprint: install nats build ## The system's memory (RSS, PSS per process) at start and after FOOTPRINT_SECONDS (60) of make load, and what its scavenges promoted: bench/results/footprint.json
	npx tsx bench/footprint.ts

compare: install nats build ## Measure the patterns' trade-offs side by side (~6 min; QUICK=1 ~1.5 min): docs/compare/README.md + SVG charts
	npx tsx bench/compare.ts

# The commands run from the build, as make run does (a command under tsx took ~2 s more to start):
# the compiled tree, built first when a source is newer (not the web shop, which none of them serves: a
# slip in web/ stopped make token), what the build says on stderr (TOKEN=$$(make -s token) reads stdout).
# Installing was the command's own prerequisite, so not asked again (-o): a caller's `-o` holds.
BUILT = $(BUILD_LOCK) sh -c '$(MAKE) -s --no-print-directory -o node_modules/.package-lock.json gen-fresh && \
  $(MAKE) -s --no-print-directory -o node_modules/.package-lock.json dist/.built' >&2

# The commands' arguments reach them as the environment variables make puts its command-line variables
# in, read by the shell as "$$USER", never pasted into the recipe: pasted, a quote in USER broke the
# command line with a shell syntax error, and a backquote or $$(...) in it ran as a command (make's own
# $(shell ...) in a value is still make's: the operator's own command line).
load: install ## Steady mixed traffic through the gateway of `make run` until Ctrl-C: make load RATE=50 (browse, orders, declines)
	@$(BUILT)
	@node dist/scripts/load.js

demo: install ## Place three orders against `make run` and print their sagas (SAGA_MODE=choreography for events only)
	@$(BUILT)
	@node dist/scripts/demo.js

token: install ## Print a development JWT for the gateway: make token USER=alice [ROLE=admin]
	@$(BUILT)
	@node dist/scripts/token.js "$$USER" "$${ROLE:-customer}"

trace: install ## Print one order's trace as a waterfall: make trace ORDER=<order id> (or TRACE=<trace id>)
	@$(BUILT)
	@node dist/scripts/trace.js

events: install ## Tail every event on the bus, decoded, until Ctrl-C (ARGS=--from-start: what the streams hold first)
	@$(BUILT)
	@node dist/scripts/events.js $$ARGS

dlq: install ## List dead-lettered events and why they failed, then exit (ARGS=--follow keeps watching; ARGS="--redrive <seq>,...|all" sends them back, --dismiss settles them unsent)
	@$(BUILT)
	@node dist/scripts/events.js --dlq $$ARGS

alerts: install prometheus ## Prometheus on localhost:9090 scraping `make run` with the cluster's alerting rules; prints each alert as it fires and resolves, until Ctrl-C
	@$(BUILT)
	@node dist/scripts/alerts.js

history-rebuild: install ## Rebuild the history read model from the streams, with `make run` stopped (starts its NATS, and PostgreSQL with DB=postgres, for the rebuild)
	@$(BUILT)
	@node dist/scripts/history-rebuild.js

backup: install ## Copy every service's SQLite store consistently, while make run runs, into backups/<UTC time> (BACKUP_DIR moves it; docs/operations.md)
	@$(BUILT)
	@node dist/scripts/backup.js

restore: install ## Put history's or notification's store (DB=postgres: its schema) back to a backup, with make run stopped; it then replays what came since: make restore SERVICE=history FROM=backups/<time>
	@$(BUILT)
	@node dist/scripts/restore.js

# Not from under a running make run (its pid in .data/run.pid), nor from under what one killed outright
# left running (.data/run.children: pid, start time, name): its services and NATS would go on writing to
# deleted files, and NATS, stopping, put back part of a store. `ps -p`: `kill -0` fails on another user's.
clean: ## Remove local data (.data/: databases, NATS streams)
	@pid=$$(cat .data/run.pid 2>/dev/null); if [ -n "$$pid" ] && ps -p "$$pid" >/dev/null 2>&1; then \
	  echo "make run (pid $$pid) is using .data: stop it first" >&2; exit 1; fi
	@pid=$$(cat .data/prometheus/alerts.pid 2>/dev/null); if [ -n "$$pid" ] && ps -p "$$pid" >/dev/null 2>&1; then \
	  echo "make alerts (pid $$pid) is using .data/prometheus: stop it first" >&2; exit 1; fi
	@if [ -f .data/prometheus/run.children ]; then while read -r pid start name; do \
	  if [ -n "$$pid" ] && [ "$$(awk '{print $$22}' /proc/$$pid/stat 2>/dev/null)" = "$$start" ]; then \
	    echo "$$name (pid $$pid), left by a make alerts killed outright, still runs on .data/prometheus: the next make alerts stops it, or kill $$pid" >&2; exit 1; fi; \
	done < .data/prometheus/run.children; fi
	@left=; if [ -f .data/run.children ]; then while read -r pid start name; do \
	  if [ -n "$$pid" ] && [ "$$(awk '{print $$22}' /proc/$$pid/stat 2>/dev/null)" = "$$start" ]; then \
	    echo "$$name (pid $$pid), left by a make run killed outright, still runs on .data" >&2; left="$$left $$pid"; fi; \
	done < .data/run.children; fi; if [ -n "$$left" ]; then \
	  echo "stop them first: make run stops them as it starts (then Ctrl-C it), or kill them:$$left" >&2; exit 1; fi
	rm -rf .data

# Kubernetes + Istio on kind: kind-up, images, kind-load, deploy, port-forward, kind-down (docs/deploy.md).
include deploy/deploy.mk
