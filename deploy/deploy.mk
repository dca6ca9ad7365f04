# Kubernetes + Istio on kind (docs/deploy.md). Included by the Makefile:
#   include deploy/deploy.mk
# Needs Docker, kind and kubectl; istioctl is fetched at the pinned version.
# Every kubectl call names the kind context, so no other cluster is touched.

# Pinned versions (docs/deploy.md, deploy/kind/cluster.yaml): kind v0.33.0
# with its Kubernetes 1.35 node image, Istio 1.31 (supported; Kubernetes 1.32-1.36).
KIND_VERSION := v0.33.0
ISTIO_VERSION ?= 1.31.1
KIND_CLUSTER ?= shopmesh
KIND_CONTEXT := kind-$(KIND_CLUSTER)
IMAGE ?= shopmesh:dev
IMAGE_ARCHIVE := .data/shopmesh-image.tar
OVERLAY ?= deploy/kubernetes/overlays/kind
FAULTS_OVERLAY := deploy/kubernetes/overlays/kind-payment-faults
LOCAL_PORT ?= 8080
DEPLOY_TOOLS := .data/deploy-tools
ISTIOCTL_PINNED := $(DEPLOY_TOOLS)/istio-$(ISTIO_VERSION)/bin/istioctl
# Set ISTIOCTL=istioctl to use one on PATH (kind-up checks its version).
ISTIOCTL ?= $(ISTIOCTL_PINNED)
KUBECTL := kubectl --context $(KIND_CONTEXT)

.PHONY: kind-up images kind-load deploy deploy-faults port-forward kind-token kind-down deploy-render deploy-check

$(ISTIOCTL_PINNED):
	mkdir -p $(DEPLOY_TOOLS)
	cd $(DEPLOY_TOOLS) && curl -fsSL https://istio.io/downloadIstio | ISTIO_VERSION=$(ISTIO_VERSION) sh -

kind-up: $(filter $(ISTIOCTL_PINNED),$(ISTIOCTL)) ## kind cluster + Istio (pinned: ISTIO_VERSION, deploy/kind/cluster.yaml); needs Docker, kind, kubectl
	@for t in docker kind kubectl; do command -v $$t >/dev/null || { echo "$$t is missing: see docs/deploy.md (Prerequisites)"; exit 1; }; done
	@kind version | grep -q '$(KIND_VERSION)' || echo "warning: kind $(KIND_VERSION) is the tested version (node image digest in deploy/kind/cluster.yaml); found: $$(kind version)"
	@$(ISTIOCTL) version --remote=false 2>/dev/null | grep -q '$(ISTIO_VERSION)' || { echo "$(ISTIOCTL) is not Istio $(ISTIO_VERSION)"; exit 1; }
	kind get clusters 2>/dev/null | grep -qx '$(KIND_CLUSTER)' || kind create cluster --name $(KIND_CLUSTER) --config deploy/kind/cluster.yaml
	$(ISTIOCTL) install --context $(KIND_CONTEXT) -y -f deploy/kind/istio.yaml
	$(KUBECTL) -n istio-system wait --for=condition=Available deployment --all --timeout=5m

images: ## Build the one shopmesh image (Dockerfile) as IMAGE (default shopmesh:dev); NODE_IMAGE= sets its base
	docker build --provenance=false -t $(IMAGE)$(if $(NODE_IMAGE), --build-arg NODE_IMAGE=$(NODE_IMAGE)) .

# As an archive: `kind load docker-image` fails on Docker's containerd image store (kind #3795).
kind-load: images ## Build the image and copy it into the kind nodes (no registry needed)
	mkdir -p $(dir $(IMAGE_ARCHIVE))
	docker save $(IMAGE) -o $(IMAGE_ARCHIVE)
	kind load image-archive $(IMAGE_ARCHIVE) --name $(KIND_CLUSTER)

deploy: kind-load ## Build, load, apply the kind overlay (base + Istio + observability), restart onto the image, wait for every rollout
	@# A Job's template cannot change in place: the one that creates the streams is run afresh each time.
	$(KUBECTL) -n shopmesh delete job nats-streams --ignore-not-found 2>/dev/null || true
	$(KUBECTL) apply -k $(OVERLAY)
	$(KUBECTL) -n shopmesh rollout restart deployment
	$(KUBECTL) -n shopmesh rollout status statefulset/nats --timeout=5m
	$(KUBECTL) -n shopmesh wait --for=condition=complete job/nats-streams --timeout=5m
	$(KUBECTL) -n shopmesh rollout status statefulset/postgres --timeout=5m
	for d in $$($(KUBECTL) -n shopmesh get deployment -o name); do \
	  $(KUBECTL) -n shopmesh rollout status $$d --timeout=5m || exit 1; \
	done

deploy-faults: ## Turn on Istio fault injection on order -> payment and the operator panel's fault controls (make deploy turns both off)
	$(KUBECTL) apply -k $(FAULTS_OVERLAY)

port-forward: ## Forward localhost:LOCAL_PORT (8080) to the Istio ingress gateway; Ctrl-C stops
	$(KUBECTL) -n istio-system port-forward svc/istio-ingressgateway $(LOCAL_PORT):80

kind-token: ## Print a JWT for the kind deployment (RS256 dev key): make kind-token USER=alice [ROLE=admin]
	@deploy/kind/token.sh "$$USER" "$${ROLE:-customer}"  # as make token: read by the shell, not pasted

kind-down: ## Delete the kind cluster
	kind delete cluster --name $(KIND_CLUSTER)

deploy-render: ## Print every overlay as rendered YAML (offline: kubectl kustomize)
	@for o in deploy/kubernetes/overlays/*/; do echo "# --- $$o"; kubectl kustomize "$$o" || exit 1; done

deploy-check: install ## Offline checks of Dockerfile and manifests against the code (test/deploy.test.ts, test/deploy-review.test.ts, test/mesh-identity.test.ts)
	npx vitest run test/deploy.test.ts test/deploy-review.test.ts test/mesh-identity.test.ts
