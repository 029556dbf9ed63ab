# Detour. `make demo` runs the main job, `make test` everything CI runs (as root).
SHELL := /bin/bash
GO      ?= $(shell command -v go 2>/dev/null || echo /usr/local/go/bin/go)
BIN     := bin/detour
# command=Debian package, installed by scripts/deps.sh when the command is missing.
DEPS    := iptables=iptables iptables-legacy=iptables ip=iproute2 curl=curl h2load=nghttp2-client
# The benchmark's references, the same two hops in the same run: HAProxy (a C HTTP/2 proxy) and
# socat (a byte relay: the least a userspace hop costs).
BENCHDEPS := $(DEPS) haproxy=haproxy socat=socat
# The test cluster's node: runc, and Debian's CNI plugins (a path: they are not commands).
CLUSTERDEPS := runc=runc /usr/lib/cni/bridge=containernetworking-plugins
TESTDEPS := $(DEPS) chromium=chromium promtool=prometheus pgrep=procps $(CLUSTERDEPS)
PKGS    := ./...
TESTLOG := bin/integration.log

.PHONY: build deps test demo bench lint clean generate k8s image cluster cluster-down demo-k8s

# detour (the sidecar's binary: init, proxy, inject, install, demo), detour-controller (the
# controller, which links client-go and so is kept out of the sidecar's binary), and the StockKube
# example's stockdata and stockweb beside them (the demo runs them).
# Static (no cgo): nothing needs libc, an init container or sidecar image needs no libc either,
# and the proxy's RSS is 1.3 MiB smaller without libc's pages. grpcnotrace leaves out grpc-go's
# x/net/trace (and html/template with it), which nothing here uses: 2.5 MB less binary. A proxy
# ends up with nearly every page of its binary resident (the kernel maps file pages around each
# fault), so its RSS follows the binary's size: 2 MiB less.
GOBUILD := CGO_ENABLED=0 $(GO) build -tags grpcnotrace
build:
	$(GOBUILD) -o bin/ ./cmd/detour ./cmd/detour-controller ./examples/stockkube/cmd/stockdata ./examples/stockkube/cmd/stockweb ./internal/kubecluster/pause

# Detour's image (Dockerfile), the StockKube images and the test cluster's pause image, built
# with buildah on a Debian base made by debootstrap, as archives in bin/images/ (no daemon, no
# registry).
IMAGEDEPS := buildah=buildah debootstrap=debootstrap
image: build
	@scripts/deps.sh $(IMAGEDEPS)
	@scripts/image.sh

deps:
	@scripts/deps.sh $(DEPS)

# The pinned Kubernetes components of the test cluster (internal/kubecluster), built once into
# a cache outside the repository: about 14 minutes cold, nothing to do warm.
k8s:
	@scripts/k8s-build.sh >/dev/null

# A one-node Kubernetes cluster on this machine (internal/kubecluster), left running in the
# background; it prints how to use it. `make cluster-down` removes it, also after a crash.
cluster: build k8s image
	@scripts/deps.sh $(CLUSTERDEPS)
	@$(GO) build -o bin/kubecluster ./internal/kubecluster/cmd/kubecluster
	@bin/kubecluster up --node --detach

cluster-down:
	@$(GO) build -o bin/kubecluster ./internal/kubecluster/cmd/kubecluster
	@bin/kubecluster down

# The seed's workflow on a one-node cluster of its own (internal/kubedemo): install Detour,
# StockKube without the mesh, injected, scaled to 3, with StockWeb's Server column at each
# step; it keeps the cluster until Ctrl-C, then removes it.
demo-k8s: build k8s image
	@scripts/deps.sh $(CLUSTERDEPS)
	@$(GO) build -o bin/kubecluster ./internal/kubecluster/cmd/kubecluster
	@bin/kubecluster demo $(DEMOFLAGS)

# Unit tests and fuzz seed corpora everywhere, then the integration suite on real namespaces.
# DETOUR_REQUIRE_ROOT=1 turns a would-be skip of a root test into a failure.
test: build k8s image
	@scripts/deps.sh $(TESTDEPS)
	DETOUR_REQUIRE_ROOT=1 $(GO) test -count=1 -timeout 10m $$($(GO) list $(PKGS) | grep -v /integration)
	@mkdir -p bin
	DETOUR_REQUIRE_ROOT=1 DETOUR_BIN=$(abspath $(BIN)) DETOUR_ARTIFACTS=$(abspath bin/artifacts) $(GO) test -count=1 -timeout 10m -v ./integration/... 2>&1 | tee $(TESTLOG); exit $${PIPESTATUS[0]}

demo: deps build
	$(BIN) demo

# The mesh benchmark (direct vs two proxies, plaintext and mutual TLS, gRPC over one connection),
# discovery at scale (2,000 services, 20,000 endpoints, 100 proxies), the init install and the
# mutual TLS handshake, and the failover runs (a replica SIGKILLed under load and restarted; an
# HTTP/1.1 replica closed under GETs).
bench: build
	@scripts/deps.sh $(BENCHDEPS)
	$(GO) test -run '^$$' -bench Mesh -benchtime 1x -count 1 -v ./integration/
	$(GO) test -run '^$$' -bench DiscoveryScale -benchtime 1x -count 1 -v ./integration/
	$(GO) test -run '^$$' -bench Failover -benchtime 1x -count 1 -v ./integration/
	$(GO) test -run '^$$' -bench Install -benchtime 20x -count 1 ./init/apply/
	$(GO) test -run '^$$' -bench Handshake -benchtime 2s -count 1 ./proxy/mtls/
	$(GO) test -run '^$$' -bench 'CollectionCost|CollectorMemory' -benchtime 10x -count 1 ./controller/telemetry/
	$(GO) test -run '^$$' -bench Report -benchtime 200x -count 1 ./proxy/report/

lint:
	@test -z "$$(gofmt -l .)" || { gofmt -l .; exit 1; }
	$(GO) vet ./...
	$(GO) run honnef.co/go/tools/cmd/staticcheck@latest ./...

clean:
	rm -rf bin

# Regenerates the committed protobuf code (Debian's protobuf-compiler, Go plugins from the module proxy).
generate:
	@scripts/deps.sh protoc=protobuf-compiler
	GOFLAGS= $(GO) install google.golang.org/protobuf/cmd/protoc-gen-go@v1.36.12
	GOFLAGS= $(GO) install google.golang.org/grpc/cmd/protoc-gen-go-grpc@v1.6.2
	PATH=$$PATH:$$($(GO) env GOPATH)/bin protoc --go_out=. --go_opt=module=github.com/detourmesh/detour \
		--go-grpc_out=. --go-grpc_opt=module=github.com/detourmesh/detour examples/stockkube/stockpb/stock.proto \
		api/discoverypb/discovery.proto api/identitypb/identity.proto api/telemetrypb/telemetry.proto
