//! Tier (b): an overlay's own apt repository, trusted only through its key. The test makes a
//! small repository, signs it with a throwaway key, and points the project's `proxmox-kernel`
//! overlay at it (its URI and key URL only; everything else is the overlay as shipped): the
//! build installs the overlay's kernel package from it when the key matches, and is refused,
//! with `out/` untouched, when the repository is signed by another key or the key does not
//! match its pinned digest.

mod common;

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use common::{project, require, run_ironbake, scratch, snapshot, unsquashfs_cat, unsquashfs_list};
use sha2::{Digest, Sha256, Sha512};

const TOOLS: &[&str] = &[
    "mmdebstrap",
    "mksquashfs",
    "unsquashfs",
    "gpg",
    "gpgv",
    "dpkg-deb",
];

/// The stand-in for Proxmox's kernel metapackage: it pulls in Debian's kernel, so the image
/// still boots, and carries one file to find in the image.
const CONTROL: &str = "Package: proxmox-default-kernel
Version: 1.0-test1
Architecture: all
Maintainer: ironbake tests <tests@example.invalid>
Depends: linux-image-amd64
Description: stand-in for the Proxmox VE kernel metapackage
 Made by ironbake's tests for a repository signed with a throwaway key.
";
const STAND_IN: &str = "/usr/lib/ironbake-test/stand-in.txt";

fn run(cmd: &mut Command) -> Vec<u8> {
    let o = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(
        o.status.success(),
        "{cmd:?} failed:\n{}",
        String::from_utf8_lossy(&o.stderr)
    );
    o.stdout
}

/// A throwaway GnuPG home with keys made on demand.
struct Keys {
    home: PathBuf,
}

impl Keys {
    fn gpg(&self) -> Command {
        let mut c = Command::new("gpg");
        c.arg("--homedir").arg(&self.home).args([
            "--batch",
            "--pinentry-mode",
            "loopback",
            "--passphrase",
            "",
        ]);
        c
    }
    /// Makes a signing key for `uid` and returns its public key, binary.
    fn make(&self, uid: &str) -> Vec<u8> {
        run(self
            .gpg()
            .args(["--quick-gen-key", uid, "ed25519", "sign", "never"]));
        run(self.gpg().args(["--export", uid]))
    }
    /// Clear-signs `release` with `uid`'s key into `inrelease`.
    fn clearsign(&self, uid: &str, release: &Path, inrelease: &Path) {
        run(self
            .gpg()
            .args(["--yes", "--local-user", uid, "--clearsign", "--output"])
            .arg(inrelease)
            .arg(release));
    }
}

/// Makes the repository: one package, its Packages index, a Release file (not yet signed).
fn make_repo(repo: &Path) {
    let pkg = repo.join("build");
    fs::create_dir_all(pkg.join("DEBIAN")).unwrap();
    fs::write(pkg.join("DEBIAN/control"), CONTROL).unwrap();
    let file = pkg.join(STAND_IN.trim_start_matches('/'));
    fs::create_dir_all(file.parent().unwrap()).unwrap();
    fs::write(&file, "installed from the test's signed repository\n").unwrap();
    let pool = repo.join("pool");
    fs::create_dir_all(&pool).unwrap();
    let deb = pool.join("proxmox-default-kernel_1.0-test1_all.deb");
    run(Command::new("dpkg-deb")
        .args(["--root-owner-group", "-Zgzip", "--build"])
        .arg(&pkg)
        .arg(&deb));
    fs::remove_dir_all(&pkg).unwrap();
    let bytes = fs::read(&deb).unwrap();
    let packages = format!(
        "{}Filename: pool/proxmox-default-kernel_1.0-test1_all.deb\nSize: {}\nSHA256: {}\n",
        CONTROL,
        bytes.len(),
        hex::encode(Sha256::digest(&bytes))
    );
    let dist = repo.join("dists/bookworm");
    let index = "pve-no-subscription/binary-amd64/Packages";
    fs::create_dir_all(dist.join(index).parent().unwrap()).unwrap();
    fs::write(dist.join(index), &packages).unwrap();
    let release = format!(
        "Origin: ironbake-test\nLabel: ironbake-test\nSuite: bookworm\nCodename: bookworm\n\
         Date: Thu, 01 Jan 2026 00:00:00 UTC\nArchitectures: amd64\n\
         Components: pve-no-subscription\nDescription: a repository for one test\nSHA256:\n \
         {} {} {index}\n",
        hex::encode(Sha256::digest(packages.as_bytes())),
        packages.len()
    );
    fs::write(dist.join("Release"), release).unwrap();
}

/// Points the project's proxmox-kernel overlay at the test repository and its key, and adds
/// the overlay to ci-node (smaller than core-node, same mechanism).
fn use_repo(project: &Path, repo: &Path, key: &Path, key_sha512: &str) {
    let toml = project.join("overlays/proxmox-kernel/overlay.toml");
    let text = fs::read_to_string(&toml).unwrap();
    let mut out = String::new();
    for line in text.lines() {
        let line = if line.starts_with("uri = ") {
            format!("uri = \"file://{}\"", repo.display())
        } else if line.starts_with("key-url = ") {
            format!("key-url = \"file://{}\"", key.display())
        } else if line.starts_with("key-sha512 = ") {
            format!("key-sha512 = \"{key_sha512}\"")
        } else {
            line.to_string()
        };
        out.push_str(&line);
        out.push('\n');
    }
    assert_ne!(out, text, "the overlay's uri and key lines were found");
    fs::write(&toml, out).unwrap();
    let recipe = project.join("recipes/ci-node.toml");
    let text = fs::read_to_string(&recipe).unwrap();
    let edited = text.replace(
        "overlays = [\"base\",",
        "overlays = [\"base\", \"proxmox-kernel\",",
    );
    assert_ne!(edited, text);
    fs::write(&recipe, edited).unwrap();
}

#[test]
fn an_overlay_repository_is_used_only_when_its_key_signed_it() {
    if !require(TOOLS) {
        return;
    }
    let dir = scratch("apt-source");
    let project = project(dir.path());
    let (out, cache) = (dir.path().join("out"), dir.path().join("cache"));
    let keys = Keys {
        home: dir.path().join("gnupg"),
    };
    fs::create_dir_all(&keys.home).unwrap();
    fs::set_permissions(
        &keys.home,
        std::os::unix::fs::PermissionsExt::from_mode(0o700),
    )
    .unwrap();
    let good = keys.make("repo key <good@example.invalid>");
    keys.make("someone else <other@example.invalid>");
    let key_file = dir.path().join("release-key.gpg");
    fs::write(&key_file, &good).unwrap();
    let key_sha512 = hex::encode(Sha512::digest(&good));
    let repo = dir.path().join("repo");
    make_repo(&repo);
    let release = repo.join("dists/bookworm/Release");
    let inrelease = repo.join("dists/bookworm/InRelease");
    use_repo(&project, &repo, &key_file, &key_sha512);

    // Something published already: every refusal below must leave it as it is.
    fs::create_dir_all(out.join("ci-node/0.0.1-existing")).unwrap();
    fs::write(out.join("ci-node/0.0.1-existing/manifest.json"), "{}").unwrap();
    let before = snapshot(&out);

    // 1. Signed by another key: refused before anything is built.
    keys.clearsign("someone else <other@example.invalid>", &release, &inrelease);
    let r = run_ironbake(&project, &out, &cache, &["build", "ci-node"]);
    assert!(
        !r.ok,
        "a repository signed by another key was used:\n{}",
        r.stderr
    );
    for needle in [
        "its InRelease is not signed by the key",
        "from proxmox-kernel",
        "gpgv failed",
    ] {
        assert!(
            r.stderr.contains(needle),
            "stderr lacks {needle:?}:\n{}",
            r.stderr
        );
    }
    assert!(
        !r.stderr.contains("mmdebstrap"),
        "refused only after starting mmdebstrap:\n{}",
        r.stderr
    );
    assert_eq!(snapshot(&out), before, "out/ changed");

    // 2. The key itself differs from its pinned digest: refused, both digests named.
    keys.clearsign("repo key <good@example.invalid>", &release, &inrelease);
    let wrong = "0".repeat(128);
    let toml = project.join("overlays/proxmox-kernel/overlay.toml");
    let text = fs::read_to_string(&toml).unwrap();
    fs::write(&toml, text.replace(&key_sha512, &wrong)).unwrap();
    let r = run_ironbake(&project, &out, &cache, &["build", "ci-node"]);
    assert!(!r.ok, "a key that does not match its digest was used");
    for needle in [
        "does not match its pinned digest",
        &format!("expected sha512 {wrong}"),
        &format!("actual   sha512 {key_sha512}"),
    ] {
        assert!(
            r.stderr.contains(needle),
            "stderr lacks {needle:?}:\n{}",
            r.stderr
        );
    }
    assert_eq!(snapshot(&out), before, "out/ changed");
    fs::write(&toml, text).unwrap();

    // 3. Signed by its key: built, with the overlay's kernel package from the repository.
    let r = run_ironbake(&project, &out, &cache, &["build", "ci-node"]);
    assert!(r.ok, "the build failed:\n{}", r.stderr);
    let current = fs::read_link(out.join("ci-node/current")).unwrap();
    let vdir = out.join("ci-node").join(current);
    let m = netboot::layout::load_manifest(&vdir).unwrap();
    assert_eq!(m.kernel.package, "proxmox-default-kernel");
    let stand_in = m
        .packages
        .iter()
        .find(|p| p.name == "proxmox-default-kernel")
        .expect("the repository's package is installed");
    assert_eq!(stand_in.version, "1.0-test1");
    let source = m
        .debian
        .sources
        .iter()
        .find(|s| s.origin == "proxmox-kernel")
        .expect("the overlay's source is in the manifest");
    let key_sha256 = hex::encode(Sha256::digest(&good));
    assert_eq!(source.key_sha256.as_deref(), Some(key_sha256.as_str()));
    assert_eq!(
        source.release_sha256,
        hex::encode(Sha256::digest(fs::read(&inrelease).unwrap()))
    );
    let base = vdir.join("base.squashfs");
    assert_eq!(
        unsquashfs_cat(&base, STAND_IN),
        "installed from the test's signed repository\n"
    );
    let listing = unsquashfs_list(&base);
    assert!(
        listing.contains("squashfs-root/etc/apt/keyrings/proxmox-kernel-pve.gpg"),
        "the key is not in the image's keyrings"
    );
    let sources = unsquashfs_cat(&base, "/etc/apt/sources.list");
    // A file:// repository is read through apt's copy method (see base.rs).
    let line = format!(
        "deb [signed-by=/etc/apt/keyrings/proxmox-kernel-pve.gpg] copy://{} bookworm pve-no-subscription",
        repo.display()
    );
    assert!(
        sources.contains(&line),
        "sources.list lacks {line:?}:\n{sources}"
    );
    assert!(
        !listing.contains("pve-enterprise") && !sources.contains("enterprise"),
        "an enterprise repository is configured:\n{sources}"
    );
}
