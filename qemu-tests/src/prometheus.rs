//! A real Prometheus (Debian's `prometheus`) inside a LAN's namespace, configured with nothing
//! but the boot server's HTTP service discovery URL; its API is read from inside the
//! namespace. Killed on drop.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};

use anyhow::{Context, Result};

use crate::netns::Netns;

/// Where it listens, on the namespace's loopback.
pub const ADDRESS: &str = "127.0.0.1:9090";

/// A running Prometheus.
#[derive(Debug)]
pub struct Prometheus {
    child: Child,
    ns_file: PathBuf,
    /// Its log.
    pub log: PathBuf,
}

/// The configuration: scrape every 2 s whatever `sd_url` lists (refreshed every 2 s).
pub fn config(sd_url: &str) -> String {
    format!(
        "# Written by the test: the boot server's service discovery is the only source.\n\
         global:\n  scrape_interval: 2s\n  scrape_timeout: 2s\n\
         scrape_configs:\n  - job_name: ironbake-nodes\n    http_sd_configs:\n      - url: {sd_url}\n        refresh_interval: 2s\n"
    )
}

impl Prometheus {
    /// Starts Prometheus in `ns` with [`config`]`(sd_url)`, its data and log under `dir`.
    pub fn start(ns: &Netns, dir: &Path, sd_url: &str) -> Result<Prometheus> {
        let cfg = dir.join("prometheus.yml");
        std::fs::write(&cfg, config(sd_url))?;
        let data = dir.join("prometheus-data");
        let log = dir.join("prometheus.log");
        let out = std::fs::File::create(&log)?;
        let child = ns
            .command("prometheus")
            .arg(format!("--config.file={}", cfg.display()))
            .arg(format!("--storage.tsdb.path={}", data.display()))
            .arg(format!("--web.listen-address={ADDRESS}"))
            .stdin(Stdio::null())
            .stdout(out.try_clone()?)
            .stderr(out)
            .spawn()
            .context("starting prometheus (apt-get install prometheus)")?;
        Ok(Prometheus {
            child,
            ns_file: PathBuf::from(format!("/run/netns/{}", ns.name())),
            log,
        })
    }

    /// `GET path` of its HTTP API, as JSON.
    pub fn api(&self, path: &str) -> Result<serde_json::Value> {
        let addr: SocketAddr = ADDRESS.parse().expect("valid");
        let body = crate::server::http_get_in(&self.ns_file, addr, path)?;
        serde_json::from_str(&body).with_context(|| format!("Prometheus {path}: {body}"))
    }

    /// Its log so far.
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
