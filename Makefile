# vmscope: make demo, make test (each installs what it needs on a fresh Debian machine).
GO      ?= go
BIN     := bin/vmscope
PKGS    := ./...
export PATH := $(PATH):/usr/local/go/bin:/usr/sbin:/sbin

.PHONY: all build deps fixtures demo test fuzz bench static vet clean

all: build

deps:
	bash scripts/deps.sh

# The commit for --version (Go records none in a git worktree).
LDFLAGS := -X main.commit=$(shell git rev-parse HEAD 2>/dev/null)$(shell git diff --quiet HEAD 2>/dev/null || echo +dirty)

build: deps
	$(GO) build -ldflags "$(LDFLAGS)" -o $(BIN) ./cmd/vmscope

fixtures: deps
	bash testdata/fixtures.sh
	bash testdata/formats/build.sh
	bash testdata/guest/build.sh
	bash testdata/guest-disk/build.sh
	bash testdata/hostile-mem/build.sh
	bash testdata/modules/build.sh
	bash testdata/livedirty/build.sh
	bash testdata/rootkit/build.sh
	bash testdata/watch/build.sh
	bash testdata/watch/guest510.sh
	bash testdata/inject/build.sh
	bash testdata/libvirt/libvirt.sh images
	bash testdata/cfi-plugin/build.sh
	bash testdata/fleet/build.sh
	bash testdata/lvm/build.sh
	bash testdata/xfs/build.sh
	bash testdata/xfs/ino64.sh
	bash testdata/ntfs/build.sh
	bash testdata/ir/build.sh
	bash testdata/gdirty/build.sh

demo: build
	bash scripts/demo.sh

vet:
	@# gofmt -l names each file it would change; any name fails the target
	@out=$$(gofmt -l $$(git ls-files '*.go')); if [ -n "$$out" ]; then echo "gofmt would change:" >&2; echo "$$out" >&2; exit 1; fi
	$(GO) vet $(PKGS)
	$(GO) tool staticcheck $(PKGS)

# Every test, every fuzz target over its seed corpus; fixtures built first (cached).
test: deps fixtures vet
	$(GO) test -count=1 -timeout 30m $(PKGS)

# Each fuzz target for FUZZTIME (default 60s), one at a time; FUZZPKGS=REGEX
# picks packages; a summary of every target's result ends the output.
FUZZTIME ?= 60s
FUZZPKGS ?= .
fuzz: deps fixtures
	FUZZPKGS='$(FUZZPKGS)' bash scripts/fuzz.sh $(FUZZTIME)

bench: build fixtures
	bash bench/run.sh

# A fully static binary for incident responders (libyara and its libraries linked in).
STATIC_LIBS := -lyara -lmagic -ljansson -lcrypto -lz -lbz2 -llzma -lm -ldl -pthread
static: deps
	CGO_LDFLAGS="$(STATIC_LIBS)" $(GO) build -tags yara_no_pkg_config,netgo,osusergo \
		-ldflags '$(LDFLAGS) -s -w -linkmode external -extldflags "-static"' -o bin/vmscope-static ./cmd/vmscope

clean:
	rm -rf bin
