# `make demo` and `make test` work on a fresh Debian/Ubuntu machine as root: they install what
# they need (apt packages, a venv, the AKTIN Broker jars) and cache downloads outside the clone.

PYTHON      ?= /usr/bin/python3
VENV        ?= .venv
CACHE       ?= $(HOME)/.cache/aktin-broker-sftp
BROKER_VERSION = 1.5.1
BROKER_LIB  ?= $(CACHE)/broker-$(BROKER_VERSION)/lib
APT_PACKAGES = openssh-server openssh-client openssl default-jre-headless maven python3-venv util-linux \
	dpkg-dev debhelper dh-python python3-all pybuild-plugin-pyproject python3-setuptools python3-wheel \
	lintian debootstrap systemd-container

.PHONY: test demo bench deb lint unit deps broker-jars clean

test: deps $(VENV)/.ready broker-jars lint
	$(VENV)/bin/pytest -ra tests

lint: $(VENV)/.ready
	$(VENV)/bin/ruff check aktin_sftp tests
	$(VENV)/bin/mypy

unit: $(VENV)/.ready
	$(VENV)/bin/pytest -ra tests/unit

demo: deps $(VENV)/.ready broker-jars
	$(VENV)/bin/python -m tests.demo

# Prints the performance table; BENCH_ARGS=--full for the full sizes (1 GiB bundles).
bench: deps $(VENV)/.ready broker-jars
	$(MAKE) --no-print-directory deps APT_PACKAGES=nginx
	$(VENV)/bin/python -m tests.bench $(BENCH_ARGS)

# The Debian package, built from a copy of the tree with Debian's own python3 on PATH.
deb: deps
	rm -rf build/deb
	/usr/bin/python3 -m tests.peers.package build/deb
	lintian --allow-root --fail-on error,warning build/deb/*.deb

deps:
	@missing=$$(for p in $(APT_PACKAGES); do dpkg-query -W -f='$${Status}' $$p 2>/dev/null | grep -q 'ok installed' || echo $$p; done); \
	if [ -n "$$missing" ]; then \
		echo "installing:" $$missing; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $$missing; \
	fi

$(VENV)/.ready: requirements.txt requirements-dev.txt setup.cfg pyproject.toml
	test -x $(VENV)/bin/python || $(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install -q --upgrade pip
	$(VENV)/bin/pip install -q -r requirements-dev.txt
	$(VENV)/bin/pip install -q --no-deps -e .
	touch $@

# The released broker from Maven Central, cached in ~/.m2 and $(BROKER_LIB). When Maven cannot
# resolve it, the tests that need the broker are skipped with that reason instead of failing.
broker-jars:
	@mkdir -p $(CACHE); \
	if [ -n "$$AKTIN_BROKER_LIB" ] || [ -f $(BROKER_LIB)/broker-admin-$(BROKER_VERSION).jar ]; then exit 0; fi; \
	rm -rf $(BROKER_LIB).part; \
	mvn -q -B -f tests/broker/pom.xml dependency:copy-dependencies -DincludeScope=runtime \
		-DoutputDirectory=$(BROKER_LIB).part >$(CACHE).mvn.log 2>&1 \
	&& mv $(BROKER_LIB).part $(BROKER_LIB) \
	|| { rm -rf $(BROKER_LIB).part; echo "WARNING: AKTIN Broker $(BROKER_VERSION) jars not resolvable from Maven Central" \
		"(see $(CACHE).mvn.log); broker tests will be skipped"; }

clean:
	rm -rf $(VENV) build *.egg-info .mypy_cache .ruff_cache .pytest_cache
