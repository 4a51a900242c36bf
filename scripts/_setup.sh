# Shared set-up for scripts/test and scripts/demo (sourced, not run).

PYTHON=${PYTHON:-python3}

_sudo() {
    if [ "$(id -u)" -eq 0 ]; then "$@"
    elif command -v sudo >/dev/null 2>&1; then sudo "$@"
    else return 1; fi
}

_apt_install() {
    # Installs Debian packages when we are root or may use sudo, and says so first.
    echo "== installing $* from Debian (apt-get)" >&2
    if ! { _sudo apt-get update -qq && DEBIAN_FRONTEND=noninteractive _sudo apt-get install -y -qq "$@" >/dev/null; }; then
        echo "scripts: could not install $*; install it with 'sudo apt-get install $*' and run again" >&2
        return 1
    fi
}

setup_venv() {
    # setup_venv GROUP: .venv with kiosk (editable) and the given dependency group, once per change.
    local group=$1
    if ! "$PYTHON" -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; then
        echo "scripts: kiosk needs Python 3.11 or newer; '$PYTHON' is $("$PYTHON" --version 2>&1)" >&2
        exit 1
    fi
    if [ ! -x .venv/bin/python ]; then
        if ! "$PYTHON" -m venv .venv 2>/dev/null; then
            rm -rf .venv
            _apt_install python3-venv || exit 1
            "$PYTHON" -m venv .venv
        fi
    fi
    local stamp=.venv/.kiosk-$group
    if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; then
        echo "== installing kiosk and its $group dependencies into .venv" >&2
        .venv/bin/python -m pip install -q --disable-pip-version-check --upgrade 'pip>=25.1'
        .venv/bin/python -m pip install -q --disable-pip-version-check -e . --group "$group"
        touch "$stamp"
    fi
}

ensure_strace() {
    # tests/test_systemd_syscalls.py runs a sale under strace, to check the unit's system call filter.
    if command -v strace >/dev/null 2>&1; then return 0; fi
    _apt_install strace || exit 1
}

ensure_mosquitto() {
    if command -v mosquitto >/dev/null 2>&1 || [ -x /usr/sbin/mosquitto ]; then return 0; fi
    _apt_install mosquitto mosquitto-clients || exit 1
    # Debian starts a system-wide broker on 1883; kiosk's tests never use it, they start their own.
}
