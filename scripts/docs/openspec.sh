#!/usr/bin/env bash
# Run the pinned OpenSpec CLI (scripts/docs/openspec/package-lock.json), installing it first
# with `npm ci` into .cache/openspec when it is missing or the lockfile changed.
#   scripts/docs/openspec.sh validate --all --strict --no-interactive
set -euo pipefail
cd "$(dirname "$0")/../.."
src=scripts/docs/openspec
dest=.cache/openspec
# No telemetry: the build runs offline and sends nothing anywhere.
export OPENSPEC_TELEMETRY=0 DO_NOT_TRACK=1

if ! command -v node >/dev/null || ! command -v npm >/dev/null; then
  echo "openspec: node and npm are required (scripts/install-system-deps.sh installs them)" >&2
  exit 1
fi
required=$(sed -n 's/.*"node": ">=\([0-9.]*\)".*/\1/p' "$src/package-lock.json" | head -n1)
if [ -n "$required" ] && ! node -e '
  const [a, b] = [process.versions.node, process.argv[1]].map(v => v.split(".").map(Number));
  for (let i = 0; i < 3; i++) { if ((a[i] || 0) !== (b[i] || 0)) process.exit((a[i] || 0) > (b[i] || 0) ? 0 : 1); }
' "$required"; then
  echo "openspec: node >= $required is required, found $(node --version)" >&2
  exit 1
fi

if ! cmp -s "$src/package-lock.json" "$dest/package-lock.json" || [ ! -x "$dest/node_modules/.bin/openspec" ]; then
  echo "==> installing the OpenSpec CLI into $dest (npm ci)" >&2
  rm -rf "$dest"
  mkdir -p "$dest"
  cp "$src/package.json" "$src/package-lock.json" "$dest/"
  npm ci --prefix "$dest" --no-audit --no-fund --ignore-scripts --loglevel=error >&2
fi
exec "$dest/node_modules/.bin/openspec" "$@"
