//! Tier (c): ironbake's first stage under QEMU (TCG, direct kernel boot), fetching `ci-node`
//! over HTTP from a server inside the test's network namespace.

use std::path::{Path, PathBuf};

use netboot::cpio::{self, Body, Entry};
use netboot::layout;
use qemu_tests::deadline;
use qemu_tests::httpd::{Behaviour, Httpd};
use qemu_tests::lan::{self, Lan};
use qemu_tests::netns::Netns;
use qemu_tests::qemu::{Boot, Nic, Vm, VmConfig};

/// The port the test server listens on inside each LAN.
const PORT: u16 = 8080;

use qemu_tests::fixture::{Image, ci_node as image, one_at_a_time, test_dir};

fn cmdline(img: &Image, node: &str) -> String {
    let url = format!("http://{}:{PORT}", lan::SERVER_IP);
    layout::boot_cmdline(&img.manifest, &url, node, &url)
}

/// The initramfs plus a per-node settings archive (what the boot server sends as a second
/// initrd): the kernel unpacks both, one after the other.
fn initrd_with_settings(img: &Image, dir: &Path, hostname: &str) -> PathBuf {
    let mut bytes = std::fs::read(img.dir.join("initrd.img")).unwrap();
    // The kernel reads an appended archive only at a 4-byte-aligned offset; zeros between
    // archives are skipped.
    bytes.resize(bytes.len().next_multiple_of(4), 0);
    let entries = vec![
        Entry {
            path: "ironbake".into(),
            mode: 0o755,
            body: Body::Dir,
        },
        Entry {
            path: "ironbake/node".into(),
            mode: 0o755,
            body: Body::Dir,
        },
        Entry {
            path: "ironbake/node/etc".into(),
            mode: 0o755,
            body: Body::Dir,
        },
        Entry {
            path: "ironbake/node/etc/hostname".into(),
            mode: 0o644,
            body: Body::File(format!("{hostname}\n").into_bytes()),
        },
    ];
    cpio::write(&mut bytes, &entries, img.manifest.source_date_epoch).unwrap();
    let path = dir.join("initrd-with-settings.img");
    std::fs::write(&path, bytes).unwrap();
    path
}

fn vm(lan: &Lan, img: &Image, name: &str, initrd: PathBuf, node: &str) -> VmConfig {
    VmConfig {
        name: name.into(),
        boot: Boot::Kernel {
            kernel: img.dir.join("vmlinuz"),
            initrd,
            append: cmdline(img, node),
        },
        mem_mib: 1536,
        cpus: 2,
        nic: Some(Nic {
            mac: "52:54:00:00:00:01".into(),
            tap: lan.tap().unwrap(),
        }),
        disks: vec![],
        links: vec![],
    }
}

fn ready_secs(line: &str) -> f64 {
    line.rsplit(" in ")
        .next()
        .and_then(|s| s.trim_end_matches(" s").parse().ok())
        .unwrap_or(f64::NAN)
}

#[test]
fn ci_node_boots_to_ready_resuming_a_broken_transfer() {
    if !qemu_tests::require::vm_tests() {
        return;
    }
    let img = image();
    let _one = one_at_a_time();
    let dir = test_dir("boots-to-ready");
    let lan = Lan::new("ready", &dir).unwrap();
    let ns = &lan.ns;
    let base_path = format!(
        "/{}/{}/base.squashfs",
        img.manifest.recipe, img.manifest.version
    );
    let cut = 20 << 20;
    let server = Httpd::start(
        ns,
        PORT,
        &img.out,
        Behaviour {
            break_first: Some((base_path.clone(), cut)),
        },
    )
    .unwrap();
    let initrd = initrd_with_settings(img, &dir, "ci0");
    let mut vm = Vm::start(ns, &vm(&lan, img, "ci0", initrd, "ci0"), &dir).unwrap();
    vm.wait_line("the first stage", "ironbake: [", deadline::FIRST_STAGE, 0)
        .unwrap();
    let expected = format!(
        "ironbake: ci0 ready {}@{} in ",
        img.manifest.recipe, img.manifest.version
    );
    let (line, _) = vm
        .wait_line("the ready line", &expected, deadline::READY, 0)
        .unwrap();
    eprintln!("{line}");
    let console = vm.console.text();
    // The version's name comes from the initramfs's leading uncompressed archive, the first
    // stage from the compressed one after it: the kernel unpacked both.
    assert!(
        console.contains(&format!(
            "first stage {}@{} for node ",
            img.manifest.recipe, img.manifest.version
        )),
        "{}",
        vm.console.tail(60)
    );
    assert!(
        console.contains("per-node settings: 1 files"),
        "{}",
        vm.console.tail(60)
    );
    assert!(
        console.contains("sha256 verified"),
        "{}",
        vm.console.tail(60)
    );
    let reqs = server.requests();
    let ranged: Vec<_> = reqs
        .iter()
        .filter(|r| r.path == base_path && r.range.is_some())
        .collect();
    assert_eq!(
        ranged.len(),
        1,
        "the node should resume once with Range: {reqs:?}"
    );
    assert_eq!(
        ranged[0].range.as_deref(),
        Some(format!("bytes={cut}-").as_str())
    );
    let ready = server
        .wait_for("ready report", deadline::REPORT, |r| {
            r.method == "POST" && r.path == "/api/v1/ready"
        })
        .unwrap();
    assert!(
        ready.body.contains("\"node\":\"ci0\"") && ready.body.contains(&img.manifest.version),
        "{}",
        ready.body
    );
    let secs = ready_secs(&line);
    assert!(secs > 0.0, "{line}");
}

#[test]
fn a_corrupted_layer_is_refused_retried_then_rescued() {
    if !qemu_tests::require::vm_tests() {
        return;
    }
    let img = image();
    let _one = one_at_a_time();
    let dir = test_dir("corrupted");
    // A copy of the published tree whose base layer has one byte changed.
    let served = dir.join("out");
    let vdir = served
        .join(&img.manifest.recipe)
        .join(&img.manifest.version);
    std::fs::create_dir_all(&vdir).unwrap();
    for f in layout::list_files(&img.dir).unwrap() {
        std::fs::create_dir_all(vdir.join(&f).parent().unwrap()).unwrap();
        std::fs::copy(img.dir.join(&f), vdir.join(&f)).unwrap();
    }
    let mut base = std::fs::read(vdir.join("base.squashfs")).unwrap();
    let mid = base.len() / 2;
    base[mid] ^= 0xff;
    std::fs::write(vdir.join("base.squashfs"), &base).unwrap();
    let (bad, _) = layout::sha256_file(&vdir.join("base.squashfs")).unwrap();
    let lan = Lan::new("corrupt", &dir).unwrap();
    let ns = &lan.ns;
    let _server = Httpd::start(ns, PORT, &served, Behaviour::default()).unwrap();
    let mut vm = Vm::start(
        ns,
        &vm(&lan, img, "ci0", img.dir.join("initrd.img"), "ci0"),
        &dir,
    )
    .unwrap();
    let want = &img
        .manifest
        .outputs
        .iter()
        .find(|o| o.path == "base.squashfs")
        .unwrap()
        .sha256;
    let refusal = format!("REFUSED base.squashfs: sha256 is {bad}, expected {want}");
    let (_, mut at) = vm
        .wait_line("the refusal", &refusal, deadline::READY, 0)
        .unwrap();
    // Each refusal is followed by another fetch; the fifth in a row drops to a rescue shell on
    // the console, which says so (with no one at the console, leaving it retries).
    for n in 2..=5 {
        let what = format!("refusal number {n}");
        at = vm
            .wait_line(&what, &refusal, deadline::RETRY, at + 1)
            .unwrap()
            .1;
    }
    let rescue = "RESCUE: base.squashfs failed verification 5 times";
    vm.wait_line("the rescue shell", rescue, deadline::RETRY, at)
        .unwrap();
    assert!(
        !vm.console.text().contains(" ready "),
        "a refused image must never boot"
    );
}

#[test]
fn a_node_booted_before_its_server_keeps_retrying_then_boots() {
    if !qemu_tests::require::vm_tests() {
        return;
    }
    let img = image();
    let _one = one_at_a_time();
    let dir = test_dir("server-late");
    let lan = Lan::new("late", &dir).unwrap();
    let ns = &lan.ns;
    let mut vm = Vm::start(
        ns,
        &vm(&lan, img, "ci0", img.dir.join("initrd.img"), "ci0"),
        &dir,
    )
    .unwrap();
    // The node is up, has a lease, and has already failed twice to reach the server.
    vm.wait_line(
        "a second failed fetch",
        "failed (attempt 2)",
        deadline::READY,
        0,
    )
    .unwrap();
    let server = Httpd::start(ns, PORT, &img.out, Behaviour::default()).unwrap();
    let expected = format!("ready {}@{} in ", img.manifest.recipe, img.manifest.version);
    let (line, _) = vm
        .wait_line(
            "the ready line after the server came up",
            &expected,
            deadline::READY,
            0,
        )
        .unwrap();
    eprintln!("{line}");
    server
        .wait_for("ready report", deadline::REPORT, |r| {
            r.method == "POST" && r.path == "/api/v1/ready"
        })
        .unwrap();
}

/// Rounds a byte count up to whole MiB, in 512-byte sectors.
fn mib_sectors(bytes: u64) -> u64 {
    bytes.div_ceil(1 << 20) * 2048
}

#[test]
fn local_mode_boots_the_layers_from_gpt_partitions_with_no_network() {
    if !qemu_tests::require::vm_tests() {
        return;
    }
    let img = image();
    let _one = one_at_a_time();
    let dir = test_dir("local-mode");
    // A GPT disk: one partition per layer, labelled, each holding the layer's squashfs raw.
    let layers: Vec<(String, PathBuf)> = img
        .manifest
        .layers
        .iter()
        .map(|l| {
            (
                format!("ib-{}", l.trim_end_matches(".squashfs")),
                img.dir.join(l),
            )
        })
        .collect();
    let disk = dir.join("disk.img");
    let mut start = 2048u64;
    let mut sgdisk = std::process::Command::new("sgdisk");
    let mut starts = Vec::new();
    for (i, (label, file)) in layers.iter().enumerate() {
        let sectors = mib_sectors(std::fs::metadata(file).unwrap().len());
        sgdisk
            .arg(format!("--new={}:{start}:{}", i + 1, start + sectors - 1))
            .arg(format!("--change-name={}:{label}", i + 1));
        starts.push(start);
        start += sectors;
    }
    let f = std::fs::File::create(&disk).unwrap();
    f.set_len((start + 2048) * 512).unwrap();
    drop(f);
    let out = sgdisk.arg(&disk).output().unwrap();
    assert!(
        out.status.success(),
        "sgdisk: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    {
        use std::io::{Seek, SeekFrom};
        let mut d = std::fs::OpenOptions::new().write(true).open(&disk).unwrap();
        for ((_, file), start) in layers.iter().zip(&starts) {
            d.seek(SeekFrom::Start(start * 512)).unwrap();
            std::io::copy(&mut std::fs::File::open(file).unwrap(), &mut d).unwrap();
        }
    }
    let root = layers
        .iter()
        .map(|(l, _)| format!("partlabel:{l}"))
        .collect::<Vec<_>>()
        .join(",");
    let ns = Netns::new("local").unwrap();
    let cfg = VmConfig {
        name: "disk0".into(),
        boot: Boot::Kernel {
            kernel: img.dir.join("vmlinuz"),
            initrd: initrd_with_settings(img, &dir, "disk0"),
            append: format!(
                "{} ironbake.root={root} ironbake.node=disk0",
                img.manifest.kernel.cmdline
            ),
        },
        mem_mib: 1024,
        cpus: 2,
        nic: None,
        disks: vec![disk],
        links: vec![],
    };
    let mut vm = Vm::start(&ns, &cfg, &dir).unwrap();
    let expected = format!(
        "ironbake: disk0 ready {}@{} in ",
        img.manifest.recipe, img.manifest.version
    );
    let (line, _) = vm
        .wait_line("the ready line", &expected, deadline::READY, 0)
        .unwrap();
    eprintln!("{line}");
    let console = vm.console.text();
    assert!(
        console.contains("root layer ib-base: /dev/vda1")
            && console.contains("root layer ib-overlay: /dev/vda2"),
        "{}",
        vm.console.tail(40)
    );
    assert!(
        !console.contains("network: "),
        "local mode must not ask for a lease"
    );
}
