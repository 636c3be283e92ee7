# `make demo` and `make test` work on a fresh Debian/Ubuntu machine as root: they install what
# they need (Debian packages, without leaving a new service enabled or running, and a venv) and
# cache downloads outside the clone. Both use the real AKTIN Broker where its jars are present
# and the broker double otherwise.

PYTHON      ?= /usr/bin/python3
VENV        ?= .venv
# The floor run: the unit and integration tests once more, with the oldest supported libraries
# (constraints-floor.txt) on the oldest supported Python, 3.10 (a pyenv install counts), or on
# the system's Python where this machine has no 3.10 (the test report then says so).
FLOOR_VENV  ?= .venv-floor
FLOOR_PYTHON ?= $(firstword $(foreach p,$(shell command -v python3.10) \
	$(wildcard $(or $(PYENV_ROOT),$(HOME)/.pyenv)/versions/3.10*/bin/python3.10) $(PYTHON),\
	$(if $(shell $(p) -c 'print(1)' 2>/dev/null),$(p))))
# Named after the Python, so that a python3.10 installed later gets a venv of its own.
FLOOR_READY = $(FLOOR_VENV)/.ready-$(notdir $(FLOOR_PYTHON))
CACHE       ?= $(HOME)/.cache/aktin-broker-sftp
# The broker releases the tests know, newest first: the first whose jars are in ~/.m2 is used.
BROKER_VERSIONS = 1.5.2 1.5.1
# The TCP latency and fault proxy in front of sshd, built by Go from the Go module proxy. v2.7.0
# builds with Debian 12's Go (1.19) as with newer ones; from v2.9.0 on, Toxiproxy needs a newer Go.
TOXIPROXY_VERSION = v2.7.0
TOXIPROXY   = $(CACHE)/toxiproxy-$(TOXIPROXY_VERSION)/server
GO          ?= $(shell command -v go || echo /usr/local/go/bin/go)
# The demo needs an sshd and the tools the test peers use; the suite also builds and boots the package.
DEMO_PACKAGES = openssh-server openssh-client openssl python3-venv util-linux
APT_PACKAGES = $(DEMO_PACKAGES) dpkg-dev debhelper dh-python python3-all pybuild-plugin-pyproject python3-setuptools \
	python3-wheel lintian debootstrap systemd-container

.PHONY: test floor demo demo-deps bench deb docs lint unit deps broker-jars broker-recording toxiproxy clean

test: deps $(VENV)/.ready $(FLOOR_READY) broker-jars toxiproxy lint
	$(VENV)/bin/pytest -ra --durations=15 tests
	$(MAKE) --no-print-directory floor

# The booted Debian tests are about the package, not the library floor; the heavy tests are left
# out to keep `make test` short.
floor: $(FLOOR_READY) broker-jars toxiproxy
	AKTIN_SFTP_FLOOR=constraints-floor.txt $(FLOOR_VENV)/bin/pytest -ra -m "not heavy" tests/unit tests/integration

lint: $(VENV)/.ready
	$(VENV)/bin/ruff check aktin_sftp tests
	$(VENV)/bin/mypy

# The example config, the man page's keys and the README's table, from aktin_sftp/options.py.
docs: $(VENV)/.ready
	$(VENV)/bin/python -m tests.docs

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

# With no Go on this machine, Debian's golang-go is installed. GOTOOLCHAIN=local: a Go that
# would fetch a newer Go for the build must not.
$(TOXIPROXY):
	@go="$(GO)"; if ! "$$go" version >/dev/null 2>&1; then \
		echo "no Go found (GO=$(GO)): installing Debian's golang-go"; \
		sh tests/install-packages.sh golang-go && go=/usr/bin/go; \
	fi; \
	mkdir -p $(dir $@) && echo "building Toxiproxy $(TOXIPROXY_VERSION) with $$("$$go" version)" && \
	GOBIN=$(dir $@) GOFLAGS=-modcacherw GOTOOLCHAIN=local "$$go" install github.com/Shopify/toxiproxy/v2/cmd/server@$(TOXIPROXY_VERSION)

$(VENV)/.ready: requirements.txt requirements-test.txt requirements-dev.txt setup.cfg pyproject.toml
	test -x $(VENV)/bin/python || $(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install -q --upgrade pip
	$(VENV)/bin/pip install -q -r requirements-dev.txt
	$(VENV)/bin/pip install -q --no-deps -e .
	touch $@

$(FLOOR_READY): constraints-floor.txt requirements.txt requirements-test.txt setup.cfg pyproject.toml
	rm -rf $(FLOOR_VENV)
	$(FLOOR_PYTHON) -m venv $(FLOOR_VENV)
	$(FLOOR_VENV)/bin/pip install -q --upgrade pip
	$(FLOOR_VENV)/bin/pip install -q -c constraints-floor.txt -r requirements-test.txt
	$(FLOOR_VENV)/bin/pip install -q --no-deps -e .
	touch $@

# The real broker's jars, where this machine's Maven repository has them (someone built aktin/broker
# v1.5.2 or v1.5.1 with `mvn install`); offline, since no registry has them. Otherwise the tests
# use the double.
broker-jars:
	@[ -n "$$AKTIN_BROKER_LIB" ] || for version in $(BROKER_VERSIONS); do \
		lib=$(CACHE)/broker-$$version/lib; \
		[ ! -f $$lib/broker-admin-$$version.jar ] || break; \
		[ -f $(HOME)/.m2/repository/org/aktin/broker-admin/$$version/broker-admin-$$version.jar ] || continue; \
		mkdir -p $(CACHE); rm -rf $$lib.part; \
		mvn -o -q -B -f tests/broker/pom.xml dependency:copy-dependencies -DincludeScope=runtime \
			-Dbroker.version=$$version -DoutputDirectory=$$lib.part >$(CACHE)/mvn.log 2>&1 \
		&& mv $$lib.part $$lib && break \
		|| { rm -rf $$lib.part; echo "WARNING: the broker $$version jars in ~/.m2 are incomplete (see $(CACHE)/mvn.log)"; }; \
	done

# Records the real broker answering the fixed conversation (needs its jars, see README); where
# the answers differ from the recording only in the broker's version, that version is added to
# the ones the recording was checked against.
broker-recording: $(VENV)/.ready broker-jars
	$(VENV)/bin/python -m tests.broker_double.record

clean:
	rm -rf $(VENV) $(FLOOR_VENV) build *.egg-info .mypy_cache .ruff_cache .pytest_cache
