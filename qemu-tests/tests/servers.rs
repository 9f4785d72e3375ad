//! Past one boot server: versions through a real OCI registry (Debian's `docker-registry`),
//! read back by an independent client (Debian's `skopeo`); several boot servers on one LAN.

use std::path::Path;
use std::process::Output;

use qemu_tests::fixture::{ci_node, test_dir};
use qemu_tests::netns::Netns;
use qemu_tests::registry::{self, Registry};

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// `ironbake ARGS` in-process, on a thread inside `ns` (so its sockets live there).
fn ironbake_in(ns: &Netns, args: &[&str]) -> anyhow::Result<std::process::ExitCode> {
    use clap::Parser as _;
    let args: Vec<String> = std::iter::once("ironbake".to_string())
        .chain(args.iter().map(|s| s.to_string()))
        .collect();
    in_ns(ns, move || ironbake::cli::Cli::try_parse_from(&args)?.run())
}

/// `f` on a thread inside `ns`.
fn in_ns<T: Send>(ns: &Netns, f: impl FnOnce() -> anyhow::Result<T> + Send) -> anyhow::Result<T> {
    std::thread::scope(|s| {
        s.spawn(|| {
            ns.enter_this_thread()?;
            f()
        })
        .join()
        .expect("the thread inside the namespace")
    })
}

/// Everything under `dir`: each file with its bytes' sha256, each symlink with its target.
fn tree(dir: &Path) -> String {
    fn walk(base: &Path, dir: &Path, lines: &mut Vec<String>) {
        for e in std::fs::read_dir(dir).unwrap() {
            let p = e.unwrap().path();
            let rel = p.strip_prefix(base).unwrap().display().to_string();
            let meta = std::fs::symlink_metadata(&p).unwrap();
            if meta.file_type().is_symlink() {
                lines.push(format!(
                    "{rel} -> {}",
                    std::fs::read_link(&p).unwrap().display()
                ));
            } else if meta.is_dir() {
                lines.push(format!("{rel}/"));
                walk(base, &p, lines);
            } else {
                let (sha, _) = netboot::layout::sha256_file(&p).unwrap();
                lines.push(format!("{rel} {sha}"));
            }
        }
    }
    let mut lines = Vec::new();
    if dir.exists() {
        walk(dir, dir, &mut lines);
    }
    lines.sort();
    lines.join("\n")
}

#[test]
fn a_version_goes_through_a_real_registry_and_a_damaged_blob_is_refused() {
    if !qemu_tests::require::vm_tests() {
        return;
    }
    let img = ci_node();
    let m = &img.manifest;
    let dir = test_dir("registry");
    let ns = Netns::new("reg").unwrap();
    let reg = Registry::start(&ns, &dir, true).unwrap();
    let repo = format!("{}/lab/ci-node", registry::ADDRESS);
    let out = img.out.display().to_string();
    let auth = reg.auth_file.display().to_string();
    let spec = format!("{}@{}", m.recipe, m.version);

    // Without credentials the registry says no, and the error says what to give.
    let e = ironbake_in(&ns, &["--out", &out, "push", &spec, &repo]).unwrap_err();
    assert!(
        format!("{e:#}").contains("--registry-auth") || format!("{e:#}").contains("--auth FILE"),
        "{e:#}"
    );

    // `ironbake push`, the command a CI job runs.
    let code = ironbake_in(
        &ns,
        &[
            "--out",
            &out,
            "push",
            &spec,
            &repo,
            "--registry-auth",
            &auth,
        ],
    )
    .unwrap();
    assert_eq!(code, std::process::ExitCode::SUCCESS);

    // Pushing again sends no blob: the same call through the library, for its report.
    let again = in_ns(&ns, || {
        let source = netboot::oci::Source::new(
            &repo,
            Some(&reg.auth_file),
            false,
            std::time::Duration::ZERO,
        )?;
        let r = netboot::oci::Registry::connect(
            &source.reference,
            &source.auth,
            false,
            netboot::oci::Access::Push,
        )?;
        Ok(netboot::oci::push(
            &r,
            &img.out,
            &m.recipe,
            &m.version,
            &["latest".into()],
            &mut |_| {},
        )?)
    })
    .unwrap();
    eprintln!("second push: {again:?}");
    assert_eq!(again.uploaded, (0, 0), "a second push sent blobs again");
    let files = netboot::layout::list_files(&img.dir).unwrap();
    assert!(again.present >= files.len(), "{again:?} for {files:?}");
    let tag = netboot::oci::version_tag(&m.version);
    assert_eq!(again.tags, vec![tag.clone(), "latest".to_string()]);

    // skopeo, another client, lists the tags and copies the artifact out blob by blob.
    let creds = format!("{}:{}", registry::LOGIN.0, registry::LOGIN.1);
    let docker = format!("docker://{repo}");
    let skopeo = |args: &[&str]| {
        let o = ns
            .command("skopeo")
            .args(args)
            .output()
            .expect("running skopeo");
        assert!(o.status.success(), "skopeo {args:?}: {}", text(&o));
        String::from_utf8_lossy(&o.stdout).into_owned()
    };
    let tags: serde_json::Value = serde_json::from_str(&skopeo(&[
        "list-tags",
        "--tls-verify=false",
        "--creds",
        &creds,
        &docker,
    ]))
    .unwrap();
    let listed: Vec<&str> = tags["Tags"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t.as_str().unwrap())
        .collect();
    assert!(
        listed.contains(&tag.as_str()) && listed.contains(&"latest"),
        "{tags}"
    );
    let raw: serde_json::Value = serde_json::from_str(&skopeo(&[
        "inspect",
        "--raw",
        "--tls-verify=false",
        "--creds",
        &creds,
        &format!("{docker}:{tag}"),
    ]))
    .unwrap();
    assert_eq!(raw["mediaType"], netboot::oci::MANIFEST_TYPE);
    assert_eq!(raw["artifactType"], netboot::oci::ARTIFACT_TYPE);
    assert_eq!(raw["config"]["mediaType"], netboot::oci::CONFIG_TYPE);
    assert_eq!(
        raw["annotations"]["org.opencontainers.image.version"],
        m.version.as_str()
    );
    let copy = dir.join("skopeo-copy");
    skopeo(&[
        "copy",
        "--src-tls-verify=false",
        "--src-creds",
        &creds,
        &format!("{docker}:{tag}"),
        &format!("dir:{}", copy.display()),
    ]);
    // Every file of the version is a layer named after it, whose bytes skopeo fetched are
    // the published file's; the config is manifest.json.
    let layers = raw["layers"].as_array().unwrap();
    let mut titled = Vec::new();
    for l in layers {
        let digest = l["digest"].as_str().unwrap();
        let title = l["annotations"][netboot::oci::TITLE].as_str().unwrap();
        let fetched = copy.join(digest.trim_start_matches("sha256:"));
        let (sha, _) = netboot::layout::sha256_file(&fetched).unwrap();
        assert_eq!(format!("sha256:{sha}"), digest, "{title}");
        if l["annotations"][netboot::oci::IPXE].is_string() {
            let ipxe = std::fs::read(img.out.join("ipxe/current").join(title)).unwrap();
            assert_eq!(std::fs::read(&fetched).unwrap(), ipxe, "{title}");
        } else {
            assert_eq!(
                std::fs::read(&fetched).unwrap(),
                std::fs::read(img.dir.join(title)).unwrap(),
                "{title}"
            );
            titled.push(title.to_string());
        }
    }
    let mut expected: Vec<String> = files
        .into_iter()
        .filter(|f| f != netboot::layout::MANIFEST)
        .collect();
    expected.sort();
    titled.sort();
    assert_eq!(titled, expected);
    let config = raw["config"]["digest"].as_str().unwrap();
    assert_eq!(
        std::fs::read(copy.join(config.trim_start_matches("sha256:"))).unwrap(),
        std::fs::read(img.dir.join("manifest.json")).unwrap()
    );

    // `netboot sync` into an empty root: the version, verified, current, and iPXE beside it.
    let netboot_bin = env!("CARGO_BIN_EXE_netboot-under-test");
    let synced = dir.join("synced-out");
    let o = ns
        .command(netboot_bin)
        .args(["sync", "--from", &repo, "--root"])
        .arg(&synced)
        .args(["--registry-auth", &auth])
        .output()
        .unwrap();
    let said = text(&o);
    eprintln!("{said}");
    assert!(o.status.success(), "{said}");
    assert!(
        said.contains(&format!("{spec}: pulled and published")),
        "{said}"
    );
    assert!(said.contains(&format!("current: {spec}")), "{said}");
    let (_, problems) = netboot::layout::verify(&synced.join(&m.recipe).join(&m.version)).unwrap();
    assert!(problems.is_empty(), "{problems:?}");
    assert_eq!(
        netboot::layout::read_current(&synced.join(&m.recipe))
            .unwrap()
            .as_deref(),
        Some(m.version.as_str())
    );
    assert_eq!(
        tree(&synced.join("ipxe/current")),
        tree(&img.out.join("ipxe/current"))
    );
    // Again: nothing to pull.
    let o = ns
        .command(netboot_bin)
        .args(["sync", "--from", &repo, "--root"])
        .arg(&synced)
        .args(["--registry-auth", &auth])
        .output()
        .unwrap();
    assert!(
        text(&o).contains(&format!("{spec}: already here")),
        "{}",
        text(&o)
    );

    // A blob damaged in the registry's own storage (same size, one byte changed) is refused,
    // and the root it would have gone into is exactly as it was.
    let layer = layers
        .iter()
        .find(|l| l["annotations"][netboot::oci::TITLE] == "vmlinuz")
        .expect("a vmlinuz layer");
    let blob = reg.blob_file(layer["digest"].as_str().unwrap());
    let mut bytes = std::fs::read(&blob).unwrap();
    let at = bytes.len() / 2;
    bytes[at] ^= 0x5a;
    std::fs::write(&blob, &bytes).unwrap();
    let other = dir.join("other-out");
    std::fs::create_dir_all(&other).unwrap();
    netboot::publish::Staging::new(&other, "ipxe", "kept")
        .and_then(|s| {
            std::fs::write(s.version_dir().join("SHA256SUMS"), "")?;
            s.publish()
        })
        .unwrap();
    let before = tree(&other);
    let o = ns
        .command(netboot_bin)
        .args(["sync", "--from", &repo, "--root"])
        .arg(&other)
        .args(["--registry-auth", &auth])
        .output()
        .unwrap();
    let said = text(&o);
    eprintln!("{said}");
    assert!(!o.status.success(), "a damaged blob was accepted: {said}");
    assert!(said.contains("damaged"), "{said}");
    assert_eq!(tree(&other), before, "a refused sync changed the root");
    assert!(!other.join(&m.recipe).exists());
    let staging = netboot::publish::staging_root(&other);
    assert!(
        !staging.exists() || std::fs::read_dir(&staging).unwrap().next().is_none(),
        "a refused sync left its staging behind"
    );
}
