//! Rolling a version out: canary nodes first, then batches of at most `max_unavailable`; each
//! node gets the new version as its desired one, is rebooted (its agent, else its BMC; a node
//! that is off is powered on), and must report ready on that version, from a new boot, within
//! the timeout. One that does not, or that reports its boot failed (multi-user will not be
//! reached), is put back on its previous version and rebooted, and the rollout stops.
//!
//! A rollout is a file in the state folder (`rollouts/ID.json`, rewritten atomically at every
//! step), so `GET /api/v1/rollouts/ID` and the CLI follow it and it outlives the CLI. A server
//! that stops mid-rollout finds it `paused` when it starts again; it is resumed or aborted.
//! Two rollouts that share a node cannot be running or paused at once.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

use super::desired::{Wanted, write_atomic};
use super::{Action, Fleet, PowerAction};
use crate::layout;

/// A rollout's request.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Request {
    /// The recipe.
    pub recipe: String,
    /// The version (the recipe's `current` when left out).
    #[serde(default)]
    pub version: Option<String>,
    /// The nodes (every node of the recipe when left out), in order.
    #[serde(default)]
    pub nodes: Option<Vec<String>>,
    /// How many nodes go first, alone.
    #[serde(default = "one")]
    pub canary: usize,
    /// How many nodes may be rebooting at once after the canaries.
    #[serde(default = "one")]
    pub max_unavailable: usize,
    /// Seconds from a node's reboot to its ready report.
    #[serde(default = "default_timeout")]
    pub timeout_s: u64,
}

fn one() -> usize {
    1
}

fn default_timeout() -> u64 {
    300
}

/// Where a rollout is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum RolloutState {
    /// Moving.
    Running,
    /// Stopped by a server restart: resume or abort it.
    Paused,
    /// Every node ready on the version.
    Succeeded,
    /// A node did not get ready: it was put back, the rest left alone.
    Failed,
    /// Stopped on request.
    Aborted,
}

/// Where one node of a rollout is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Step {
    /// Its batch has not started.
    Waiting,
    /// It already ran the version.
    Skipped,
    /// Asked to reboot (or powered on) into the version.
    Rebooting,
    /// Booting: the server sees it fetch its files.
    Booting,
    /// Running the version, not ready yet.
    Starting,
    /// Ready on the version.
    Ready,
    /// Not ready on the version; being put back.
    RollingBack,
    /// Back on its previous version and ready.
    RolledBack,
    /// Put back, but not ready on its previous version either.
    RollbackFailed,
}

impl Step {
    fn done(self) -> bool {
        matches!(
            self,
            Step::Skipped | Step::Ready | Step::RolledBack | Step::RollbackFailed
        )
    }
}

/// One node of a rollout.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct NodeProgress {
    /// Its batch (0 = the canaries when there are any).
    pub batch: usize,
    /// The version it booted before.
    pub from: Option<String>,
    /// Where it is.
    pub step: Step,
    /// What was seen last, in words.
    pub detail: String,
    /// Each step it entered, with when (seconds since the Unix epoch).
    pub events: Vec<(f64, String)>,
    /// Its last log lines (failed units' journal), when it failed.
    pub log: Vec<String>,
    /// The furthest stage it reached on the new version, when it failed.
    pub reached: Option<String>,
}

/// A rollout, as stored and as the API shows it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Rollout {
    /// Its id.
    pub id: String,
    /// The recipe.
    pub recipe: String,
    /// The version rolled out.
    pub version: String,
    /// Its nodes, in order.
    pub nodes: Vec<String>,
    /// Canary count.
    pub canary: usize,
    /// Batch size after the canaries.
    pub max_unavailable: usize,
    /// Per-node timeout.
    pub timeout_s: u64,
    /// Where it is.
    pub state: RolloutState,
    /// When it started.
    pub created_unix: u64,
    /// When it ended.
    pub ended_unix: Option<u64>,
    /// Each node.
    pub progress: BTreeMap<String, NodeProgress>,
    /// Why it failed or paused.
    pub error: Option<String>,
    /// Has an abort been asked for?
    pub abort: bool,
}

/// The batches of `nodes`: the first `canary` alone as one batch, then groups of
/// `max_unavailable`.
pub fn batches(nodes: &[String], canary: usize, max_unavailable: usize) -> Vec<Vec<String>> {
    let canary = canary.min(nodes.len());
    let mut out = Vec::new();
    if canary > 0 {
        out.push(nodes[..canary].to_vec());
    }
    for chunk in nodes[canary..].chunks(max_unavailable.max(1)) {
        out.push(chunk.to_vec());
    }
    out
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// The rollouts of one server.
#[derive(Debug)]
pub struct Store {
    dir: PathBuf,
    all: Mutex<BTreeMap<String, Rollout>>,
}

impl Store {
    /// Loads `state_dir/rollouts/*.json`; one that was running is now paused.
    pub fn load(state_dir: &Path) -> std::io::Result<Store> {
        let dir = state_dir.join("rollouts");
        std::fs::create_dir_all(&dir)?;
        let mut all = BTreeMap::new();
        for e in std::fs::read_dir(&dir)? {
            let path = e?.path();
            if path.extension().is_none_or(|x| x != "json") {
                continue;
            }
            let text = std::fs::read(&path)?;
            let mut r: Rollout = serde_json::from_slice(&text).map_err(|e| {
                std::io::Error::other(format!("{} is not valid: {e}", path.display()))
            })?;
            if r.state == RolloutState::Running {
                r.state = RolloutState::Paused;
                r.error = Some(
                    "the boot server stopped during the rollout: resume it (`ironbake rollout \
                     --resume ID`) or abort it"
                        .into(),
                );
                write_atomic(&path, &serde_json::to_vec_pretty(&r).expect("serialises"))?;
                tracing::warn!(id = %r.id, "rollout paused: the server stopped while it ran");
            }
            all.insert(r.id.clone(), r);
        }
        Ok(Store {
            dir,
            all: Mutex::new(all),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, Rollout>> {
        self.all.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// One rollout.
    pub fn get(&self, id: &str) -> Option<Rollout> {
        self.lock().get(id).cloned()
    }

    /// Every rollout, oldest first.
    pub fn list(&self) -> Vec<Rollout> {
        let mut v: Vec<Rollout> = self.lock().values().cloned().collect();
        v.sort_by_key(|r| r.created_unix);
        v
    }

    fn save(&self, r: &Rollout) {
        let path = self.dir.join(format!("{}.json", r.id));
        if let Err(e) = write_atomic(&path, &serde_json::to_vec_pretty(r).expect("serialises")) {
            tracing::error!(id = %r.id, "writing {}: {e}", path.display());
        }
    }

    /// Changes rollout `id` with `f`, then writes it.
    fn update(&self, id: &str, f: impl FnOnce(&mut Rollout)) -> Option<Rollout> {
        let mut all = self.lock();
        let r = all.get_mut(id)?;
        f(r);
        let r = r.clone();
        drop(all);
        self.save(&r);
        Some(r)
    }
}

/// A refused request: the HTTP status and why.
pub type Refused = (u16, String);

impl Fleet {
    /// Checks `req` and starts the rollout; the answer is its first state.
    pub async fn start_rollout(self: &Arc<Self>, req: Request) -> Result<Rollout, Refused> {
        if req.max_unavailable == 0 {
            return Err((400, "max_unavailable must be at least 1".into()));
        }
        if req.timeout_s == 0 {
            return Err((400, "timeout_s must be at least 1".into()));
        }
        let recipe_dir = self.root.join(&req.recipe);
        let version = match &req.version {
            Some(v) => v.clone(),
            None => layout::read_current(&recipe_dir)
                .map_err(|e| (500, e.to_string()))?
                .ok_or_else(|| {
                    (
                        404,
                        format!("recipe {} has no published version here", req.recipe),
                    )
                })?,
        };
        self.check_published(&req.recipe, &version).await?;
        let inv = self.nodes.get();
        let nodes: Vec<String> = match &req.nodes {
            Some(list) => {
                for n in list {
                    let Some(node) = inv.nodes.get(n) else {
                        return Err((
                            400,
                            format!("{} lists no node named {n}", self.nodes.shown()),
                        ));
                    };
                    if node.recipe != req.recipe {
                        return Err((
                            400,
                            format!("node {n} boots recipe {}, not {}", node.recipe, req.recipe),
                        ));
                    }
                }
                list.clone()
            }
            None => inv
                .nodes
                .iter()
                .filter(|(_, n)| n.recipe == req.recipe)
                .map(|(name, _)| name.clone())
                .collect(),
        };
        if nodes.is_empty() {
            return Err((400, format!("no node boots recipe {}", req.recipe)));
        }
        for n in &nodes {
            if let Some(v) = &inv.nodes[n].version {
                return Err((
                    400,
                    format!(
                        "node {n} is pinned to {v} in {}: remove its `version` there to let \
                         rollouts move it",
                        self.nodes.shown()
                    ),
                ));
            }
        }
        let plan = batches(&nodes, req.canary, req.max_unavailable);
        let mut progress = BTreeMap::new();
        for (b, batch) in plan.iter().enumerate() {
            for n in batch {
                progress.insert(
                    n.clone(),
                    NodeProgress {
                        batch: b,
                        from: None,
                        step: Step::Waiting,
                        detail: "waiting for its batch".into(),
                        events: Vec::new(),
                        log: Vec::new(),
                        reached: None,
                    },
                );
            }
        }
        let r = {
            let mut all = self.rollouts.lock();
            for other in all.values() {
                let live = matches!(other.state, RolloutState::Running | RolloutState::Paused);
                if let Some(n) = other.nodes.iter().find(|n| nodes.contains(n))
                    && live
                {
                    return Err((
                        409,
                        format!(
                            "rollout {} ({}) is {} and has node {n}: wait for it, or abort it",
                            other.id,
                            other.version,
                            if other.state == RolloutState::Running {
                                "running"
                            } else {
                                "paused"
                            }
                        ),
                    ));
                }
            }
            let mut id = format!("{}-{}", req.recipe, unix_now());
            let mut k = 1;
            while all.contains_key(&id) {
                k += 1;
                id = format!("{}-{}-{k}", req.recipe, unix_now());
            }
            let r = Rollout {
                id: id.clone(),
                recipe: req.recipe.clone(),
                version,
                nodes,
                canary: req.canary,
                max_unavailable: req.max_unavailable,
                timeout_s: req.timeout_s,
                state: RolloutState::Running,
                created_unix: unix_now(),
                ended_unix: None,
                progress,
                error: None,
                abort: false,
            };
            all.insert(id, r.clone());
            r
        };
        self.rollouts.save(&r);
        tracing::info!(id = %r.id, recipe = %r.recipe, version = %r.version, nodes = ?r.nodes, canary = r.canary, max_unavailable = r.max_unavailable, "rollout started");
        let me = Arc::clone(self);
        let id = r.id.clone();
        tokio::spawn(async move { me.run_rollout(id).await });
        Ok(r)
    }

    /// Refuses a version that is not published for `recipe` or whose files do not match its
    /// manifest.
    pub async fn check_published(&self, recipe: &str, version: &str) -> Result<(), Refused> {
        if !layout::valid_name(recipe) || !layout::valid_version(version) {
            return Err((400, format!("{recipe}@{version} is not a valid name")));
        }
        let dir = self.root.join(recipe).join(version);
        if !dir.is_dir() {
            return Err((
                404,
                format!("{recipe}@{version} is not published on this server"),
            ));
        }
        let verified = tokio::task::spawn_blocking(move || layout::verify(&dir))
            .await
            .map_err(|e| (500, e.to_string()))?;
        match verified {
            Ok((m, bad)) if bad.is_empty() && m.recipe == recipe => Ok(()),
            Ok((m, _)) if m.recipe != recipe => Err((
                422,
                format!("{recipe}@{version}'s manifest names recipe {}", m.recipe),
            )),
            Ok((_, bad)) => Err((
                422,
                format!(
                    "{recipe}@{version} does not verify against its manifest: {}",
                    bad.iter()
                        .map(|b| b.to_string())
                        .collect::<Vec<_>>()
                        .join("; ")
                ),
            )),
            Err(e) => Err((422, format!("{recipe}@{version}: {e}"))),
        }
    }

    /// Sets a node's desired version after the same checks as a rollout's.
    pub async fn set_desired(&self, node: &str, version: &str) -> Result<Wanted, Refused> {
        let inv = self.nodes.get();
        let Some(n) = inv.nodes.get(node) else {
            return Err((
                404,
                format!("{} lists no node named {node}", self.nodes.shown()),
            ));
        };
        self.check_published(&n.recipe, version).await?;
        let w = Wanted {
            recipe: n.recipe.clone(),
            version: version.to_string(),
            by: "api".into(),
        };
        self.state
            .desired
            .set(node, Some(w.clone()))
            .map_err(|e| (500, format!("writing the desired versions: {e}")))?;
        tracing::info!(node, version, "desired version set");
        self.bump();
        Ok(w)
    }

    /// Asks rollout `id` to stop (a node being updated is put back first).
    pub fn abort_rollout(&self, id: &str) -> Result<Rollout, Refused> {
        let r = self
            .rollouts
            .update(id, |r| match r.state {
                RolloutState::Running => r.abort = true,
                RolloutState::Paused => {
                    r.abort = true;
                    r.state = RolloutState::Aborted;
                    r.ended_unix = Some(unix_now());
                }
                _ => {}
            })
            .ok_or_else(|| (404, format!("no rollout {id}")))?;
        self.bump();
        Ok(r)
    }

    /// Resumes a paused rollout.
    pub fn resume_rollout(self: &Arc<Self>, id: &str) -> Result<Rollout, Refused> {
        let mut was = None;
        let r = self
            .rollouts
            .update(id, |r| {
                was = Some(r.state);
                if r.state == RolloutState::Paused {
                    r.state = RolloutState::Running;
                    r.error = None;
                }
            })
            .ok_or_else(|| (404, format!("no rollout {id}")))?;
        if was != Some(RolloutState::Paused) {
            return Err((
                409,
                format!("rollout {id} is not paused; only a paused rollout is resumed"),
            ));
        }
        tracing::info!(id, "rollout resumed");
        let me = Arc::clone(self);
        let id = id.to_string();
        tokio::spawn(async move { me.run_rollout(id).await });
        Ok(r)
    }

    fn note(&self, id: &str, node: &str, step: Step, detail: String) {
        let t = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0.0, |d| d.as_secs_f64());
        tracing::info!(rollout = id, node, step = ?step, "{detail}");
        self.rollouts.update(id, |r| {
            if let Some(p) = r.progress.get_mut(node) {
                if p.step != step {
                    p.events.push((t, format!("{step:?}").to_lowercase()));
                }
                p.step = step;
                p.detail = detail;
            }
        });
        self.bump();
    }

    async fn run_rollout(self: Arc<Self>, id: String) {
        let Some(r) = self.rollouts.get(&id) else {
            return;
        };
        let plan = batches(&r.nodes, r.canary, r.max_unavailable);
        for batch in plan {
            if self.rollouts.get(&id).is_some_and(|r| r.abort) {
                self.finish(
                    &id,
                    RolloutState::Aborted,
                    Some("aborted on request".into()),
                );
                return;
            }
            let todo: Vec<String> = batch
                .into_iter()
                .filter(|n| {
                    self.rollouts
                        .get(&id)
                        .and_then(|r| r.progress.get(n).map(|p| !p.step.done()))
                        .unwrap_or(false)
                })
                .collect();
            let runs = todo.iter().map(|n| self.update_node(&id, n));
            let results = futures_util::future::join_all(runs).await;
            let failed: Vec<String> = todo
                .iter()
                .zip(&results)
                .filter(|(_, r)| r.is_err())
                .map(|(n, r)| format!("{n}: {}", r.as_ref().expect_err("filtered")))
                .collect();
            if !failed.is_empty() {
                let aborted = self.rollouts.get(&id).is_some_and(|r| r.abort);
                let state = if aborted {
                    RolloutState::Aborted
                } else {
                    RolloutState::Failed
                };
                self.finish(&id, state, Some(failed.join("; ")));
                return;
            }
        }
        self.finish(&id, RolloutState::Succeeded, None);
    }

    fn finish(&self, id: &str, state: RolloutState, error: Option<String>) {
        tracing::info!(rollout = id, state = ?state, error = ?error, "rollout ended");
        self.rollouts.update(id, |r| {
            r.state = state;
            r.error = error;
            r.ended_unix = Some(unix_now());
        });
        self.bump();
    }

    /// Moves one node to the rollout's version; the error says why it did not get there.
    async fn update_node(&self, id: &str, node: &str) -> Result<(), String> {
        let r = self.rollouts.get(id).ok_or("rollout gone")?;
        let target = r.version.clone();
        let timeout = Duration::from_secs(r.timeout_s);
        let mac = self.nodes.mac_of(node).ok_or("node left the inventory")?;
        let resumed = r
            .progress
            .get(node)
            .is_some_and(|p| p.step != Step::Waiting);
        let boots_now = self
            .nodes
            .target(&self.root, &mac)
            .map_err(|e| e.to_string())?
            .map(|t| t.manifest.version.clone());
        let from = match r.progress.get(node).and_then(|p| p.from.clone()) {
            Some(f) => Some(f),
            None => boots_now.clone(),
        };
        let live = self.live_of(node);
        let on_target = live.ready_mark().is_some_and(|m| m.version == target)
            && live.version.as_deref() == Some(&target)
            && boots_now.as_deref() == Some(&target);
        if on_target && !resumed {
            self.note(
                id,
                node,
                Step::Skipped,
                format!("already ready on {target}"),
            );
            return Ok(());
        }
        self.rollouts.update(id, |r| {
            if let Some(p) = r.progress.get_mut(node) {
                p.from = from.clone();
            }
        });
        self.state
            .desired
            .set(
                node,
                Some(Wanted {
                    recipe: r.recipe.clone(),
                    version: target.clone(),
                    by: id.to_string(),
                }),
            )
            .map_err(|e| format!("writing the desired versions: {e}"))?;
        let boot_before = live.boot.clone();
        let t0 = Instant::now();
        let how = self.restart(node, &live).await;
        match how {
            Ok(how) => self.note(id, node, Step::Rebooting, how),
            Err(e) => {
                self.put_back(node, &r.recipe, from.as_deref(), id);
                self.note(id, node, Step::RollbackFailed, e.clone());
                return Err(e);
            }
        }
        match self
            .wait_ready(
                id,
                node,
                &mac,
                &target,
                boot_before.as_deref(),
                t0,
                timeout,
                true,
            )
            .await
        {
            Ok(took) => {
                self.note(
                    id,
                    node,
                    Step::Ready,
                    format!("ready on {target}, {took:.1} s after its restart"),
                );
                Ok(())
            }
            Err((reached, why)) => {
                let live = self.live_of(node);
                self.rollouts.update(id, |r| {
                    if let Some(p) = r.progress.get_mut(node) {
                        p.log = live.log.clone();
                        p.reached = Some(reached.clone());
                    }
                });
                let why = format!("not ready on {target}: {why} (reached: {reached})");
                self.note(id, node, Step::RollingBack, why.clone());
                let Some(from) = from else {
                    self.note(
                        id,
                        node,
                        Step::RollbackFailed,
                        format!("{why}; it had no earlier version to go back to"),
                    );
                    return Err(why);
                };
                self.put_back(node, &r.recipe, Some(&from), id);
                // A node still booting (its agent not heard yet) cannot be stopped: wait for
                // it to come up, on whatever version, and restart it then.
                let live = self.wait_alive(node, timeout).await;
                let before = live.boot.clone();
                let t1 = Instant::now();
                let restarted = self.restart(node, &live).await;
                let back = match restarted {
                    Ok(_) => {
                        self.wait_ready(
                            id,
                            node,
                            &mac,
                            &from,
                            before.as_deref(),
                            t1,
                            timeout,
                            false,
                        )
                        .await
                    }
                    Err(e) => Err(("its restart".into(), e)),
                };
                match back {
                    Ok(took) => self.note(
                        id,
                        node,
                        Step::RolledBack,
                        format!(
                            "{why}; put back on {from}: ready again {took:.1} s after its restart"
                        ),
                    ),
                    Err((_, e)) => self.note(
                        id,
                        node,
                        Step::RollbackFailed,
                        format!("{why}; put back on {from}, but not ready on it: {e}"),
                    ),
                }
                Err(why)
            }
        }
    }

    fn put_back(&self, node: &str, recipe: &str, from: Option<&str>, id: &str) {
        let w = from.map(|v| Wanted {
            recipe: recipe.to_string(),
            version: v.to_string(),
            by: format!("{id} (rollback)"),
        });
        if let Err(e) = self.state.desired.set(node, w) {
            tracing::error!(node, "putting the desired version back: {e}");
        }
    }

    /// What is known of `node` once its agent is heard (or `at_most` has passed).
    async fn wait_alive(&self, node: &str, at_most: Duration) -> super::Live {
        let deadline = Instant::now() + at_most;
        loop {
            let live = self.live_of(node);
            if live.alive() || Instant::now() >= deadline {
                return live;
            }
            self.changed(Duration::from_secs(1)).await;
        }
    }

    /// Reboots a running node (its agent, else its BMC) or powers on one that is off.
    async fn restart(&self, node: &str, live: &super::Live) -> Result<String, String> {
        let r = if live.alive() {
            self.power(node, PowerAction::Reboot).await
        } else {
            self.power(node, PowerAction::On).await
        };
        if r.ok {
            Ok(format!("{} ({})", r.done, r.via))
        } else {
            Err(r.done)
        }
    }

    /// Waits for a verified ready on `version` from a boot other than `boot_before`, reported
    /// after `t0`; `Ok(seconds since t0)`, or `Err((furthest stage, why))`.
    #[allow(clippy::too_many_arguments)]
    async fn wait_ready(
        &self,
        id: &str,
        node: &str,
        mac: &str,
        version: &str,
        boot_before: Option<&str>,
        t0: Instant,
        timeout: Duration,
        forward: bool,
    ) -> Result<f64, (String, String)> {
        let deadline = t0 + timeout;
        let mut reached = "restart asked".to_string();
        let mut shown = String::new();
        loop {
            let live = self.live_of(node);
            let new_boot = live.boot.as_deref() != boot_before;
            if let Some(m) = live.ready_mark()
                && m.version == version
                && Some(m.boot.as_str()) != boot_before
                && m.at > t0
            {
                return Ok(m.at.duration_since(t0).as_secs_f64());
            }
            // The server's view of its boot: the latest stage since t0.
            if let Some(stage) = self
                .hub
                .boots()
                .into_iter()
                .find(|b| b.mac == mac)
                .and_then(|b| {
                    let since = b.started_wall?;
                    let asked = SystemTime::now() - t0.elapsed();
                    (since >= asked).then(|| b.stages.last().map(|s| s.stage.name().to_string()))?
                })
            {
                reached = format!("boot stage {stage}");
            }
            let running = new_boot
                && live.version.as_deref() == Some(version)
                && live.last_seen().is_some_and(|t| t > t0);
            if running {
                reached = format!(
                    "running {version}, systemd {}",
                    live.state.as_deref().unwrap_or("?")
                );
                if live.ready.as_deref() == Some("failed") {
                    let units = if live.failed.is_empty() {
                        "none named".to_string()
                    } else {
                        live.failed.join(" ")
                    };
                    return Err((
                        reached,
                        format!("its boot ended without multi-user (failed units: {units})"),
                    ));
                }
            }
            let step = if running {
                Step::Starting
            } else {
                Step::Booting
            };
            if reached != shown {
                shown = reached.clone();
                if forward {
                    self.note(id, node, step, reached.clone());
                } else {
                    tracing::info!(rollout = id, node, "rollback: {reached}");
                }
            }
            if forward && self.rollouts.get(id).is_some_and(|r| r.abort) {
                return Err((reached, "the rollout was aborted".into()));
            }
            if Instant::now() >= deadline {
                return Err((
                    reached,
                    format!("no ready report within {} s", timeout.as_secs()),
                ));
            }
            self.changed(Duration::from_secs(1)).await;
        }
    }
}

impl Action {
    /// Parses the agent's word.
    pub fn from_word(w: &str) -> Option<Action> {
        match w {
            "reboot" => Some(Action::Reboot),
            "poweroff" => Some(Action::Poweroff),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(n: usize) -> Vec<String> {
        (0..n).map(|i| format!("n{i}")).collect()
    }

    #[test]
    fn canaries_go_first_then_batches() {
        assert_eq!(
            batches(&names(5), 1, 2),
            [vec!["n0"], vec!["n1", "n2"], vec!["n3", "n4"]]
        );
        assert_eq!(
            batches(&names(3), 0, 1),
            [vec!["n0"], vec!["n1"], vec!["n2"]]
        );
        assert_eq!(batches(&names(2), 5, 1), [vec!["n0", "n1"]]);
        assert_eq!(
            batches(&names(3), 1, 0),
            [vec!["n0"], vec!["n1"], vec!["n2"]]
        );
    }
}
