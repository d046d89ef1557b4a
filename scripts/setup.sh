#!/usr/bin/env bash
# Installs what Poplar needs on a fresh Debian machine, skipping what is already there:
#   Debian: mosquitto, mosquitto-clients, influxdb (1.x), mbpoll, victoria-metrics (tests of the 2.x sink)
#   Python: a virtual environment in .venv with the project and its dev extras
# Safe to run again; the demo and test commands call it first.
set -euo pipefail
cd "$(dirname "$0")/.."

need=()
command -v mosquitto >/dev/null 2>&1 || [ -x /usr/sbin/mosquitto ] || need+=(mosquitto)
command -v mosquitto_pub >/dev/null 2>&1 || need+=(mosquitto-clients)
command -v influxd >/dev/null 2>&1 || need+=(influxdb)
command -v mbpoll >/dev/null 2>&1 || need+=(mbpoll)
command -v victoria-metrics >/dev/null 2>&1 || need+=(victoria-metrics)
python3 -c 'import venv, ensurepip' >/dev/null 2>&1 || need+=(python3-venv)
if [ ${#need[@]} -gt 0 ]; then
    echo "setup: installing Debian packages: ${need[*]}" >&2
    SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
    # Debian starts the services it installs where systemd runs; Poplar starts its own copies.
    for s in mosquitto influxdb victoria-metrics; do $SUDO systemctl disable --now "$s" >/dev/null 2>&1 || true; done
fi

if [ ! -x .venv/bin/python ]; then
    echo "setup: creating .venv" >&2
    python3 -m venv .venv
fi
stamp=".venv/.poplar-installed"
want="$(sha256sum pyproject.toml | cut -d' ' -f1)"
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
    echo "setup: installing Poplar and its Python dependencies into .venv" >&2
    .venv/bin/python -m pip install -q --upgrade pip >/dev/null 2>&1 || true
    if ! .venv/bin/python -m pip install -q -e '.[dev]' > .venv/pip-install.log 2>&1; then
        cat .venv/pip-install.log >&2
        echo "setup: pip install failed (log above, also in .venv/pip-install.log)" >&2
        exit 1
    fi
    echo "$want" > "$stamp"
fi
