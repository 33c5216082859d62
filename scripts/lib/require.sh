# Sourced by the scripts: checks their tools before they start anything.

# require SCRIPT TOOL[=PACKAGE]...: returns if every TOOL is on PATH; otherwise says in one
# line which are missing and which Debian packages bring them (PACKAGE, else the tool's
# own name), and exits 2. Bash builtins only: it runs before anything else is known.
require() {
    local script=$1 tool missing=() packages=()
    shift
    for tool in "$@"; do
        command -v "${tool%%=*}" >/dev/null 2>&1 && continue
        missing+=("${tool%%=*}")
        packages+=("${tool#*=}")
    done
    [ ${#missing[@]} -eq 0 ] && return 0
    echo "$script: ${missing[*]} not found on PATH: apt-get install ${packages[*]} (or your system's packages of the same names)" >&2
    exit 2
}
