# shellcheck shell=bash
# shellcheck disable=SC2034 # variables are used by the scripts that source this file
# Shared helpers for the offline testbed scripts (sourced, not executed).
#
# Environment knobs (all optional):
#   TESTBED_TAG     tag given to every tgstack/* image            (default: trixie)
#   TESTBED_CACHE   work/cache directory                          (default: <repo>/.cache/testbed)
#   DEBIAN_MIRROR   Debian mirror for debootstrap and apt in builds (default: the host's own)
#   DOCKER          docker client to use                          (default: docker)

TESTBED_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
TESTBED_TAG="${TESTBED_TAG:-trixie}"
TESTBED_CACHE="${TESTBED_CACHE:-$TESTBED_ROOT/.cache/testbed}"
TESTBED_IMAGES_DIR="$TESTBED_ROOT/molecule/images"
# Committed record of the Debian package versions each image was last built from.
TESTBED_MANIFESTS_DIR="$TESTBED_IMAGES_DIR/manifests"
TESTBED_SUITE="trixie"
DOCKER="${DOCKER:-docker}"
# Label carrying the hash of an image's recipe; a build is skipped when it matches.
HASH_LABEL="org.tgstack.recipe-hash"
NAME_LABEL="org.tgstack.image"

# Images that stand in for the official stack images (what save-images.sh ships to a server).
STACK_IMAGES=(postgres pgbouncer redis rabbitmq prometheus
  postgres-exporter pgbouncer-exporter redis-exporter node-exporter)

# Seconds since the outermost testbed script started (shared with the scripts it runs).
TESTBED_T0="${TESTBED_T0:-$EPOCHSECONDS}"
export TESTBED_T0

log() { printf '[testbed %4ds] %s\n' "$((EPOCHSECONDS - TESTBED_T0))" "$*"; }
die() {
  printf '[testbed] ERROR: %s\n' "$*" >&2
  exit 1
}

# as_root CMD...: run CMD as root (sudo when needed).
as_root() {
  if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi
}

# image_ref NAME: the full reference of a testbed image.
image_ref() {
  case "$1" in
    base) printf 'tgstack/trixie-base:%s' "$TESTBED_TAG" ;;
    *) printf 'tgstack/%s:%s' "$1" "$TESTBED_TAG" ;;
  esac
}

# detect_mirror: the Debian mirror the host's apt uses (DEBIAN_MIRROR wins).
detect_mirror() {
  if [ -n "${DEBIAN_MIRROR:-}" ]; then
    printf '%s\n' "${DEBIAN_MIRROR%/}"
    return
  fi
  local uri=""
  # deb822 sources: "URIs: http://deb.debian.org/debian"
  uri="$(grep -hsiE '^[[:space:]]*URIs:' /etc/apt/sources.list.d/*.sources 2>/dev/null |
    awk '{for (i = 2; i <= NF; i++) print $i}' | grep -E '/debian/?$' | head -n1 || true)"
  if [ -z "$uri" ]; then
    # one-line sources: "deb [opts] http://deb.debian.org/debian bookworm main"
    uri="$(grep -hsE '^[[:space:]]*deb[[:space:]]' /etc/apt/sources.list /etc/apt/sources.list.d/*.list 2>/dev/null |
      sed -E 's/\[[^]]*\]//' | awk '{print $2}' | grep -E '/debian/?$' | head -n1 || true)"
  fi
  uri="${uri:-http://deb.debian.org/debian}"
  printf '%s\n' "${uri%/}"
}

# docker_ok: the engine answers.
docker_ok() { "$DOCKER" info >/dev/null 2>&1; }

# image_label REF LABEL: print a label of a local image (empty when absent).
image_label() {
  "$DOCKER" image inspect -f "{{ index .Config.Labels \"$2\" }}" "$1" 2>/dev/null || true
}

# timed NAME CMD...: run CMD (errexit stays in force inside it), record its duration in TIMINGS.
declare -a TIMINGS=()
timed() {
  local name="$1" start=$SECONDS
  shift
  "$@"
  TIMINGS+=("$(printf '%-22s %5ds' "$name" "$((SECONDS - start))")")
}

print_timings() {
  [ ${#TIMINGS[@]} -gt 0 ] || return 0
  log "timings:"
  printf '    %s\n' "${TIMINGS[@]}"
}
