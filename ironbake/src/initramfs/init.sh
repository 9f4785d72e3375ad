#!/bin/sh
# ironbake's first stage: find the image (network or local disk), verify it, stack its layers
# with a tmpfs on top, apply this node's settings, and hand over to systemd.
#
# Kernel command line (the contract; see ARCHITECTURE.md):
#   ironbake.image=URL/          folder that holds the layers (ends with /)
#   ironbake.layers=NAME:SHA256,NAME:SHA256   bottom layer first
#   ironbake.node=NAME           this node's name (for messages; settings arrive as files)
#   ironbake.server=URL          boot server base URL (read by the image's ready report)
#   ironbake.servers=URL,URL     every boot server of the LAN: a failed fetch moves on to the
#                                next one (each serves the same published paths)
#   ironbake.root=partlabel:LABEL[,partlabel:LABEL]   local mode: layers on disk, bottom first
#   ironbake.slot=a|b            booted from that disk slot: a failure restarts the machine
#                                (so the boot manager counts the try) instead of a shell
#   ironbake.rescue              stop before switch_root with a shell
#   ironbake.install=disk:PATH|min-gib:N   install mode: the recipe's disk image onto that
#                                disk, then a restart into it (see /etc/ironbake/install.sh)
#   ironbake.wipe                install mode: overwrite a disk that is not ironbake's
#   ironbake.disk=CHUNKS_SHA256:IMAGE_SHA256:BYTES   install mode: the image, from the manifest

export PATH=/sbin:/bin:/usr/sbin:/usr/bin
/bin/busybox mkdir -p /proc /sys /dev /run /tmp /newroot
/bin/busybox mount -t proc proc /proc
/bin/busybox mount -t sysfs sysfs /sys
/bin/busybox mount -t devtmpfs devtmpfs /dev 2>/dev/null
/bin/busybox --install -s
exec </dev/console >/dev/console 2>&1

uptime_s() { read -r up _ </proc/uptime; echo "$up"; }
say() { printf 'ironbake: [%8ss] %s\n' "$(uptime_s)" "$*"; }

rescue() {
    say "RESCUE: $*"
    if [ -n "$SLOT" ]; then
        # Booted from a disk slot by systemd-boot, which counts the tries of a new slot:
        # restarting spends one, and once none are left it boots the other slot.
        say "slot $SLOT cannot boot: restarting in 10 s, so the boot manager can fall back"
        sleep 10
        reboot -f
    fi
    say "rescue shell on the console; leave it (exit) to try the boot again"
    setsid cttyhack sh -l
}

IMAGE='' LAYERS='' NODE='' ROOT='' RESCUE='' SLOT='' SERVER='' SERVERS='' INSTALL='' WIPE='' DISK=''
# The command line is one line of space-separated words: splitting it into words is the point.
# shellcheck disable=SC2013
for arg in $(cat /proc/cmdline); do
    case "$arg" in
        ironbake.image=*) IMAGE=${arg#*=} ;;
        ironbake.layers=*) LAYERS=${arg#*=} ;;
        ironbake.node=*) NODE=${arg#*=} ;;
        ironbake.root=*) ROOT=${arg#*=} ;;
        ironbake.rescue) RESCUE=1 ;;
        ironbake.slot=*) SLOT=${arg#*=} ;;
        ironbake.server=*) SERVER=${arg#*=} ;;
        ironbake.servers=*) SERVERS=$(echo "${arg#*=}" | tr ',' ' ') ;;
        ironbake.install=*) INSTALL=${arg#*=} ;;
        ironbake.wipe) WIPE=1 ;;
        ironbake.disk=*) DISK=${arg#*=} ;;
    esac
done
say "first stage $(cat /etc/ironbake/release) for node ${NODE:-?}"

# 1. Drivers: the root's filesystems always; hardware drivers for the devices present, matched
#    by modalias as udev would (a second round finds what the first one's drivers exposed,
#    e.g. virtio devices behind virtio_pci, disks behind ahci).
# modules.always holds one module name a line: each must be its own argument to modprobe.
# shellcheck disable=SC2046
modprobe -a -q $(cat /etc/ironbake/modules.always) || say "WARNING: some of $(tr '\n' ' ' </etc/ironbake/modules.always)failed to load"
# At most three rounds: the loop variable is only a counter, never read.
# shellcheck disable=SC2034
for round in 1 2 3; do
    before=$(wc -l </proc/modules)
    cat /sys/bus/*/devices/*/modalias 2>/dev/null | sort -u | xargs -r modprobe -a -q 2>/dev/null
    [ "$(wc -l </proc/modules)" = "$before" ] && break
done
say "drivers: $(wc -l </proc/modules) modules loaded"

mkdir -p /run/ironbake/img /run/ironbake/layers /run/ironbake/rw
# The fetched layers live in RAM for the whole uptime, on a tmpfs of their own (measured under
# QEMU: hashing a layer there is faster than on the initramfs's own root).
mount -t tmpfs -o mode=0700 tmpfs /run/ironbake/img
LOWER=

backoff() { # seconds to wait after failure number $1: 2, 4, 8, 16, 30, 30, ...
    d=$((1 << $1)); [ "$d" -gt 30 ] && d=30; echo "$d"
}

countdown() { # countdown SECONDS MESSAGE
    s=$1; shift
    while [ "$s" -gt 0 ]; do
        printf '\rironbake: %s; retrying in %2d s ' "$*" "$s"
        sleep 1; s=$((s - 1))
    done
    printf '\r%60s\r' ''
}

next_server() { # the fetches move on to the boot server after $SERVER in ironbake.servers
    [ -n "$SERVERS" ] || return 0
    case "$IMAGE" in "$SERVER"/*) ;; *) return 0 ;; esac
    path=${IMAGE#"$SERVER"}
    first='' next='' take=''
    for s in $SERVERS; do
        [ -z "$first" ] && first=$s
        [ -n "$take" ] && { next=$s; break; }
        [ "$s" = "$SERVER" ] && take=1
    done
    SERVER=${next:-$first}
    IMAGE=$SERVER$path
    say "trying the boot server $SERVER"
}

if [ -n "$ROOT" ]; then
    # Local mode: each layer is a partition found by its GPT label.
    for spec in $(echo "$ROOT" | tr ',' ' '); do
        label=${spec#partlabel:}
        tries=0; dev=
        while [ -z "$dev" ]; do
            for u in /sys/class/block/*/uevent; do
                grep -qx "PARTNAME=$label" "$u" && dev=/dev/$(basename "$(dirname "$u")")
            done
            [ -n "$dev" ] && break
            tries=$((tries + 1))
            [ "$tries" -ge 30 ] && { rescue "no partition labelled $label after 30 s"; tries=0; }
            sleep 1
        done
        mkdir -p "/run/ironbake/layers/$label"
        mount -t squashfs -o ro "$dev" "/run/ironbake/layers/$label" || rescue "cannot mount $dev ($label) as squashfs"
        LOWER="/run/ironbake/layers/$label${LOWER:+:$LOWER}"
        say "root layer $label: $dev"
    done
else
    # Not an if-then-else: rescue is meant to run when either test fails.
    # shellcheck disable=SC2015
    [ -n "$IMAGE" ] && [ -n "$LAYERS" ] || rescue "no ironbake.image= and ironbake.layers= (or ironbake.root=) on the kernel command line"

    # 2. Network: every wired link up, DHCP on all of them, the first lease wins.
    attempt=0
    while :; do
        rm -f /run/ironbake/lease
        links=
        for dev in /sys/class/net/*; do
            ifc=${dev##*/}
            [ "$ifc" = lo ] && continue
            [ "$(cat "$dev/type")" = 1 ] || continue
            ip link set "$ifc" up
            links="$links $ifc"
        done
        for ifc in $links; do
            udhcpc -i "$ifc" -f -q -n -t 4 -T 2 -s /etc/ironbake/udhcpc.script >/dev/null 2>&1 &
        done
        waited=0
        while [ ! -s /run/ironbake/lease ] && [ "$waited" -lt 100 ]; do
            sleep 0.1; waited=$((waited + 1))
        done
        if [ -s /run/ironbake/lease ]; then
            for p in $(pidof udhcpc); do kill "$p" 2>/dev/null; done
            break
        fi
        wait
        [ -s /run/ironbake/lease ] && break
        attempt=$((attempt + 1))
        countdown "$(backoff "$attempt")" "no DHCP lease on${links:- (no wired links)} (attempt $attempt)"
    done
    say "network: $(cat /run/ironbake/lease)"
    # The other links go down again, so that udev can give them the image's names (a link
    # that is up cannot be renamed) and systemd-networkd configures them from scratch.
    read -r lease_link _ </run/ironbake/lease
    for ifc in $links; do
        [ "$ifc" = "$lease_link" ] || ip link set "$ifc" down
    done

    if [ -n "$INSTALL" ]; then
        # Install mode: the disk image onto this node's disk, then a restart into it.
        # shellcheck source=/dev/null
        . /etc/ironbake/install.sh
        install_main "$INSTALL" "$WIPE" "$DISK" "$SERVER" "$IMAGE" "$NODE" "$lease_link"
    fi

    # 3. Fetch each layer, resuming broken transfers, and verify it before use.
    for spec in $(echo "$LAYERS" | tr ',' ' '); do
        name=${spec%%:*}; want=${spec#*:}
        file=/run/ironbake/img/$name
        attempt=0; mismatches=0
        while :; do
            # (No -T: Debian's busybox 1.35 wget crashes with it; its own stall timeout applies.)
            t0=$(uptime_s)
            if wget -q -c -O "$file" "$IMAGE$name"; then
                t1=$(uptime_s)
                got=$(sha256sum "$file" | cut -d' ' -f1)
                t2=$(uptime_s)
                [ "$got" = "$want" ] && break
                mismatches=$((mismatches + 1))
                say "REFUSED $name: sha256 is $got, expected $want"
                rm -f "$file"
                if [ "$mismatches" -ge 5 ]; then
                    rescue "$name failed verification $mismatches times from $IMAGE$name"
                    mismatches=0
                fi
            fi
            attempt=$((attempt + 1))
            countdown "$(backoff "$attempt")" "fetching $IMAGE$name failed (attempt $attempt)"
            next_server
        done
        size=$(stat -c %s "$file") # (wc -c would read it all)
        # How long the last try's transfer and its hash took (the bench splits them so).
        took=$(awk -v a="$t0" -v b="$t1" -v c="$t2" 'BEGIN { printf "in %.2f s, sha256 verified in %.2f s", b - a, c - b }')
        say "fetched $name: $((size / 1048576)) MiB $took"
        mkdir -p "/run/ironbake/layers/$name"
        mount -t squashfs -o loop,ro "$file" "/run/ironbake/layers/$name" || rescue "cannot mount $name"
        LOWER="/run/ironbake/layers/$name${LOWER:+:$LOWER}"
    done
fi

# 4. The layers read-only, a tmpfs on top, this node's settings, then systemd.
mount -t tmpfs -o mode=0755 tmpfs /run/ironbake/rw
mkdir -p /run/ironbake/rw/upper /run/ironbake/rw/work
mount -t overlay overlay -o "lowerdir=$LOWER,upperdir=/run/ironbake/rw/upper,workdir=/run/ironbake/rw/work" /newroot \
    || rescue "cannot stack the layers ($LOWER)"
# From the network the settings arrive as a second initramfs, already unpacked at
# /ironbake/node; a disk carries them on its ESP, which systemd-stub hands over as a credential.
from="from the boot server"
cred=/.extra/global_credentials/ironbake-node.cred
if [ -n "$ROOT" ] && [ -s "$cred" ]; then
    from="from this disk's ESP"
    (cd / && cpio -id -H newc <"$cred" 2>/dev/null) || say "WARNING: cannot unpack this disk's node settings ($cred)"
    [ -z "$NODE" ] && [ -s /ironbake/node/etc/hostname ] && NODE=$(cat /ironbake/node/etc/hostname) \
        && say "this disk is node $NODE"
fi
if [ -d /ironbake/node ]; then
    n=$(find /ironbake/node ! -type d | wc -l)
    cp -a /ironbake/node/. /newroot/
    say "per-node settings: $n files $from"
fi
[ -n "$RESCUE" ] && rescue "ironbake.rescue on the command line; the root is at /newroot"
say "root ready: switching to systemd"
mount --move /dev /newroot/dev
mount --move /sys /newroot/sys
mount --move /proc /newroot/proc
exec switch_root /newroot /sbin/init
