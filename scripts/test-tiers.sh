#!/usr/bin/env bash
# Run make targets one after the other (the tiers of make test), stop at the first that fails,
# and print each one's wall time: CI's log then shows where the time of a run went.
#   scripts/test-tiers.sh test-fast test-slow test-molecule ...
set -uo pipefail
cd "$(dirname "$0")/.."

MAKE="${MAKE:-make}"
start=$SECONDS
summary=()

report() {
  echo "==> time per tier"
  printf '    %s\n' "${summary[@]}"
  printf '    %-26s %4dm%02ds\n' total $(((SECONDS - start) / 60)) $(((SECONDS - start) % 60))
}

for tier in "$@"; do
  began=$SECONDS
  "$MAKE" --no-print-directory "$tier"
  status=$?
  took=$((SECONDS - began))
  summary+=("$(printf '%-26s %4dm%02ds%s' "$tier" $((took / 60)) $((took % 60)) \
    "$([ $status -eq 0 ] || echo '  FAILED')")")
  if [ $status -ne 0 ]; then
    report
    exit $status
  fi
done
report
