#!/usr/bin/env bash
# The Python environment's lock: uv.lock (every package, every supported interpreter, with
# hashes) resolved from pyproject.toml, and two exports of it that pip and uv install from
# with hash checking:
#   requirements/dev.txt      runtime + every extra + the tooling group (make venv)
#   requirements/runtime.txt  the runtime alone (the runtime role's wheelhouse, the servers)
#
#   scripts/lock.sh lock [uv lock options]   re-resolve (e.g. --upgrade, --upgrade-package redis)
#   scripts/lock.sh check                    one line and exit 1 when pyproject.toml, uv.lock
#                                            and the exports disagree (make test-fast)
#   scripts/lock.sh entry NAME FILE          the requirement block of NAME in FILE, hashes
#                                            included (make venv bootstraps uv with it)
# UV (default .venv/bin/uv) is the uv to run; uv itself is pinned in the lock.
set -euo pipefail
cd "$(dirname "$0")/.."

UV="${UV:-.venv/bin/uv}"
EXPORTS=(dev runtime)

export_args() {
  case "$1" in
    dev) echo "--all-extras --group tooling" ;;
    runtime) echo "--no-dev" ;;
  esac
}

# write_export NAME FILE: requirements/NAME.txt's content, from uv.lock as it is.
write_export() {
  # shellcheck disable=SC2046 # the options are words
  "$UV" export --quiet --frozen --no-emit-project --no-header --format requirements-txt \
    $(export_args "$1") --output-file "$2"
}

entry() {
  local name="$1" file="$2"
  awk -v want="$name==" '
    index($0, want) == 1 { on = 1 }
    on { print; if ($0 !~ /\\$/) exit }
  ' "$file"
}

case "${1:-}" in
  lock)
    shift
    "$UV" lock "$@"
    for name in "${EXPORTS[@]}"; do
      write_export "$name" "requirements/$name.txt"
    done
    echo "lock: uv.lock, requirements/dev.txt ($(grep -c '^[a-z0-9]' requirements/dev.txt) packages)," \
      "requirements/runtime.txt ($(grep -c '^[a-z0-9]' requirements/runtime.txt) packages)"
    ;;
  check)
    if ! "$UV" lock --check --offline --quiet 2>/dev/null; then
      echo "lock: pyproject.toml and uv.lock disagree: run 'make lock' and commit uv.lock and requirements/" >&2
      exit 1
    fi
    tmp="$(mktemp -d)"
    trap 'rm -rf "$tmp"' EXIT
    for name in "${EXPORTS[@]}"; do
      write_export "$name" "$tmp/$name.txt"
      if ! cmp -s "$tmp/$name.txt" "requirements/$name.txt"; then
        echo "lock: requirements/$name.txt is not the export of uv.lock: run 'make lock' and commit it" >&2
        exit 1
      fi
    done
    echo "lock: pyproject.toml, uv.lock and requirements/ agree"
    ;;
  entry)
    [ $# -eq 3 ] || { echo "usage: scripts/lock.sh entry NAME FILE" >&2; exit 2; }
    out="$(entry "$2" "$3")"
    [ -n "$out" ] || { echo "lock: $2 is not in $3" >&2; exit 1; }
    printf '%s\n' "$out"
    ;;
  *)
    sed -n '2,14p' "$0" >&2
    exit 2
    ;;
esac
