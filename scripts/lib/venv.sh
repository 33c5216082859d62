# Sourced by the scripts: installs a virtualenv from the lock files.

# locked_venv DIR: makes DIR (a virtualenv) hold exactly the versions the locks pin,
# every file checked against its sha256, and the project itself, editable. Nothing is
# resolved: a release published today changes nothing until scripts/lock is run. A
# stamp of the locks' contents skips the install when nothing changed.
locked_venv() {
    local venv=$1 stamp
    stamp=$(cat requirements-build.lock requirements-dev.lock pyproject.toml | python3 -c \
        'import hashlib, sys; print(hashlib.sha256(sys.stdin.buffer.read()).hexdigest())')
    [ -x "$venv/bin/pip" ] || python3 -m venv "$venv"
    [ "$(cat "$venv/.locked" 2>/dev/null)" = "$stamp" ] && return 0
    local pip=("$venv/bin/python" -m pip install --quiet --disable-pip-version-check)
    "${pip[@]}" --require-hashes --no-deps --requirement requirements-build.lock \
        --requirement requirements-dev.lock
    "${pip[@]}" --no-deps --no-build-isolation --editable .
    echo "$stamp" > "$venv/.locked"
}
