//! Tier (b): real builds of `ci-node` with mmdebstrap and mksquashfs, read back with unsquashfs.
//! Reproducibility, no baked identity, the published layout, verify, and incremental rebuilds.

mod common;

use std::fs;
use std::path::PathBuf;
use std::process::Command;
use std::sync::OnceLock;

use common::{entry, project, require, run_ironbake, scratch, unsquashfs_cat, unsquashfs_list};
use netboot::layout;

const TOOLS: &[&str] = &["mmdebstrap", "mksquashfs", "unsquashfs"];

/// One cold build of ci-node, shared by the tests that only read it.
struct Fixture {
    _dir: tempfile::TempDir,
    project: PathBuf,
    out: PathBuf,
    cache: PathBuf,
    version: String,
}

fn fixture() -> &'static Fixture {
    static F: OnceLock<Fixture> = OnceLock::new();
    F.get_or_init(|| {
        let dir = scratch("ci-node-a");
        let project = project(dir.path());
        let (out, cache) = (dir.path().join("out"), dir.path().join("cache"));
        let r = run_ironbake(&project, &out, &cache, &["build", "ci-node"]);
        assert!(r.ok, "build failed:\n{}\n{}", r.stdout, r.stderr);
        let version = layout::read_current(&out.join("ci-node"))
            .unwrap()
            .expect("current is set");
        Fixture {
            _dir: dir,
            project,
            out,
            cache,
            version,
        }
    })
}

#[test]
fn ci_node_builds_twice_from_empty_caches_to_identical_bytes() {
    if !require(TOOLS) {
        return;
    }
    let a = fixture();
    let dir = scratch("ci-node-b");
    let project_b = project(dir.path());
    let (out_b, cache_b) = (dir.path().join("out"), dir.path().join("cache"));
    let r = run_ironbake(&project_b, &out_b, &cache_b, &["build", "ci-node"]);
    assert!(r.ok, "second build failed:\n{}\n{}", r.stdout, r.stderr);
    let va = a.out.join("ci-node").join(&a.version);
    let vb = out_b.join("ci-node").join(&a.version);
    assert!(
        vb.is_dir(),
        "the second build published another version: {:?}",
        layout::list_published(&out_b).unwrap()
    );
    let ma = fs::read(va.join(layout::MANIFEST)).unwrap();
    let mb = fs::read(vb.join(layout::MANIFEST)).unwrap();
    let manifest = layout::parse_manifest(std::str::from_utf8(&ma).unwrap()).unwrap();
    if ma != mb {
        let other = layout::parse_manifest(std::str::from_utf8(&mb).unwrap()).unwrap();
        for (x, y) in manifest.outputs.iter().zip(&other.outputs) {
            eprintln!(
                "{} {} {}",
                x.path,
                x.sha256,
                if x == y { "same" } else { "DIFFERS" }
            );
        }
        panic!("two builds from empty caches differ (manifests above)");
    }
    for o in &manifest.outputs {
        let (da, _) = layout::sha256_file(&va.join(&o.path)).unwrap();
        let (db, _) = layout::sha256_file(&vb.join(&o.path)).unwrap();
        assert_eq!(da, db, "{} differs between the two builds", o.path);
        assert_eq!(da, o.sha256, "{} does not match its manifest", o.path);
    }
    assert_eq!(
        fs::read(va.join(layout::SHA256SUMS)).unwrap(),
        fs::read(vb.join(layout::SHA256SUMS)).unwrap()
    );
    eprintln!(
        "identical: {} outputs, base.squashfs sha256 {}",
        manifest.outputs.len(),
        manifest
            .outputs
            .iter()
            .find(|o| o.path == "base.squashfs")
            .unwrap()
            .sha256
    );
}

#[test]
fn the_image_holds_no_machine_identity() {
    if !require(TOOLS) {
        return;
    }
    let f = fixture();
    let v = f.out.join("ci-node").join(&f.version);
    for layer in ["base.squashfs", "overlay.squashfs"] {
        let listing = unsquashfs_list(&v.join(layer));
        for line in listing.lines() {
            let path = line.split_whitespace().nth(5).unwrap_or("");
            assert!(
                !path.contains("/etc/ssh/ssh_host_"),
                "{layer} holds an SSH host key: {line}"
            );
            assert!(
                !path.ends_with("/var/lib/systemd/random-seed"),
                "{layer} holds a random seed: {line}"
            );
            assert!(
                !path.ends_with("/var/lib/systemd/credential.secret"),
                "{layer} holds a credential secret: {line}"
            );
        }
        if layer == "base.squashfs" {
            let mid = entry(&listing, "/etc/machine-id")
                .expect("/etc/machine-id exists (systemd needs the file)");
            assert_eq!(
                mid.split_whitespace().nth(2),
                Some("0"),
                "/etc/machine-id must be empty: {mid}"
            );
            if let Some(dbus) = entry(&listing, "/var/lib/dbus/machine-id") {
                assert!(
                    dbus.starts_with('l'),
                    "/var/lib/dbus/machine-id must be a link to /etc/machine-id: {dbus}"
                );
            }
            assert_eq!(
                unsquashfs_cat(&v.join(layer), "/etc/hostname"),
                "localhost\n"
            );
            assert!(
                entry(&listing, "/usr/sbin/sshd").is_some(),
                "the base overlay's openssh-server is installed"
            );
            assert!(
                listing
                    .lines()
                    .all(|l| !l.contains("squashfs-root/boot/initrd.img")),
                "no initramfs-tools initrd is built"
            );
            assert!(
                listing
                    .lines()
                    .all(|l| !l.contains("squashfs-root/boot/vmlinuz")),
                "the kernel is published beside, not inside"
            );
        }
    }
}

#[test]
fn the_published_version_is_complete_and_verifies() {
    if !require(TOOLS) {
        return;
    }
    let f = fixture();
    let v = f.out.join("ci-node").join(&f.version);
    let (m, problems) = layout::verify(&v).unwrap();
    assert!(problems.is_empty(), "{problems:?}");
    assert!(
        f.version.starts_with("0.1.0-") && f.version.len() == "0.1.0-".len() + 10,
        "{}",
        f.version
    );
    assert!(m.inputs_sha256.starts_with(&f.version[6..]));
    let paths: Vec<&str> = m.outputs.iter().map(|o| o.path.as_str()).collect();
    assert_eq!(
        paths,
        [
            "base.squashfs",
            "cmdline",
            "initrd.img",
            "node-templates/etc/hostname.j2",
            "node-templates/etc/hosts.j2",
            "overlay.squashfs",
            "vmlinuz"
        ]
    );
    assert_eq!(m.layers, ["base.squashfs", "overlay.squashfs"]);
    assert!(
        m.packages
            .iter()
            .any(|p| p.name == "systemd" && !p.version.is_empty())
    );
    assert!(m.packages.iter().any(|p| p.name == m.kernel.package));
    assert!(
        m.packages
            .iter()
            .any(|p| p.name == format!("linux-image-{}", m.kernel.release))
    );
    assert_eq!(
        fs::read_to_string(v.join("cmdline")).unwrap(),
        format!("{}\n", m.kernel.cmdline)
    );
    assert!(
        !m.debian.sources.is_empty()
            && m.debian
                .sources
                .iter()
                .all(|s| s.release_sha256.len() == 64)
    );
    let overlays: Vec<&str> = m.overlays.iter().map(|o| o.name.as_str()).collect();
    assert_eq!(overlays, ["base", "telemetry"]);
    let vmlinuz = fs::read(v.join("vmlinuz")).unwrap();
    assert_eq!(
        &vmlinuz[0x202..0x206],
        b"HdrS",
        "vmlinuz is a Linux boot image"
    );

    // The initramfs, read back with cpio and zstd: a leading uncompressed archive with the
    // version's name, then the compressed one: the first stage, busybox, the drivers.
    let initrd = v.join("initrd.img");
    let size = fs::metadata(&initrd).unwrap().len();
    assert!(
        size < 8_000_000,
        "initrd.img is {size} bytes; the goal is at most 8 MB"
    );
    let bytes = fs::read(&initrd).unwrap();
    let at = bytes
        .windows(4)
        .position(|w| w == [0x28, 0xb5, 0x2f, 0xfd])
        .expect("initrd.img holds a zstd archive");
    assert_eq!(at % 4, 0, "the compressed archive starts 4-byte aligned");
    let parts = tempfile::tempdir().unwrap();
    let (head, rest) = (parts.path().join("head"), parts.path().join("rest.zst"));
    fs::write(&head, &bytes[..at]).unwrap();
    fs::write(&rest, &bytes[at..]).unwrap();
    let release = Command::new("sh")
        .arg("-c")
        .arg(format!(
            "cpio -i --quiet --to-stdout etc/ironbake/release < '{}'",
            head.display()
        ))
        .output()
        .unwrap();
    assert_eq!(
        String::from_utf8_lossy(&release.stdout),
        format!("ci-node@{}\n", f.version),
        "the leading archive names the version"
    );
    let cpio = Command::new("sh")
        .arg("-c")
        .arg(format!("zstd -dc '{}' | cpio -it --quiet", rest.display()))
        .output()
        .unwrap();
    assert!(
        cpio.status.success(),
        "{}",
        String::from_utf8_lossy(&cpio.stderr)
    );
    let listing = String::from_utf8_lossy(&cpio.stdout);
    for want in [
        "init",
        "bin/busybox",
        "bin/sh",
        "dev/console",
        "etc/ironbake/modules.always",
        "etc/ironbake/udhcpc.script",
    ] {
        assert!(
            listing.lines().any(|l| l == want),
            "initrd.img lacks {want}:\n{listing}"
        );
    }
    for module in [
        "virtio_net.ko",
        "virtio_pci.ko",
        "e1000e.ko",
        "mlx4_en.ko",
        "mlx5_core.ko",
        "squashfs.ko",
        "overlay.ko",
        "nvme.ko",
        "failover.ko",
    ] {
        assert!(
            listing.lines().any(|l| l.ends_with(&format!("/{module}"))),
            "initrd.img lacks {module}"
        );
    }
    assert!(
        !listing.contains("/sound/") && !listing.contains("/gpu/"),
        "only the needed drivers"
    );

    // The overlay layer, read back: owners and modes as the base overlay declares them.
    let listing = unsquashfs_list(&v.join("overlay.squashfs"));
    let keys = entry(&listing, "/home/debian/.ssh/authorized_keys").expect("authorized_keys");
    assert!(keys.starts_with("-rw------- 1000/1000"), "{keys}");
    assert!(
        entry(&listing, "/home/debian/.ssh")
            .unwrap()
            .starts_with("drwx------ 1000/1000")
    );
    assert!(
        entry(&listing, "/etc/sudoers.d/ironbake")
            .unwrap()
            .starts_with("-r--r----- 0/0")
    );
    assert!(
        entry(&listing, "/etc/shadow")
            .unwrap()
            .starts_with("-rw-r----- 0/42")
    );
    assert!(
        entry(
            &listing,
            "/etc/systemd/system/multi-user.target.wants/systemd-networkd.service"
        )
        .is_some()
    );
    let passwd = unsquashfs_cat(&v.join("overlay.squashfs"), "/etc/passwd");
    assert!(
        passwd
            .lines()
            .any(|l| l == "debian:x:1000:1000:ironbake admin:/home/debian:/bin/bash"),
        "{passwd}"
    );
    let osr = unsquashfs_cat(&v.join("overlay.squashfs"), "/usr/lib/os-release");
    assert!(
        osr.contains(&format!("IMAGE_ID=ci-node\nIMAGE_VERSION={}\n", f.version)),
        "{osr}"
    );
    let keys = unsquashfs_cat(
        &v.join("overlay.squashfs"),
        "/home/debian/.ssh/authorized_keys",
    );
    assert!(
        keys.starts_with("ssh-ed25519 ") && keys.ends_with("REPLACE-ME@example\n"),
        "{keys:?}"
    );

    // Console autologin is off: no getty unit or drop-in in either layer passes --autologin.
    for layer in ["base.squashfs", "overlay.squashfs"] {
        let listing = unsquashfs_list(&v.join(layer));
        let units = listing.lines().filter(|l| {
            l.starts_with('-') && l.contains("/systemd/system/") && l.contains("getty")
        });
        let mut seen = 0;
        for line in units {
            seen += 1;
            let path = line
                .split_whitespace()
                .nth(5)
                .unwrap()
                .trim_start_matches("squashfs-root");
            let text = unsquashfs_cat(&v.join(layer), path);
            assert!(
                !text.contains("--autologin") && !text.contains(" -a "),
                "{layer}:{path} enables autologin"
            );
        }
        assert!(
            seen >= 2,
            "{layer}: expected getty units or drop-ins, found {seen}"
        );
    }

    // iPXE for the boot server, published beside the recipes.
    let ipxe = f.out.join("ipxe").join(
        layout::read_current(&f.out.join("ipxe"))
            .unwrap()
            .expect("out/ipxe/current"),
    );
    let sums = fs::read_to_string(ipxe.join(layout::SHA256SUMS)).unwrap();
    for name in ["snponly.efi", "ipxe.efi", "undionly.kpxe"] {
        let (digest, size) = layout::sha256_file(&ipxe.join(name)).unwrap();
        assert!(size > 50_000, "{name} is {size} bytes");
        assert!(
            sums.contains(&format!("{digest}  {name}\n")),
            "{name} not in SHA256SUMS:\n{sums}"
        );
    }
    let efi = fs::read(ipxe.join("snponly.efi")).unwrap();
    assert_eq!(&efi[..2], b"MZ", "snponly.efi is a PE/EFI binary");

    let r = run_ironbake(&f.project, &f.out, &f.cache, &["list"]);
    assert!(
        r.ok && r.stdout.contains(&format!("{}  ", f.version))
            && r.stdout.contains("ci-node  Small Debian"),
        "{}",
        r.stdout
    );
    let r = run_ironbake(&f.project, &f.out, &f.cache, &["verify", "ci-node"]);
    assert!(
        r.ok && r.stdout.contains("intact"),
        "{}{}",
        r.stdout,
        r.stderr
    );
}

#[test]
fn verify_reports_what_was_changed() {
    if !require(TOOLS) {
        return;
    }
    let f = fixture();
    // Tamper with a copy, never with the shared published version.
    let dir = scratch("tamper");
    let out = dir.path().join("out");
    let src = f.out.join("ci-node").join(&f.version);
    let dst = out.join("ci-node").join(&f.version);
    common::copy_version(&src, &dst);
    fs::write(dst.join("cmdline"), "console=ttyS0 init=/bin/sh\n").unwrap();
    fs::write(dst.join("extra"), "x").unwrap();
    fs::remove_file(dst.join("node-templates/etc/hosts.j2")).unwrap();
    let r = run_ironbake(
        &f.project,
        &out,
        &f.cache,
        &["verify", &format!("ci-node@{}", f.version)],
    );
    assert!(!r.ok, "verify must fail on a changed version");
    assert!(r.stdout.contains("4 problem(s)"), "{}", r.stdout);
    assert!(
        r.stdout.contains("cmdline: size 27 bytes") && r.stdout.contains("cmdline: sha256"),
        "{}",
        r.stdout
    );
    assert!(
        r.stdout.contains("extra: present but not listed"),
        "{}",
        r.stdout
    );
    assert!(
        r.stdout.contains("node-templates/etc/hosts.j2: missing"),
        "{}",
        r.stdout
    );
}

#[test]
fn an_overlay_edit_reuses_the_package_layer_and_publishes_a_new_version() {
    if !require(TOOLS) {
        return;
    }
    let f = fixture();
    // A private project and out/, sharing only the cache (the package layer).
    let dir = scratch("edit");
    let project = project(dir.path());
    let out = dir.path().join("out");
    let r = run_ironbake(&project, &out, &f.cache, &["build", "ci-node"]);
    assert!(
        r.ok && r.stderr.contains("package layer: cached"),
        "{}{}",
        r.stdout,
        r.stderr
    );
    assert!(
        out.join("ci-node").join(&f.version).is_dir(),
        "same inputs, same version"
    );
    let again = run_ironbake(&project, &out, &f.cache, &["build", "ci-node"]);
    assert!(
        again.ok && again.stdout.contains("already published"),
        "{}",
        again.stdout
    );

    fs::write(
        project.join("overlays/base/files/etc/sudoers.d/ironbake"),
        "debian ALL=(ALL:ALL) ALL\n",
    )
    .unwrap();
    let r = run_ironbake(&project, &out, &f.cache, &["build", "ci-node"]);
    assert!(
        r.ok && r.stderr.contains("package layer: cached"),
        "{}{}",
        r.stdout,
        r.stderr
    );
    let current = layout::read_current(&out.join("ci-node")).unwrap().unwrap();
    assert_ne!(current, f.version, "an overlay edit is a new version");
    let (old, problems) = layout::verify(&out.join("ci-node").join(&f.version)).unwrap();
    assert!(
        problems.is_empty(),
        "the old version is untouched: {problems:?}"
    );
    let (new, problems) = layout::verify(&out.join("ci-node").join(&current)).unwrap();
    assert!(problems.is_empty(), "{problems:?}");
    let digest = |m: &layout::Manifest, p: &str| {
        m.outputs
            .iter()
            .find(|o| o.path == p)
            .unwrap()
            .sha256
            .clone()
    };
    assert_eq!(digest(&old, "base.squashfs"), digest(&new, "base.squashfs"));
    assert_ne!(
        digest(&old, "overlay.squashfs"),
        digest(&new, "overlay.squashfs")
    );
    assert_eq!(
        unsquashfs_cat(
            &out.join("ci-node").join(&current).join("overlay.squashfs"),
            "/etc/sudoers.d/ironbake"
        ),
        "debian ALL=(ALL:ALL) ALL\n"
    );

    // The initramfs: only the leading archive (the version's name) differs; the compressed
    // rest is the same bytes, kept in the build cache under the digest of what it holds.
    let initrd = |v: &str| fs::read(out.join("ci-node").join(v).join("initrd.img")).unwrap();
    let (old_ird, new_ird) = (initrd(&f.version), initrd(&current));
    let split = |b: &[u8]| {
        b.windows(4)
            .position(|w| w == [0x28, 0xb5, 0x2f, 0xfd])
            .expect("a zstd archive")
    };
    let (old_at, new_at) = (split(&old_ird), split(&new_ird));
    assert_eq!(old_ird[old_at..], new_ird[new_at..]);
    assert_ne!(old_ird[..old_at], new_ird[..new_at]);
    let raw = zstd_decompress(&new_ird[new_at..]);
    let key = format!("{}-zstd", hex_sha256(&raw));
    let cached: Vec<String> = fs::read_dir(f.cache.join("initramfs"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert!(
        cached.iter().any(|n| n.starts_with(&key)),
        "{key} in {cached:?}"
    );
}

fn zstd_decompress(b: &[u8]) -> Vec<u8> {
    let mut child = Command::new("zstd")
        .arg("-dc")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    let input = b.to_vec();
    let writer = std::thread::spawn(move || std::io::Write::write_all(&mut stdin, &input));
    let out = child.wait_with_output().unwrap();
    writer.join().unwrap().unwrap();
    assert!(out.status.success());
    out.stdout
}

fn hex_sha256(b: &[u8]) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(b))
}

#[test]
fn a_mksquashfs_failure_is_quoted_and_publishes_nothing() {
    if !require(TOOLS) {
        return;
    }
    let f = fixture();
    let dir = scratch("mksquashfs-fails");
    let project = project(dir.path());
    // A new version (so there is something to build), on the cached package layer.
    fs::write(
        project.join("overlays/base/files/etc/hosts"),
        "127.0.0.1 localhost\n",
    )
    .unwrap();
    let fake = dir.path().join("mksquashfs");
    fs::write(&fake, "#!/bin/sh\necho 'Parallel mksquashfs: Using 2 processors'\necho 'FATAL ERROR: Failed to write to output filesystem: No space left on device' >&2\nexit 1\n").unwrap();
    fs::set_permissions(&fake, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let out = dir.path().join("out");
    let r = common::ironbake_env(
        &project,
        &out,
        &f.cache,
        &["build", "ci-node"],
        &[("IRONBAKE_TOOL_MKSQUASHFS", fake.to_str().unwrap())],
    );
    assert!(!r.ok);
    for needle in [
        "mksquashfs failed",
        "its last lines:",
        "    FATAL ERROR: Failed to write to output filesystem: No space left on device",
        "compressing",
    ] {
        assert!(
            r.stderr.contains(needle),
            "stderr lacks {needle:?}:\n{}",
            r.stderr
        );
    }
    assert!(!out.exists(), "out/ was created");
    assert!(
        common::snapshot(&dir.path().join(".out-staging")).len() <= 1,
        "staging left behind"
    );
}

#[test]
fn a_build_killed_during_mmdebstrap_leaves_out_as_it_was() {
    use std::io::{BufRead, BufReader};
    use std::os::unix::process::CommandExt;
    if !require(TOOLS) {
        return;
    }
    let f = fixture();
    let dir = scratch("killed");
    let project = project(dir.path());
    // Copy the published tree: out/ holds a version, which must survive untouched.
    let out = dir.path().join("out");
    common::copy_version(
        &f.out.join("ci-node").join(&f.version),
        &out.join("ci-node").join(&f.version),
    );
    std::os::unix::fs::symlink(&f.version, out.join("ci-node/current")).unwrap();
    let before = common::snapshot(&out);
    // A new package (so the package layer is rebuilt) and a fresh cache.
    let recipe = project.join("recipes/ci-node.toml");
    fs::write(
        &recipe,
        fs::read_to_string(&recipe)
            .unwrap()
            .replace("\"iproute2\"]", "\"iproute2\", \"less\"]"),
    )
    .unwrap();
    let cache = dir.path().join("cache");
    let mut child = common::ironbake_command(&project, &out, &cache, &["build", "ci-node"])
        .process_group(0)
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = BufReader::new(child.stderr.take().unwrap());
    let mut lines = Vec::new();
    for line in stderr.lines() {
        let line = line.unwrap();
        let installing = line.contains("I: installing remaining packages")
            || line.contains("I: extracting archives");
        lines.push(line);
        if installing {
            break;
        }
    }
    assert!(
        lines.iter().any(|l| l.contains("mmdebstrap")),
        "mmdebstrap never started:\n{}",
        lines.join("\n")
    );
    let pgid = child.id().to_string();
    assert!(
        Command::new("kill")
            .args(["-KILL", "--", &format!("-{pgid}")])
            .status()
            .unwrap()
            .success()
    );
    let status = child.wait().unwrap();
    assert!(!status.success());
    // mmdebstrap's own children may take a moment to go; then nothing must be mounted there.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while Command::new("pgrep")
        .args(["-g", &pgid])
        .stdout(std::process::Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
    {
        assert!(
            std::time::Instant::now() < deadline,
            "processes of the killed build linger"
        );
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    assert_eq!(common::snapshot(&out), before, "out/ changed");
    assert!(
        !fs::read_dir(ironbake::base::cache_root(&cache))
            .unwrap()
            .flatten()
            .any(|e| e.path().join("info.json").exists()),
        "a half-built base was cached"
    );
    ironbake::base::remove_tree(&cache).unwrap();
}
