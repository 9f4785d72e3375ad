#!/bin/sh
# Undo the build-time diversion, then remove everything that would give every node the same
# identity or make two builds differ.
set -e
rm -f "$1/usr/sbin/update-initramfs"
chroot "$1" dpkg-divert --quiet --local --rename --remove /usr/sbin/update-initramfs
if [ -f "$1/etc/apt/sources.list" ]; then
    sed -i "s|signed-by=$1/|signed-by=/|g" "$1/etc/apt/sources.list"
fi
: > "$1/etc/machine-id"
# mmdebstrap copies the build host's name; a node's name comes from its per-node settings.
echo localhost > "$1/etc/hostname"
if [ -e "$1/var/lib/dbus/machine-id" ] && [ ! -L "$1/var/lib/dbus/machine-id" ]; then
    rm -f "$1/var/lib/dbus/machine-id"
fi
rm -f "$1"/etc/ssh/ssh_host_* "$1/var/lib/systemd/random-seed" "$1/var/lib/systemd/credential.secret"
rm -f "$1/var/cache/ldconfig/aux-cache" "$1/var/cache/debconf/"*-old "$1/var/lib/dpkg/"*-old
find "$1/var/log" -type f -delete
