#!/usr/bin/env bash
# Build the offline testbed images from the recipes in molecule/images/, once.
#
#   scripts/testbed/build-images.sh [--force] [NAME|all|stack ...]   (default: all)
#   scripts/testbed/build-images.sh --list                             names, refs, hashes, state
#
# NAME is a directory of molecule/images/: base (debootstrap + docker import), server (the
# Molecule instance: systemd + dockerd), and the stand-ins for the stack's official images
# (`stack`: postgres pgbouncer redis rabbitmq prometheus postgres-exporter pgbouncer-exporter
# redis-exporter node-exporter). Every image is tagged tgstack/NAME:$TESTBED_TAG (the base:
# tgstack/trixie-base:$TESTBED_TAG) and labelled org.tgstack.recipe-hash with the hash of its
# recipe directory (plus the base's hash for images built FROM it). An image whose label
# matches the recipe is not rebuilt; --force rebuilds (docker build --no-cache).
# Full build logs: $TESTBED_CACHE/logs/NAME.log. The Debian package versions of each build are
# recorded in molecule/images/manifests/NAME.txt (commit it), and a build prints what changed
# since that record. Needs a Docker engine: scripts/testbed/engine.sh.
set -euo pipefail
# shellcheck source=scripts/testbed/lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

# Bump to rebuild every image after a change in how this script builds them.
BUILD_FORMAT=1
ALL_IMAGES=(base server "${STACK_IMAGES[@]}")
FORCE=0
BUILD_NETWORK=""
declare -A STATUS=() HASH_CACHE=()

usage() { sed -n '2,18p' "$0"; }

# dir_hash DIR: hash of the files under DIR (relative path, executable bit, content).
dir_hash() {
  local dir="$1" f
  (
    cd "$dir"
    find . -type f -print0 | LC_ALL=C sort -z | while IFS= read -r -d '' f; do
      printf '%s %s %s\n' "$f" "$([ -x "$f" ] && echo x || echo -)" "$(sha256sum <"$f" | cut -c1-64)"
    done
  ) | sha256sum | cut -c1-64
}

# recipe_hash NAME: the hash an up-to-date image NAME carries in its label.
recipe_hash() {
  local name="$1" h
  if [ -n "${HASH_CACHE[$name]:-}" ]; then
    printf '%s\n' "${HASH_CACHE[$name]}"
    return
  fi
  h="$(dir_hash "$TESTBED_IMAGES_DIR/$name")"
  if [ "$name" != base ]; then
    h="$(printf 'format=%s own=%s base=%s\n' "$BUILD_FORMAT" "$h" "$(recipe_hash base)" | sha256sum | cut -c1-64)"
  else
    h="$(printf 'format=%s own=%s\n' "$BUILD_FORMAT" "$h" | sha256sum | cut -c1-64)"
  fi
  HASH_CACHE[$name]="$h"
  printf '%s\n' "$h"
}

up_to_date() { [ "$FORCE" -eq 0 ] && [ "$(image_label "$(image_ref "$1")" "$HASH_LABEL")" = "$(recipe_hash "$1")" ]; }

size_of() {
  local bytes
  bytes="$("$DOCKER" image inspect -f '{{.Size}}' "$1" 2>/dev/null || echo 0)"
  printf '%d MB' "$((bytes / 1000000))"
}

# write_manifest NAME: record the Debian packages (name, version) image NAME was built from in
# molecule/images/manifests/NAME.txt (committed: a fresh clone's build is compared with the
# versions the last committed build used) and print what changed since that record.
write_manifest() {
  local name="$1" ref manifest fresh
  ref="$(image_ref "$name")"
  manifest="$TESTBED_MANIFESTS_DIR/$name.txt"
  mkdir -p "$TESTBED_MANIFESTS_DIR"
  fresh="$(mktemp)"
  # shellcheck disable=SC2016 # dpkg-query's own ${...} format
  if ! "$DOCKER" run --rm --network none --user 0 --entrypoint dpkg-query "$ref" \
    -W -f '${Package}:${Architecture} ${Version}\n' 2>/dev/null | LC_ALL=C sort >"$fresh"; then
    rm -f "$fresh"
    die "$name: cannot list the image's Debian packages (dpkg-query)"
  fi
  if [ -f "$manifest" ]; then
    manifest_changes "$name" "$manifest" "$fresh"
  else
    log "$name: package manifest recorded ($(wc -l <"$fresh") packages, no earlier record)"
  fi
  mv "$fresh" "$manifest"
  chmod 0644 "$manifest"
}

# manifest_changes NAME OLD NEW: one line per package added, removed or at another version.
manifest_changes() {
  local name="$1" changes
  changes="$(LC_ALL=C join -a1 -a2 -e '-' -o 0,1.2,2.2 "$2" "$3" | awk '$2 != $3 {
      if ($2 == "-") print "    + " $1 " " $3
      else if ($3 == "-") print "    - " $1 " " $2
      else print "    ~ " $1 " " $2 " -> " $3
    }')"
  if [ -z "$changes" ]; then
    log "$name: Debian packages unchanged since the last build ($(wc -l <"$3") packages)"
  else
    log "$name: Debian packages changed since the last build ($(printf '%s\n' "$changes" | wc -l)):"
    printf '%s\n' "$changes"
  fi
}

build_base() {
  local ref want rootfs logf mirror
  ref="$(image_ref base)"
  want="$(recipe_hash base)"
  if up_to_date base; then
    log "base: $ref up to date (recipe ${want:0:12}, $(size_of "$ref"))"
    [ -f "$TESTBED_MANIFESTS_DIR/base.txt" ] || write_manifest base
    STATUS[base]=cached
    return 0
  fi
  command -v debootstrap >/dev/null 2>&1 || die "debootstrap missing: run scripts/testbed/engine.sh"
  local SUITE VARIANT COMPONENTS INCLUDE IMPORT_CHANGES
  # shellcheck source=molecule/images/base/recipe.env
  . "$TESTBED_IMAGES_DIR/base/recipe.env"
  mirror="$(detect_mirror)"
  rootfs="$TESTBED_CACHE/rootfs/base"
  logf="$TESTBED_CACHE/logs/base.log"
  mkdir -p "$TESTBED_CACHE/logs" "$TESTBED_CACHE/debootstrap-cache"
  as_root rm -rf "$rootfs"
  mkdir -p "$rootfs"
  log "base: debootstrap --variant=$VARIANT $SUITE from $mirror (log: $logf)"
  local -a opts=(--variant="$VARIANT" --components="$COMPONENTS" --cache-dir="$TESTBED_CACHE/debootstrap-cache")
  [ -z "${INCLUDE:-}" ] || opts+=(--include="$INCLUDE")
  # Progress: one line per debootstrap phase (the first words of its "I:" lines).
  if ! as_root debootstrap "${opts[@]}" "$SUITE" "$rootfs" "$mirror" 2>&1 | tee "$logf" |
    awk '/^I: /{p=$2; if (p != last) {print "    debootstrap: " substr($0, 4); fflush(); last=p}}'; then
    tail -n 20 "$logf" >&2
    die "debootstrap failed (log: $logf)"
  fi
  log "base: finalize (apt/dpkg config, trim docs and caches)"
  as_root "$TESTBED_IMAGES_DIR/base/finalize.sh" "$rootfs"
  log "base: docker import -> $ref"
  local -a changes=(--change "LABEL $HASH_LABEL=$want $NAME_LABEL=base")
  local change
  for change in "${IMPORT_CHANGES[@]}"; do changes+=(--change "$change"); done
  as_root tar -C "$rootfs" --numeric-owner --sort=name -c . |
    "$DOCKER" import "${changes[@]}" \
      --message "tgstack testbed base: debootstrap $VARIANT $SUITE" - "$ref" >/dev/null
  as_root rm -rf "$rootfs"
  write_manifest base
  STATUS[base]=built
  log "base: built $ref ($(size_of "$ref"))"
}

# The Dockerfiles' RUN apt-get needs the mirror from a build container: try the default
# bridge network, then the host's network; fail with a clear message otherwise.
check_build_network() {
  [ -z "$BUILD_NETWORK" ] || return 0
  local mirror hostport host port net
  mirror="$(detect_mirror)"
  hostport="${mirror#*://}"
  hostport="${hostport%%/*}"
  host="${hostport%%:*}"
  port=80
  case "$mirror" in https://*) port=443 ;; esac
  [ "$host" = "$hostport" ] || port="${hostport##*:}"
  for net in default host; do
    if "$DOCKER" run --rm --network "$net" --entrypoint bash "$(image_ref base)" \
      -c "timeout 10 bash -c 'exec 3<>/dev/tcp/$host/$port'" >/dev/null 2>&1; then
      BUILD_NETWORK="$net"
      log "build network: '$net' reaches $host:$port"
      return 0
    fi
    log "build network: '$net' cannot reach $host:$port"
  done
  die "build containers cannot reach the Debian mirror $mirror (set DEBIAN_MIRROR?)"
}

build_docker() {
  local name="$1" ref want logf start
  ref="$(image_ref "$name")"
  want="$(recipe_hash "$name")"
  if up_to_date "$name"; then
    log "$name: $ref up to date (recipe ${want:0:12}, $(size_of "$ref"))"
    [ -f "$TESTBED_MANIFESTS_DIR/$name.txt" ] || write_manifest "$name"
    STATUS[$name]=cached
    return 0
  fi
  check_build_network
  logf="$TESTBED_CACHE/logs/$name.log"
  mkdir -p "$TESTBED_CACHE/logs"
  log "$name: docker build -> $ref (log: $logf)"
  local -a opts=(--network "$BUILD_NETWORK" --build-arg "BASE=$(image_ref base)"
    --label "$HASH_LABEL=$want" --label "$NAME_LABEL=$name" --force-rm -t "$ref")
  [ "$FORCE" -eq 0 ] || opts+=(--no-cache)
  start=$SECONDS
  # The legacy builder: it needs no buildx plugin and works with any engine version.
  if ! DOCKER_BUILDKIT=0 "$DOCKER" build "${opts[@]}" "$TESTBED_IMAGES_DIR/$name" 2>&1 | tee "$logf" |
    awk '/^Step [0-9]+\/[0-9]+ :/{line=$0; if (length(line) > 110) line=substr(line, 1, 107) "..."; print "    " line; fflush()}'; then
    tail -n 30 "$logf" >&2
    die "$name: docker build failed (log: $logf)"
  fi
  write_manifest "$name"
  STATUS[$name]=built
  log "$name: built $ref in $((SECONDS - start))s ($(size_of "$ref"))"
}

build_one() {
  case "$1" in
    base) build_base ;;
    *) build_docker "$1" ;;
  esac
}

list_images() {
  local name ref have want state size
  printf '%-20s %-36s %-12s %-10s %s\n' NAME REF RECIPE STATE SIZE
  for name in "${ALL_IMAGES[@]}"; do
    ref="$(image_ref "$name")"
    want="$(recipe_hash "$name")"
    have="$(image_label "$ref" "$HASH_LABEL")"
    size=-
    if [ -z "$have" ]; then
      state=missing
    else
      size="$(size_of "$ref")"
      if [ "$have" = "$want" ]; then state=current; else state=stale; fi
    fi
    printf '%-20s %-36s %-12s %-10s %s\n' "$name" "$ref" "${want:0:12}" "$state" "$size"
  done
}

main() {
  local -a wanted=()
  while [ $# -gt 0 ]; do
    case "$1" in
      --force) FORCE=1 ;;
      --list) docker_ok || die "no Docker engine: run scripts/testbed/engine.sh"; list_images; return ;;
      -h | --help) usage; return ;;
      all) wanted+=("${ALL_IMAGES[@]}") ;;
      stack) wanted+=("${STACK_IMAGES[@]}") ;;
      -*) die "unknown option $1" ;;
      *)
        [ -d "$TESTBED_IMAGES_DIR/$1" ] || die "no recipe molecule/images/$1"
        wanted+=("$1")
        ;;
    esac
    shift
  done
  [ ${#wanted[@]} -gt 0 ] || wanted=("${ALL_IMAGES[@]}")
  docker_ok || die "no Docker engine answering: run scripts/testbed/engine.sh"

  mkdir -p "$TESTBED_CACHE"
  # One build at a time on this machine (several people share the engine).
  exec 9>"$TESTBED_CACHE/build.lock"
  if ! flock -n 9; then
    log "another build holds $TESTBED_CACHE/build.lock; waiting"
    flock 9
  fi

  # Every image is built FROM the base: make sure it is current first.
  local -a order=(base)
  local name
  for name in "${wanted[@]}"; do
    [ "$name" = base ] || [[ " ${order[*]} " == *" $name "* ]] || order+=("$name")
  done
  log "images: ${order[*]} (tag $TESTBED_TAG)"
  for name in "${order[@]}"; do
    timed "$name" build_one "$name"
  done
  # Old versions of rebuilt images are left untagged: drop them.
  "$DOCKER" image prune -f --filter "label=$NAME_LABEL" >/dev/null 2>&1 || true

  print_timings
  log "summary:"
  for name in "${order[@]}"; do
    printf '    %-20s %-36s %-7s %s\n' "$name" "$(image_ref "$name")" "${STATUS[$name]:-?}" "$(size_of "$(image_ref "$name")")"
  done
}

main "$@"
