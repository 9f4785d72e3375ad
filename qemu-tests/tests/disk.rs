//! Tier (c): `ci-node` with the `disk` output: the image read back with real tools (sgdisk,
//! fsck.fat, objdump), then booted by OVMF from the disk alone, with no network, to its ready
//! line from slot A.

use std::path::{Path, PathBuf};
use std::process::Command;

use netboot::layout::Manifest;
use qemu_tests::deadline;
use qemu_tests::fixture::{one_at_a_time, test_dir};
use qemu_tests::netns::Netns;
use qemu_tests::qemu::{Boot, Vm, VmConfig, ovmf_disk};

/// A copy of the project whose ci-node recipe also lists the `disk` output, publishing into
/// `out` (emptied first); the package layer is shared with the other tests' ci-node.
fn disk_project(out: &str) -> ironbake::pipeline::Paths {
    let work = ironbake::cli::project_root()
        .join("target")
        .join("qemu-tests");
    let project = work.join(format!("{out}-project"));
    let _ = std::fs::remove_dir_all(&project);
    let _ = std::fs::remove_dir_all(work.join(out));
    ironbake::bench::copy_project(&project).unwrap();
    let recipe = project.join("recipes/ci-node.toml");
    let text = std::fs::read_to_string(&recipe).unwrap();
    let edited = text.replace(
        "overlays = [\"base\"]",
        "overlays = [\"base\", \"disk-boot\"]\noutputs = [\"kernel\", \"initramfs\", \"rootfs\", \"disk\"]",
    );
    assert_ne!(edited, text);
    std::fs::write(&recipe, edited).unwrap();
    ironbake::pipeline::Paths {
        project,
        out: work.join(out),
        cache: work.join("cache"),
        etc_apt: "/etc/apt".into(),
    }
}

fn build(paths: &ironbake::pipeline::Paths) -> (PathBuf, Manifest) {
    let built =
        ironbake::pipeline::build(paths, "ci-node", &ironbake::progress::Progress::new(false))
            .unwrap_or_else(|e| panic!("building ci-node with a disk: {e:#}"));
    (built.dir, built.manifest)
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
    let boot = std::fs::read(ironbake::pipeline::disk_image::SYSTEMD_BOOT).unwrap();
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
    let paths = disk_project("disk-out");
    let (vdir, m) = build(&paths);
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

    // The VM writes to its disk (systemd-boot's random seed): boot a sparse copy.
    let disk = dir.join("disk.img");
    run(Command::new("cp")
        .arg("--sparse=always")
        .arg(&published)
        .arg(&disk));
    let ns = Netns::new("disk").unwrap();
    let console = boot(&ns, &dir, &disk, "disk0", &m, None, false);
    assert!(booted_from(&console, 'a'), "{console}");
    assert!(
        !console.contains("network: "),
        "a disk boot must not ask for a lease"
    );

    // A second version (an overlay file edited), written into slot B of the same disk.
    std::fs::write(
        paths
            .project
            .join("overlays/base/files/etc/ironbake-second-version"),
        "an overlay edit makes a second version\n",
    )
    .unwrap();
    let (v2dir, v2) = build(&paths);
    assert_ne!(v2.version, m.version);
    let u = ironbake::disk::update(&disk, &v2dir, &v2).unwrap();
    assert_eq!(u.slot, 'b');
    assert_eq!(u.entry, "ci-node-2-b+3-0.efi");
    assert_eq!(
        esp_names(&disk),
        ["EFI/Linux/ci-node-1-a.efi", "EFI/Linux/ci-node-2-b+3-0.efi"]
    );
    let console = boot(&ns, &dir, &disk, "disk1", &v2, Some(MARKED_GOOD), false);
    assert!(booted_from(&console, 'b'), "{console}");
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
