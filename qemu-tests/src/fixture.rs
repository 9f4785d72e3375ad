//! The images the VM tests boot (`ci-node`, `core-node`), built once per test binary into the target folder
//! (the package layer is cached across runs), and the per-test folders.

use std::path::PathBuf;
use std::sync::{Mutex, MutexGuard, OnceLock};

use netboot::layout::Manifest;

/// A published `ci-node`.
#[derive(Debug)]
pub struct Image {
    /// The published root (`out/`), with `ipxe/` beside the recipe.
    pub out: PathBuf,
    /// The version folder.
    pub dir: PathBuf,
    /// Its manifest.
    pub manifest: Manifest,
}

/// `ci-node`, built on first use.
pub fn ci_node() -> &'static Image {
    static I: OnceLock<Image> = OnceLock::new();
    I.get_or_init(|| build("ci-node"))
}

/// `core-node` (the homelab's core nodes), built on first use with Debian's kernel: the
/// test LAN cannot reach Proxmox's repository, so the proxmox-kernel overlay is left out, as a
/// user without it would ask.
pub fn core_node() -> &'static Image {
    static I: OnceLock<Image> = OnceLock::new();
    I.get_or_init(|| build_without("core-node", &["proxmox-kernel"]))
}

fn build(recipe: &str) -> Image {
    build_without(recipe, &[])
}

fn build_without(recipe: &str, without: &[&str]) -> Image {
    let root = crate::project();
    let work = root.join("target").join("qemu-tests");
    let mut paths = ironbake::Paths::in_project(&root);
    paths.out = work.join("out");
    paths.cache = work.join("cache");
    let options = ironbake::BuildOptions {
        without: without.iter().map(|s| s.to_string()).collect(),
    };
    let built = ironbake::build(
        &paths,
        recipe,
        &options,
        &ironbake::progress::Progress::new(false),
    )
    .unwrap_or_else(|e| panic!("building {recipe}: {e:#}"));
    Image {
        out: paths.out.clone(),
        dir: built.dir,
        manifest: built.manifest,
    }
}

/// A copy of the project in `target/qemu-tests/OUT-project` whose ci-node recipe also uses the
/// `disk-boot` overlay (and the tests' [`PERSIST_CHECK`] overlay) and lists the `disk` output,
/// publishing into `target/qemu-tests/OUT` (emptied first); the package layer cache is shared
/// with the other tests' ci-node.
pub fn disk_project(out: &str) -> ironbake::Paths {
    let root = crate::project();
    let work = root.join("target").join("qemu-tests");
    let project = work.join(format!("{out}-project"));
    let _ = std::fs::remove_dir_all(&project);
    let _ = std::fs::remove_dir_all(work.join(out));
    ironbake::project::copy_inputs(&root, &project).expect("copying the project");
    add_persist_check(&project);
    let recipe = project.join("recipes/ci-node.toml");
    let text = std::fs::read_to_string(&recipe).expect("reading ci-node.toml");
    let edited = text.replace(
        "overlays = [\"base\",",
        "outputs = [\"kernel\", \"initramfs\", \"rootfs\", \"disk\"]\noverlays = [\"base\", \"disk-boot\",",
    );
    assert_ne!(
        edited, text,
        "ci-node.toml no longer reads overlays = [\"base\", ..."
    );
    std::fs::write(&recipe, edited).expect("writing ci-node.toml");
    let mut paths = ironbake::Paths::in_project(&project);
    paths.out = work.join(out);
    paths.cache = work.join("cache");
    paths
}

/// One VM at a time in a test binary: two TCG guests on two cores only slow each other down.
pub fn one_at_a_time() -> MutexGuard<'static, ()> {
    static M: Mutex<()> = Mutex::new(());
    M.lock().unwrap_or_else(|e| e.into_inner())
}

/// A fresh folder for a test's logs: `target/qemu-tests/NAME`.
pub fn test_dir(name: &str) -> PathBuf {
    let d = crate::project()
        .join("target")
        .join("qemu-tests")
        .join(name);
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).expect("creating the test folder");
    d
}

/// Three versions of `ci-node` published side by side in `target/qemu-tests/fleet-out`, for
/// the fleet tests, built from copies of the project (the package layer is the shared one):
/// A is the project's own with the test's [`PERSIST_CHECK`] overlay; B changes one file of
/// the base overlay (what an admin's edit does); C is B plus a unit that multi-user requires
/// and that fails, so C never reaches ready. `current` is A.
#[derive(Debug)]
pub struct FleetVersions {
    /// The published root.
    pub out: PathBuf,
    /// A, B, C.
    pub versions: [String; 3],
}

/// [`FleetVersions`], built on first use.
pub fn fleet_versions() -> &'static FleetVersions {
    static V: OnceLock<FleetVersions> = OnceLock::new();
    V.get_or_init(|| {
        let root = crate::project();
        let work = root.join("target").join("qemu-tests");
        let out = work.join("fleet-out");
        let _ = std::fs::remove_dir_all(&out);
        let project = work.join("fleet-project");
        let _ = std::fs::remove_dir_all(&project);
        ironbake::project::copy_inputs(&root, &project).expect("copying the project");
        add_persist_check(&project);
        let build = || {
            let mut paths = ironbake::Paths::in_project(&project);
            paths.out = out.clone();
            paths.cache = work.join("cache");
            ironbake::build(
                &paths,
                "ci-node",
                &ironbake::BuildOptions::default(),
                &ironbake::progress::Progress::new(false),
            )
            .unwrap_or_else(|e| panic!("building ci-node for the fleet tests: {e:#}"))
            .manifest
            .version
        };
        let a = build();
        let base = project.join("overlays/base");
        std::fs::create_dir_all(base.join("files/etc/ironbake")).unwrap();
        std::fs::write(base.join("files/etc/ironbake/release-note"), "B\n").unwrap();
        let b = build();
        std::fs::write(
            base.join("files/usr/lib/systemd/system/ironbake-broken.service"),
            "[Unit]\nDescription=a unit that fails, which multi-user requires (version C)\n\
             Before=multi-user.target\n\n[Service]\nType=oneshot\n\
             ExecStart=/bin/sh -c 'echo version C is broken on purpose; exit 3'\n\n\
             [Install]\nRequiredBy=multi-user.target\n",
        )
        .unwrap();
        let toml = base.join("overlay.toml");
        let text = std::fs::read_to_string(&toml).unwrap();
        let edited = text.replacen("units = [", "units = [\"ironbake-broken.service\", ", 1);
        assert_ne!(edited, text, "the base overlay no longer lists units");
        std::fs::write(&toml, edited).unwrap();
        let c = build();
        ironbake::publish::set_current(&out, "ci-node", &a).expect("current back to A");
        FleetVersions {
            out,
            versions: [a, b, c],
        }
    })
}

/// The test overlay that checks persisted folders: it persists [`PERSIST_CHECK`], ships a
/// file in one of them, and at every boot appends the running version to a file in each and
/// prints a line per folder (`ironbake-check: FOLDER: VERSION... | FILES`).
pub const PERSIST_CHECK: [&str; 2] = ["/etc/ironbake-check", "/var/lib/ironbake-check"];

/// Adds the persist-check overlay to `project` and to its ci-node recipe.
fn add_persist_check(project: &std::path::Path) {
    let ov = project.join("overlays/persist-check");
    let write = |path: &str, text: &str, mode: u32| {
        let p = ov.join(path);
        std::fs::create_dir_all(p.parent().expect("has a folder")).unwrap();
        std::fs::write(&p, text).unwrap();
        std::fs::set_permissions(&p, std::os::unix::fs::PermissionsExt::from_mode(mode)).unwrap();
    };
    write(
        "overlay.toml",
        &format!(
            "description = \"Tests only: two persisted folders, and a unit that adds each boot's \
             version to a file in both\"\npersist = [\"{}\", \"{}\"]\nunits = [\"ironbake-check.service\"]\n",
            PERSIST_CHECK[0], PERSIST_CHECK[1]
        ),
        0o644,
    );
    write(
        "files/etc/ironbake-check/from-image",
        "shipped in the image\n",
        0o644,
    );
    write(
        "files/usr/lib/systemd/system/ironbake-check.service",
        "[Unit]\nDescription=tests: the versions this node booted, in two persisted folders\n\
         After=ironbake-persist.service\n\n[Service]\nType=oneshot\n\
         ExecStart=/usr/lib/ironbake/check-persist\n\n[Install]\nWantedBy=multi-user.target\n",
        0o644,
    );
    write(
        "files/usr/lib/ironbake/check-persist",
        r#"#!/bin/sh
# Tests only: appends this boot's version to a file in each persisted folder, and prints
# what each holds.
. /usr/lib/os-release
for d in /var/lib/ironbake-check /etc/ironbake-check; do
    echo "$IMAGE_VERSION" >>"$d/versions"
    echo "ironbake-check: $d: $(tr '\n' ' ' <"$d/versions")| $(ls "$d" | tr '\n' ' ')" >/dev/console
done
# On the disk now: some tests end a VM as soon as it is ready, as a power cut would.
sync
"#,
        0o755,
    );
    let recipe = project.join("recipes/ci-node.toml");
    let text = std::fs::read_to_string(&recipe).unwrap();
    let edited = text.replacen(
        "overlays = [\"base\",",
        "overlays = [\"base\", \"persist-check\",",
        1,
    );
    assert_ne!(
        edited, text,
        "ci-node.toml no longer reads overlays = [\"base\", ..."
    );
    std::fs::write(&recipe, edited).unwrap();
}
