//! Tier (b): the HTTP server against curl, on loopback: boot scripts and settings from an
//! inventory, byte ranges, ETags, caching, the API, and a traversal corpus that must all be
//! refused.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::Command;
use std::sync::Arc;

mod common;

use common::write_version;
use netboot::hub::Hub;
use netboot::layout;
use netboot::nodes::Inventories;

fn require_curl() -> bool {
    if Command::new("curl").arg("--version").output().is_ok() {
        return true;
    }
    if std::env::var("CI").is_ok_and(|v| v == "true") {
        panic!("CI=true and curl is missing (apt-get install curl)");
    }
    eprintln!("SKIPPED: curl is not installed (apt-get install curl)");
    false
}

struct Fixture {
    _dir: tempfile::TempDir,
    base: String,
    hub: Arc<Hub>,
    recipe: String,
    version: String,
    root: PathBuf,
    inventory: PathBuf,
}

fn start(default_recipe: bool) -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("out");
    std::fs::create_dir_all(&root).unwrap();
    let (recipe, version) = write_version(&root);
    std::fs::write(dir.path().join("secret"), b"top secret\n").unwrap();
    std::os::unix::fs::symlink("../secret", root.join("leak")).unwrap();
    let inventory = dir.path().join("inventory.toml");
    let default = if default_recipe {
        format!("[defaults]\nrecipe = \"{recipe}\"\n")
    } else {
        String::new()
    };
    std::fs::write(
        &inventory,
        format!(
            "{default}[nodes.ci0]\nmac = \"52:54:00:00:00:01\"\nrecipe = \"{recipe}\"\n[nodes.ci0.vars]\nrack = \"r1\"\n"
        ),
    )
    .unwrap();
    let nodes = Arc::new(Inventories::load(&inventory, Some(dir.path().join("state"))).unwrap());
    let hub = Arc::new(Hub::new());
    let (tx, rx) = std::sync::mpsc::channel();
    let root_c = Arc::new(netboot::fsroot::Root::new(&root).unwrap());
    let hub_c = Arc::clone(&hub);
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async move {
            let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            let addr = l.local_addr().unwrap();
            let base = format!("http://{addr}");
            let st = netboot::http::AppState::new(root_c, base.clone(), nodes, hub_c);
            tx.send(base).unwrap();
            axum::serve(
                l,
                netboot::http::router(st).into_make_service_with_connect_info::<SocketAddr>(),
            )
            .await
            .unwrap();
        });
    });
    let base = rx.recv().unwrap();
    Fixture {
        _dir: dir,
        base,
        hub,
        recipe,
        version,
        root,
        inventory,
    }
}

/// `curl -s -i ARGS URL`: (status, headers lowercased, body).
fn curl(args: &[&str], url: &str) -> (u16, String, Vec<u8>) {
    let out = Command::new("curl")
        .args(["-s", "-i", "--path-as-is", "--max-time", "10"])
        .args(args)
        .arg(url)
        .output()
        .unwrap();
    let raw = out.stdout;
    let split = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .unwrap_or_else(|| {
            panic!(
                "no header end from {url}: {}",
                String::from_utf8_lossy(&raw)
            )
        });
    let head = String::from_utf8_lossy(&raw[..split]).to_ascii_lowercase();
    let status = head.split_whitespace().nth(1).unwrap().parse().unwrap();
    (status, head, raw[split + 4..].to_vec())
}

#[test]
fn boot_scripts_and_settings_come_from_the_inventory() {
    if !require_curl() {
        return;
    }
    let f = start(false);
    let (st, _, body) = curl(&[], &format!("{}/boot.ipxe?mac=52:54:00:00:00:01", f.base));
    let script = String::from_utf8(body).unwrap();
    assert_eq!(st, 200, "{script}");
    assert!(script.starts_with("#!ipxe\n"), "{script}");
    assert!(script.contains(&format!("{}/{}/{}/vmlinuz", f.base, f.recipe, f.version)));
    assert!(script.contains("ironbake.node=ci0"));
    assert!(script.contains("/nodes/52:54:00:00:00:01/settings.img"));
    // The same script by path, with the MAC in dashes and capitals.
    let (st, _, body2) = curl(&[], &format!("{}/boot/52-54-00-00-00-01.ipxe", f.base));
    assert_eq!((st, String::from_utf8(body2).unwrap()), (200, script));

    // Unknown machine, and the inventory boots none: a script that exits to the firmware.
    let (st, _, body) = curl(&[], &format!("{}/boot.ipxe?mac=52:54:00:00:00:99", f.base));
    let refusal = String::from_utf8(body).unwrap();
    assert!(
        st == 200 && refusal.contains("exit 1") && !refusal.contains("kernel"),
        "{refusal}"
    );
    let (_, _, d) = curl(&[], &format!("{}/api/v1/discovered", f.base));
    assert!(String::from_utf8_lossy(&d).contains("52:54:00:00:00:99"));
    let (st, _, _) = curl(&[], &format!("{}/boot.ipxe?mac=nonsense", f.base));
    assert_eq!(st, 400);

    // The settings archive: aligned after the 4001-byte initrd, the template rendered with the
    // recipe's and the node's variables, a machine-id that stays the same across requests.
    let (st, _, a) = curl(
        &[],
        &format!("{}/nodes/52:54:00:00:00:01/settings.img", f.base),
    );
    assert_eq!(st, 200);
    assert_eq!(&a[..9], b"\x00\x00\x00070701");
    let text = String::from_utf8_lossy(&a).into_owned();
    assert!(text.contains("ironbake/node/etc/hostname\0"), "{text:?}");
    assert!(text.contains("ci0 lab r1\n"), "{text:?}");
    let id_of = |t: &str| {
        let i = t.find("ironbake/node/etc/machine-id\0").unwrap();
        t[i..]
            .split('\0')
            .find(|s| s.len() >= 33)
            .map(|s| s[..32].to_string())
            .unwrap()
    };
    let (_, _, b) = curl(
        &[],
        &format!("{}/nodes/52:54:00:00:00:01/settings.img", f.base),
    );
    assert_eq!(id_of(&text), id_of(&String::from_utf8_lossy(&b)));
    // Its SSH host key: private (mode 0600 in the archive), and the same at every boot.
    let key_of = |t: &str| {
        let name = "ironbake/node/etc/ssh/ssh_host_ed25519_key\0";
        let at = t.find(name).expect("a host key in the archive");
        let mode = &t[at - 110 + 14..at - 110 + 22];
        let key: String = t[at + name.len()..]
            .trim_start_matches('\0')
            .split('\0')
            .next()
            .unwrap()
            .to_string();
        (mode.to_string(), key)
    };
    let (mode, key) = key_of(&text);
    assert_eq!(mode, "00008180", "mode 0100600");
    assert!(
        key.starts_with("-----BEGIN OPENSSH PRIVATE KEY-----"),
        "{key}"
    );
    assert_eq!(key_of(&String::from_utf8_lossy(&b)).1, key);
    assert!(text.contains("ironbake/node/etc/ssh/ssh_host_ed25519_key.pub\0"));

    // An inventory edit is picked up without a restart; a broken edit keeps the last good one.
    std::thread::sleep(std::time::Duration::from_millis(20));
    std::fs::write(
        &f.inventory,
        format!("[nodes.renamed]\nmac = \"52:54:00:00:00:01\"\nrecipe = \"{}\"\n[nodes.renamed.vars]\nrack = \"r2\"\n", f.recipe),
    )
    .unwrap();
    let (_, _, body) = curl(&[], &format!("{}/boot.ipxe?mac=52:54:00:00:00:01", f.base));
    assert!(String::from_utf8_lossy(&body).contains("ironbake.node=renamed"));
    std::thread::sleep(std::time::Duration::from_millis(20));
    std::fs::write(&f.inventory, "[nodes.x\nbroken").unwrap();
    let (_, _, body) = curl(&[], &format!("{}/boot.ipxe?mac=52:54:00:00:00:01", f.base));
    assert!(String::from_utf8_lossy(&body).contains("ironbake.node=renamed"));
}

#[test]
fn files_have_ranges_etags_and_cache_headers() {
    if !require_curl() {
        return;
    }
    let f = start(true);
    let vpath = format!("{}/{}/{}/base.squashfs", f.base, f.recipe, f.version);
    let data = std::fs::read(
        f.root
            .join(&f.recipe)
            .join(&f.version)
            .join("base.squashfs"),
    )
    .unwrap();
    let (sha, _) = layout::sha256_reader(&data[..]).unwrap();

    // The script request tells the server which MAC this address is; a layer sent in full
    // then counts as the node's image stage.
    curl(&[], &format!("{}/boot.ipxe?mac=52:54:00:00:00:01", f.base));
    let (st, h, body) = curl(&[], &vpath);
    assert_eq!(st, 200);
    assert_eq!(body, data);
    assert!(h.contains(&format!("etag: \"{sha}\"")), "{h}");
    assert!(
        h.contains("cache-control: public, max-age=31536000, immutable"),
        "{h}"
    );
    assert!(
        h.contains(&format!("content-length: {}", data.len())),
        "{h}"
    );
    assert!(h.contains("accept-ranges: bytes"), "{h}");

    let (st, h, body) = curl(&["-I"], &vpath);
    assert_eq!(st, 200);
    assert!(
        body.is_empty() && h.contains(&format!("content-length: {}", data.len())),
        "{h}"
    );

    let (st, h, body) = curl(&["-r", "100-199"], &vpath);
    assert_eq!(st, 206);
    assert_eq!(body, &data[100..200]);
    assert!(
        h.contains(&format!("content-range: bytes 100-199/{}", data.len())),
        "{h}"
    );

    let (st, h, body) = curl(&["-r", "-10"], &vpath);
    assert_eq!((st, body.as_slice()), (206, &data[data.len() - 10..]));
    assert!(h.contains("content-length: 10"), "{h}");

    let (st, h, body) = curl(&["-r", "0-9,1000-1009"], &vpath);
    assert_eq!(st, 206);
    assert!(
        h.contains("content-type: multipart/byteranges; boundary="),
        "{h}"
    );
    let cl: usize = h
        .split("content-length: ")
        .nth(1)
        .unwrap()
        .lines()
        .next()
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    assert_eq!(cl, body.len());
    let b = String::from_utf8_lossy(&body);
    assert!(
        b.contains(
            &format!("content-range: bytes 0-9/{}", data.len())
                .replace("content-range", "Content-Range")
        ),
        "{b}"
    );
    let second = body
        .windows(10)
        .position(|w| w == &data[1000..1010])
        .is_some();
    assert!(second);

    let (st, h, _) = curl(&["-r", "999999-"], &vpath);
    assert_eq!(st, 416);
    assert!(
        h.contains(&format!("content-range: bytes */{}", data.len())),
        "{h}"
    );

    let (st, _, body) = curl(&["-H", &format!("If-None-Match: \"{sha}\"")], &vpath);
    assert!(st == 304 && body.is_empty());
    let (st, _, _) = curl(&["-H", "If-None-Match: \"other\""], &vpath);
    assert_eq!(st, 200);
    // If-Range with a stale validator: the whole file, not the range.
    let (st, _, body) = curl(&["-r", "0-9", "-H", "If-Range: \"stale\""], &vpath);
    assert_eq!((st, body.len()), (200, data.len()));

    let (st, h, _) = curl(
        &["-I"],
        &format!("{}/{}/current/base.squashfs", f.base, f.recipe),
    );
    assert_eq!(st, 200);
    assert!(
        h.contains("cache-control: no-cache") && h.contains(&format!("etag: \"{sha}\"")),
        "{h}"
    );

    // Progress and metrics.
    let body = r#"{"node":"ci0","recipe":"r","version":"v","uptime_s":12.5}"#;
    let (st, _, _) = curl(
        &[
            "-X",
            "POST",
            "-H",
            "Content-Type: application/json",
            "--data",
            body,
        ],
        &format!("{}/api/v1/ready", f.base),
    );
    assert_eq!(st, 200);
    let (_, _, nodes) = curl(&[], &format!("{}/api/v1/nodes", f.base));
    let nodes = String::from_utf8_lossy(&nodes);
    assert!(
        nodes.contains("\"stage\": \"ready\"") && nodes.contains("52:54:00:00:00:01"),
        "{nodes}"
    );
    assert!(nodes.contains("\"stage\": \"image\""), "{nodes}");
    let (_, _, m) = curl(&[], &format!("{}/metrics", f.base));
    let m = String::from_utf8_lossy(&m);
    assert!(
        m.contains("ironbake_http_requests_total")
            && m.contains("ironbake_boot_stage_seconds_count{stage=\"ready\"} 1"),
        "{m}"
    );
    assert!(
        f.hub
            .metrics
            .http_bytes
            .load(std::sync::atomic::Ordering::Relaxed)
            >= data.len() as u64
    );
}

#[test]
fn a_traversal_corpus_is_refused() {
    if !require_curl() {
        return;
    }
    let f = start(true);
    let corpus = [
        "/../../../../etc/passwd",
        "/%2e%2e/%2e%2e/%2e%2e/etc/passwd",
        "/ci-node/..%2f..%2f..%2fetc/passwd",
        "/..%5c..%5cetc%5cpasswd",
        "/leak",
        "/vmlinuz%00.txt",
        "/etc/passwd",
        "//etc/passwd",
        "/.%2e/secret",
        "/%zz",
    ];
    for path in corpus {
        let (st, _, body) = curl(&[], &format!("{}{path}", f.base));
        let body = String::from_utf8_lossy(&body);
        assert!(
            (400..500).contains(&st) && !body.contains("root:") && !body.contains("top secret"),
            "{path}: {st} {body}"
        );
    }
    let long = format!("{}/{}", f.base, "a".repeat(3000));
    let (st, _, _) = curl(&[], &long);
    assert!((400..500).contains(&st), "{st}");
    let (st, _, _) = curl(&["-X", "PUT", "--data", "x"], &format!("{}/x", f.base));
    assert_eq!(st, 405);
}
