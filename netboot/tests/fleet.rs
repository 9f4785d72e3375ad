//! Tier (a): the fleet API in process, on loopback. The admin token guards every change; node
//! messages pass only signed with the node's key and a fresh nonce; desired versions must be
//! published and verify; and a rollout against a node that this test plays (a simulated
//! node: it answers the server's commands and reports as the agent would) moves it, refuses a
//! second rollout on the same node, and puts a node whose boot fails back on its version.

mod common;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use netboot::fleet::auth::{self, Keys};
use netboot::fleet::{Fleet, power};
use netboot::hub::Hub;
use netboot::nodes::Inventories;

const V1: &str = "0.1.0-0bb621c634";
const V2: &str = "0.1.0-2222222222";
const V3: &str = "0.1.0-3333333333";

struct Server {
    _dir: tempfile::TempDir,
    base: String,
    state: PathBuf,
    root: PathBuf,
    token: String,
    key: String,
    /// Where the server's magic packets for ci0 land.
    wol: std::net::UdpSocket,
}

fn start() -> Server {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("out");
    std::fs::create_dir_all(&root).unwrap();
    let (recipe, v1) = common::write_version(&root);
    assert_eq!(v1, V1);
    common::copy_version(&root, &recipe, V1, V2);
    common::copy_version(&root, &recipe, V1, V3);
    let wol = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    wol.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let inventory = dir.path().join("inventory.toml");
    std::fs::write(
        &inventory,
        format!(
            "[nodes.ci0]\nmac = \"52:54:00:00:00:01\"\nrecipe = \"{recipe}\"\n\
             wol = {{ broadcast = \"127.0.0.1\", port = {} }}\n\
             vars = {{ rack = \"r1\" }}\n\
             [nodes.pinned]\nmac = \"52:54:00:00:00:02\"\nrecipe = \"{recipe}\"\nversion = \"{V1}\"\n",
            wol.local_addr().unwrap().port()
        ),
    )
    .unwrap();
    let state = dir.path().join("state");
    let nodes = Arc::new(Inventories::load(&inventory, Some(state.clone())).unwrap());
    let keys = Keys::load(&state).unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    let root_c = root.clone();
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async move {
            let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            let base = format!("http://{}", l.local_addr().unwrap());
            let hub = Arc::new(Hub::new());
            let files = Arc::new(netboot::fsroot::Root::new(&root_c).unwrap());
            let mut fleet = Fleet::new(
                Arc::clone(nodes.state().unwrap()),
                Arc::clone(&nodes),
                Arc::clone(&hub),
                root_c.clone(),
            )
            .unwrap();
            Arc::get_mut(&mut fleet).unwrap().hold = Duration::from_secs(2);
            let st =
                netboot::http::AppState::new(files, base.clone(), nodes, hub).with_fleet(fleet);
            tx.send(base).unwrap();
            axum::serve(
                l,
                netboot::http::router(st).into_make_service_with_connect_info::<SocketAddr>(),
            )
            .await
            .unwrap();
        });
    });
    Server {
        base: rx.recv().unwrap(),
        token: keys.token.clone(),
        key: keys.node_key("ci0"),
        state,
        root,
        wol,
        _dir: dir,
    }
}

fn agent() -> ureq::Agent {
    ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(Duration::from_secs(20)))
        .build()
        .into()
}

impl Server {
    /// `(status, body)` of METHOD PATH with `body`, with the admin token when `token`.
    fn call(&self, method: &str, path: &str, body: &str, token: Option<&str>) -> (u16, String) {
        let url = format!("{}{path}", self.base);
        let a = agent();
        let mut resp = match method {
            "GET" => a.get(&url).call(),
            "DELETE" => {
                let r = a.delete(&url);
                match token {
                    Some(t) => r.header("Authorization", &format!("Bearer {t}")).call(),
                    None => r.call(),
                }
            }
            _ => {
                let r = if method == "PUT" {
                    a.put(&url)
                } else {
                    a.post(&url)
                };
                let r = match token {
                    Some(t) => r.header("Authorization", &format!("Bearer {t}")),
                    None => r,
                };
                r.send(body)
            }
        }
        .unwrap();
        let status = resp.status().as_u16();
        (status, resp.body_mut().read_to_string().unwrap())
    }

    /// A signed message from ci0 (as its agent sends it): `(status, answer, answer ok)`.
    fn report(&self, kind: &str, boot: &str, version: &str, ready: &str) -> (u16, String, bool) {
        let (_, nonce) = self.call("GET", "/api/v1/agent/nonce?node=ci0", "", None);
        let nonce = nonce.trim();
        let body = format!(
            "node=ci0\nnonce={nonce}\nkind={kind}\nboot={boot}\nrecipe=ci-node\nversion={version}\n\
             uptime=9.5\nstate=running\nready={ready}\nfailed={}\n{}",
            if ready == "failed" {
                "broken.service"
            } else {
                ""
            },
            if ready == "failed" {
                "log=broken.service: it broke\n"
            } else {
                ""
            },
        );
        let sig = auth::sign(self.key.as_bytes(), body.as_bytes());
        let mut resp = agent()
            .post(&format!("{}/api/v1/agent", self.base))
            .header(auth::SIGNATURE_HEADER, &sig)
            .send(&body)
            .unwrap();
        let status = resp.status().as_u16();
        let answer_sig = resp
            .headers()
            .get(auth::SIGNATURE_HEADER)
            .map(|v| v.to_str().unwrap().to_string());
        let answer = resp.body_mut().read_to_string().unwrap();
        let ok = answer_sig
            .is_some_and(|s| auth::verify(self.key.as_bytes(), answer.as_bytes(), &s))
            && answer.starts_with(&format!("nonce={nonce}\n"));
        (status, answer, ok)
    }

    fn boots(&self) -> String {
        self.call("GET", "/boot.ipxe?mac=52:54:00:00:00:01", "", None)
            .1
    }

    fn rollout(&self, id: &str) -> serde_json::Value {
        serde_json::from_str(
            &self
                .call("GET", &format!("/api/v1/rollouts/{id}"), "", None)
                .1,
        )
        .unwrap()
    }

    /// Waits for rollout `id` to reach `state`, playing ci0: `on_command` says what the node
    /// does when the server asks it to restart (or powers it on).
    fn play_until(
        &self,
        id: &str,
        state: &str,
        mut on_restart: impl FnMut(&Server) -> bool,
    ) -> serde_json::Value {
        let deadline = Instant::now() + Duration::from_secs(60);
        // A command that came in the answer to the node's own boot report.
        let mut again = false;
        loop {
            let r = self.rollout(id);
            if r["state"] == state {
                return r;
            }
            assert!(
                Instant::now() < deadline,
                "rollout never reached {state}: {r:#}"
            );
            // A woken node, or a command in the heartbeat's answer: the node restarts.
            let mut buf = [0u8; 200];
            self.wol.set_nonblocking(true).unwrap();
            let woken = self.wol.recv(&mut buf).is_ok_and(|n| {
                n == 102 && buf[..102] == power::magic_packet([0x52, 0x54, 0, 0, 0, 1])
            });
            self.wol.set_nonblocking(false).unwrap();
            let commanded = std::mem::take(&mut again)
                || !woken
                    && r["progress"]["ci0"]["step"] != "waiting"
                    && self.live_boot().is_some()
                    && {
                        // The agent's heartbeat says what its boot said: a boot that
                        // failed stays failed (a `yes` here would race the rollout).
                        let live = &self.fleet()[0]["live"];
                        let (_, answer, ok) = self.report(
                            "heartbeat",
                            live["boot"].as_str().unwrap(),
                            live["version"].as_str().unwrap_or(""),
                            live["ready"].as_str().unwrap_or("no"),
                        );
                        assert!(ok, "answers are signed over the nonce: {answer}");
                        answer.contains("command=reboot")
                    };
            if woken || commanded {
                again = on_restart(self);
            } else {
                std::thread::sleep(Duration::from_millis(100));
            }
        }
    }

    fn fleet(&self) -> serde_json::Value {
        serde_json::from_str(&self.call("GET", "/api/v1/fleet", "", None).1).unwrap()
    }

    fn live_boot(&self) -> Option<String> {
        self.fleet()[0]["live"]["boot"].as_str().map(str::to_string)
    }

    fn live_version(&self) -> String {
        self.fleet()[0]["live"]["version"]
            .as_str()
            .unwrap_or("")
            .to_string()
    }
}

/// Boots ci0 as the server now says (a new boot), reporting `ready`; true if the answer
/// asks it to reboot again.
fn boot_as(s: &Server, n: &mut u32, ready: &str) -> bool {
    *n += 1;
    let script = s.boots();
    let version = [V1, V2, V3]
        .into_iter()
        .find(|v| script.contains(&format!("/{v}/vmlinuz")))
        .unwrap_or_else(|| panic!("{script}"));
    // A boot whose multi-user failed may still send a report of kind ready (its ready unit
    // runs after the target's job, failed or not): only `ready=yes` is ready.
    let kind = if ready == "yes" || ready == "failed" {
        "ready"
    } else {
        "heartbeat"
    };
    let (st, answer, ok) = s.report(kind, &format!("boot-{n}"), version, ready);
    assert!(st == 200 && ok, "{st} {answer}");
    answer.contains("command=reboot")
}

#[test]
fn changes_need_the_admin_token_and_change_nothing_without_it() {
    let s = start();
    let cases = [
        (
            "POST",
            "/api/v1/power",
            r#"{"action": "off", "all": true}"#.to_string(),
        ),
        (
            "PUT",
            "/api/v1/desired/ci0",
            format!(r#"{{"version": "{V2}"}}"#),
        ),
        ("DELETE", "/api/v1/desired/ci0", String::new()),
        (
            "POST",
            "/api/v1/rollouts",
            r#"{"recipe": "ci-node"}"#.to_string(),
        ),
        ("POST", "/api/v1/rollouts/x/abort", String::new()),
        ("POST", "/api/v1/rollouts/x/resume", String::new()),
        (
            "POST",
            "/api/v1/inventory/nodes",
            r#"{"mac": "52:54:00:00:00:77", "name": "new0"}"#.to_string(),
        ),
    ];
    let inventory = std::fs::read(s.state.with_file_name("inventory.toml")).unwrap();
    for (method, path, body) in &cases {
        for token in [None, Some("wrong"), Some("")] {
            let (st, said) = s.call(method, path, body, token);
            assert_eq!(st, 401, "{method} {path} with {token:?}: {said}");
            assert!(said.contains("admin token"), "{said}");
        }
    }
    assert!(
        !s.state.join("desired.json").exists(),
        "nothing was written"
    );
    assert_eq!(
        std::fs::read(s.state.with_file_name("inventory.toml")).unwrap(),
        inventory,
        "the inventory is as it was"
    );
    assert_eq!(s.call("GET", "/api/v1/rollouts", "", None).1.trim(), "[]");
    assert!(s.boots().contains(&format!("/{V1}/vmlinuz")));
}

#[test]
fn node_messages_must_be_signed_with_the_node_key_and_a_fresh_nonce() {
    let s = start();
    // The image's old plain report, and a forged one: refused, the node is not ready.
    let plain = r#"{"node":"ci0","recipe":"ci-node","version":"x","uptime_s":1.0}"#;
    let (st, said) = s.call("POST", "/api/v1/ready", plain, None);
    assert_eq!(st, 400, "{said}");
    let (_, nonce) = s.call("GET", "/api/v1/agent/nonce?node=ci0", "", None);
    let body = format!(
        "node=ci0\nnonce={}\nkind=ready\nboot=b\nversion={V2}\nready=yes\n",
        nonce.trim()
    );
    let forged = auth::sign(b"a key that is not ci0's", body.as_bytes());
    let resp = agent()
        .post(&format!("{}/api/v1/ready", s.base))
        .header(auth::SIGNATURE_HEADER, &forged)
        .send(&body)
        .unwrap();
    assert_eq!(resp.status().as_u16(), 401);
    let unsigned = agent()
        .post(&format!("{}/api/v1/ready", s.base))
        .send(&body)
        .unwrap();
    assert_eq!(unsigned.status().as_u16(), 401);
    assert!(s.fleet()[0]["live"]["boot"].is_null(), "{:#}", s.fleet());

    // Signed with the key and a nonce: taken, and the answer is signed too.
    let (st, answer, ok) = s.report("ready", "b1", V1, "yes");
    assert!(st == 200 && ok, "{st} {answer}");
    assert_eq!(s.fleet()[0]["live"]["version"], V1);
    // The same message again (a replay) fails on its used nonce.
    let (_, nonce) = s.call("GET", "/api/v1/agent/nonce?node=ci0", "", None);
    let body = format!(
        "node=ci0\nnonce={}\nkind=ready\nboot=b2\nversion={V2}\nready=yes\n",
        nonce.trim()
    );
    let sig = auth::sign(s.key.as_bytes(), body.as_bytes());
    let send = || {
        agent()
            .post(&format!("{}/api/v1/agent", s.base))
            .header(auth::SIGNATURE_HEADER, &sig)
            .send(&body)
            .unwrap()
            .status()
            .as_u16()
    };
    assert_eq!(send(), 200);
    assert_eq!(send(), 401, "a replayed message is refused");
    // Nonces only for nodes the inventory lists.
    assert_eq!(
        s.call("GET", "/api/v1/agent/nonce?node=nobody", "", None).0,
        404
    );
}

#[test]
fn a_desired_version_must_be_published_and_verify() {
    let s = start();
    let t = Some(s.token.as_str());
    let put = |v: &str| {
        s.call(
            "PUT",
            "/api/v1/desired/ci0",
            &format!(r#"{{"version": "{v}"}}"#),
            t,
        )
    };
    let (st, said) = put("0.1.0-nothere");
    assert!(st == 404 && said.contains("not published"), "{st} {said}");
    let (st, said) = put("../../etc");
    assert_eq!(st, 400, "{said}");
    // A version whose file no longer matches its manifest.
    std::fs::write(s.root.join("ci-node").join(V3).join("vmlinuz"), b"tampered").unwrap();
    let (st, said) = put(V3);
    assert!(st == 422 && said.contains("does not verify"), "{st} {said}");
    assert!(!s.state.join("desired.json").exists());
    assert!(s.boots().contains(&format!("/{V1}/vmlinuz")));

    let (st, said) = put(V2);
    assert_eq!(st, 200, "{said}");
    assert!(
        s.boots().contains(&format!("/{V2}/vmlinuz")),
        "the node now boots its desired version"
    );
    let (st, _) = s.call("DELETE", "/api/v1/desired/ci0", "", t);
    assert_eq!(st, 200);
    assert!(
        s.boots().contains(&format!("/{V1}/vmlinuz")),
        "and current again without one"
    );
}

#[test]
fn a_rollout_moves_the_node_and_a_failed_boot_is_put_back() {
    let s = start();
    let t = Some(s.token.as_str());
    let mut boots = 0;

    // The node is off: the rollout wakes it (a magic packet), it boots V2 and is ready.
    let (st, said) = s.call(
        "POST",
        "/api/v1/rollouts",
        &format!(
            r#"{{"recipe": "ci-node", "version": "{V2}", "nodes": ["ci0"], "timeout_s": 30}}"#
        ),
        t,
    );
    assert_eq!(st, 201, "{said}");
    let id = serde_json::from_str::<serde_json::Value>(&said).unwrap()["id"]
        .as_str()
        .unwrap()
        .to_string();
    // A second rollout on the same node, while the first runs: refused.
    let (st, said) = s.call(
        "POST",
        "/api/v1/rollouts",
        &format!(r#"{{"recipe": "ci-node", "version": "{V3}", "nodes": ["ci0"]}}"#),
        t,
    );
    assert!(st == 409 && said.contains(&id), "{st} {said}");
    // A pinned node is not moved by rollouts.
    let (st, said) = s.call(
        "POST",
        "/api/v1/rollouts",
        r#"{"recipe": "ci-node", "nodes": ["pinned"]}"#,
        t,
    );
    assert!(st == 400 && said.contains("pinned"), "{st} {said}");
    let r = s.play_until(&id, "succeeded", |s| boot_as(s, &mut boots, "yes"));
    assert_eq!(r["progress"]["ci0"]["step"], "ready", "{r:#}");
    assert_eq!(s.live_version(), V2);

    // V3 fails its boot: the node says multi-user will not come; it is put back on V2,
    // rebooted through its agent, and ready there again; the rollout fails naming it.
    let (st, said) = s.call(
        "POST",
        "/api/v1/rollouts",
        &format!(r#"{{"recipe": "ci-node", "version": "{V3}", "timeout_s": 30}}"#),
        t,
    );
    assert_eq!(st, 400, "the pinned node boots ci-node too: {said}");
    // (V3's kernel was not tampered with here.)
    let (st, said) = s.call(
        "POST",
        "/api/v1/rollouts",
        &format!(
            r#"{{"recipe": "ci-node", "version": "{V3}", "nodes": ["ci0"], "timeout_s": 30}}"#
        ),
        t,
    );
    assert_eq!(st, 201, "{said}");
    let id = serde_json::from_str::<serde_json::Value>(&said).unwrap()["id"]
        .as_str()
        .unwrap()
        .to_string();
    let r = s.play_until(&id, "failed", |s| {
        let on_v3 = s.boots().contains(&format!("/{V3}/vmlinuz"));
        boot_as(s, &mut boots, if on_v3 { "failed" } else { "yes" })
    });
    let p = &r["progress"]["ci0"];
    assert_eq!(p["step"], "rolled-back", "{r:#}");
    assert!(
        r["error"].as_str().unwrap().contains("ci0: not ready on"),
        "{r:#}"
    );
    assert!(
        p["reached"]
            .as_str()
            .unwrap()
            .contains(&format!("running {V3}")),
        "{r:#}"
    );
    assert_eq!(p["log"][0], "broken.service: it broke", "{r:#}");
    assert_eq!(s.live_version(), V2);
    assert!(s.boots().contains(&format!("/{V2}/vmlinuz")));
}

/// The image's own agent scripts (bash, openssl), run on this machine against the server:
/// the node's paths come from `IRONBAKE_*` variables and `systemctl` is a stand-in that says
/// multi-user is reached and records what it is asked to do.
#[test]
fn the_agent_script_reports_takes_a_reboot_and_acknowledges_it() {
    let s = start();
    let lib = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../overlays/base/files/usr/lib/ironbake")
        .canonicalize()
        .unwrap();
    let node = s._dir.path().join("node");
    let bin = node.join("bin");
    std::fs::create_dir_all(&bin).unwrap();
    std::fs::write(
        node.join("cmdline"),
        format!("console=ttyS0 ironbake.server={}\n", s.base),
    )
    .unwrap();
    std::fs::write(node.join("node-key"), format!("{}\n", s.key)).unwrap();
    std::fs::write(
        node.join("os-release"),
        format!("IMAGE_ID=ci-node\nIMAGE_VERSION={V1}\n"),
    )
    .unwrap();
    let asked = node.join("systemctl-asked");
    std::fs::write(
        bin.join("systemctl"),
        format!(
            "#!/bin/sh\ncase \"$1\" in\n  is-system-running) echo running ;;\n  show) echo active ;;\n  \
             list-jobs|list-units) ;;\n  *) echo \"$@\" >>'{}' ;;\nesac\n",
            asked.display()
        ),
    )
    .unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(
        bin.join("systemctl"),
        std::fs::Permissions::from_mode(0o755),
    )
    .unwrap();
    let script = |name: &str| {
        let mut c = std::process::Command::new("bash");
        c.arg(lib.join(name))
            .env("IRONBAKE_CMDLINE", node.join("cmdline"))
            .env("IRONBAKE_NODE_KEY", node.join("node-key"))
            .env("IRONBAKE_OS_RELEASE", node.join("os-release"))
            .env("IRONBAKE_NODE", "ci0")
            .env("IRONBAKE_LIB", &lib)
            .env("IRONBAKE_CONSOLE", node.join("console"))
            .env(
                "PATH",
                format!("{}:{}", bin.display(), std::env::var("PATH").unwrap()),
            );
        c
    };
    // A ready report, signed by the script: the server takes it.
    let out = script("report").arg("ready").output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "none 0");
    let f = s.fleet();
    assert_eq!(f[0]["live"]["version"], V1, "{f:#}");
    assert_eq!(f[0]["live"]["ready"], "yes", "{f:#}");
    // The agent keeps a heartbeat open; a reboot asked through the API reaches it, and it
    // acknowledges and calls systemctl reboot.
    let mut agent = script("agent").spawn().unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    while !s.fleet()[0]["live"]["waiting"].as_bool().unwrap_or(false) {
        assert!(
            Instant::now() < deadline,
            "the agent never held a heartbeat"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let (st, said) = s.call(
        "POST",
        "/api/v1/power",
        r#"{"action": "reboot", "nodes": ["ci0"]}"#,
        Some(&s.token),
    );
    assert!(
        st == 200 && said.contains("asked its agent to reboot"),
        "{said}"
    );
    let status = agent.wait().unwrap();
    assert!(status.success());
    assert_eq!(std::fs::read_to_string(&asked).unwrap().trim(), "reboot");
    let console = std::fs::read_to_string(node.join("console")).unwrap();
    assert!(
        console.contains("the boot server asked for reboot"),
        "{console}"
    );
    let f = s.fleet();
    assert!(f[0]["live"]["command"]["acked_unix"].is_u64(), "{f:#}");
}

/// Reads server-sent events from `url` on a thread: each `update` event's data, in order.
fn events(url: &str) -> std::sync::mpsc::Receiver<String> {
    use std::io::BufRead as _;
    let (tx, rx) = std::sync::mpsc::channel();
    let url = url.to_string();
    std::thread::spawn(move || {
        let a: ureq::Agent = ureq::Agent::config_builder()
            .timeout_global(Some(Duration::from_secs(60)))
            .build()
            .into();
        let mut resp = a.get(&url).call().unwrap();
        let ct = resp.headers()["content-type"].to_str().unwrap().to_string();
        assert_eq!(ct, "text/event-stream");
        let reader = std::io::BufReader::new(resp.body_mut().as_reader());
        let (mut event, mut data) = (String::new(), String::new());
        for line in reader.lines() {
            let Ok(line) = line else { return };
            if line.is_empty() {
                if event == "update" && tx.send(std::mem::take(&mut data)).is_err() {
                    return;
                }
                event.clear();
                data.clear();
            } else if let Some(e) = line.strip_prefix("event: ") {
                event = e.to_string();
            } else if let Some(d) = line.strip_prefix("data: ").or(line.strip_prefix("data:")) {
                if !data.is_empty() {
                    data.push('\n');
                }
                data.push_str(d);
            }
        }
    });
    rx
}

/// Waits for an event whose data contains `want`.
fn event_with(rx: &std::sync::mpsc::Receiver<String>, want: &str) -> String {
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut last = String::new();
    while Instant::now() < deadline {
        match rx.recv_timeout(Duration::from_secs(1)) {
            Ok(d) if d.contains(want) => return d,
            Ok(d) => last = d,
            Err(_) => {}
        }
    }
    panic!("no event with {want:?} in 20 s; the last one:\n{last}");
}

/// Publishes `version` of the test recipe as a copy of V1 whose manifest lists the telemetry
/// overlay (what a recipe with it publishes).
fn publish_with_telemetry(s: &Server, version: &str) {
    use netboot::layout;
    common::copy_version(&s.root, "ci-node", V1, version);
    let dir = s.root.join("ci-node").join(version);
    let mut m = layout::load_manifest(&dir).unwrap();
    m.overlays.push(layout::OverlayInput {
        name: "telemetry".into(),
        sha256: "0".repeat(64),
    });
    common::write_manifest(&dir, &m);
}

#[test]
fn the_page_shows_the_fleet_and_streams_each_boot_stage() {
    let s = start();
    let agent = agent();
    let mut page = agent.get(&format!("{}/", s.base)).call().unwrap();
    assert_eq!(page.status().as_u16(), 200);
    let csp = page.headers()["content-security-policy"].to_str().unwrap();
    assert!(csp.contains("script-src 'self'"), "{csp}");
    let html = page.body_mut().read_to_string().unwrap();
    for want in [
        "id=\"node-ci0\"",
        "id=\"node-pinned\"",
        "not seen",
        V1,
        "current",
        "data-action=\"power\"",
        "src=\"/-/page.js\"",
    ] {
        assert!(html.contains(want), "{want} in {html}");
    }
    let js = s.call("GET", "/-/page.js", "", None);
    assert!(js.0 == 200 && js.1.contains("EventSource"), "{js:?}");
    let rx = events(&format!("{}/-/fleet", s.base));
    event_with(&rx, "not seen");
    s.boots();
    let moved = event_with(&rx, "booting: script");
    assert!(moved.contains("id=\"node-ci0\""), "{moved}");
    let (_, answer, ok) = s.report("ready", "boot-1", V1, "yes");
    assert!(ok, "{answer}");
    event_with(&rx, "<span class=\"pill state ok\">ready</span>");
    let node = s.call("GET", "/node/ci0", "", None);
    assert_eq!(node.0, 200);
    for want in ["Recent boots", "script", "ready", "52:54:00:00:00:01", V1] {
        assert!(node.1.contains(want), "{want} in {}", node.1);
    }
    let once = s.call("GET", "/-/node/ci0?once=1", "", None);
    assert!(once.0 == 200 && once.1.contains("Recent boots"), "{once:?}");
    let missing = s.call("GET", "/node/nobody", "", None);
    assert_eq!(missing.0, 404, "{missing:?}");
    assert!(
        missing.1.contains("no node named \"nobody\""),
        "{missing:?}"
    );
}

#[test]
fn a_discovered_machine_is_enrolled_with_the_token_and_the_inventory_keeps_its_comments() {
    let s = start();
    let path = s.state.with_file_name("inventory.toml");
    let commented = format!(
        "# The lab's machines.\n{}",
        std::fs::read_to_string(&path).unwrap()
    );
    std::fs::write(&path, &commented).unwrap();
    let unknown = "52:54:00:00:00:77";
    let refused = s.call("GET", &format!("/boot.ipxe?mac={unknown}"), "", None);
    assert!(refused.1.contains("not in the inventory"), "{refused:?}");
    let fleet = s.call("GET", "/-/fleet?once=1", "", None).1;
    assert!(
        fleet.contains(&format!("data-action=\"enroll\" data-mac=\"{unknown}\"")),
        "{fleet}"
    );
    let body = format!(r#"{{"mac": "{unknown}", "name": "new0", "recipe": "ci-node"}}"#);
    let tok = Some(s.token.as_str());
    for (bad, status, why) in [
        (
            format!(r#"{{"mac": "{unknown}", "name": "Bad Name", "recipe": "ci-node"}}"#),
            400,
            "name",
        ),
        (
            r#"{"mac": "52:54:00:00:00:01", "name": "other", "recipe": "ci-node"}"#.into(),
            409,
            "already has",
        ),
        (
            format!(r#"{{"mac": "{unknown}", "name": "ci0", "recipe": "ci-node"}}"#),
            409,
            "already has",
        ),
        (r#"{"mac": "nope", "name": "x"}"#.into(), 400, "MAC"),
        ("not json".into(), 400, "expected"),
    ] {
        let (st, said) = s.call("POST", "/api/v1/inventory/nodes", &bad, tok);
        assert_eq!(st, status, "{bad}: {said}");
        assert!(said.contains(why), "{bad}: {said}");
        assert_eq!(std::fs::read_to_string(&path).unwrap(), commented);
    }
    let (st, said) = s.call("POST", "/api/v1/inventory/nodes", &body, tok);
    assert_eq!(st, 201, "{said}");
    let now = std::fs::read_to_string(&path).unwrap();
    assert!(now.starts_with(&commented), "everything kept:\n{now}");
    assert!(
        now.ends_with(&format!(
            "[nodes.new0]\nmac = \"{unknown}\"\nrecipe = \"ci-node\"\n"
        )),
        "{now}"
    );
    let script = s
        .call("GET", &format!("/boot.ipxe?mac={unknown}"), "", None)
        .1;
    assert!(script.contains("ironbake.node=new0"), "{script}");
    let (st, said) = s.call("POST", "/api/v1/inventory/nodes", &body, tok);
    assert_eq!(st, 409, "{said}");
}

#[test]
fn prometheus_finds_the_nodes_whose_version_has_the_exporter() {
    let s = start();
    let targets = || -> serde_json::Value {
        serde_json::from_str(&s.call("GET", "/api/v1/prometheus/targets", "", None).1).unwrap()
    };
    s.boots();
    let (_, _, ok) = s.report("ready", "boot-1", V1, "yes");
    assert!(ok);
    assert_eq!(targets(), serde_json::json!([]), "V1 has no exporter");
    let with = "0.1.0-4444444444";
    publish_with_telemetry(&s, with);
    let (_, _, ok) = s.report("ready", "boot-2", with, "yes");
    assert!(ok);
    assert_eq!(
        targets(),
        serde_json::json!([{
            "targets": ["127.0.0.1:9100"],
            "labels": {"node": "ci0", "recipe": "ci-node", "version": with},
        }])
    );
}

/// A second server with the leader's site key and admin token, started as `netboot serve
/// --follow LEADER` would be (the same `serve::run`), on loopback with ephemeral ports.
fn follower(s: &Server) -> (String, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    for f in [auth::SITE_KEY_FILE, auth::TOKEN_FILE] {
        let text = std::fs::read_to_string(s.state.join(f)).unwrap();
        auth::write_private(&state.join(f), &text).unwrap();
    }
    let inventory = dir.path().join("inventory.toml");
    std::fs::copy(s.state.parent().unwrap().join("inventory.toml"), &inventory).unwrap();
    let cfg = netboot::serve::Config {
        root: s.root.clone(),
        inventory,
        state_dir: Some(state),
        bind: "127.0.0.1".parse().unwrap(),
        advertise: None,
        http_port: 0,
        tftp_port: 0,
        dhcp: false,
        dhcp_port: 0,
        pxe_port: 0,
        interface: None,
        tftp: netboot::tftp::Config::default(),
        http: netboot::http::Limits::default(),
        sync: None,
        peers: Vec::new(),
        follow: Some(s.base.clone()),
        files_url: None,
    };
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(netboot::serve::run(
            cfg,
            Arc::new(Hub::new()),
            move |b| tx.send(b.http_base.clone()).unwrap(),
            std::future::pending(),
        ))
        .unwrap();
    });
    (rx.recv_timeout(Duration::from_secs(20)).unwrap(), dir)
}

/// Two servers: the follower mirrors the leader's desired versions, takes no changes itself,
/// gives a node the same identity, and the node's report reaches both.
#[test]
fn a_follower_mirrors_the_leader_refuses_changes_and_nodes_report_to_both() {
    let s = start();
    let (fbase, _fdir) = follower(&s);
    let call = |base: &str, method: &str, path: &str, body: &str, token: Option<&str>| {
        let url = format!("{base}{path}");
        let r = match method {
            "GET" => agent().get(&url).call(),
            _ => {
                let r = agent().put(&url);
                let r = match token {
                    Some(t) => r.header("Authorization", &format!("Bearer {t}")),
                    None => r,
                };
                r.send(body)
            }
        };
        let mut r = r.unwrap();
        (r.status().as_u16(), r.body_mut().read_to_string().unwrap())
    };
    let t = Some(s.token.as_str());
    // A change on the follower is refused and names the leader.
    let (st, said) = call(
        &fbase,
        "PUT",
        "/api/v1/desired/ci0",
        &format!(r#"{{"version": "{V2}"}}"#),
        t,
    );
    assert!(st == 409 && said.contains(&s.base), "{st} {said}");
    assert!(
        call(&fbase, "GET", "/boot.ipxe?mac=52:54:00:00:00:01", "", None)
            .1
            .contains(&format!("/{V1}/vmlinuz"))
    );
    // The same change on the leader reaches the follower within a few mirror periods.
    let (st, said) = s.call(
        "PUT",
        "/api/v1/desired/ci0",
        &format!(r#"{{"version": "{V2}"}}"#),
        t,
    );
    assert_eq!(st, 200, "{said}");
    let deadline = Instant::now() + netboot::serve::MIRROR_EVERY * 5;
    loop {
        let script = call(&fbase, "GET", "/boot.ipxe?mac=52:54:00:00:00:01", "", None).1;
        if script.contains(&format!("/{V2}/vmlinuz")) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the follower never took the leader's desired version:\n{script}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    // The same identity from both: machine-id and SSH host key in the settings archive.
    let identity = |base: &str| {
        let url = format!("{base}/nodes/52:54:00:00:00:01/settings.img");
        let bytes = agent()
            .get(&url)
            .call()
            .unwrap()
            .body_mut()
            .read_to_vec()
            .unwrap();
        let text = String::from_utf8_lossy(&bytes).into_owned();
        let after = |name: &str| {
            let at = text
                .find(name)
                .unwrap_or_else(|| panic!("no {name} in {url}: {text:?}"));
            text[at + name.len()..]
                .trim_start_matches('\0')
                .split('\0')
                .next()
                .unwrap()
                .to_string()
        };
        (
            after("ironbake/node/etc/machine-id\0"),
            after("ironbake/node/etc/ssh/ssh_host_ed25519_key\0"),
        )
    };
    let (leader_id, follower_id) = (identity(&s.base), identity(&fbase));
    assert!(
        leader_id
            .1
            .starts_with("-----BEGIN OPENSSH PRIVATE KEY-----"),
        "{leader_id:?}"
    );
    assert_eq!(leader_id, follower_id);

    // The node's report script sends to every server its settings list, skipping one that
    // is down: both live servers take it, each with a nonce of its own.
    let lib = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../overlays/base/files/usr/lib/ironbake")
        .canonicalize()
        .unwrap();
    let node = s._dir.path().join("node2");
    let bin = node.join("bin");
    std::fs::create_dir_all(&bin).unwrap();
    std::fs::write(node.join("cmdline"), "console=ttyS0\n").unwrap();
    std::fs::write(
        node.join("servers"),
        format!("http://127.0.0.1:1\n{}\n{fbase}\n", s.base),
    )
    .unwrap();
    std::fs::write(node.join("node-key"), format!("{}\n", s.key)).unwrap();
    std::fs::write(
        node.join("os-release"),
        format!("IMAGE_ID=ci-node\nIMAGE_VERSION={V2}\n"),
    )
    .unwrap();
    std::fs::write(
        bin.join("systemctl"),
        "#!/bin/sh\ncase \"$1\" in\n  is-system-running) echo running ;;\n  show) echo active ;;\nesac\n",
    )
    .unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(
        bin.join("systemctl"),
        std::fs::Permissions::from_mode(0o755),
    )
    .unwrap();
    let out = std::process::Command::new("bash")
        .arg(lib.join("report"))
        .arg("ready")
        .env("IRONBAKE_CMDLINE", node.join("cmdline"))
        .env("IRONBAKE_SERVER_FILE", node.join("servers"))
        .env("IRONBAKE_NODE_KEY", node.join("node-key"))
        .env("IRONBAKE_OS_RELEASE", node.join("os-release"))
        .env("IRONBAKE_NODE", "ci0")
        .env("IRONBAKE_LIB", &lib)
        .env(
            "PATH",
            format!("{}:{}", bin.display(), std::env::var("PATH").unwrap()),
        )
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "none 0");
    for base in [&s.base, &fbase] {
        let f: serde_json::Value =
            serde_json::from_str(&call(base, "GET", "/api/v1/fleet", "", None).1).unwrap();
        let ci0 = f
            .as_array()
            .unwrap()
            .iter()
            .find(|n| n["name"] == "ci0")
            .unwrap();
        assert_eq!(ci0["live"]["version"], V2, "{base}: {f:#}");
    }
}
