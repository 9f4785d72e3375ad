//! A Raspberry Pi-like CPU budget for the server: one core at half its time, through cgroup
//! CPU controls (v2 `cpu.max` and `cpuset.cpus`, or v1's `cpu.cfs_quota_us` and `cpuset`
//! where the machine mounts v1), while the simulated nodes run on the other core. The link is
//! the storm's own (1 Gbit/s); only the server's CPU changes.

use std::fs;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};

/// CPU time the server may use per period, and the period (microseconds): half of a core.
pub const QUOTA_US: u64 = 50_000;
/// The period of [`QUOTA_US`].
pub const PERIOD_US: u64 = 100_000;
/// The core the server runs on; the bench and its clients run on [`CLIENT_CPU`].
pub const SERVER_CPU: u32 = 0;
/// The core the clients (atftp, curl) run on.
pub const CLIENT_CPU: u32 = 1;

const V2: &str = "/sys/fs/cgroup";
const V1_CPU: &str = "/sys/fs/cgroup/cpu";
const V1_CPUSET: &str = "/sys/fs/cgroup/cpuset";

/// Groups made for one run, removed when dropped (after their processes left or ended).
pub struct Budget {
    /// The server's group(s).
    server: Vec<PathBuf>,
    /// The clients' cpuset group, and where the bench process was before.
    clients: PathBuf,
    home: PathBuf,
}

fn write(path: &Path, value: &str) -> Result<()> {
    fs::write(path, value).with_context(|| format!("writing {value:?} to {}", path.display()))
}

/// A fresh group `name` under `parent` (one left by an earlier run is removed first).
fn group(parent: &str, name: &str) -> Result<PathBuf> {
    let dir = Path::new(parent).join(name);
    let _ = fs::remove_dir(&dir);
    fs::create_dir(&dir).with_context(|| format!("making cgroup {}", dir.display()))?;
    Ok(dir)
}

/// This process's group in the hierarchy that holds `controller` ("" for v2's one), from
/// `/proc/self/cgroup`, under `mount`.
fn current(mount: &str, controller: &str) -> Result<PathBuf> {
    let text = fs::read_to_string("/proc/self/cgroup")?;
    let rel = text
        .lines()
        .filter_map(|l| {
            let mut f = l.splitn(3, ':').skip(1);
            f.next().zip(f.next())
        })
        .find(|(c, _)| c.split(',').any(|c| c == controller))
        .map(|(_, p)| p.trim_start_matches('/').to_string())
        .with_context(|| format!("/proc/self/cgroup names no {controller:?} group"))?;
    Ok(Path::new(mount).join(rel))
}

fn v2() -> bool {
    Path::new(V2).join("cgroup.controllers").is_file()
}

impl Budget {
    /// Makes the groups and moves this process (and so every client it starts) to the client
    /// core; [`Budget::hold`] then puts the server under the budget.
    pub fn new() -> Result<Budget> {
        if std::thread::available_parallelism().map_or(1, |n| n.get()) < 2 {
            bail!("the Raspberry Pi storm needs two cores: one for the server, one for clients");
        }
        let me = std::process::id().to_string();
        if v2() {
            let controllers = fs::read_to_string(Path::new(V2).join("cgroup.controllers"))?;
            for c in ["cpu", "cpuset"] {
                if !controllers.split_whitespace().any(|x| x == c) {
                    bail!("cgroup v2 has no {c} controller here");
                }
            }
            write(
                &Path::new(V2).join("cgroup.subtree_control"),
                "+cpu +cpuset",
            )?;
            let server = group(V2, "ironbake-bench-pi")?;
            write(&server.join("cpu.max"), &format!("{QUOTA_US} {PERIOD_US}"))?;
            write(&server.join("cpuset.cpus"), &SERVER_CPU.to_string())?;
            let clients = group(V2, "ironbake-bench-clients")?;
            write(&clients.join("cpuset.cpus"), &CLIENT_CPU.to_string())?;
            let home = current(V2, "")?;
            write(&clients.join("cgroup.procs"), &me)?;
            return Ok(Budget {
                server: vec![server],
                clients,
                home,
            });
        }
        if !Path::new(V1_CPU).join("cpu.cfs_quota_us").is_file() {
            bail!("neither cgroup v2 with cpu and cpuset nor v1's cpu controller is mounted");
        }
        let cpu = group(V1_CPU, "ironbake-bench-pi")?;
        write(&cpu.join("cpu.cfs_period_us"), &PERIOD_US.to_string())?;
        write(&cpu.join("cpu.cfs_quota_us"), &QUOTA_US.to_string())?;
        let mems = fs::read_to_string(Path::new(V1_CPUSET).join("cpuset.mems"))?;
        let set = group(V1_CPUSET, "ironbake-bench-pi")?;
        write(&set.join("cpuset.mems"), mems.trim())?;
        write(&set.join("cpuset.cpus"), &SERVER_CPU.to_string())?;
        let clients = group(V1_CPUSET, "ironbake-bench-clients")?;
        write(&clients.join("cpuset.mems"), mems.trim())?;
        write(&clients.join("cpuset.cpus"), &CLIENT_CPU.to_string())?;
        let home = current(V1_CPUSET, "cpuset")?;
        write(&clients.join("cgroup.procs"), &me)?;
        Ok(Budget {
            server: vec![cpu, set],
            clients,
            home,
        })
    }

    /// Puts process `pid` (the server: all its threads) under the budget.
    pub fn hold(&self, pid: u32) -> Result<()> {
        for g in &self.server {
            write(&g.join("cgroup.procs"), &pid.to_string())?;
        }
        Ok(())
    }

    /// The budget in words, for the record.
    pub fn words() -> String {
        format!(
            "one core (cpu {SERVER_CPU}) at {}% of its time (cgroup CPU quota {QUOTA_US} us per \
             {PERIOD_US} us); the simulated nodes on cpu {CLIENT_CPU}",
            100 * QUOTA_US / PERIOD_US
        )
    }
}

impl Drop for Budget {
    fn drop(&mut self) {
        let _ = fs::write(
            self.home.join("cgroup.procs"),
            std::process::id().to_string(),
        );
        for g in self.server.iter().chain([&self.clients]) {
            let _ = fs::remove_dir(g);
        }
    }
}
