#!/usr/bin/env bash
# Installs what imgstream needs on a fresh Debian machine, idempotently:
#   system packages (JDK, Maven, PostgreSQL; with IMGSTREAM_TEST_TOOLS=1 also Prometheus,
#   Chromium, podman, runc and mmdebstrap for the tests) when missing,
#   the Python virtualenv .venv with imgstream and its test, train and bench extras.
# Big downloads are cached outside the clone (~/.cache/imgstream, ~/.m2, ~/.cache/pip), but
# nothing here depends on a cache being present.
set -euo pipefail
cd "$(dirname "$0")/.."

need_apt=()
command -v java >/dev/null || need_apt+=(openjdk-17-jre-headless)
command -v mvn >/dev/null || need_apt+=(maven)
ls /usr/lib/postgresql/*/bin/pg_ctl >/dev/null 2>&1 || need_apt+=(postgresql)
# What only the tests use (`make test` sets IMGSTREAM_TEST_TOOLS): Prometheus (its scrape test and
# promtool for the alert rules), Chromium (the dashboard test), the docker compose plugin below.
if [[ "${IMGSTREAM_TEST_TOOLS:-0}" == 1 ]]; then
  command -v prometheus >/dev/null || need_apt+=(prometheus)
  # the worker image's tests: Debian's podman and runc, and mmdebstrap for a local Debian 12 base
  command -v podman >/dev/null || need_apt+=(podman)
  command -v runc >/dev/null || need_apt+=(runc)
  command -v mmdebstrap >/dev/null || need_apt+=(mmdebstrap)
  # the pause process of the pods `podman kube play` starts
  [[ -x /usr/libexec/podman/catatonit || -x /usr/bin/catatonit ]] || need_apt+=(catatonit)
  # the cluster scenarios cut a broker off the network with iptables rules on loopback
  command -v iptables >/dev/null || [[ -x /usr/sbin/iptables ]] || need_apt+=(iptables)
  if [[ "${IMGSTREAM_BROWSER_TESTS:-1}" == 1 ]]; then
    command -v chromium >/dev/null || need_apt+=(chromium)
  fi
fi
if ((${#need_apt[@]})); then
  echo "bootstrap: apt-get install ${need_apt[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -q >/dev/null
  apt-get install -y -q --no-install-recommends "${need_apt[@]}" >/dev/null
fi
if ! command -v go >/dev/null && [[ ! -x /usr/local/go/bin/go ]]; then
  echo "bootstrap: Go >= 1.24 is needed to build versitygw (go install); install it from go.dev" >&2
  exit 1
fi
export PATH="$PATH:/usr/local/go/bin"

# `docker compose config` checks docker-compose.yml (a test); where the docker client lacks the
# compose plugin, build it from the Go module proxy once (cached). `make run` does not need it
# and does not wait the ~2 min it takes.
if [[ "${IMGSTREAM_TEST_TOOLS:-0}" == 1 ]] && command -v docker >/dev/null && ! docker compose version >/dev/null 2>&1; then
  plugin="$HOME/.cache/imgstream/bin/docker-compose"
  if [[ ! -x $plugin ]]; then
    echo "bootstrap: building the docker compose plugin (go install, ~3 min, cached)"
    tmp=$(mktemp -d)
    GOBIN="$tmp" go install github.com/docker/compose/v2/cmd@v2.32.4
    mkdir -p "$(dirname "$plugin")" && mv "$tmp/cmd" "$plugin" && rm -rf "$tmp"
  fi
  mkdir -p "$HOME/.docker/cli-plugins" && ln -sf "$plugin" "$HOME/.docker/cli-plugins/docker-compose"
fi

PY=${PYTHON:-python3}
if [[ ! -x .venv/bin/python ]]; then
  "$PY" -m venv .venv
fi
stamp=.venv/.imgstream-installed
if [[ ! -f $stamp || pyproject.toml -nt $stamp ]]; then
  echo "bootstrap: installing imgstream into .venv"
  .venv/bin/python -m pip install -q --upgrade pip
  .venv/bin/python -m pip install -q -e '.[test,train,bench]'
  touch "$stamp"
fi
