//! Tier (b): `netboot serve` refuses bad settings at start, saying what and where, and serves
//! on high ports unprivileged-style (as the tests run it).

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

fn netboot() -> Command {
    Command::new(env!("CARGO_BIN_EXE_netboot"))
}

/// Runs `netboot serve ARGS`, expecting it to exit on its own; returns (success, stderr+stdout).
fn serve_fails(args: &[&str]) -> (bool, String) {
    let mut child = netboot()
        .arg("serve")
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let start = Instant::now();
    while child.try_wait().unwrap().is_none() {
        if start.elapsed() > Duration::from_secs(20) {
            let _ = child.kill();
            panic!("netboot serve {args:?} kept running; it should have refused to start");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let out = child.wait_with_output().unwrap();
    (
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stderr),
            String::from_utf8_lossy(&out.stdout)
        ),
    )
}

#[test]
fn bad_settings_are_refused_at_start() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("out");
    std::fs::create_dir_all(&root).unwrap();
    let root_s = root.display().to_string();
    let inv = dir.path().join("inventory.toml");
    std::fs::write(
        &inv,
        "[nodes.a]\nmac = \"52:54:00:00:00:01\"\nrecipe = \"r\"\ncolour = 1\n",
    )
    .unwrap();
    let inv_s = inv.display().to_string();
    let common = [
        "--bind",
        "127.0.0.1",
        "--no-dhcp",
        "--http-port",
        "0",
        "--tftp-port",
        "0",
    ];

    let (ok, out) =
        serve_fails(&[&["--root", &root_s, "--inventory", &inv_s][..], &common].concat());
    assert!(
        !ok && out.contains("inventory.toml:4:1") && out.contains("unknown field `colour`"),
        "{out}"
    );

    let (ok, out) = serve_fails(&[&["--root", "/nonexistent/out"][..], &common].concat());
    assert!(
        !ok && out.contains("/nonexistent/out is not a folder")
            && out.contains("cargo xtask build"),
        "{out}"
    );

    let (ok, out) = serve_fails(&[
        "--root",
        &root_s,
        "--no-dhcp",
        "--http-port",
        "0",
        "--tftp-port",
        "0",
    ]);
    assert!(!ok && out.contains("--advertise"), "{out}");

    // A port already taken: the message names the server and the address.
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port().to_string();
    let (ok, out) = serve_fails(&[
        "--root",
        &root_s,
        "--bind",
        "127.0.0.1",
        "--no-dhcp",
        "--http-port",
        &port,
        "--tftp-port",
        "0",
    ]);
    assert!(
        !ok && out.contains(&format!("cannot listen on HTTP 127.0.0.1:{port}"))
            && out.contains("another server uses this port"),
        "{out}"
    );
}

#[test]
fn it_serves_and_logs_json_lines() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("out");
    std::fs::create_dir_all(&root).unwrap();
    std::fs::write(root.join("hello.txt"), b"hello\n").unwrap();
    let mut child = netboot()
        .args(["serve", "--root"])
        .arg(&root)
        .args(["--inventory"])
        .arg(dir.path().join("none.toml"))
        .args([
            "--bind",
            "127.0.0.1",
            "--no-dhcp",
            "--http-port",
            "0",
            "--tftp-port",
            "0",
            "--log-format",
            "json",
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // The first log line says where it listens.
    let stdout = child.stdout.take().unwrap();
    let mut lines = std::io::BufRead::lines(std::io::BufReader::new(stdout));
    let mut http = None;
    for line in lines.by_ref() {
        let line = line.unwrap();
        let v: serde_json::Value =
            serde_json::from_str(&line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}"));
        if v["fields"]["message"] == "netboot serving" {
            http = v["fields"]["http"].as_str().map(str::to_string);
            break;
        }
    }
    let http = http.expect("a 'netboot serving' line with the HTTP address");
    let mut s = std::net::TcpStream::connect(&http).unwrap();
    std::io::Write::write_all(
        &mut s,
        b"GET /hello.txt HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    )
    .unwrap();
    let mut resp = String::new();
    std::io::Read::read_to_string(&mut s, &mut resp).unwrap();
    assert!(
        resp.starts_with("HTTP/1.1 200") && resp.ends_with("hello\n"),
        "{resp}"
    );
    let _ = child.kill();
    let _ = child.wait();
}

/// The unit the README installs runs the server as its own user with `CAP_NET_BIND_SERVICE`
/// and nothing more (as the VM test that boots a node through such a server does, with
/// setpriv), its state folder the one writable place; and systemd's own analysis rates its
/// exposure under 2.0 (a unit running it as root rates 9.6).
#[test]
fn the_service_unit_runs_it_with_least_privilege() {
    let unit_path = Path::new(env!("CARGO_MANIFEST_DIR")).join("systemd/netboot.service");
    let unit = std::fs::read_to_string(&unit_path).unwrap();
    let set = |key: &str| -> Vec<String> {
        unit.lines()
            .filter_map(|l| l.strip_prefix(&format!("{key}=")))
            .map(str::to_string)
            .collect()
    };
    assert_eq!(set("User"), ["netboot"]);
    assert_eq!(set("AmbientCapabilities"), ["CAP_NET_BIND_SERVICE"]);
    assert_eq!(set("CapabilityBoundingSet"), ["CAP_NET_BIND_SERVICE"]);
    for (key, value) in [
        ("NoNewPrivileges", "yes"),
        ("ProtectSystem", "strict"),
        ("PrivateTmp", "yes"),
        ("ProtectHome", "yes"),
        ("StateDirectory", "netboot"),
    ] {
        assert_eq!(set(key), [value], "{key}");
    }
    let exec = set("ExecStart").join(" ");
    assert!(exec.contains("--state /var/lib/netboot"), "{exec}");
    let ok = std::env::var("CI").as_deref() != Ok("true");
    let analyze = Command::new("systemd-analyze")
        .args(["security", "--offline=true", "--threshold=20"])
        .arg(&unit_path)
        .output();
    match analyze {
        Ok(out) => {
            let text = String::from_utf8_lossy(&out.stdout);
            let level = text
                .lines()
                .find(|l| l.contains("Overall exposure level"))
                .unwrap_or("");
            eprintln!("{level}");
            assert!(out.status.success(), "exposure over 2.0: {level}\n{text}");
        }
        Err(e) if ok => eprintln!("SKIPPED: systemd-analyze: {e}"),
        Err(e) => panic!("CI=true and systemd-analyze cannot run: {e}"),
    }
}
