#!/usr/bin/env bash
# Save the stand-in stack images into one tarball that a server instance loads into its own
# Docker engine (`docker load -i FILE`).
#
#   scripts/testbed/save-images.sh [-o FILE] [NAME ...]
#
# Default NAMEs: the stack stand-ins (postgres pgbouncer redis rabbitmq prometheus
# postgres-exporter pgbouncer-exporter redis-exporter node-exporter); default FILE:
# $TESTBED_CACHE/stack-images.tar. FILE.ids records the image ids it holds: when they have not
# changed the tarball is kept as it is. Build the images first: scripts/testbed/build-images.sh.
set -euo pipefail
# shellcheck source=scripts/testbed/lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

out="$TESTBED_CACHE/stack-images.tar"
names=()
while [ $# -gt 0 ]; do
  case "$1" in
    -o) out="${2:?-o needs a file}"; shift ;;
    -h | --help) sed -n '2,10p' "$0"; exit 0 ;;
    -*) die "unknown option $1" ;;
    *) names+=("$1") ;;
  esac
  shift
done
[ ${#names[@]} -gt 0 ] || names=("${STACK_IMAGES[@]}")
docker_ok || die "no Docker engine answering: run scripts/testbed/engine.sh"

refs=()
ids=""
for name in "${names[@]}"; do
  ref="$(image_ref "$name")"
  id="$("$DOCKER" image inspect -f '{{.Id}}' "$ref" 2>/dev/null)" ||
    die "$ref missing: run scripts/testbed/build-images.sh $name"
  refs+=("$ref")
  ids+="$ref $id"$'\n'
done

if [ -s "$out" ] && [ -f "$out.ids" ] && [ "$(cat "$out.ids")"$'\n' = "$ids" ]; then
  log "save: $out up to date (${#refs[@]} images, $(du -m "$out" | cut -f1) MB)"
  exit 0
fi

mkdir -p "$(dirname "$out")"
trap 'rm -f "$out.tmp"' EXIT
log "save: docker save ${#refs[@]} images -> $out"
start=$SECONDS
"$DOCKER" save -o "$out.tmp" "${refs[@]}"
mv -f "$out.tmp" "$out"
printf '%s' "$ids" >"$out.ids"
log "save: done in $((SECONDS - start))s ($(du -m "$out" | cut -f1) MB)"
