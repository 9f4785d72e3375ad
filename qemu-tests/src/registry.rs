//! A real OCI registry (Debian's `docker-registry`, the CNCF distribution registry) inside a
//! namespace, listening on that namespace's loopback, with its storage in the test's folder
//! and, when asked, HTTP basic authentication (an htpasswd file made with Apache's
//! `htpasswd -B`). Killed on drop.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

use crate::netns::Netns;

/// Where it listens, on the namespace's loopback.
pub const ADDRESS: &str = "127.0.0.1:5000";
/// The user and password of a registry started with authentication.
pub const LOGIN: (&str, &str) = ("ci", "registry-test-password");

/// A running registry.
#[derive(Debug)]
pub struct Registry {
    child: Child,
    /// Its storage folder (`docker/registry/v2/...` inside).
    pub storage: PathBuf,
    /// A credentials file for ironbake (`--registry-auth`) holding [`LOGIN`], mode 0600.
    pub auth_file: PathBuf,
    /// Its log.
    pub log: PathBuf,
}

impl Registry {
    /// Starts the registry in `ns`, its storage, configuration and log under `dir`; with
    /// `authenticate`, every request needs [`LOGIN`].
    pub fn start(ns: &Netns, dir: &Path, authenticate: bool) -> Result<Registry> {
        let storage = dir.join("registry-storage");
        std::fs::create_dir_all(&storage)?;
        let mut config = format!(
            "# Written by the test.\nversion: 0.1\nlog:\n  level: info\n\
             storage:\n  filesystem:\n    rootdirectory: {}\n  delete:\n    enabled: true\n\
             http:\n  addr: {ADDRESS}\n  secret: test-only-upload-secret\n",
            storage.display()
        );
        if authenticate {
            let htpasswd = dir.join("registry-htpasswd");
            let out = std::process::Command::new("htpasswd")
                .args(["-Bbn", LOGIN.0, LOGIN.1])
                .output()
                .context("running htpasswd (apt-get install apache2-utils)")?;
            if !out.status.success() {
                bail!("htpasswd: {}", String::from_utf8_lossy(&out.stderr));
            }
            std::fs::write(&htpasswd, &out.stdout)?;
            config.push_str(&format!(
                "auth:\n  htpasswd:\n    realm: ironbake-test\n    path: {}\n",
                htpasswd.display()
            ));
        }
        let cfg = dir.join("registry.yml");
        std::fs::write(&cfg, config)?;
        let auth_file = dir.join("registry-auth.toml");
        netboot::fleet::auth::write_private(
            &auth_file,
            &format!("username = \"{}\"\npassword = \"{}\"\n", LOGIN.0, LOGIN.1),
        )?;
        let log = dir.join("registry.log");
        let out = std::fs::File::create(&log)?;
        let child = ns
            .command("docker-registry")
            .arg("serve")
            .arg(&cfg)
            .stdin(Stdio::null())
            .stdout(out.try_clone()?)
            .stderr(out)
            .spawn()
            .context("starting docker-registry (apt-get install docker-registry)")?;
        let r = Registry {
            child,
            storage,
            auth_file,
            log,
        };
        r.wait_listening(ns)?;
        Ok(r)
    }

    fn wait_listening(&self, ns: &Netns) -> Result<()> {
        let addr: SocketAddr = ADDRESS.parse().expect("valid");
        let ns_file = PathBuf::from(format!("/run/netns/{}", ns.name()));
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            if crate::server::http_get_in(&ns_file, addr, "/v2/").is_ok() {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        bail!(
            "the registry did not listen on {ADDRESS} within 30 s:\n{}",
            self.log_text()
        )
    }

    /// The blob file the registry keeps for `digest` (`sha256:HEX`).
    pub fn blob_file(&self, digest: &str) -> PathBuf {
        let hex = digest.trim_start_matches("sha256:");
        self.storage
            .join("docker/registry/v2/blobs/sha256")
            .join(&hex[..2])
            .join(hex)
            .join("data")
    }

    /// Its log so far.
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
