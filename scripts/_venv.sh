# Sourced by scripts/demo and scripts/test: make .venv with mountplan installed.
# Works on a fresh Debian 12: installs python3-venv with apt when ensurepip is
# missing (needs root), then pip-installs mountplan and its dependencies.
set -eu
PY=${PYTHON:-python3}
VENV=${MOUNTPLAN_VENV:-.venv}
if [ ! -x "$VENV/bin/python" ]; then
    if ! "$PY" -c 'import ensurepip, venv' >/dev/null 2>&1; then
        if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
            echo "scripts: installing python3-venv with apt-get" >&2
            apt-get update -qq >/dev/null && apt-get install -y -qq python3-venv >/dev/null
        else
            echo "scripts: $PY has no venv/ensurepip; install python3-venv" >&2
            exit 1
        fi
    fi
    "$PY" -m venv "$VENV"
fi
stamp="$VENV/.mountplan-installed"
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; then
    "$VENV/bin/python" -m pip install -q --disable-pip-version-check -e ".[test]"
    touch "$stamp"
fi
