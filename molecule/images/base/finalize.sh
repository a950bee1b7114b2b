#!/usr/bin/env bash
# Finish a debootstrapped tree before `docker import`: overlay rootfs/, trim, reset identity.
# Usage: finalize.sh ROOTFS_DIR   (runs on the build host, as root)
set -euo pipefail
dir="${1:?rootfs dir}"
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"

# Overlay rootfs/ file by file: owned by root, mode 0755 for executables and 0644 otherwise,
# whatever the owner and umask of the checkout.
(cd "$here/rootfs" && find . -type f) | while read -r f; do
  mode=0644
  [ -x "$here/rootfs/$f" ] && mode=0755
  install -D -o root -g root -m "$mode" "$here/rootfs/$f" "$dir/$f"
done

# Docs, man pages, translations (later installs are covered by dpkg.cfg.d/90tgstack-nodoc).
find "$dir/usr/share/doc" -mindepth 1 -not -name copyright -not -type d -delete
find "$dir/usr/share/doc" -mindepth 1 -type d -empty -delete
rm -rf "$dir/usr/share/man/"* "$dir/usr/share/info/"* "$dir/usr/share/lintian/"*
find "$dir/usr/share/locale" -mindepth 1 -maxdepth 1 -not -name locale.alias -exec rm -rf {} +

# apt lists and caches, logs, host identity copied in by debootstrap.
rm -rf "$dir/var/lib/apt/lists/"* "$dir/var/cache/apt/"*.bin "$dir/var/cache/apt/archives/"*.deb
rm -rf "$dir/var/cache/debconf/"*-old "$dir/var/lib/dpkg/"*-old
find "$dir/var/log" -type f -delete
mkdir -p "$dir/var/lib/apt/lists/partial"
: >"$dir/etc/resolv.conf"
printf 'localhost\n' >"$dir/etc/hostname"
# Empty machine-id: systemd (server image) then makes a fresh one per instance.
: >"$dir/etc/machine-id"
rm -f "$dir/var/lib/dbus/machine-id"
