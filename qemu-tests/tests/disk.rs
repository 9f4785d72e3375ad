//! Tier (c): `ci-node` with the `disk` output: the image read back with real tools (sgdisk,
//! fsck.fat, objdump); `cargo xtask disk flash` onto a loop device (and its refusals: the
//! system disk, a mounted disk, a partition, no --yes); OVMF booting that disk alone, with no
//! network, to its node's ready line from slot A, making its data partition on the way; then
//! updates into slot B, and a broken one that falls back by itself. And the same image
//! installed over the network: a PXE-booted node with a blank disk streams it onto that disk
//! and boots from it, while a node whose disk holds another filesystem is refused and its
//! disk left as it was.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;
use std::time::Instant;

use netboot::layout::Manifest;
use qemu_tests::deadline;
use qemu_tests::fixture::{disk_project, one_at_a_time, test_dir};
use qemu_tests::lan::Lan;
use qemu_tests::netns::Netns;
use qemu_tests::qemu::{Boot, Nic, Vm, VmConfig, ovmf, ovmf_disk, ovmf_retrying};
use qemu_tests::server::Server;

fn build(paths: &ironbake::Paths) -> (PathBuf, Manifest) {
    let built = ironbake::build(
        paths,
        "ci-node",
        &ironbake::BuildOptions::default(),
        &ironbake::progress::Progress::new(false),
    )
    .unwrap_or_else(|e| panic!("building ci-node with a disk: {e:#}"));
    (built.dir, built.manifest)
}

/// `ci-node` with the disk output, built once for this binary's tests (the flash and update
/// test builds its later versions into the same `out/`, beside this one).
fn disk_fixture() -> &'static (ironbake::Paths, PathBuf, Manifest) {
    static F: OnceLock<(ironbake::Paths, PathBuf, Manifest)> = OnceLock::new();
    F.get_or_init(|| {
        let paths = disk_project("disk-out");
        let (dir, m) = build(&paths);
        (paths, dir, m)
    })
}

fn esp_names(disk: &Path) -> Vec<String> {
    ironbake::disk::read_esp(disk)
        .unwrap()
        .into_iter()
        .map(|(p, _)| p)
        .filter(|p| p.starts_with("EFI/Linux/"))
        .collect()
}

/// Boots `disk` until its ready line for `m` (and `then`, if given, after it), and returns
/// the console text. `reboot`: the machine may restart (a failed slot does).
fn boot(
    ns: &Netns,
    dir: &Path,
    disk: &Path,
    name: &str,
    m: &Manifest,
    then: Option<&str>,
    reboot: bool,
) -> String {
    let mut firmware = ovmf_disk();
    if let Boot::Disk { reboot: r, .. } = &mut firmware {
        *r = reboot;
    }
    let cfg = VmConfig {
        name: name.into(),
        boot: firmware,
        mem_mib: 1024,
        cpus: 2,
        nic: None,
        disks: vec![disk.to_path_buf()],
        links: vec![],
    };
    let mut vm = Vm::start(ns, &cfg, dir).unwrap();
    let expected = format!("ready {}@{} in ", m.recipe, m.version);
    let (line, at) = vm
        .wait_line(
            "the ready line from disk",
            &expected,
            deadline::PXE_READY,
            0,
        )
        .unwrap();
    eprintln!("{line}");
    if let Some(then) = then {
        let (line, _) = vm.wait_line(then, then, deadline::REPORT, at).unwrap();
        eprintln!("{line}");
    }
    vm.console.text()
}

/// The kernel's partition device for each slot partition on the VM's disk.
const SLOT_DEVICES: [(&str, &str); 4] = [
    ("ironbake-base-a", "/dev/vda2"),
    ("ironbake-overlay-a", "/dev/vda3"),
    ("ironbake-base-b", "/dev/vda4"),
    ("ironbake-overlay-b", "/dev/vda5"),
];

/// Did the console's (last) boot take its layers from `slot`?
fn booted_from(console: &str, slot: char) -> bool {
    let last_boot = console.rsplit("first stage ").next().unwrap_or(console);
    SLOT_DEVICES
        .iter()
        .filter(|(l, _)| l.ends_with(slot))
        .all(|(l, d)| last_boot.contains(&format!("root layer {l}: {d}")))
}

const MARKED_GOOD: &str = "ironbake: this slot is marked good";

fn run(cmd: &mut Command) -> String {
    let o = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(
        o.status.success(),
        "{cmd:?}: {}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// `ironbake ARGS` in this process, as the command line runs it; its error as text.
fn xtask(args: &[&str]) -> Result<(), String> {
    use clap::Parser;
    let cli =
        ironbake::cli::Cli::try_parse_from(std::iter::once("ironbake").chain(args.iter().copied()))
            .map_err(|e| e.to_string())?;
    cli.run().map(|_| ()).map_err(|e| format!("{e:#}"))
}

/// A loop device over a sparse file, detached (and unmounted) when dropped.
struct LoopDisk {
    dev: PathBuf,
    mounted: Option<PathBuf>,
}

impl LoopDisk {
    fn new(file: &Path, bytes: u64) -> LoopDisk {
        let f = std::fs::File::create(file).unwrap();
        f.set_len(bytes).unwrap();
        drop(f);
        let dev = run(Command::new("losetup")
            .args(["--find", "--show", "--partscan"])
            .arg(file));
        LoopDisk {
            dev: PathBuf::from(dev.trim()),
            mounted: None,
        }
    }

    fn path(&self) -> &str {
        self.dev.to_str().unwrap()
    }
}

impl Drop for LoopDisk {
    fn drop(&mut self) {
        if let Some(m) = self.mounted.take() {
            let _ = Command::new("umount").arg(&m).status();
        }
        let _ = Command::new("losetup").arg("-d").arg(&self.dev).status();
    }
}

/// The whole disk that holds this machine's `/` (its kernel name).
fn system_disk() -> String {
    use std::os::unix::fs::MetadataExt;
    let (major, minor) = ironbake::disk::flash::major_minor(std::fs::metadata("/").unwrap().dev());
    let sys = std::fs::canonicalize(format!("/sys/dev/block/{major}:{minor}"))
        .unwrap_or_else(|e| panic!("/ is on device {major}:{minor}, not a block device: {e}"));
    let sys = if sys.join("partition").exists() {
        sys.parent().unwrap().to_path_buf()
    } else {
        sys
    };
    sys.file_name().unwrap().to_string_lossy().into_owned()
}

/// The ext4 UUID of the filesystem at byte `offset` of `disk` (read from its superblock).
fn ext4_uuid(disk: &Path, offset: u64) -> String {
    use std::io::{Read, Seek, SeekFrom};
    let mut f = std::fs::File::open(disk).unwrap();
    let mut sb = vec![0u8; 1024];
    f.seek(SeekFrom::Start(offset + 1024)).unwrap();
    f.read_exact(&mut sb).unwrap();
    assert_eq!(
        &sb[0x38..0x3a],
        &[0x53, 0xef],
        "no ext4 superblock at {offset}"
    );
    let u = &sb[0x68..0x78];
    format!(
        "{}-{}-{}-{}-{}",
        hex::encode(&u[..4]),
        hex::encode(&u[4..6]),
        hex::encode(&u[6..8]),
        hex::encode(&u[8..10]),
        hex::encode(&u[10..])
    )
}

/// sha256 of `len` bytes of `disk` at `offset`.
fn digest_of(disk: &Path, offset: u64, len: u64) -> String {
    use std::io::{Read, Seek, SeekFrom};
    let mut f = std::fs::File::open(disk).unwrap();
    f.seek(SeekFrom::Start(offset)).unwrap();
    netboot::layout::sha256_reader(f.take(len)).unwrap().0
}

/// Checks the partition table, the ESP and the UKI with tools that are not ironbake's.
fn check_with_tools(disk: &Path, m: &Manifest, dir: &Path) {
    let seed = &m.inputs_sha256;
    let table = run(Command::new("sgdisk").arg("--print").arg(disk));
    let verify = run(Command::new("sgdisk").arg("--verify").arg(disk));
    assert!(verify.contains("No problems found"), "{verify}");
    let names = [
        "ESP",
        "ironbake-base-a",
        "ironbake-overlay-a",
        "ironbake-base-b",
        "ironbake-overlay-b",
    ];
    for (i, name) in names.iter().enumerate() {
        let line = table
            .lines()
            .find(|l| l.split_whitespace().next() == Some(&(i + 1).to_string()))
            .unwrap_or_else(|| panic!("no partition {} in:\n{table}", i + 1));
        assert!(line.trim_end().ends_with(name), "{line}");
        let start: u64 = line.split_whitespace().nth(1).unwrap().parse().unwrap();
        assert_eq!(start % 2048, 0, "{line}: not 1 MiB aligned");
        let info = run(Command::new("sgdisk")
            .arg(format!("--info={}", i + 1))
            .arg(disk));
        let guid = ironbake::disk::derived_guid(seed, name);
        assert!(
            info.contains(&format!("Partition unique GUID: {guid}")),
            "{name}: {info}"
        );
    }
    let disk_guid = ironbake::disk::derived_guid(seed, "disk");
    assert!(
        table.contains(&format!("Disk identifier (GUID): {disk_guid}")),
        "{table}"
    );
    let esp_type = run(Command::new("sgdisk").arg("--info=1").arg(disk));
    assert!(
        esp_type.contains("C12A7328-F81F-11D2-BA4B-00A0C93EC93B"),
        "{esp_type}"
    );

    // The ESP, cut out of the image, checked by dosfstools.
    let esp_line = table
        .lines()
        .find(|l| l.split_whitespace().next() == Some("1"))
        .unwrap();
    let mut w = esp_line.split_whitespace().skip(1);
    let (first, last): (u64, u64) = (
        w.next().unwrap().parse().unwrap(),
        w.next().unwrap().parse().unwrap(),
    );
    let bytes = std::fs::read(disk).unwrap();
    let esp = dir.join("esp.img");
    std::fs::write(
        &esp,
        &bytes[(first * 512) as usize..((last + 1) * 512) as usize],
    )
    .unwrap();
    let fsck = run(Command::new("fsck.fat").arg("-n").arg("-v").arg(&esp));
    assert!(
        fsck.contains("32 bit entries") && !fsck.contains("Free cluster summary"),
        "{fsck}"
    );

    // The files, read with ironbake's reader, the UKI's sections with binutils.
    let files = ironbake::disk::read_esp(disk).unwrap();
    let paths: Vec<&str> = files.iter().map(|(p, _)| p.as_str()).collect();
    let uki_path = "EFI/Linux/ci-node-1-a.efi".to_string();
    assert_eq!(
        paths,
        [
            "EFI/BOOT/BOOTX64.EFI",
            uki_path.as_str(),
            "loader/loader.conf"
        ]
    );
    let boot = std::fs::read(ironbake::disk::SYSTEMD_BOOT).unwrap();
    assert!(files[0].1 == boot, "BOOTX64.EFI is systemd-boot");
    let uki = dir.join("uki.efi");
    std::fs::write(&uki, &files[1].1).unwrap();
    let sections = run(Command::new("objdump").arg("-h").arg(&uki));
    let order: Vec<&str> = sections
        .lines()
        .filter_map(|l| l.split_whitespace().nth(1))
        .filter(|n| n.starts_with('.'))
        .collect();
    let tail: Vec<&str> = order[order.len() - 5..].to_vec();
    assert_eq!(
        tail,
        [".osrel", ".cmdline", ".uname", ".initrd", ".linux"],
        "{sections}"
    );
    let section = |name: &str| {
        run(Command::new("objcopy")
            .arg("-O")
            .arg("binary")
            .arg(format!("--only-section={name}"))
            .arg(&uki)
            .arg(dir.join(format!("section{name}"))));
        std::fs::read(dir.join(format!("section{name}"))).unwrap()
    };
    let cmdline = String::from_utf8(section(".cmdline")).unwrap();
    assert!(
        cmdline.starts_with(&m.kernel.cmdline)
            && cmdline.ends_with(
                " ironbake.root=partlabel:ironbake-base-a,partlabel:ironbake-overlay-a ironbake.slot=a"
            ),
        "{cmdline:?}"
    );
    let linux = section(".linux");
    let vmlinuz = std::fs::read(disk.parent().unwrap().join("vmlinuz")).unwrap();
    assert!(
        linux.starts_with(&vmlinuz),
        ".linux is the published kernel"
    );
    let osrel = String::from_utf8(section(".osrel")).unwrap();
    assert!(
        osrel.contains(&format!("VERSION=\"{}\"\n", m.version))
            && osrel.contains("IMAGE_VERSION=1\n"),
        "{osrel}"
    );
}

#[test]
fn ovmf_boots_the_disk_image_with_no_network_then_an_update_from_slot_b() {
    if !qemu_tests::require::vm_tests() {
        return;
    }
    let (paths, vdir, m) = disk_fixture();
    let (paths, vdir, m) = (paths.clone(), vdir.clone(), m.clone());
    let published = vdir.join("disk.img");
    let record = m
        .outputs
        .iter()
        .find(|o| o.path == "disk.img")
        .expect("disk.img in the manifest");
    assert!(record.size > 512 << 20, "{record:?}");
    // The same inputs again, into another out/: the same disk, byte for byte.
    let (again, m2) = build(&disk_project("disk-out-again"));
    assert_eq!(m2.version, m.version);
    assert!(
        std::fs::read(again.join("disk.img")).unwrap() == std::fs::read(&published).unwrap(),
        "two builds of the same inputs gave different disk images"
    );
    let _one = one_at_a_time();
    let dir = test_dir("disk");
    check_with_tools(&published, &m, &dir);

    // `disk flash` onto a loop device 256 MiB larger than the image, for node disk0.
    let inventory = dir.join("inventory.toml");
    std::fs::write(
        &inventory,
        "[nodes.disk0]\nmac = \"52:54:00:d1:5c:00\"\nrecipe = \"ci-node\"\n",
    )
    .unwrap();
    let loop_disk = LoopDisk::new(&dir.join("disk-backing"), record.size + (256 << 20));
    let disk = loop_disk.dev.clone();
    let out = paths.out.to_str().unwrap().to_string();
    let project = paths.project.to_str().unwrap().to_string();
    let state = dir.join("state");
    // `cargo xtask disk COMMAND ARGS...` for node disk0 of this test's project and inventory.
    let for_disk0 = |command: &str, args: &[&str], extra: &[&str]| {
        let mut all = vec!["disk", command];
        all.extend_from_slice(args);
        all.extend_from_slice(&[
            "--project",
            &project,
            "--out",
            &out,
            "--node",
            "disk0",
            "--inventory",
            inventory.to_str().unwrap(),
            "--state",
            state.to_str().unwrap(),
        ]);
        all.extend_from_slice(extra);
        xtask(&all)
    };
    let flash = |target: &str, extra: &[&str]| for_disk0("flash", &["ci-node", target], extra);
    // The system disk is refused before anything else (and there is no --yes either).
    let sys = format!("/dev/{}", system_disk());
    let e = flash(&sys, &[]).unwrap_err();
    assert!(e.contains(&format!("{sys} is a system disk")), "{e}");
    // Without --yes, and no terminal to ask on: refused, nothing written.
    let e = flash(loop_disk.path(), &[]).unwrap_err();
    assert!(e.contains("erases it: add --yes"), "{e}");
    assert_eq!(
        digest_of(&disk, 0, 1 << 20),
        digest_of(Path::new("/dev/zero"), 0, 1 << 20)
    );
    // A node the inventory lacks, and a file instead of a disk: refused, nothing written.
    let e = xtask(&[
        "disk",
        "flash",
        "ci-node",
        loop_disk.path(),
        "--project",
        &project,
        "--out",
        &out,
        "--node",
        "nosuch",
        "--inventory",
        inventory.to_str().unwrap(),
        "--yes",
    ])
    .unwrap_err();
    assert!(e.contains("lists no node named nosuch"), "{e}");
    let e = flash(inventory.to_str().unwrap(), &["--yes"]).unwrap_err();
    assert!(e.contains("is not a block device"), "{e}");
    assert_eq!(
        digest_of(&disk, 0, 1 << 20),
        digest_of(Path::new("/dev/zero"), 0, 1 << 20)
    );
    flash(loop_disk.path(), &["--yes"]).unwrap();
    // The backup table moved to the loop device's end; the kernel sees the partitions.
    let verify = run(Command::new("sgdisk").arg("--verify").arg(&disk));
    assert!(verify.contains("No problems found"), "{verify}");
    let table = run(Command::new("sgdisk").arg("--print").arg(&disk));
    let free = table
        .lines()
        .find(|l| l.starts_with("Total free space is"))
        .unwrap_or_else(|| panic!("{table}"));
    let free_sectors: u64 = free.split_whitespace().nth(4).unwrap().parse().unwrap();
    assert!(free_sectors >= (255 << 20) / 512, "{table}");
    // The node's settings are on the ESP, as the boot server would send them.
    let esp = ironbake::disk::read_esp(&disk).unwrap();
    let (_, cred) = esp
        .iter()
        .find(|(p, _)| p == ironbake::disk::NODE_SETTINGS)
        .unwrap_or_else(|| panic!("no node settings on the ESP"));
    let listing = {
        let cpio = dir.join("settings.cpio");
        std::fs::write(&cpio, cred).unwrap();
        run(Command::new("cpio")
            .args(["-t", "--quiet", "-F"])
            .arg(&cpio))
    };
    assert!(
        listing.lines().any(|l| l == "ironbake/node/etc/hostname"),
        "{listing}"
    );
    // A mounted disk is refused, and nothing is written. (A mounted partition, a partition,
    // swap and device-mapper holders are unit-tested on a fake /sys: this machine's kernel
    // may not show a loop device's partitions.)
    let busy = LoopDisk::new(&dir.join("busy-backing"), 64 << 20);
    run(Command::new("mkfs.ext4").arg("-q").arg(&busy.dev));
    let mnt = dir.join("busy-mounted");
    std::fs::create_dir_all(&mnt).unwrap();
    // Read-only, so that the filesystem itself writes nothing (ext4's lazy inode-table
    // zeroing would) and any change would be the flash's.
    run(Command::new("mount")
        .args(["-o", "ro"])
        .arg(&busy.dev)
        .arg(&mnt));
    let mut busy = busy;
    busy.mounted = Some(mnt.clone());
    let before = digest_of(&busy.dev, 0, 64 << 20);
    let e = flash(busy.path(), &["--yes"]).unwrap_err();
    assert!(
        e.contains(&format!(
            "{} is mounted at {}: unmount it first",
            busy.path(),
            mnt.display()
        )),
        "{e}"
    );
    assert_eq!(digest_of(&busy.dev, 0, 64 << 20), before);
    drop(busy);

    let ns = Netns::new("disk").unwrap();
    let console = boot(&ns, &dir, &disk, "disk0", &m, None, false);
    assert!(booted_from(&console, 'a'), "{console}");
    assert!(
        !console.contains("network: "),
        "a disk boot must not ask for a lease"
    );
    assert!(
        console.contains("files from this disk's ESP")
            && console.contains("] this disk is node disk0")
            && console.contains(&format!("ironbake: disk0 ready {}@{}", m.recipe, m.version)),
        "{console}"
    );
    // The disk had no data partition: the node made one in the free space past the image.
    let made = console
        .lines()
        .find(|l| l.contains("ironbake: data partition /dev/vda6 ("))
        .unwrap_or_else(|| panic!("no data partition line:\n{console}"));
    assert!(made.ends_with("): made on this boot"), "{made}");
    let layout = ironbake::disk::read_layout(&disk).unwrap();
    let data = layout
        .part(ironbake::disk::DATA_LABEL)
        .unwrap_or_else(|| panic!("no data partition in {layout:?}"))
        .clone();
    assert_eq!(data.number, 6);
    assert!(data.bytes() >= 250 << 20, "{data:?}");
    let uuid = ext4_uuid(&disk, data.offset());
    assert!(made.contains(&format!("ext4 {uuid})")), "{made} vs {uuid}");
    let data_digest = digest_of(&disk, data.offset(), data.bytes());

    // A second version (an overlay file edited), written into slot B of the same disk.
    std::fs::write(
        paths
            .project
            .join("overlays/base/files/etc/ironbake-second-version"),
        "an overlay edit makes a second version\n",
    )
    .unwrap();
    let (_, v2) = build(&paths);
    assert_ne!(v2.version, m.version);
    for_disk0(
        "update",
        &[loop_disk.path(), &format!("ci-node@{}", v2.version)],
        &[],
    )
    .unwrap();
    // The update wrote slot B and the ESP, never the data partition.
    assert_eq!(digest_of(&disk, data.offset(), data.bytes()), data_digest);
    assert_eq!(
        esp_names(&disk),
        ["EFI/Linux/ci-node-1-a.efi", "EFI/Linux/ci-node-2-b+3-0.efi"]
    );
    let console = boot(&ns, &dir, &disk, "disk1", &v2, Some(MARKED_GOOD), false);
    assert!(booted_from(&console, 'b'), "{console}");
    // The persisted folders (on the data partition) kept what the first version wrote.
    let [_, var] = qemu_tests::fixture::PERSIST_CHECK;
    assert!(
        console.contains(&format!(
            "ironbake-check: {var}: {} {} |",
            m.version, v2.version
        )),
        "{console}"
    );
    assert!(
        console.contains(&format!(
            "ironbake: data partition /dev/vda6 ({} MiB, ext4 {uuid}): kept",
            data.bytes() >> 20
        )) && console.contains("ironbake: disk0 ready"),
        "{console}"
    );
    // systemd-boot counted the try; once ready, the node marked the slot good.
    assert_eq!(
        esp_names(&disk),
        ["EFI/Linux/ci-node-1-a.efi", "EFI/Linux/ci-node-2-b.efi"]
    );

    // A third version into slot A, whose base partition then loses its first MiB (a bad
    // write, a failing disk): the slot cannot boot, restarts three times, and systemd-boot
    // falls back to slot B by itself.
    std::fs::write(
        paths
            .project
            .join("overlays/base/files/etc/ironbake-second-version"),
        "and another edit a third\n",
    )
    .unwrap();
    let (v3dir, v3) = build(&paths);
    let u = ironbake::disk::update(&disk, &v3dir, &v3).unwrap();
    assert_eq!((u.slot, u.entry.as_str()), ('a', "ci-node-3-a+3-0.efi"));
    assert_eq!(u.removed, ["ci-node-1-a.efi"]);
    let layout = ironbake::disk::read_layout(&disk).unwrap();
    let base_a = layout.part("ironbake-base-a").unwrap();
    {
        use std::io::{Seek, SeekFrom, Write};
        let mut f = std::fs::OpenOptions::new().write(true).open(&disk).unwrap();
        f.seek(SeekFrom::Start(base_a.offset())).unwrap();
        f.write_all(&vec![0u8; 1 << 20]).unwrap();
    }
    let console = boot(&ns, &dir, &disk, "disk2", &v2, None, true);
    let failed = console
        .matches("slot a cannot boot: restarting in 10 s")
        .count();
    assert_eq!(failed, 3, "{console}");
    assert!(booted_from(&console, 'b'), "{console}");
    assert_eq!(
        esp_names(&disk),
        ["EFI/Linux/ci-node-2-b.efi", "EFI/Linux/ci-node-3-a+0-3.efi"]
    );
}

/// A file of `bytes` (sparse: a blank disk).
fn blank_disk(path: &Path, bytes: u64) {
    let _ = std::fs::remove_file(path);
    std::fs::File::create_new(path)
        .and_then(|f| f.set_len(bytes))
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
}

/// Two nodes PXE-boot side by side in install mode: inst0's disk (named by its serial) is
/// blank and gets the image, then the node restarts into it without asking the network;
/// foreign0's disk (the only one of at least 2 GiB) holds an ext4 filesystem, so its first
/// stage refuses, says why on its console and to the server, and writes nothing. Then
/// `ironbake install inst0` asks for a fresh install.
#[test]
fn a_blank_disk_is_installed_over_the_network_and_a_foreign_one_is_left_alone() {
    if !qemu_tests::require::vm_tests() {
        return;
    }
    let (paths, _, m) = disk_fixture();
    let record = m.outputs.iter().find(|o| o.path == "disk.img").unwrap();
    let _one = one_at_a_time();
    let dir = test_dir("install");
    let lan = Lan::new("inst", &dir).unwrap();
    let inventory = dir.join("inventory.toml");
    std::fs::write(
        &inventory,
        format!(
            "[nodes.inst0]\nmac = \"52:54:00:00:00:41\"\nrecipe = \"ci-node\"\nversion = \"{v}\"\n\
             install = {{ disk = \"/dev/disk/by-id/virtio-inst0\" }}\n\n\
             [nodes.foreign0]\nmac = \"52:54:00:00:00:42\"\nrecipe = \"ci-node\"\nversion = \"{v}\"\n\
             install = {{ min-gib = 2 }}\n",
            v = m.version
        ),
    )
    .unwrap();
    let server = Server::start(&lan, &paths.out, &inventory, &dir).unwrap();
    let disk = dir.join("inst0.disk");
    blank_disk(&disk, record.size + (1 << 30));
    let foreign = dir.join("foreign0.disk");
    blank_disk(&foreign, (2 << 30) + (64 << 20));
    run(Command::new("mkfs.ext4")
        .args(["-q", "-F", "-L", "theirs"])
        .arg(&foreign));
    let foreign_before = digest_of(&foreign, 0, (2 << 30) + (64 << 20));

    let vm = |name: &str, mac: &str, boot: Boot, disk: &Path| VmConfig {
        name: name.into(),
        boot,
        mem_mib: 1024,
        cpus: 1,
        nic: Some(Nic {
            mac: mac.into(),
            tap: lan.tap().unwrap(),
        }),
        disks: vec![disk.to_path_buf()],
        links: vec![],
    };
    let on = Instant::now();
    // A firmware that starts over after a reset, as an installed machine's does: the
    // install's restart is then a power cycle of the same VM (same variable store).
    let mut inst = Vm::start(
        &lan.ns,
        &vm("inst0", "52:54:00:00:00:41", ovmf_retrying(), &disk),
        &dir,
    )
    .unwrap();
    let mut other = Vm::start(
        &lan.ns,
        &vm("foreign0", "52:54:00:00:00:42", ovmf(), &foreign),
        &dir,
    )
    .unwrap();
    let on_disk = m.version.clone();
    let with_log = |e: anyhow::Error| -> ! {
        panic!(
            "{e:#}\n--- server log (last 40 lines) ---\n{}",
            qemu_tests::console::last_lines(&server.log_text(), 40)
        )
    };

    // foreign0: refused, on its console and in the server's log; nothing written.
    let (refused, _) = other
        .wait_line(
            "the refusal",
            "REFUSED install of ci-node@",
            deadline::PXE_READY,
            0,
        )
        .unwrap_or_else(|e| with_log(e));
    assert!(
        refused.contains("/dev/vda (serial foreign0, 2 GiB) holds what is not ironbake's: an ext2/3/4 filesystem on the whole disk (wipe = true in the node's install overwrites it)"),
        "{refused}"
    );
    other
        .wait_line(
            "what to do",
            "nothing was written; fix the node's install",
            deadline::REPORT,
            0,
        )
        .unwrap();
    let logged = qemu_tests::console::wait_until(deadline::REPORT, || {
        server
            .log_text()
            .lines()
            .find(|l| l.contains("install refused, nothing written") && l.contains("foreign0"))
            .map(str::to_string)
    })
    .unwrap_or_else(|| with_log(anyhow::anyhow!("no refusal in the server's log")));
    assert!(
        logged.contains("an ext2/3/4 filesystem on the whole disk"),
        "{logged}"
    );
    drop(other);
    assert_eq!(
        digest_of(&foreign, 0, (2 << 30) + (64 << 20)),
        foreign_before,
        "the refused disk changed"
    );

    // inst0: installed, then ready from its disk as itself.
    let steps =
        qemu_tests::install::follow(&mut inst, "inst0", m, on).unwrap_or_else(|e| with_log(e));
    let console = inst.console.text();
    assert!(
        steps[2].line.contains(&format!(
            "onto /dev/vdb (serial inst0, {} GiB)",
            (record.size + (1 << 30)) >> 30
        )),
        "{}",
        steps[2].line
    );
    assert!(
        steps[4].line.contains(&record.sha256),
        "the read-back digest is the manifest's: {}",
        steps[4].line
    );
    assert_eq!(inst.power_cycles(), 1, "one restart, into the disk");
    // The second boot asked the network nothing: no PXE, no lease in the first stage; the
    // server's record of the node ends with its install.
    let second = console.rsplit("restarting into the disk").next().unwrap();
    assert!(
        !second.contains("Start PXE")
            && !second.contains("network: ")
            && !second.contains("installs ci-node"),
        "the boot after the install went to the network:\n{second}"
    );
    assert!(
        second.contains("root layer ironbake-base-a: /dev/vdb2"),
        "{second}"
    );
    // Its persisted folders are on the installed disk's data partition, seeded from the image.
    let [etc, var] = qemu_tests::fixture::PERSIST_CHECK;
    assert!(
        second.contains(&format!(
            "ironbake: persisted on /dev/vdb6: {etc} {var} (first time: {etc} {var})"
        )) && second.contains(&format!(
            "ironbake-check: {etc}: {on_disk} | from-image versions"
        )),
        "{second}"
    );
    let made = second
        .lines()
        .find(|l| l.contains("ironbake: data partition /dev/vdb6 ("))
        .unwrap_or_else(|| panic!("no data partition line:\n{second}"));
    assert!(made.ends_with("): made on this boot"), "{made}");
    // The node reports to the server from its disk (its settings name the server), and the
    // server saw nothing of it between the install and that report: no DHCP, no script.
    server
        .wait_agents(&["inst0"], &on_disk, std::time::Duration::from_secs(120))
        .unwrap_or_else(|e| with_log(e));
    let boots = server.hub.boots_of("52:54:00:00:00:41");
    let stages = &boots[0].stages;
    let installed = stages
        .iter()
        .position(|st| st.stage == netboot::hub::Stage::Installed)
        .unwrap_or_else(|| panic!("no install in {boots:?}"));
    assert!(
        stages[installed]
            .detail
            .contains(&format!("ci-node@{on_disk} on /dev/vdb")),
        "{stages:?}"
    );
    assert!(
        stages[installed + 1..]
            .iter()
            .all(|st| st.stage == netboot::hub::Stage::Ready),
        "the node asked the network after its install: {stages:?}"
    );
    let fleet = server.get("/api/v1/fleet").unwrap();
    assert!(
        fleet.contains("\"installed\": {") && fleet.contains("serial inst0"),
        "{fleet}"
    );
    // The disk: a table that spans it (backup at the end), the node's settings on its ESP.
    let verify = run(Command::new("sgdisk").arg("--verify").arg(&disk));
    assert!(verify.contains("No problems found"), "{verify}");
    let esp = ironbake::disk::read_esp(&disk).unwrap();
    assert!(
        esp.iter()
            .any(|(p, d)| p == ironbake::disk::NODE_SETTINGS && !d.is_empty()),
        "no node settings on the ESP"
    );
    let figure = qemu_tests::install::at(&steps, "ready from the disk");
    eprintln!(
        "power-on to ready from the disk: {figure:.1} s (install done at {:.1} s)",
        qemu_tests::install::at(&steps, "the restart")
    );
    drop(inst);

    // Installed: its network boots are sent to the disk, until `ironbake install` asks again.
    let script = server.get("/boot.ipxe?mac=52:54:00:00:00:41").unwrap();
    assert!(
        script.contains("is installed on its disk") && script.contains("exit 1"),
        "{script}"
    );
    let client = server.fleet_client(&dir).unwrap();
    let said = server
        .in_lan(move || {
            let mut out = Vec::new();
            ironbake::fleet::install(&client, &["inst0".to_string()], &mut out)
                .map(|_| String::from_utf8(out).unwrap())
        })
        .join()
        .unwrap()
        .unwrap()
        .unwrap();
    assert!(
        said.contains(&format!(
            "inst0: was ci-node@{on_disk} on /dev/vdb (serial inst0"
        )),
        "{said}"
    );
    let script = server.get("/boot.ipxe?mac=52:54:00:00:00:41").unwrap();
    assert!(
        script.contains(" ironbake.install=disk:/dev/disk/by-id/virtio-inst0 "),
        "{script}"
    );
    let state = std::fs::read_to_string(dir.join("netboot-state/installed.json")).unwrap();
    assert!(!state.contains("inst0"), "{state}");
}
