//! A real HTTP cache (Debian's nginx with `proxy_cache`) inside a namespace, configured with
//! the project's own `docs/nginx-cache.conf` (only its upstream and its cache folder are
//! changed, to the test's). Killed on drop.

use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

use crate::netns::Netns;

/// The port the shipped configuration listens on.
pub const PORT: u16 = 8081;

/// A running nginx.
#[derive(Debug)]
pub struct Nginx {
    child: Child,
    /// Its access log.
    pub access_log: PathBuf,
    /// Its error log.
    pub error_log: PathBuf,
    /// The cache folder.
    pub cache: PathBuf,
}

impl Nginx {
    /// Starts nginx in `ns` in front of `origin` (`HOST:PORT`), its files under `dir`.
    pub fn start(ns: &Netns, dir: &Path, origin: &str) -> Result<Nginx> {
        let shipped = crate::project().join("docs/nginx-cache.conf");
        let text = std::fs::read_to_string(&shipped)
            .with_context(|| format!("reading {}", shipped.display()))?;
        let cache = dir.join("nginx-cache");
        let tmp = dir.join("nginx-tmp");
        std::fs::create_dir_all(&cache)?;
        std::fs::create_dir_all(&tmp)?;
        let edited = text
            .replace("/var/cache/nginx/ironbake", &cache.display().to_string())
            .replace("server 192.168.1.10:80;", &format!("server {origin};"));
        if edited.matches(&cache.display().to_string()).count() != 1
            || !edited.contains(&format!("server {origin};"))
        {
            bail!(
                "{} no longer has the cache folder and upstream the test replaces",
                shipped.display()
            );
        }
        let snippet = dir.join("ironbake-cache.conf");
        std::fs::write(&snippet, edited)?;
        let (access_log, error_log) = (dir.join("nginx-access.log"), dir.join("nginx-error.log"));
        let main = format!(
            "# Written by the test around the project's docs/nginx-cache.conf.\n\
             daemon off;\nuser root;\npid {pid};\nerror_log {err} info;\n\
             events {{ worker_connections 256; }}\n\
             http {{\n  access_log {acc};\n  client_body_temp_path {t}/body;\n  proxy_temp_path {t}/proxy;\n  \
             fastcgi_temp_path {t}/fastcgi;\n  uwsgi_temp_path {t}/uwsgi;\n  scgi_temp_path {t}/scgi;\n  \
             include {snippet};\n}}\n",
            pid = dir.join("nginx.pid").display(),
            err = error_log.display(),
            acc = access_log.display(),
            t = tmp.display(),
            snippet = snippet.display(),
        );
        let conf = dir.join("nginx.conf");
        std::fs::write(&conf, main)?;
        let out = std::fs::File::create(dir.join("nginx.out"))?;
        let child = ns
            .command("nginx")
            .arg("-c")
            .arg(&conf)
            .stdin(Stdio::null())
            .stdout(out.try_clone()?)
            .stderr(out)
            .spawn()
            .context("starting nginx (apt-get install nginx-light)")?;
        let mut n = Nginx {
            child,
            access_log,
            error_log,
            cache,
        };
        let deadline = Instant::now() + Duration::from_secs(20);
        while !std::fs::read_to_string(dir.join("nginx.pid")).is_ok_and(|p| !p.trim().is_empty()) {
            if let Some(s) = n.child.try_wait()? {
                bail!(
                    "nginx stopped ({s}): {}",
                    std::fs::read_to_string(dir.join("nginx.out")).unwrap_or_default()
                );
            }
            if Instant::now() > deadline {
                bail!("nginx did not start in 20 s");
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        Ok(n)
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        // SIGTERM: the master stops its workers too (SIGKILL would leave them behind).
        let pid = nix::unistd::Pid::from_raw(self.child.id() as i32);
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
        let _ = self.child.wait();
    }
}
