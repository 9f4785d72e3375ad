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

const B_IP: &str = "10.33.0.2";
const NODES: [&str; 4] = ["duo0", "duo1", "duo2", "duo3"];

fn mac(i: usize) -> String {
    format!("52:54:00:00:06:{:02x}", i + 1)
}

/// Two boot servers on one LAN: A serves the build's `out/`; B is filled from a registry
/// (`serve --sync-from`) and follows A. Four nodes power on; A is killed as soon as it has
/// handed one of them its boot script; every node still reaches ready, each with the SSH
/// host key both servers derive for it, and reports to B.
#[test]
fn four_nodes_reach_ready_when_one_of_two_servers_dies_mid_boot() {
    use netboot::fleet::auth::{self, Keys};
    use qemu_tests::lan::{Lan, SERVER_IP};
    use qemu_tests::qemu::{Nic, Vm, VmConfig, ovmf_retrying};
    use qemu_tests::server::{HTTP_PORT, Process};
    use std::time::Duration;

    if !qemu_tests::require::vm_tests() {
        return;
    }
    let img = ci_node();
    let m = &img.manifest;
    let _one = qemu_tests::fixture::one_at_a_time();
    let dir = test_dir("two-servers");
    let lan = Lan::new("duo", &dir).unwrap();
    let b_ns = lan.host("duo-b", B_IP).unwrap();
    let mut inv = String::new();
    for (i, n) in NODES.iter().enumerate() {
        inv.push_str(&format!(
            "[nodes.{n}]\nmac = \"{}\"\nrecipe = \"ci-node\"\n",
            mac(i)
        ));
    }
    let inventory = dir.join("inventory.toml");
    std::fs::write(&inventory, inv).unwrap();
    // One site key and admin token, copied to both servers' state folders.
    let (state_a, state_b) = (dir.join("state-a"), dir.join("state-b"));
    let keys = Keys::load(&state_a).unwrap();
    for f in [auth::SITE_KEY_FILE, auth::TOKEN_FILE] {
        let text = std::fs::read_to_string(state_a.join(f)).unwrap();
        auth::write_private(&state_b.join(f), &text).unwrap();
    }
    // The version goes to a registry (in B's namespace), as a CI job would push it.
    let reg = Registry::start(&b_ns, &dir, true).unwrap();
    let repo = format!("{}/lab/ci-node", registry::ADDRESS);
    let auth_file = reg.auth_file.display().to_string();
    let spec = format!("{}@{}", m.recipe, m.version);
    let out = img.out.display().to_string();
    ironbake_in(
        &b_ns,
        &[
            "--out",
            &out,
            "push",
            &spec,
            &repo,
            "--registry-auth",
            &auth_file,
        ],
    )
    .unwrap();

    let program = Path::new(env!("CARGO_BIN_EXE_netboot-under-test"));
    let (a_url, b_url) = (
        format!("http://{SERVER_IP}:{HTTP_PORT}"),
        format!("http://{B_IP}:{HTTP_PORT}"),
    );
    let s = |v: &str| v.to_string();
    let common = |root: &Path, state: &Path, ip: &str, ifc: &str| {
        vec![
            s("--root"),
            root.display().to_string(),
            s("--inventory"),
            inventory.display().to_string(),
            s("--state"),
            state.display().to_string(),
            s("--bind"),
            s(ip),
            s("--interface"),
            s(ifc),
            s("--http-port"),
            HTTP_PORT.to_string(),
            s("--tftp-port"),
            s("69"),
        ]
    };
    let mut args_a = common(&img.out, &state_a, SERVER_IP, "br0");
    args_a.extend([s("--peer"), b_url.clone()]);
    let out_b = dir.join("out-b");
    let mut args_b = common(&out_b, &state_b, B_IP, "eth0");
    args_b.extend([
        s("--follow"),
        a_url.clone(),
        s("--sync-from"),
        repo.clone(),
        s("--registry-auth"),
        auth_file.clone(),
        s("--sync-every"),
        s("5"),
    ]);
    let mut a = Process::start_in(&lan.ns, program, &args_a, dir.join("netboot-a.log")).unwrap();
    let b = Process::start_in(&b_ns, program, &args_b, dir.join("netboot-b.log")).unwrap();
    let synced = qemu_tests::console::wait_until(Duration::from_secs(120), || {
        let cur = netboot::layout::read_current(&out_b.join(&m.recipe))
            .ok()
            .flatten();
        (cur.as_deref() == Some(m.version.as_str()) && out_b.join("ipxe/current").exists())
            .then_some(())
    });
    assert!(synced.is_some(), "B never synced:\n{}", b.log_text());

    // Whichever server a node reaches, the same answer: the same version and kernel line
    // (through ${srv}, with both servers listed), each server trying itself first.
    let a_addr = std::net::SocketAddr::new(SERVER_IP.parse().unwrap(), HTTP_PORT);
    let b_addr = std::net::SocketAddr::new(B_IP.parse().unwrap(), HTTP_PORT);
    let kernel_line = |script: &str| {
        script
            .lines()
            .find(|l| l.starts_with("kernel "))
            .unwrap_or_else(|| panic!("no kernel line in {script}"))
            .to_string()
    };
    for i in 0..NODES.len() {
        let path = format!("/boot.ipxe?mac={}", mac(i));
        let (from_a, from_b) = (
            a.get_from(a_addr, &path).unwrap(),
            b.get_from(b_addr, &path).unwrap(),
        );
        assert_eq!(kernel_line(&from_a), kernel_line(&from_b));
        assert!(kernel_line(&from_a).contains(&format!("ironbake.servers={a_url},{b_url}")));
        assert!(from_a.contains(&format!("set srv {a_url}\n")), "{from_a}");
        assert!(from_b.contains(&format!("set srv {b_url}\n")), "{from_b}");
    }

    let cfgs: Vec<VmConfig> = NODES
        .iter()
        .enumerate()
        .map(|(i, n)| VmConfig {
            name: n.to_string(),
            boot: ovmf_retrying(),
            mem_mib: 1024,
            cpus: 1,
            nic: Some(Nic {
                mac: mac(i),
                tap: lan.tap().unwrap(),
            }),
            disks: vec![],
            links: vec![],
        })
        .collect();
    // What A logs from now on is the nodes' doing, not the checks above.
    let a_mark = a.log_text().len();
    let mut vms: Vec<Vm> = cfgs
        .iter()
        .map(|cfg| Vm::start(&lan.ns, cfg, &dir).unwrap())
        .collect();
    // A dies (SIGKILL) the moment it has given a node its boot script: that node is then
    // in the middle of fetching from A.
    let served_by_a = |log: &str| -> Vec<String> {
        NODES
            .iter()
            .filter(|n| {
                log.lines()
                    .any(|l| l.contains("boot script") && l.contains(&format!("node={n}")))
            })
            .map(|n| n.to_string())
            .collect()
    };
    let first = qemu_tests::console::wait_until(Duration::from_secs(300), || {
        let served = served_by_a(a.log_text().get(a_mark..).unwrap_or_default());
        (!served.is_empty()).then_some(served)
    })
    .unwrap_or_else(|| {
        panic!(
            "A gave no node a boot script in 300 s\n--- A ---\n{}\n--- B ---\n{}",
            qemu_tests::console::last_lines(&a.log_text(), 30),
            qemu_tests::console::last_lines(&b.log_text(), 30)
        )
    });
    a.kill().unwrap();
    eprintln!("killed A after it served {first:?}");

    for (n, vm) in NODES.iter().zip(&mut vms) {
        let line = format!("ironbake: {n} ready {spec} in ");
        if let Err(e) = vm.wait_line("ready", &line, qemu_tests::deadline::MESH_READY, 0) {
            panic!(
                "{e:#}\n--- B (last 40 lines) ---\n{}",
                qemu_tests::console::last_lines(&b.log_text(), 40)
            );
        }
        let console = vm.console.text();
        let id = netboot::nodes::identity(&keys, n);
        assert_eq!(
            qemu_tests::console::host_key_line(&console).as_deref(),
            Some(qemu_tests::console::fingerprint(&id.host_key_pub).as_str()),
            "{n}'s host key"
        );
        if first.iter().any(|f| f == n) {
            // It started on A and finished on B.
            assert!(
                console.contains(&format!("trying {b_url}"))
                    || console.contains(&format!("trying the boot server {b_url}")),
                "{n} was served by A but never moved to B:\n{}",
                qemu_tests::console::last_lines(&console, 40)
            );
        }
    }
    // Each node's ready report reached B, the server left.
    let reported = qemu_tests::console::wait_until(qemu_tests::deadline::REPORT, || {
        let f: serde_json::Value =
            serde_json::from_str(&b.get_from(b_addr, "/api/v1/fleet").ok()?).ok()?;
        NODES
            .iter()
            .all(|n| {
                f.as_array().is_some_and(|a| {
                    a.iter()
                        .any(|x| x["name"] == *n && x["live"]["ready"] == "yes")
                })
            })
            .then_some(())
    });
    assert!(
        reported.is_some(),
        "B did not hear every node ready: {}",
        b.get_from(b_addr, "/api/v1/fleet").unwrap_or_default()
    );
}

const CACHE_IP: &str = "10.33.0.3";

/// `X-Cache-Status` of `GET url`, asked from inside `ns` with curl, and the HTTP status.
fn cache_status(ns: &Netns, url: &str) -> (u16, String) {
    let o = ns
        .command("curl")
        .args(["-s", "-o", "/dev/null", "-D", "-", "--max-time", "20", url])
        .output()
        .expect("running curl");
    let head = String::from_utf8_lossy(&o.stdout).into_owned();
    let status = head
        .lines()
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let cache = head
        .lines()
        .find_map(|l| {
            l.to_ascii_lowercase()
                .strip_prefix("x-cache-status:")
                .map(|v| v.trim().to_uppercase())
        })
        .unwrap_or_default();
    (status, cache)
}

/// Nodes booting through a real HTTP cache (nginx, with the project's own configuration):
/// the boot server names the cache for a version's files (`--files-url`); one boot warms it;
/// the cache's origin is then killed, and a second node still boots to ready from the cache.
/// Versioned paths are cached; `current` and scripts are not.
#[test]
fn a_node_boots_through_an_http_cache_after_its_origin_is_gone() {
    use qemu_tests::lan::{Lan, SERVER_IP};
    use qemu_tests::nginx::{self, Nginx};
    use qemu_tests::qemu::{Nic, Vm, VmConfig, ovmf_retrying};
    use qemu_tests::server::{HTTP_PORT, Process};

    if !qemu_tests::require::vm_tests() {
        return;
    }
    let img = ci_node();
    let m = &img.manifest;
    let _one = qemu_tests::fixture::one_at_a_time();
    let dir = test_dir("cache");
    let lan = Lan::new("cache", &dir).unwrap();
    let cache_ns = lan.host("cache-c", CACHE_IP).unwrap();
    let inventory = dir.join("inventory.toml");
    std::fs::write(
        &inventory,
        "[nodes.warm]\nmac = \"52:54:00:00:07:01\"\nrecipe = \"ci-node\"\n\
         [nodes.cold]\nmac = \"52:54:00:00:07:02\"\nrecipe = \"ci-node\"\n",
    )
    .unwrap();
    let program = Path::new(env!("CARGO_BIN_EXE_netboot-under-test"));
    let s = |v: &str| v.to_string();
    // The cache's origin: a server of the same out/ beside nginx (HTTP only).
    let mut origin = Process::start_in(
        &cache_ns,
        program,
        &[
            s("--root"),
            img.out.display().to_string(),
            s("--inventory"),
            inventory.display().to_string(),
            s("--bind"),
            s("127.0.0.1"),
            s("--no-dhcp"),
            s("--http-port"),
            s("8080"),
            s("--tftp-port"),
            s("6969"),
        ],
        dir.join("netboot-origin.log"),
    )
    .unwrap();
    let cache = Nginx::start(&cache_ns, &dir, "127.0.0.1:8080").unwrap();
    let files_url = format!("http://{CACHE_IP}:{}", nginx::PORT);
    // The LAN's boot server: DHCP, TFTP, scripts and settings; a version's files from the cache.
    let server = Process::start_in(
        &lan.ns,
        program,
        &[
            s("--root"),
            img.out.display().to_string(),
            s("--inventory"),
            inventory.display().to_string(),
            s("--state"),
            dir.join("state").display().to_string(),
            s("--bind"),
            s(SERVER_IP),
            s("--interface"),
            s("br0"),
            s("--http-port"),
            HTTP_PORT.to_string(),
            s("--tftp-port"),
            s("69"),
            s("--files-url"),
            files_url.clone(),
        ],
        dir.join("netboot.log"),
    )
    .unwrap();
    let vm = |name: &str, mac: &str| VmConfig {
        name: name.into(),
        boot: ovmf_retrying(),
        mem_mib: 1024,
        cpus: 2,
        nic: Some(Nic {
            mac: mac.into(),
            tap: lan.tap().unwrap(),
        }),
        disks: vec![],
        links: vec![],
    };
    let spec = format!("{}@{}", m.recipe, m.version);
    let boot = |name: &str, mac: &str| {
        let mut v = Vm::start(&lan.ns, &vm(name, mac), &dir).unwrap();
        let line = format!("ironbake: {name} ready {spec} in ");
        if let Err(e) = v.wait_line("ready", &line, qemu_tests::deadline::PXE_READY, 0) {
            panic!(
                "{e:#}\n--- nginx errors ---\n{}\n--- server ---\n{}",
                std::fs::read_to_string(&cache.error_log).unwrap_or_default(),
                qemu_tests::console::last_lines(&server.log_text(), 30)
            );
        }
        v
    };
    let warm = boot("warm", "52:54:00:00:07:01");
    drop(warm);
    // The boot went through the cache: every file of the version it fetched is there now.
    let access = std::fs::read_to_string(&cache.access_log).unwrap();
    let v = format!("/{}/{}/", m.recipe, m.version);
    for f in ["vmlinuz", "initrd.img", "base.squashfs", "overlay.squashfs"] {
        assert!(
            access.contains(&format!("{v}{f}")),
            "the cache never saw {f}:\n{access}"
        );
        assert_eq!(
            cache_status(&cache_ns, &format!("{files_url}{v}{f}")),
            (200, "HIT".to_string()),
            "{f}"
        );
    }
    // The boot server itself sent none of them.
    assert!(
        !server.log_text().contains("base.squashfs"),
        "the boot server served a layer itself"
    );
    // `current` and scripts are never kept: each request goes to the origin.
    let moving = format!("{files_url}/{}/current/cmdline", m.recipe);
    let script = format!("{files_url}/boot.ipxe?mac=52:54:00:00:07:02");
    for url in [&moving, &script] {
        for _ in 0..2 {
            let (st, status) = cache_status(&cache_ns, url);
            assert!(st == 200 && status != "HIT", "{url}: {st} {status}");
        }
    }

    // The origin goes away; a node that never booted still boots, from the cache alone.
    origin.kill().unwrap();
    let (st, _) = cache_status(&cache_ns, &moving);
    assert_eq!(st, 502, "current was answered without its origin");
    let mark = std::fs::read_to_string(&cache.access_log).unwrap().len();
    let cold = boot("cold", "52:54:00:00:07:02");
    let after = std::fs::read_to_string(&cache.access_log).unwrap();
    let after = &after[mark..];
    assert!(after.contains(&format!("{v}base.squashfs")), "{after}");
    drop(cold);
}
