//! Tier (b): the `k3s-node` recipe, built with a stand-in for the k3s binary served from a
//! loopback URL with its own checksum file (the project's k3s overlay with only its two URLs
//! changed). Checks the binary, unit and links in the image, that no secret is in anything
//! published, that its state is persisted, and each node's per-node settings as the boot
//! server renders them: its own config with its own join token, mode 0600, its data disk, and
//! a clear refusal for a node with no token.

mod common;

use std::fs;
use std::path::Path;
use std::process::Command;

use common::{
    entry, project, require, run_ironbake, scratch, serve_dir, unsquashfs_cat, unsquashfs_list,
};
use netboot::boot::SETTINGS_PREFIX;
use netboot::nodes::Inventories;
use sha2::{Digest, Sha256};

const TOOLS: &[&str] = &["mmdebstrap", "mksquashfs", "unsquashfs", "cpio"];

const STAND_IN: &str =
    "#!/bin/sh\n# Not k3s: a stand-in made by ironbake's tests.\necho \"k3s stand-in $*\"\n";
const SERVER_TOKEN: &str = "K10server-token-for-the-test::server:0123456789abcdef";
const AGENT_TOKEN: &str = "K10agent-token-for-the-test::node:fedcba9876543210";

/// The test's nodes beside the project's k3s0 (the single server): an agent with its own
/// token, and an agent left without one.
const MORE_NODES: &str = r#"
[nodes.k3s1]
mac = "02:00:00:00:00:21"
recipe = "k3s-node"
[nodes.k3s1.vars.k3s]
role = "agent"
node_ip = "192.168.88.21"
server_url = "https://192.168.88.20:6443"

[nodes.k3s2]
mac = "02:00:00:00:00:22"
recipe = "k3s-node"
[nodes.k3s2.vars.k3s]
role = "agent"
node_ip = "192.168.88.22"
server_url = "https://192.168.88.20:6443"
"#;

/// Files of a settings archive: (mode string from `cpio -tv`, path) and the extracted tree.
fn unpack_settings(archive: &[u8], into: &Path) -> Vec<(String, String)> {
    // The archive starts with the zeros that align it after the initramfs.
    let start = archive
        .iter()
        .position(|b| *b != 0)
        .expect("a non-empty archive");
    assert!(start < 4, "at most 3 bytes of padding, got {start}");
    let file = into.with_extension("cpio");
    fs::write(&file, &archive[start..]).unwrap();
    fs::create_dir_all(into).unwrap();
    let list = Command::new("cpio")
        .args(["-itv", "--quiet", "-F"])
        .arg(&file)
        .output()
        .unwrap();
    assert!(
        list.status.success(),
        "{}",
        String::from_utf8_lossy(&list.stderr)
    );
    let st = Command::new("cpio")
        .args(["-idm", "--quiet", "-F"])
        .arg(&file)
        .current_dir(into)
        .status()
        .unwrap();
    assert!(st.success());
    String::from_utf8_lossy(&list.stdout)
        .lines()
        .map(|l| {
            let mut w = l.split_whitespace();
            let mode = w.next().unwrap().to_string();
            (mode, l.split_whitespace().last().unwrap().to_string())
        })
        .collect()
}

#[test]
fn k3s_node_builds_with_a_stand_in_and_each_node_gets_only_its_own_token() {
    if !require(TOOLS) {
        return;
    }
    let dir = scratch("k3s");
    let project = project(dir.path());
    let (out, cache) = (dir.path().join("out"), dir.path().join("cache"));

    // The stand-in release: the binary and a checksum file listing more than it, as k3s's does.
    let release = dir.path().join("release");
    fs::create_dir_all(&release).unwrap();
    fs::write(release.join("k3s"), STAND_IN).unwrap();
    let digest = hex::encode(Sha256::digest(STAND_IN.as_bytes()));
    fs::write(
        release.join("sha256sum-amd64.txt"),
        format!(
            "{}  k3s-airgap-images-amd64.tar\n{digest}  k3s\n",
            "1".repeat(64)
        ),
    )
    .unwrap();
    let base = serve_dir(&release);
    let toml = project.join("overlays/k3s/overlay.toml");
    let text = fs::read_to_string(&toml).unwrap();
    let edited: String = text
        .lines()
        .map(|l| {
            if l.starts_with("url = ") {
                format!("url = \"{base}/k3s\"\n")
            } else if l.starts_with("sha256-url = ") {
                format!("sha256-url = \"{base}/sha256sum-amd64.txt\"\n")
            } else {
                format!("{l}\n")
            }
        })
        .collect();
    assert_eq!(edited.matches(&base).count(), 2, "both URLs replaced");
    fs::write(&toml, edited).unwrap();
    let inv = project.join("inventory.toml");
    let mut text = fs::read_to_string(&inv).unwrap();
    text.push_str(MORE_NODES);
    fs::write(&inv, text).unwrap();

    // Build: nothing about secrets is needed, or given, here.
    let r = run_ironbake(&project, &out, &cache, &["build", "k3s-node"]);
    assert!(r.ok, "the build failed:\n{}", r.stderr);
    assert!(
        r.stderr
            .contains("node template renderings checked against inventory.toml"),
        "{}",
        r.stderr
    );
    let current = fs::read_link(out.join("k3s-node/current")).unwrap();
    let vdir = out.join("k3s-node").join(current);
    let m = netboot::layout::load_manifest(&vdir).unwrap();
    let art = m.artifacts.iter().find(|a| a.name == "k3s").unwrap();
    assert_eq!(art.sha256, digest, "the digest from the checksum file");
    assert_eq!(art.dest, "/usr/local/bin/k3s");
    assert_eq!(
        m.node_template_modes
            .get("/etc/rancher/k3s/config.yaml")
            .map(String::as_str),
        Some("0600")
    );

    // The image: the binary, its links, the unit enabled, no per-node file, no secret.
    let layer = vdir.join("overlay.squashfs");
    let listing = unsquashfs_list(&layer);
    let k3s = entry(&listing, "/usr/local/bin/k3s").expect("k3s in the image");
    assert!(k3s.starts_with("-rwxr-xr-x 0/0"), "{k3s}");
    assert_eq!(unsquashfs_cat(&layer, "/usr/local/bin/k3s"), STAND_IN);
    for link in ["kubectl", "crictl", "ctr"] {
        let e = entry(&listing, &format!("/usr/local/bin/{link}")).expect(link);
        assert!(e.starts_with('l') && e.ends_with("-> k3s"), "{e}");
    }
    let unit = unsquashfs_cat(&layer, "/etc/systemd/system/k3s.service");
    for needle in [
        "ExecStart=/usr/local/bin/k3s $K3S_ROLE",
        "EnvironmentFile=/etc/default/k3s",
        "After=network-online.target ironbake-persist.service",
        "ExecStartPre=/usr/lib/ironbake/k3s-state",
        "Type=notify",
    ] {
        assert!(unit.contains(needle), "k3s.service lacks {needle:?}");
    }
    let wants = entry(
        &listing,
        "/etc/systemd/system/multi-user.target.wants/k3s.service",
    )
    .expect("k3s.service is enabled");
    assert!(
        wants.contains("-> /etc/systemd/system/k3s.service"),
        "{wants}"
    );
    // Its state is persisted on the node's data partition, the base overlay's way.
    assert_eq!(
        unsquashfs_cat(&layer, "/usr/lib/ironbake/persist.list"),
        "/var/lib/rancher\n"
    );
    let modules = unsquashfs_cat(&layer, "/etc/modules-load.d/ironbake.conf");
    assert!(
        modules.contains("br_netfilter") && modules.contains("overlay"),
        "{modules}"
    );
    assert!(entry(&listing, "/etc/rancher/k3s/config.yaml").is_none());
    assert!(!unsquashfs_list(&vdir.join("base.squashfs")).contains("rancher/k3s/config.yaml"));
    for p in netboot::layout::list_files(&vdir).unwrap() {
        let bytes = fs::read(vdir.join(&p)).unwrap();
        assert!(
            !bytes
                .windows(10)
                .any(|w| w == &SERVER_TOKEN.as_bytes()[..10]),
            "{p} holds a token"
        );
    }

    // The boot server's view: secrets.toml beside the inventory, readable by root only.
    let secrets = project.join("secrets.toml");
    fs::write(
        &secrets,
        format!("[nodes.k3s0]\nk3s_token = \"{SERVER_TOKEN}\"\n[nodes.k3s1]\nk3s_token = \"{AGENT_TOKEN}\"\n"),
    )
    .unwrap();
    fs::set_permissions(
        &secrets,
        std::os::unix::fs::PermissionsExt::from_mode(0o644),
    )
    .unwrap();
    let err = Inventories::load(&inv, None).unwrap_err().to_string();
    assert!(err.contains("chmod 600"), "{err}");
    fs::set_permissions(
        &secrets,
        std::os::unix::fs::PermissionsExt::from_mode(0o600),
    )
    .unwrap();
    let nodes = Inventories::load(&inv, Some(dir.path().join("state"))).unwrap();

    let settings = |mac: &str, name: &str| {
        let t = nodes.target(&out, mac).unwrap().expect("the node boots");
        assert_eq!(t.name, name);
        nodes.settings(&t)
    };
    let server = settings("02:00:00:00:00:20", "k3s0").unwrap();
    let tree = dir.path().join("settings-k3s0");
    let files = unpack_settings(&server, &tree);
    let mode_of = |files: &[(String, String)], p: &str| {
        files
            .iter()
            .find(|(_, path)| path == &format!("{SETTINGS_PREFIX}{p}"))
            .unwrap_or_else(|| panic!("{p} not in the settings: {files:?}"))
            .0
            .clone()
    };
    assert_eq!(
        mode_of(&files, "/etc/rancher/k3s/config.yaml"),
        "-rw-------"
    );
    assert_eq!(mode_of(&files, "/etc/default/k3s"), "-rw-r--r--");
    assert_eq!(mode_of(&files, "/etc/ironbake/data-disk"), "-rw-r--r--");
    let read = |tree: &Path, p: &str| {
        fs::read_to_string(tree.join(SETTINGS_PREFIX).join(p.trim_start_matches('/'))).unwrap()
    };
    let config = read(&tree, "/etc/rancher/k3s/config.yaml");
    for needle in [
        "node-name: k3s0\n",
        "node-ip: 192.168.88.20\n",
        &format!("token: \"{SERVER_TOKEN}\"\n"),
        "write-kubeconfig-mode: \"0600\"\n",
    ] {
        assert!(
            config.contains(needle),
            "config lacks {needle:?}:\n{config}"
        );
    }
    assert!(
        !config.contains("\nserver: "),
        "a single server joins no one:\n{config}"
    );
    assert_eq!(
        read(&tree, "/etc/default/k3s").lines().last(),
        Some("K3S_ROLE=server")
    );
    // Where its persisted folders go, from the inventory's data = { disk = ... }.
    let data = read(&tree, "/etc/ironbake/data-disk");
    assert!(
        data.starts_with("disk=/dev/disk/by-id/") && data.ends_with("\nlabel=ironbake-data\n"),
        "{data}"
    );

    let agent = settings("02:00:00:00:00:21", "k3s1").unwrap();
    let tree = dir.path().join("settings-k3s1");
    let files = unpack_settings(&agent, &tree);
    assert_eq!(
        mode_of(&files, "/etc/rancher/k3s/config.yaml"),
        "-rw-------"
    );
    let config = read(&tree, "/etc/rancher/k3s/config.yaml");
    assert!(
        config.contains("server: https://192.168.88.20:6443\n"),
        "{config}"
    );
    assert!(config.contains(AGENT_TOKEN), "{config}");
    assert!(
        !config.contains(SERVER_TOKEN),
        "another node's token:\n{config}"
    );
    assert!(
        !agent
            .windows(SERVER_TOKEN.len())
            .any(|w| w == SERVER_TOKEN.as_bytes()),
        "the server's token is in the agent's settings"
    );
    assert_eq!(
        read(&tree, "/etc/default/k3s").lines().last(),
        Some("K3S_ROLE=agent")
    );

    // A node with no token in secrets.toml gets no settings, and the reason names it.
    let err = settings("02:00:00:00:00:22", "k3s2")
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("config.yaml") && err.contains("k3s_token"),
        "{err}"
    );
}
