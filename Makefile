# The two commands a newcomer needs (see README.md):
#   make run    set up, start Kafka + PostgreSQL + S3, serve a quick model while the full one trains, run the worker
#   make test   set up, start the services, make a quick model, run every test
SHELL := /bin/bash
VENV := .venv/bin
export PATH := $(CURDIR)/.venv/bin:$(PATH):/usr/local/go/bin
DATA ?= ../shared/datasets/cifar10/train.tar.gz
PYTEST_ARGS ?=

.PHONY: setup up down run test test-unit bench bundle quick-bundle secure-up lock image

setup:
	./scripts/bootstrap.sh

up: setup
	imgstream stack up

down:
	imgstream stack down
	@if [ -d var/secure ]; then imgstream stack down --secure; fi
	@if [ -d var/cluster ]; then imgstream stack down --brokers 3 kafka; fi
	@if [ -f var/run/podman-service.pid ]; then imgstream compose stop-service; fi

# A full model unless one is already published; this is the target that regenerates the committed
# docs/MODELS.md on purpose (`make run` writes its report under var/).
bundle: up
	@imgstream models list 2>/dev/null | grep -q eff || imgstream models train --data $(DATA) --docs docs/MODELS.md

# Tests use their own bucket and their own database, so their quick model never becomes the
# "latest" of `make run` and no test ever reads or changes the images `make run` keeps.
TEST_ENV := IMGSTREAM_S3_BUCKET=imgstream-test IMGSTREAM_TEST_DATA=$(DATA) \
	IMGSTREAM_POSTGRES_DSN=postgresql://imgstream:imgstream@127.0.0.1:5433/imgstream_test

# A quick model for tests (300 images per class, no k sweep), published to the test bucket.
# `stack up` with the test settings creates (and migrates) the test database and bucket.
quick-bundle: up
	$(TEST_ENV) imgstream stack up
	$(TEST_ENV) imgstream models train --data $(DATA) --limit-per-class 300 --no-sweep

# The secured twin of the stack (SASL_SSL Kafka, PostgreSQL and S3 over TLS) for the tests that
# run the pipeline on it (tests/integration/test_secured_stack.py).
secure-up: up
	$(TEST_ENV) imgstream stack up --secure

# Serves a quick model first where no full one is published yet (the full one trains in the
# background and is promoted without a restart; its report goes to var/reports/): scripts/run.sh,
# which starts the services itself, beside the backbone's export.
run: setup
	DATA=$(DATA) ./scripts/run.sh

# What only the tests use (Chromium, Prometheus, the docker compose plugin): bootstrap installs it.
test: export IMGSTREAM_TEST_TOOLS := 1
test: up quick-bundle secure-up
	$(TEST_ENV) $(VENV)/python -m pytest -ra --durations=15 $(PYTEST_ARGS)

# No service needed: the agents run in process (tests/unit/inprocess.py); prints the coverage of
# agents/ and app/http/dataplane.py.
test-unit: setup
	$(VENV)/python -m coverage run -m pytest -ra -m "not integration and not e2e and not chaos and not browser and not packaging and not export and not containers" tests/unit $(PYTEST_ARGS)
	$(VENV)/python -m coverage report

bench: up
	imgstream bench

# The worker image's exact dependencies (with hashes) from pyproject.toml; tests/unit/test_lock.py
# keeps the two in step.
lock: setup
	$(VENV)/uv pip compile pyproject.toml --generate-hashes --python-version 3.11 \
	  --python-platform x86_64-manylinux_2_28 --no-header --quiet -o requirements.lock.new
	{ sed -n '1,3p' requirements.lock; cat requirements.lock.new; } > requirements.lock.tmp
	mv requirements.lock.tmp requirements.lock && rm requirements.lock.new

# The worker image (podman; a local Debian 12 base where no registry is reachable).
image: setup
	imgstream image build
