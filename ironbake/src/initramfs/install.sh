# shellcheck shell=sh
# ironbake's first stage, install mode: /init sources this file and calls install_main when
# the kernel command line has ironbake.install= (the boot server sends it to a node whose
# inventory entry has an `install`). It puts the recipe's published disk image onto the
# node's disk and restarts into that disk:
#
#   1. find the disk (ironbake.install=disk:PATH or min-gib:N) and check it: a disk that is
#      missing, too small, or holds partitions or filesystems that are not ironbake's (unless
#      ironbake.wipe) is refused, and nothing is written to it;
#   2. fetch the image's chunk list and check it against the manifest's sha256;
#   3. fetch each 16 MiB piece of disk.img (an HTTP range, resumed when a transfer breaks),
#      check its sha256, write it; the first piece, which holds the partition table, last;
#   4. read the whole image back from the disk and check it against the manifest's sha256;
#   5. move the backup partition table to the disk's end (the space past the image is then
#      free for the data partition), put this node's settings onto the ESP, make the disk
#      the firmware's next boot (UEFI BootNext), tell the boot server (a signed message,
#      kind=installed), restart.
#
# The helpers (le, crc32, gpt_move_backup, hmac_sha256, boot_option) work on plain files
# too: the build host's tests run them under busybox sh against image files.

EFI_GLOBAL=8be4df61-93ca-11d2-aa0d-00e098032b8c
# The ESP's boot path: systemd-boot at the removable-media path (see the disk layout).
EFI_LOADER='\EFI\BOOT\BOOTX64.EFI'
BOOT_DESCRIPTION=ironbake

# le VALUE BYTES: VALUE as BYTES little-endian bytes.
le() {
    v=$1 n=$2 out=''
    while [ "$n" -gt 0 ]; do
        out="$out\\$(printf %03o $((v & 255)))"
        v=$((v >> 8)) n=$((n - 1))
    done
    # The format is built of octal escapes only.
    # shellcheck disable=SC2059
    printf "$out"
}

# num_at FILE OFFSET BYTES: the little-endian number there.
num_at() {
    v=0 shift_by=0
    for b in $(dd if="$1" bs=1 skip="$2" count="$3" 2>/dev/null | od -An -v -tu1); do
        v=$((v | (b << shift_by))) shift_by=$((shift_by + 8))
    done
    echo "$v"
}

# put FILE OFFSET BYTES VALUE: writes VALUE there, little-endian.
put() {
    le "$4" "$3" | dd of="$1" bs=1 seek="$2" conv=notrunc 2>/dev/null
}

# crc32: the CRC-32 of stdin's bytes, as GPT headers carry it (IEEE 802.3, reflected).
crc32() {
    crc=4294967295
    for b in $(od -An -v -tu1); do
        crc=$((crc ^ b))
        for _ in 1 2 3 4 5 6 7 8; do
            if [ $((crc & 1)) = 1 ]; then
                crc=$(((crc >> 1) ^ 3988292384))
            else
                crc=$((crc >> 1))
            fi
        done
    done
    echo $((crc ^ 4294967295))
}

# gpt_set_crc HEADER-FILE: recomputes the header's own CRC (over its first 92 bytes).
gpt_set_crc() {
    put "$1" 16 4 0
    put "$1" 16 4 "$(dd if="$1" bs=1 count=92 2>/dev/null | crc32)"
}

# gpt_move_backup DEV SECTORS: moves the backup GPT (its entries and header) of an image
# written at the start of DEV, which has SECTORS 512-byte sectors, to DEV's last sectors,
# clears the old copy and makes the protective MBR cover the whole disk. The entries are
# unchanged, so their CRC is too; each header's own CRC is recomputed.
gpt_move_backup() {
    dev=$1 sectors=$2 tmp=${IRONBAKE_TMP:-/run/ironbake}
    last=$((sectors - 1))
    dd if="$dev" of="$tmp/gpt-primary" bs=512 skip=1 count=1 2>/dev/null
    [ "$(dd if="$tmp/gpt-primary" bs=1 count=8 2>/dev/null)" = "EFI PART" ] || {
        echo "no GPT header at sector 1 of $dev"
        return 1
    }
    old=$(num_at "$tmp/gpt-primary" 32 8)
    [ "$old" = "$last" ] && return 0
    entries=$((($(num_at "$tmp/gpt-primary" 80 4) * $(num_at "$tmp/gpt-primary" 84 4) + 511) / 512))
    dd if="$dev" of="$tmp/gpt-entries" bs=512 skip=2 count="$entries" 2>/dev/null
    put "$tmp/gpt-primary" 32 8 "$last"
    put "$tmp/gpt-primary" 48 8 $((last - entries - 1))
    cp "$tmp/gpt-primary" "$tmp/gpt-backup"
    gpt_set_crc "$tmp/gpt-primary"
    put "$tmp/gpt-backup" 24 8 "$last"
    put "$tmp/gpt-backup" 32 8 1
    put "$tmp/gpt-backup" 72 8 $((last - entries))
    gpt_set_crc "$tmp/gpt-backup"
    # The new backup first, then the primary that points at it, then the old backup goes.
    if ! { dd if="$tmp/gpt-entries" of="$dev" bs=512 seek=$((last - entries)) conv=notrunc 2>/dev/null &&
        dd if="$tmp/gpt-backup" of="$dev" bs=512 seek="$last" conv=notrunc 2>/dev/null &&
        dd if="$tmp/gpt-primary" of="$dev" bs=512 seek=1 conv=notrunc 2>/dev/null &&
        dd if=/dev/zero of="$dev" bs=512 seek=$((old - entries)) count=$((entries + 1)) conv=notrunc 2>/dev/null; }; then
        echo "writing the partition table of $dev failed"
        return 1
    fi
    pmbr=$((sectors - 1))
    [ "$pmbr" -gt 4294967295 ] && pmbr=4294967295
    put "$dev" 458 4 "$pmbr"
    sync
}

# hex_bytes HEX: those bytes.
hex_bytes() {
    h=$1 out=''
    while [ -n "$h" ]; do
        out="$out\\$(printf %03o "0x${h%"${h#??}"}")"
        h=${h#??}
    done
    # shellcheck disable=SC2059
    printf "$out"
}

# hmac_sha256 KEY FILE: the HMAC-SHA256 of FILE's bytes with KEY (text of at most 64
# bytes, as the node key is), in hex: what the image's agent signs its messages with.
hmac_sha256() {
    [ "${#1}" -le 64 ] || return 1
    ipad='' opad=''
    for b in $(printf '%s' "$1" | od -An -v -tu1); do
        ipad="$ipad\\$(printf %03o $((b ^ 54)))"
        opad="$opad\\$(printf %03o $((b ^ 92)))"
    done
    i=${#1}
    while [ "$i" -lt 64 ]; do
        ipad="$ipad\\066" opad="$opad\\134" i=$((i + 1))
    done
    # shellcheck disable=SC2059
    inner=$({ printf "$ipad"; cat "$2"; } | sha256sum | cut -d' ' -f1)
    # shellcheck disable=SC2059
    { printf "$opad"; hex_bytes "$inner"; } | sha256sum | cut -d' ' -f1
}

# utf16 TEXT: ASCII TEXT as UTF-16LE, with its terminating zero.
utf16() {
    for b in $(printf '%s' "$1" | od -An -v -tu1); do
        le "$b" 2
    done
    le 0 2
}

# boot_option PARTNUM START SIZE GUID-FILE: an EFI_LOAD_OPTION (with efivarfs's attribute
# word first) that boots EFI_LOADER from partition PARTNUM (START and SIZE in sectors, its
# unique GUID as the 16 bytes of GUID-FILE, as the GPT entry holds them) of a GPT disk.
boot_option() {
    file_node=$((4 + 2 * (${#EFI_LOADER} + 1)))
    le 7 4           # non-volatile, boot service and runtime access
    le 1 4           # LOAD_OPTION_ACTIVE
    le $((42 + file_node + 4)) 2
    utf16 "$BOOT_DESCRIPTION"
    le 4 1; le 1 1; le 42 2  # media device path, hard drive
    le "$1" 4; le "$2" 8; le "$3" 8
    cat "$4"
    le 2 1; le 2 1   # GPT, GUID signature
    le 4 1; le 4 1; le "$file_node" 2  # media device path, file path
    utf16 "$EFI_LOADER"
    le 127 1; le 255 1; le 4 2  # end of the device path
}

# --- what runs on the node ---

# install_say TEXT: a line on the console.
install_say() { say "install: $*"; }

# The whole disks the kernel shows (no loop, RAM, optical or mapped devices), one a line.
whole_disks() {
    for b in /sys/block/*; do
        n=${b##*/}
        case "$n" in loop* | ram* | sr* | zram* | md* | dm-* | nbd* | fd*) continue ;; esac
        [ "$(cat "$b/size")" -gt 0 ] 2>/dev/null || continue
        echo "$n"
    done
}

# serial_of NAME: the disk's serial as udev spells it in /dev/disk/by-id (spaces as _).
serial_of() {
    b=/sys/block/$1
    s=''
    if [ -r "$b/serial" ]; then
        s=$(cat "$b/serial")
    elif [ -r "$b/device/serial" ]; then
        s=$(cat "$b/device/serial")
    elif [ -r "$b/device/vpd_pg80" ]; then
        s=$(tail -c +5 "$b/device/vpd_pg80" | tr -d '\000')
    fi
    echo "$s" | sed 's/^[[:space:]]*//; s/[[:space:]]*$//; s/[[:space:]]\{1,\}/_/g'
}

# wwid_of NAME: the disk's world-wide name, as /dev/disk/by-id spells it (wwn-0x..., eui....).
wwid_of() {
    w=$(cat "/sys/block/$1/device/wwid" "/sys/block/$1/wwid" 2>/dev/null | head -n1)
    case "$w" in naa.*) echo "wwn-0x${w#naa.}" ;; *) echo "$w" ;; esac
}

# disk_words NAME: how people know the disk: "/dev/vda (virtio-SERIAL, 8 GiB)".
disk_words() {
    s=$(serial_of "$1")
    gib=$(($(cat "/sys/block/$1/size") / 2097152))
    echo "/dev/$1 (${s:+serial $s, }$gib GiB)"
}

# find_disk SPEC: the kernel name of the disk SPEC names (disk:PATH or min-gib:N), waiting
# up to 10 s for it; on failure, prints why on stdout and returns 1.
find_disk() {
    spec=$1
    tries=0
    while :; do
        found='' why=''
        case "$spec" in
        disk:/dev/disk/by-id/*)
            id=${spec#disk:/dev/disk/by-id/}
            case "$id" in *-part[0-9]*)
                echo "$spec names a partition: name the whole disk"
                return 1 ;;
            esac
            for d in $(whole_disks); do
                s=$(serial_of "$d") w=$(wwid_of "$d")
                if { [ -n "$s" ] && case "$id" in *-"$s" | *_"$s") true ;; *) false ;; esac; } ||
                    { [ -n "$w" ] && { [ "$id" = "$w" ] || [ "$id" = "nvme-$w" ]; }; }; then
                    found="$found $d"
                fi
            done
            ;;
        disk:/dev/*)
            n=${spec#disk:/dev/}
            [ -e "/sys/block/$n" ] && found=$n
            ;;
        min-gib:*)
            want=$((${spec#min-gib:} * 2097152))
            for d in $(whole_disks); do
                [ "$(cat "/sys/block/$d/size")" -ge "$want" ] && found="$found $d"
            done
            ;;
        *)
            echo "ironbake.install=$spec is neither disk:PATH nor min-gib:N"
            return 1 ;;
        esac
        # One word a disk: splitting is the point.
        # shellcheck disable=SC2086
        set -- $found
        if [ "$#" = 1 ]; then
            echo "$1"
            return 0
        fi
        if [ "$#" -gt 1 ]; then
            why="$# disks match $spec ($*): name one with install = { disk = \"/dev/disk/by-id/...\" }"
        else
            why="no disk matches $spec"
        fi
        tries=$((tries + 1))
        if [ "$tries" -ge 10 ]; then
            list=''
            for d in $(whole_disks); do list="$list, $(disk_words "$d")"; done
            echo "$why; the disks here: ${list#, }"
            [ -n "$list" ] || echo "$why; the kernel shows no disk at all (a storage driver missing?)"
            return 1
        fi
        sleep 1
    done
}

# ours LABEL: is LABEL a partition name of ironbake's disk layout?
ours() {
    case "$1" in ESP | ironbake-base-a | ironbake-base-b | ironbake-overlay-a | ironbake-overlay-b | ironbake-data) return 0 ;; esac
    return 1
}

# blank DEV SKIP: are the MiB of DEV at SKIP sectors all zeros?
blank() {
    [ -z "$(dd if="$1" bs=512 skip="$2" count=2048 2>/dev/null | tr -d '\000' | head -c 1)" ]
}

# hex_at DEV OFFSET LENGTH: those bytes of DEV, in hex.
hex_at() {
    dd if="$1" bs=1 skip="$2" count="$3" 2>/dev/null | od -An -v -tx1 | tr -d ' \n'
}

# fs_type DEV: the filesystem, volume or table DEV starts with, by its magic number (the
# first stage has no blkid), or nothing.
fs_type() {
    [ "$(hex_at "$1" 1080 2)" = 53ef ] && { echo "an ext2/3/4 filesystem"; return; }
    case "$(hex_at "$1" 0 6)" in
    58465342*) echo "an XFS filesystem"; return ;;
    4c554b53babe) echo "a LUKS volume"; return ;;
    esac
    [ "$(hex_at "$1" 65600 8)" = 5f42485266535f4d ] && { echo "a btrfs filesystem"; return; }
    [ "$(hex_at "$1" 536 8)" = 4c564d3220303031 ] && { echo "an LVM physical volume"; return; }
    [ "$(hex_at "$1" 4096 4)" = fc4e2ba9 ] && { echo "a RAID member (md)"; return; }
    [ "$(hex_at "$1" 4086 10)" = 53574150535041434532 ] && { echo "a swap area"; return; }
    [ "$(hex_at "$1" 3 4)" = 4e544653 ] && { echo "an NTFS filesystem"; return; }
    [ "$(hex_at "$1" 82 3)" = 464154 ] && { echo "a FAT filesystem"; return; }
    [ "$(hex_at "$1" 54 3)" = 464154 ] && { echo "a FAT filesystem"; return; }
    [ "$(hex_at "$1" 512 8)" = 4546492050415254 ] && { echo "a GPT with no partitions the kernel shows"; return; }
    [ "$(hex_at "$1" 510 2)" = 55aa ] && { echo "an MBR partition table"; return; }
}

# foreign NAME: what on the disk is not ironbake's (nothing when it is blank or ours).
foreign() {
    d=$1 parts=0 what=''
    for p in /sys/block/"$d"/"$d"*; do
        [ -e "$p/partition" ] || continue
        parts=$((parts + 1))
        label=$(sed -n 's/^PARTNAME=//p' "$p/uevent")
        if ! ours "$label"; then
            type=$(fs_type "/dev/${p##*/}")
            what="$what, partition ${p##*/} (${label:+GPT name $label, }${type:-no filesystem known})"
        fi
    done
    if [ "$parts" = 0 ]; then
        type=$(fs_type "/dev/$d")
        if [ -n "$type" ]; then
            what=", $type on the whole disk"
        elif ! blank "/dev/$d" 0; then
            what=", data in its first MiB (no partition table ironbake knows)"
        elif ! blank "/dev/$d" $(($(cat "/sys/block/$d/size") - 2048)); then
            what=", data in its last MiB"
        fi
    fi
    echo "${what#, }"
}

# install_check NAME: why the image cannot go onto the disk, if it cannot.
install_check() {
    d=$1 b=/sys/block/$1
    [ "$(cat "$b/ro")" = 0 ] || { echo "$(disk_words "$d") is read-only"; return; }
    [ "$(cat "$b/queue/logical_block_size")" = 512 ] || {
        echo "$(disk_words "$d") has $(cat "$b/queue/logical_block_size")-byte sectors; the image is made for 512"
        return
    }
    size=$(($(cat "$b/size") * 512))
    [ "$size" -ge "$INSTALL_BYTES" ] || {
        echo "$(disk_words "$d") is too small: $((size >> 20)) MiB, the image needs $((INSTALL_BYTES >> 20)) MiB"
        return
    }
    f=$(foreign "$d")
    [ -z "$f" ] && return
    if [ -n "$INSTALL_WIPE" ]; then
        install_say "wipe = true: overwriting what $(disk_words "$d") holds: $f" >&2
        return
    fi
    echo "$(disk_words "$d") holds what is not ironbake's: $f (wipe = true in the node's install overwrites it)"
}

# install_report KIND LINE...: a signed message to the boot server (kind installed or
# refused), as the image's agent sends them; 0 when the server took it.
install_report() {
    kind=$1
    shift
    key_file=/ironbake/node/etc/ironbake/node-key
    [ -r "$key_file" ] || { install_say "no node key in this node's settings: cannot tell the server"; return 1; }
    read -r key <"$key_file"
    nonce=$(wget -q -O - "$INSTALL_SERVER/api/v1/agent/nonce?node=$INSTALL_NODE" | head -n1)
    [ -n "$nonce" ] || return 1
    read -r boot </proc/sys/kernel/random/boot_id
    msg=/run/ironbake/message
    {
        printf 'node=%s\nnonce=%s\nkind=%s\nboot=%s\n' "$INSTALL_NODE" "$nonce" "$kind" "$boot"
        printf 'recipe=%s\nversion=%s\nuptime=%s\n' "$INSTALL_RECIPE" "$INSTALL_VERSION" "$(uptime_s)"
        for line in "$@"; do printf '%s\n' "$line" | tr -d '\r' | head -c 300; echo; done
    } | grep -v '^$' >"$msg"
    sig=$(hmac_sha256 "$key" "$msg") || return 1
    wget -q -O /dev/null --header "X-Ironbake-Signature: $sig" --post-file "$msg" "$INSTALL_SERVER/api/v1/agent"
}

# install_refuse WHY: says why on the console and to the server; nothing was written.
install_refuse() {
    install_stop REFUSED "$*" "nothing was written; fix the node's install in the inventory, then power-cycle $INSTALL_NODE"
}

# install_stop WORD WHY NEXT: stops the install with WHY on the console and to the server
# (kind=refused; written=yes unless WORD is REFUSED), says what to do NEXT, and opens the
# rescue shell.
install_stop() {
    written=yes
    [ "$1" = REFUSED ] && written=no
    say "$1 install of $INSTALL_RECIPE@$INSTALL_VERSION: $2"
    install_report refused "why=$2" "written=$written" || say "(the boot server did not take the report)"
    say "$3"
    rescue "install stopped"
}

# install_pieces NAME: fetches, checks and writes every piece of the chunk list, the first
# one last; 1 when a piece keeps failing its check.
install_pieces() {
    d=$1 total=$((INSTALL_BYTES >> 20)) start=$(uptime_s) piece=/run/ironbake/img/piece
    first='' done=0
    while read -r off len want; do
        if [ "$off" = 0 ]; then
            first="$off $len $want"
            continue
        fi
        install_piece "$d" "$off" "$len" "$want" "$piece" || return 1
        now=$(uptime_s)
        done=$((done + len))
        mib=$((done >> 20))
        secs=$(echo "$start $now" | awk '{ d = $2 - $1; if (d < 0.1) d = 0.1; print d }')
        install_say "written $mib of $total MiB ($(echo "$mib $secs" | awk '{ printf "%.1f", $1 / $2 }') MiB/s)"
    done </run/ironbake/img/chunks
    # shellcheck disable=SC2086
    install_piece "$d" $first "$piece" || return 1
    install_say "written $total of $total MiB, the partition table last"
}

# install_piece NAME OFFSET LENGTH SHA256 FILE: one piece of disk.img, fetched into FILE
# (behind one byte: busybox wget resumes with -c only into a file that is not empty, and
# sends the Range we give it instead of its own), resumed, checked, then written.
install_piece() {
    d=$1 off=$2 len=$3 want=$4 f=$5
    printf '#' >"$f"
    attempt=0 mismatches=0
    while :; do
        have=$(($(stat -c %s "$f") - 1))
        if [ "$have" -lt "$len" ]; then
            wget -q -c -O "$f" --header "Range: bytes=$((off + have))-$((off + len - 1))" "${INSTALL_IMAGE}disk.img"
            have=$(($(stat -c %s "$f") - 1))
        fi
        if [ "$have" = "$len" ]; then
            got=$(tail -c +2 "$f" | sha256sum | cut -d' ' -f1)
            if [ "$got" = "$want" ]; then
                tail -c +2 "$f" | dd of="/dev/$d" bs=1M seek=$((off >> 20)) conv=notrunc,fsync 2>/dev/null || {
                    say "writing /dev/$d at byte $off failed"
                    return 1
                }
                return 0
            fi
            mismatches=$((mismatches + 1))
            say "REFUSED disk.img bytes $off-$((off + len - 1)): sha256 is $got, expected $want"
            [ "$mismatches" -ge 5 ] && return 1
            printf '#' >"$f"
        elif [ "$have" -gt "$len" ]; then
            say "the server sent more than the range asked for (bytes $off-$((off + len - 1)))"
            printf '#' >"$f"
        fi
        attempt=$((attempt + 1))
        countdown "$(backoff "$attempt")" "fetching ${INSTALL_IMAGE}disk.img bytes $off-$((off + len - 1)) failed (attempt $attempt)"
    done
}

# install_boot_next NAME: a boot entry for the disk's ESP, and BootNext set to it.
install_boot_next() {
    d=$1 vars=/sys/firmware/efi/efivars
    if [ ! -d /sys/firmware/efi ]; then
        install_say "not booted by UEFI: the firmware's boot order must list the disk"
        return 0
    fi
    grep -q " $vars " /proc/mounts || mount -t efivarfs efivarfs "$vars" || {
        install_say "cannot mount efivarfs: the firmware's boot order must list the disk"
        return 0
    }
    esp=$(install_esp "$d") || return 1
    num=$(cat "/sys/class/block/$esp/partition")
    # The ESP's unique GUID: bytes 16-31 of its entry (entries start at sector 2, 128 bytes each).
    dd if="/dev/$d" bs=1 skip=$((1024 + (num - 1) * 128 + 16)) count=16 of=/run/ironbake/esp-guid 2>/dev/null
    boot_option "$num" "$(cat "/sys/class/block/$esp/start")" "$(cat "/sys/class/block/$esp/size")" \
        /run/ironbake/esp-guid >/run/ironbake/boot-option
    slot=''
    for i in $(seq 0 255); do
        n=$(printf %04X "$i")
        v="$vars/Boot$n-$EFI_GLOBAL"
        if [ -e "$v" ]; then
            cmp -s "$v" /run/ironbake/boot-option && { slot=$n; break; }
        elif [ -z "$slot" ]; then
            free=$n
            slot=new
        fi
    done
    if [ "$slot" = new ] || [ -z "$slot" ]; then
        slot=$free
        dd if=/run/ironbake/boot-option of="$vars/Boot$slot-$EFI_GLOBAL" bs=4096 2>/dev/null || {
            install_say "the firmware refused a new boot entry: the firmware's boot order must list the disk"
            return 0
        }
    fi
    { le 7 4; le "$((0x$slot))" 2; } >/run/ironbake/boot-next
    dd if=/run/ironbake/boot-next of="$vars/BootNext-$EFI_GLOBAL" bs=4096 2>/dev/null ||
        install_say "the firmware refused BootNext: the firmware's boot order must list the disk"
    install_say "next boot: the disk (Boot$slot, $BOOT_DESCRIPTION on partition $num)"
}

# install_esp NAME: the kernel name of the disk's ESP partition.
install_esp() {
    for p in /sys/block/"$1"/"$1"*; do
        grep -qx 'PARTNAME=ESP' "$p/uevent" 2>/dev/null && { echo "${p##*/}"; return 0; }
    done
    say "the disk shows no partition named ESP after the install"
    return 1
}

# install_settings NAME MAC: this node's settings archive onto the disk's ESP, where the
# first stage of a disk boot finds it (loader/credentials/ironbake-node.cred).
install_settings() {
    esp=$(install_esp "$1") || return 1
    modprobe -a -q vfat nls_cp437 nls_ascii 2>/dev/null
    mkdir -p /run/ironbake/esp
    mount -t vfat -o iocharset=ascii "/dev/$esp" /run/ironbake/esp || { say "cannot mount the ESP /dev/$esp"; return 1; }
    mkdir -p /run/ironbake/esp/loader/credentials
    cred=/run/ironbake/esp/loader/credentials/ironbake-node.cred
    attempt=0
    until wget -q -O "$cred.new" "$INSTALL_SERVER/nodes/$2/settings.img?alone=1" && [ -s "$cred.new" ]; do
        attempt=$((attempt + 1))
        countdown "$(backoff "$attempt")" "fetching this node's settings for its disk failed (attempt $attempt)"
    done
    mv "$cred.new" "$cred"
    bytes=$(wc -c <"$cred")
    umount /run/ironbake/esp || { say "cannot unmount the ESP /dev/$esp"; return 1; }
    install_say "node settings on the ESP ($bytes bytes)"
}

# install_once: one try; 1 when it was refused (after the rescue shell).
install_once() {
    if ! d=$(find_disk "$INSTALL_SPEC"); then
        install_refuse "$d"
        return 1
    fi
    words=$(disk_words "$d")
    why=$(install_check "$d")
    if [ -n "$why" ]; then
        install_refuse "$why"
        return 1
    fi
    install_say "$INSTALL_RECIPE@$INSTALL_VERSION ($((INSTALL_BYTES >> 20)) MiB) onto $words"
    attempt=0
    until wget -q -O /run/ironbake/img/chunks "${INSTALL_IMAGE}disk.chunks" &&
        [ "$(sha256sum /run/ironbake/img/chunks | cut -d' ' -f1)" = "$INSTALL_CHUNKS_SHA256" ]; do
        attempt=$((attempt + 1))
        [ -s /run/ironbake/img/chunks ] && say "REFUSED disk.chunks: its sha256 is not the manifest's"
        countdown "$(backoff "$attempt")" "fetching ${INSTALL_IMAGE}disk.chunks failed (attempt $attempt)"
    done
    if ! install_pieces "$d"; then
        install_stop FAILED "a piece of disk.img kept failing its sha256 (the published image does not match its manifest: run ironbake verify); the pieces before it were written, the partition table was not" "fix the published image, then power-cycle $INSTALL_NODE"
        return 1
    fi
    sync
    echo 3 >/proc/sys/vm/drop_caches
    got=$(dd if="/dev/$d" bs=1M count=$((INSTALL_BYTES >> 20)) 2>/dev/null | sha256sum | cut -d' ' -f1)
    if [ "$got" != "$INSTALL_IMAGE_SHA256" ]; then
        install_stop FAILED "/dev/$d does not read back as written: sha256 $got, the image's is $INSTALL_IMAGE_SHA256 (a failing disk?)" "check the disk, then power-cycle $INSTALL_NODE"
        return 1
    fi
    install_say "read back from the disk: sha256 $got, as the manifest says"
    if ! why=$(gpt_move_backup "/dev/$d" "$(cat "/sys/block/$d/size")"); then
        install_stop FAILED "moving the backup partition table: $why" "the image is on the disk but its table does not span it; power-cycle $INSTALL_NODE to install again"
        return 1
    fi
    blockdev --rereadpt "/dev/$d" 2>/dev/null
    sleep 1
    install_say "backup partition table at the disk's end: the space past the image is free"
    if ! install_settings "$d" "$INSTALL_MAC"; then
        install_stop FAILED "the node's settings could not go onto the ESP" "the disk would boot as no node in particular; power-cycle $INSTALL_NODE to install again"
        return 1
    fi
    install_boot_next "$d"
    attempt=0
    until install_report installed "disk=$words"; do
        attempt=$((attempt + 1))
        if [ "$attempt" -ge 5 ]; then
            say "WARNING: the boot server did not take the install report: its next network boot installs again"
            break
        fi
        sleep "$attempt"
    done
    [ "$attempt" -lt 5 ] && install_say "the boot server has it: network boots now go to the disk"
    return 0
}

# install_main SPEC WIPE DISK SERVER IMAGE NODE LINK: the install (the kernel command line's
# values; LINK is the network link that got the lease), then a restart into the disk.
install_main() {
    INSTALL_SPEC=$1 INSTALL_WIPE=$2 INSTALL_SERVER=$4 INSTALL_IMAGE=$5 INSTALL_NODE=$6
    INSTALL_CHUNKS_SHA256=${3%%:*}
    rest=${3#*:}
    INSTALL_IMAGE_SHA256=${rest%%:*} INSTALL_BYTES=${rest#*:}
    INSTALL_MAC=$(cat "/sys/class/net/$7/address")
    release=$(cat /etc/ironbake/release)
    INSTALL_RECIPE=${release%@*} INSTALL_VERSION=${release#*@}
    if [ -z "$INSTALL_SERVER" ] || [ -z "$INSTALL_BYTES" ]; then
        rescue "install mode needs ironbake.server= and ironbake.disk= on the kernel command line"
    fi
    modprobe -a -q efivarfs vfat nls_cp437 nls_ascii 2>/dev/null
    started=$(uptime_s)
    until install_once; do :; done
    install_say "done in $(echo "$started $(uptime_s)" | awk '{ printf "%.1f", $2 - $1 }') s; restarting into the disk"
    sync
    sleep 1
    reboot -f
}
