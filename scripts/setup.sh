#!/usr/bin/env bash
# Installs what Poplar needs on a fresh Debian machine, skipping what is already there.
#   scripts/setup.sh          development, demo and tests (the demo and test commands call this):
#                             Debian mosquitto, mosquitto-clients, influxdb (1.x), mbpoll,
#                             victoria-metrics (tests of the 2.x sink); .venv with the dev extras
#   scripts/setup.sh --box    a gateway box: Debian mosquitto (enabled: it is the box broker),
#                             mosquitto-clients, mbpoll (wiring checks); .venv without dev extras
# Safe to run again.
set -euo pipefail
cd "$(dirname "$0")/.."
mode=dev
[ "${1:-}" = "--box" ] && mode=box

need=()
command -v mosquitto >/dev/null 2>&1 || [ -x /usr/sbin/mosquitto ] || need+=(mosquitto)
command -v mosquitto_pub >/dev/null 2>&1 || need+=(mosquitto-clients)
command -v mbpoll >/dev/null 2>&1 || need+=(mbpoll)
if [ "$mode" = dev ]; then
    command -v influxd >/dev/null 2>&1 || need+=(influxdb)
    command -v victoria-metrics >/dev/null 2>&1 || need+=(victoria-metrics)
    command -v openssl >/dev/null 2>&1 || need+=(openssl)  # the tests make their own TLS certificates
fi
python3 -c 'import venv, ensurepip' >/dev/null 2>&1 || need+=(python3-venv)
if [ ${#need[@]} -gt 0 ]; then
    echo "setup: installing Debian packages: ${need[*]}" >&2
    SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi
if [ "$mode" = box ] && command -v systemctl >/dev/null 2>&1; then
    SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
    $SUDO systemctl enable --now mosquitto >/dev/null 2>&1 || echo "setup: could not enable mosquitto; start it by hand" >&2
fi
# (The demo and the tests start their own servers on free ports, beside any system service.)

if [ ! -x .venv/bin/python ]; then
    echo "setup: creating .venv" >&2
    python3 -m venv .venv
fi
stamp=".venv/.poplar-installed"
want="$mode-$(sha256sum pyproject.toml | cut -d' ' -f1)"
extras='.[dev]'; [ "$mode" = box ] && extras='.' 
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
    echo "setup: installing Poplar and its Python dependencies into .venv" >&2
    .venv/bin/python -m pip install -q --upgrade pip >/dev/null 2>&1 || true
    if ! .venv/bin/python -m pip install -q -e "$extras" > .venv/pip-install.log 2>&1; then
        cat .venv/pip-install.log >&2
        echo "setup: pip install failed (log above, also in .venv/pip-install.log)" >&2
        exit 1
    fi
    echo "$want" > "$stamp"
fi
