//! The fleet commands' side of the boot server's fleet API (its routes are listed in
//! ARCHITECTURE.md and in the boot server's `fleet/api.rs`): power and
//! rollouts, asked of a running `netboot serve` over HTTP with its admin token, and followed
//! until what was asked is seen (a node ready on its version, a node gone quiet or reported
//! off by its BMC).

use std::collections::{BTreeMap, BTreeSet};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result, bail};
use serde_json::Value;

/// Where the server's token is when nothing says otherwise (`netboot.service`'s state folder).
pub const DEFAULT_TOKEN_FILE: &str = "/var/lib/netboot/admin-token";

/// A boot server to talk to.
#[derive(Debug, Clone)]
pub struct Client {
    base: String,
    token: String,
    agent: ureq::Agent,
}

/// Reads the admin token from `file`.
pub fn read_token(file: &Path) -> Result<String> {
    let t = std::fs::read_to_string(file).with_context(|| {
        format!(
            "reading the boot server's admin token {} (it is made in the server's state \
             folder when it first starts; pass --token-file, or run as a user who may read it)",
            file.display()
        )
    })?;
    Ok(t.trim().to_string())
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

impl Client {
    /// A client of the server at `base` (`http://10.33.0.1`) with `token`.
    pub fn new(base: &str, token: String) -> Client {
        Client {
            base: base.trim_end_matches('/').to_string(),
            token,
            agent: ureq::Agent::config_builder()
                .http_status_as_error(false)
                .timeout_global(Some(Duration::from_secs(60)))
                .build()
                .into(),
        }
    }

    fn call(&self, method: &str, path: &str, body: Option<&Value>) -> Result<Value> {
        let url = format!("{}{path}", self.base);
        let auth = format!("Bearer {}", self.token);
        let resp = match (method, body) {
            ("GET", _) => self.agent.get(&url).header("Authorization", &auth).call(),
            (_, Some(b)) => self
                .agent
                .post(&url)
                .header("Authorization", &auth)
                .header("Content-Type", "application/json")
                .send(b.to_string().as_bytes()),
            (_, None) => self
                .agent
                .post(&url)
                .header("Authorization", &auth)
                .send_empty(),
        };
        let mut resp = resp.with_context(|| {
            format!(
                "asking the boot server at {} ({method} {path}): is `netboot serve` running \
                 there? (--server URL)",
                self.base
            )
        })?;
        let status = resp.status().as_u16();
        let text = resp
            .body_mut()
            .read_to_string()
            .with_context(|| format!("reading the answer to {method} {path}"))?;
        let v: Value = serde_json::from_str(&text).unwrap_or(Value::String(text.clone()));
        if !(200..300).contains(&status) {
            let why = v["error"].as_str().unwrap_or(text.trim()).to_string();
            bail!("the boot server refused {method} {path} ({status}): {why}");
        }
        Ok(v)
    }

    /// Every node's status (`GET /api/v1/fleet`).
    pub fn fleet(&self) -> Result<Vec<Value>> {
        Ok(self
            .call("GET", "/api/v1/fleet", None)?
            .as_array()
            .cloned()
            .unwrap_or_default())
    }
}

/// What `power` is asked for.
#[derive(Debug, Clone)]
pub struct PowerRequest {
    /// `on`, `off`, `reboot` or `status`.
    pub action: String,
    /// Nodes by name.
    pub nodes: Vec<String>,
    /// Every node of this recipe.
    pub recipe: Option<String>,
    /// Every node.
    pub all: bool,
    /// How long to wait for each node to be seen as asked (0: do not wait).
    pub wait: Duration,
}

fn by_name(fleet: &[Value]) -> BTreeMap<String, Value> {
    fleet
        .iter()
        .filter_map(|n| Some((n["name"].as_str()?.to_string(), n.clone())))
        .collect()
}

/// Powers nodes on, off, reboots them or reads their state, then waits until each is seen
/// as asked; prints one line per node for what was done and one for what was seen. `Ok(false)`
/// when a node was not done or not seen in time.
pub fn power(c: &Client, req: &PowerRequest, out: &mut impl Write) -> Result<bool> {
    let before = by_name(&c.fleet()?);
    let asked = Instant::now();
    let asked_unix = unix_now();
    let body = serde_json::json!({
        "action": req.action,
        "nodes": req.nodes,
        "recipe": req.recipe,
        "all": req.all,
    });
    let results = c.call("POST", "/api/v1/power", Some(&body))?;
    let results = results.as_array().cloned().unwrap_or_default();
    let mut all_ok = true;
    let mut waiting: BTreeSet<String> = BTreeSet::new();
    for r in &results {
        let node = r["node"].as_str().unwrap_or("?").to_string();
        let ok = r["ok"].as_bool().unwrap_or(false);
        writeln!(
            out,
            "{node:<12} {:<7} {}: {}",
            req.action,
            r["via"].as_str().unwrap_or(""),
            r["done"].as_str().unwrap_or("")
        )?;
        if !ok {
            all_ok = false;
        } else if req.action == "status" {
            let b = &before[&node];
            let live = &b["live"];
            let power = match r["power"].as_bool() {
                Some(true) => "BMC: power on",
                Some(false) => "BMC: power off",
                None => "no BMC",
            };
            writeln!(
                out,
                "{node:<12} seen    {power}; {}; runs {}, boots {}",
                match live["last_seen_unix"].as_u64() {
                    Some(t) => format!("agent last heard {} s ago", asked_unix.saturating_sub(t)),
                    None => "agent never heard from".into(),
                },
                live["version"].as_str().unwrap_or("-"),
                b["boots"].as_str().unwrap_or("-"),
            )?;
        } else if !req.wait.is_zero() {
            waiting.insert(node);
        }
    }
    while !waiting.is_empty() {
        let now = by_name(&c.fleet()?);
        let mut seen = Vec::new();
        for node in &waiting {
            let (b, n) = (&before[node], &now[node]);
            if let Some(what) = observed(&req.action, b, n, asked_unix, c, node)? {
                writeln!(
                    out,
                    "{node:<12} seen    {what} ({:.1} s after the request)",
                    asked.elapsed().as_secs_f64()
                )?;
                seen.push(node.clone());
            }
        }
        for s in seen {
            waiting.remove(&s);
        }
        if asked.elapsed() >= req.wait {
            for node in &waiting {
                writeln!(
                    out,
                    "{node:<12} NOT SEEN within {} s: {}",
                    req.wait.as_secs(),
                    match req.action.as_str() {
                        "off" => "it is still heard from",
                        _ => "no ready report from a new boot",
                    }
                )?;
            }
            return Ok(false);
        }
        std::thread::sleep(Duration::from_millis(500));
    }
    Ok(all_ok)
}

/// Has `node` become what `action` asked? `before`/`now` are its fleet entries.
fn observed(
    action: &str,
    before: &Value,
    now: &Value,
    asked_unix: u64,
    c: &Client,
    node: &str,
) -> Result<Option<String>> {
    let live = &now["live"];
    match action {
        "on" | "reboot" => {
            let new_boot = live["boot"] != before["live"]["boot"] && !live["boot"].is_null();
            let fresh = live["last_seen_unix"]
                .as_u64()
                .is_some_and(|t| t >= asked_unix);
            Ok((new_boot && fresh && live["ready"] == "yes").then(|| {
                format!(
                    "up: ready on {}@{}",
                    live["recipe"].as_str().unwrap_or("?"),
                    live["version"].as_str().unwrap_or("?")
                )
            }))
        }
        // A node with a BMC (whatever its kind, whichever way it was asked): the BMC says.
        "off" if now["bmc"] == true => {
            let r = c.call(
                "POST",
                "/api/v1/power",
                Some(&serde_json::json!({"action": "status", "nodes": [node]})),
            )?;
            Ok((r[0]["power"] == false).then(|| "off: its BMC says power is off".to_string()))
        }
        "off" => {
            let acked = live["command"]["acked_unix"].as_u64();
            let last = live["last_seen_unix"].as_u64().unwrap_or(0);
            Ok(acked
                .filter(|a| *a >= asked_unix && last <= *a && unix_now() >= a + 5)
                .map(|_| {
                    "off: its agent took the command and has been silent since (no BMC to \
                     read the power state)"
                        .to_string()
                }))
        }
        _ => Ok(Some(String::new())),
    }
}

/// What `rollout` is asked for.
#[derive(Debug, Clone, Default)]
pub struct RolloutRequest {
    /// The recipe.
    pub recipe: String,
    /// The version (`current` when none).
    pub version: Option<String>,
    /// The nodes (every node of the recipe when empty).
    pub nodes: Vec<String>,
    /// Canary count.
    pub canary: usize,
    /// Batch size.
    pub max_unavailable: usize,
    /// Seconds per node.
    pub timeout_s: u64,
}

/// Starts a rollout and follows it to its end.
pub fn rollout(c: &Client, req: &RolloutRequest, out: &mut impl Write) -> Result<bool> {
    let mut body = serde_json::json!({
        "recipe": req.recipe,
        "version": req.version,
        "canary": req.canary,
        "max_unavailable": req.max_unavailable,
        "timeout_s": req.timeout_s,
    });
    if !req.nodes.is_empty() {
        body["nodes"] = serde_json::json!(req.nodes);
    }
    let r = c.call("POST", "/api/v1/rollouts", Some(&body))?;
    let id = r["id"].as_str().context("the server gave no rollout id")?;
    writeln!(
        out,
        "rollout {id}: {}@{} to {} (canary {}, then {} at a time, {} s per node); \
         interrupting this leaves it running (`--abort {id}` stops it)",
        r["recipe"].as_str().unwrap_or(""),
        r["version"].as_str().unwrap_or(""),
        r["nodes"]
            .as_array()
            .map(|n| n
                .iter()
                .filter_map(|x| x.as_str())
                .collect::<Vec<_>>()
                .join(", "))
            .unwrap_or_default(),
        r["canary"],
        r["max_unavailable"],
        r["timeout_s"],
    )?;
    follow(c, id, out)
}

/// Asks for a fresh install of each of `nodes` at its next network boot; says what each had.
pub fn install(c: &Client, nodes: &[String], out: &mut impl Write) -> Result<bool> {
    for node in nodes {
        let r = c.call("POST", &format!("/api/v1/install/{node}"), None)?;
        let was = &r["was"];
        if was.is_null() {
            writeln!(
                out,
                "{node}: not installed yet; its next network boot installs it"
            )?;
        } else {
            writeln!(
                out,
                "{node}: was {}@{} on {}; its next network boot installs afresh (power-cycle it: \
                 ironbake power reboot {node})",
                was["recipe"].as_str().unwrap_or("?"),
                was["version"].as_str().unwrap_or("?"),
                was["disk"].as_str().unwrap_or("?"),
            )?;
        }
    }
    Ok(true)
}

/// Resumes a paused rollout and follows it.
pub fn resume(c: &Client, id: &str, out: &mut impl Write) -> Result<bool> {
    c.call("POST", &format!("/api/v1/rollouts/{id}/resume"), None)?;
    writeln!(out, "rollout {id}: resumed")?;
    follow(c, id, out)
}

/// Aborts a rollout and follows it until it stops.
pub fn abort(c: &Client, id: &str, out: &mut impl Write) -> Result<bool> {
    c.call("POST", &format!("/api/v1/rollouts/{id}/abort"), None)?;
    writeln!(out, "rollout {id}: abort asked")?;
    follow(c, id, out).map(|_| true)
}

/// Prints each node's steps as they happen until the rollout ends; true if it succeeded.
pub fn follow(c: &Client, id: &str, out: &mut impl Write) -> Result<bool> {
    let mut shown: BTreeMap<String, String> = BTreeMap::new();
    let start = Instant::now();
    loop {
        let r = c.call("GET", &format!("/api/v1/rollouts/{id}"), None)?;
        if let Some(progress) = r["progress"].as_object() {
            for (node, p) in progress {
                let line = format!(
                    "{} ({})",
                    p["step"].as_str().unwrap_or("?"),
                    p["detail"].as_str().unwrap_or("")
                );
                if shown.get(node) != Some(&line) {
                    writeln!(
                        out,
                        "[{:>6.1} s] {node:<12} {line}",
                        start.elapsed().as_secs_f64()
                    )?;
                    shown.insert(node.clone(), line);
                }
            }
        }
        match r["state"].as_str() {
            Some("running") => {}
            Some("succeeded") => {
                writeln!(
                    out,
                    "rollout {id}: succeeded: every node ready on {}",
                    r["version"].as_str().unwrap_or("?")
                )?;
                return Ok(true);
            }
            Some(state) => {
                writeln!(
                    out,
                    "rollout {id}: {state}: {}",
                    r["error"].as_str().unwrap_or("")
                )?;
                for (node, p) in r["progress"].as_object().into_iter().flatten() {
                    if p["reached"].is_null() {
                        continue;
                    }
                    writeln!(
                        out,
                        "  {node}: reached {}; now {}",
                        p["reached"].as_str().unwrap_or("?"),
                        p["step"].as_str().unwrap_or("?")
                    )?;
                    for l in p["log"].as_array().into_iter().flatten() {
                        writeln!(out, "    | {}", l.as_str().unwrap_or(""))?;
                    }
                }
                return Ok(false);
            }
            None => bail!("the server's answer has no rollout state: {r}"),
        }
        std::thread::sleep(Duration::from_millis(500));
    }
}

/// The server's URL when none is given: the inventory's `[server] address`.
pub fn default_server(project_inventory: &Path) -> Option<String> {
    let inv = netboot::inventory::load_file(project_inventory, "inventory.toml").ok()?;
    let addr = inv.server?.address?;
    Some(format!("http://{addr}"))
}

/// The token file when none is given.
pub fn default_token_file() -> PathBuf {
    PathBuf::from(DEFAULT_TOKEN_FILE)
}
