#!/usr/bin/env bash
# The README's test command on Debian 13 (trixie: PostgreSQL 17, oneDNN 3.7), run from a Debian 12 machine (or any
# Debian with debootstrap) as root: builds a Debian 13 root with debootstrap from Debian's archive under /var/tmp
# (kept and reused: delete it to start afresh), puts a clean copy of this checkout (its tracked files and the untracked
# ones git does not ignore) and this machine's Rust toolchain in it, and runs inside
#
#     bash scripts/test.sh                  # everything, as on Debian 12, on PostgreSQL 17
#
# or the command given instead:
#
#     bash scripts/test-debian13.sh                                     # the whole test command
#     bash scripts/test-debian13.sh cargo test -p qwen_embed_model --features qwen_embed_model/onednn
#     bash scripts/test-debian13.sh bash scripts/demo.sh                # the demo
#
# The root gets /proc, /sys, /dev and /dev/pts (what PostgreSQL, pgrx and the fault tests need) and the toolchain
# (~/.cargo, ~/.rustup, read-only but for cargo's registry and git caches) mounted; they are unmounted on any exit.
# Nothing else on the machine changes: the root's PostgreSQL clusters live inside it and are never started outside.
set -euo pipefail
cd "$(dirname "$0")/.."
[ "$(id -u)" -eq 0 ] || { echo "test-debian13.sh: run as root (debootstrap, chroot and mounts)" >&2; exit 1; }
root=${QWEN_EMBED_DEBIAN13_ROOT:-/var/tmp/qwen-embed-trixie}
mirror=http://deb.debian.org/debian
log() { echo "test-debian13: $*" >&2; }

if ! [ -x "$root/usr/bin/apt-get" ] || ! grep -qs '^VERSION_ID="13"' "$root/etc/os-release"; then
    command -v debootstrap >/dev/null || DEBIAN_FRONTEND=noninteractive apt-get install -y -q debootstrap >/dev/null
    log "making a Debian 13 root in $root (debootstrap, a few minutes)"
    rm -rf "$root"
    debootstrap --variant=minbase trixie "$root" "$mirror" >/dev/null
fi
cp /etc/resolv.conf "$root/etc/resolv.conf" # the package registries, for apt and cargo inside
# No service starts inside the root: installing postgresql-17 there would otherwise start its default cluster (on this
# machine's network, beside its own PostgreSQL) and leave it running. The tests start only their own clusters.
printf '#!/bin/sh\nexit 101\n' >"$root/usr/sbin/policy-rc.d"
chmod 755 "$root/usr/sbin/policy-rc.d"

mounted=()
cleanup() {
    local i
    for ((i = ${#mounted[@]} - 1; i >= 0; i--)); do umount -l "${mounted[i]}" 2>/dev/null || true; done
}
trap cleanup EXIT
bind() { # bind FROM TO [ro]
    mkdir -p "$2"
    mount --bind "$1" "$2"
    mounted+=("$2")
    [ "${3:-}" != ro ] || mount -o remount,bind,ro "$2"
}
mount -t proc proc "$root/proc" && mounted+=("$root/proc")
bind /sys "$root/sys" ro
bind /dev "$root/dev"
bind /dev/pts "$root/dev/pts"
mkdir -p "$root/dev/shm" && mount -t tmpfs shm "$root/dev/shm" && mounted+=("$root/dev/shm")
# The host's Rust toolchain at the same paths (rustup's proxies find their toolchains through $HOME).
cargo_home=${CARGO_HOME:-$HOME/.cargo} rustup_home=${RUSTUP_HOME:-$HOME/.rustup}
bind "$rustup_home" "$root$rustup_home" ro
bind "$cargo_home" "$root$cargo_home" ro
for cache in registry git; do
    mkdir -p "$cargo_home/$cache"
    bind "$cargo_home/$cache" "$root$cargo_home/$cache"
done

# A clean copy of the checkout: what git tracks and what it would (untracked, not ignored). Its target/ (the
# builds of an earlier run in this root) is kept: cargo rebuilds what changed.
work=$root/root/qwen_embed
mkdir -p "$work"
find "$work" -mindepth 1 -maxdepth 1 ! -name target -exec rm -rf {} +
git ls-files -z --cached --others --exclude-standard | while IFS= read -r -d '' f; do
    [ -e "$f" ] && printf '%s\0' "$f"
done | tar --null -T - -cf - | tar -xf - -C "$work"
[ $# -gt 0 ] || set -- bash scripts/test.sh
log "running in Debian 13: $*"
chroot "$root" /usr/bin/env -i HOME="$HOME" TERM="${TERM:-dumb}" LANG=C.UTF-8 CI="${CI:-}" \
    PATH="$cargo_home/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin" \
    bash -c 'cd /root/qwen_embed && exec "$@"' bash "$@"
