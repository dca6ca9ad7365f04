# syntax=docker/dockerfile:1
#
# shopmesh: ONE image for every process; the Deployment picks the process by
# its entrypoint argument (deploy/kubernetes/base/*/deployment.yaml):
#   docker run shopmesh:dev services/order/main.js
#   docker run shopmesh:dev gateway/main.js            (the default)
# One image builds once, loads into kind once and shares every layer; the
# services differ only in which compiled main.js node starts.
#
# Stages:
#   deps    production node_modules only, with better-sqlite3's native addon
#           compiled here (build tools stay in this stage);
#   build   all dependencies, then tsc compiles gen/, platform/, services/ and
#           gateway/ to JavaScript (deploy/tsconfig.build.json; tests excluded)
#           and web/build.ts bundles the web shop into dist/web (esbuild);
#   runtime the slim Node LTS image, production node_modules + compiled code,
#           owned by root, run as uid 1000 (non-root; the pod adds a read-only
#           root filesystem). No TypeScript, no tsx, no compiler at run time.
#
# Node 24 LTS: better-sqlite3 12 (the version package-lock.json pins) supports
# it; the tests run on Node >= 20. Bump NODE_IMAGE (and pin a digest, e.g.
# node:24-bookworm-slim@sha256:...) for reproducible builds.
ARG NODE_IMAGE=node:24-bookworm-slim

FROM ${NODE_IMAGE} AS base
WORKDIR /app

FROM base AS deps
RUN apt-get update \
  && apt-get install -y --no-install-recommends python3 make g++ \
  && rm -rf /var/lib/apt/lists/*
COPY package.json package-lock.json ./
# Scripts off for the install, then only better-sqlite3's build (package.json
# allowScripts names it): the same result whether or not this npm knows
# allowScripts. Then the build's leftovers go (sources, objects, the static
# library: ~25 MB); the addon is all that runs.
RUN npm ci --omit=dev --ignore-scripts --no-audit --no-fund \
  && npm rebuild better-sqlite3 \
  && cd node_modules/better-sqlite3 \
  && rm -rf deps src build/deps build/Release/obj build/Release/obj.target build/Release/.deps \
    build/Release/sqlite3.a build/Release/test_extension.node \
  && cd /app \
  && npm cache clean --force

FROM base AS build
COPY package.json package-lock.json ./
RUN npm ci --ignore-scripts --no-audit --no-fund
COPY tsconfig.json ./
COPY deploy/tsconfig.build.json deploy/
COPY gen gen
COPY contracts contracts
COPY platform platform
COPY services services
COPY gateway gateway
RUN npx tsc -p deploy/tsconfig.build.json
# The web shop's page, bundled into dist/web beside the compiled tree: the
# runtime's COPY of dist/ puts it at /app/web, where gateway/web.ts looks
# (findWebDirectory: web/manifest.json beside the compiled gateway/).
COPY web web
RUN node --import tsx web/build.ts

FROM base AS runtime
ENV NODE_ENV=production
# package.json: "type": "module" makes the compiled .js files ES modules.
COPY package.json ./
COPY --from=deps /app/node_modules node_modules
# The compiled tree and the web page (dist/web -> /app/web).
COPY --from=build /app/dist ./
# The OpenAPI document the gateway serves at /openapi.json (generated JSON, not compiled).
COPY --from=build /app/gen/openapi gen/openapi
USER 1000:1000
# No --enable-source-maps: it cost 6-15% of throughput and ~10 MB per process in make bench (set
# NODE_OPTIONS=--enable-source-maps on a Deployment for stack traces in TypeScript lines).
ENTRYPOINT ["node"]
CMD ["gateway/main.js"]
