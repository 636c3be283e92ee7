# `make demo` and `make test` work on a fresh Debian/Ubuntu machine as root: they install what
# they need (Debian packages, without leaving a new service enabled or running, and a venv) and
# cache downloads outside the clone. Both use the real AKTIN Broker where its jars are present
# and the broker double otherwise.

PYTHON      ?= /usr/bin/python3
VENV        ?= .venv
CACHE       ?= $(HOME)/.cache/aktin-broker-sftp
BROKER_VERSION = 1.5.1
BROKER_LIB  ?= $(CACHE)/broker-$(BROKER_VERSION)/lib
# The TCP latency and fault proxy in front of sshd, built by Go from the Go module proxy (Go 1.23 or newer).
TOXIPROXY_VERSION = v2.12.0
TOXIPROXY   = $(CACHE)/toxiproxy-$(TOXIPROXY_VERSION)/server
GO          ?= $(shell command -v go || echo /usr/local/go/bin/go)
# The demo needs an sshd and the tools the test peers use; the suite also builds and boots the package.
DEMO_PACKAGES = openssh-server openssh-client openssl python3-venv util-linux
APT_PACKAGES = $(DEMO_PACKAGES) dpkg-dev debhelper dh-python python3-all pybuild-plugin-pyproject python3-setuptools \
	python3-wheel lintian debootstrap systemd-container

.PHONY: test demo demo-deps bench deb lint unit deps broker-jars broker-recording toxiproxy clean

test: deps $(VENV)/.ready broker-jars toxiproxy lint
	$(VENV)/bin/pytest -ra tests

lint: $(VENV)/.ready
	$(VENV)/bin/ruff check aktin_sftp tests
	$(VENV)/bin/mypy

unit: $(VENV)/.ready
	$(VENV)/bin/pytest -ra tests/unit

demo: demo-deps $(VENV)/.ready broker-jars
	$(VENV)/bin/python -m tests.demo

demo-deps:
	sh tests/install-packages.sh $(DEMO_PACKAGES)

# Prints the performance table; BENCH_ARGS=--full for the full sizes (1 GiB bundles).
bench: deps $(VENV)/.ready broker-jars toxiproxy
	sh tests/install-packages.sh nginx
	$(VENV)/bin/python -m tests.bench $(BENCH_ARGS)

# The Debian package, built from a copy of the tree with Debian's own python3 on PATH.
deb: deps
	rm -rf build/deb
	/usr/bin/python3 -m tests.peers.package build/deb
	lintian --allow-root --fail-on error,warning build/deb/*.deb

deps:
	sh tests/install-packages.sh $(APT_PACKAGES)

toxiproxy: $(TOXIPROXY)

$(TOXIPROXY):
	@test -x "$(GO)" || { echo "ERROR: Toxiproxy $(TOXIPROXY_VERSION) is built with Go 1.23 or newer; none found (set GO=/path/to/go)"; exit 1; }
	mkdir -p $(dir $@)
	GOBIN=$(dir $@) GOFLAGS=-modcacherw $(GO) install github.com/Shopify/toxiproxy/v2/cmd/server@$(TOXIPROXY_VERSION)

$(VENV)/.ready: requirements.txt requirements-dev.txt setup.cfg pyproject.toml
	test -x $(VENV)/bin/python || $(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install -q --upgrade pip
	$(VENV)/bin/pip install -q -r requirements-dev.txt
	$(VENV)/bin/pip install -q --no-deps -e .
	touch $@

# The real broker's jars, where this machine's Maven repository has them (someone built aktin/broker
# v1.5.1 with `mvn install`); offline, since no registry has them. Otherwise the tests use the double.
broker-jars:
	@if [ -z "$$AKTIN_BROKER_LIB" ] && [ ! -f $(BROKER_LIB)/broker-admin-$(BROKER_VERSION).jar ] \
		&& [ -f $(HOME)/.m2/repository/org/aktin/broker-admin/$(BROKER_VERSION)/broker-admin-$(BROKER_VERSION).jar ]; then \
		mkdir -p $(CACHE); rm -rf $(BROKER_LIB).part; \
		mvn -o -q -B -f tests/broker/pom.xml dependency:copy-dependencies -DincludeScope=runtime \
			-DoutputDirectory=$(BROKER_LIB).part >$(CACHE)/mvn.log 2>&1 \
		&& mv $(BROKER_LIB).part $(BROKER_LIB) \
		|| { rm -rf $(BROKER_LIB).part; echo "WARNING: the broker's jars in ~/.m2 are incomplete (see $(CACHE)/mvn.log)"; }; \
	fi

# Records the real broker 1.5.1 answering the fixed conversation (needs its jars, see README).
broker-recording: $(VENV)/.ready broker-jars
	$(VENV)/bin/python -m tests.broker_double.record

clean:
	rm -rf $(VENV) build *.egg-info .mypy_cache .ruff_cache .pytest_cache
