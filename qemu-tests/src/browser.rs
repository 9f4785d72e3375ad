//! A real browser for the fleet page: Debian's headless Chromium, driven over WebDriver by
//! Debian's chromedriver, both inside a LAN's namespace (the page is fetched from the boot
//! server's LAN address, as an admin's browser would). The WebDriver client (fantoccini) runs
//! on a thread of its own that joined the namespace, so every socket it opens is there; tests
//! hand it jobs with [`Browser::run`]. Killed on drop.

use std::future::Future;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::process::{Child, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};

use crate::netns::Netns;

/// The WebDriver client a job gets.
pub use fantoccini::Client;

type Job = Box<dyn FnOnce(Client) -> Pin<Box<dyn Future<Output = ()>>> + Send>;

/// A headless Chromium with its chromedriver.
pub struct Browser {
    jobs: Option<mpsc::Sender<Job>>,
    thread: Option<std::thread::JoinHandle<()>>,
    driver: Child,
    /// chromedriver's log (with Chromium's console messages).
    pub log: PathBuf,
}

impl std::fmt::Debug for Browser {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Browser").field("log", &self.log).finish()
    }
}

/// What Chromium is started with: headless, as root (no sandbox), and none of its own
/// traffic (updates, sync, field trials), so it asks for nothing but the page.
const CHROMIUM_ARGS: [&str; 11] = [
    "--headless=new",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-dev-shm-usage",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-default-apps",
    "--no-first-run",
    "--no-default-browser-check",
    "--window-size=1280,1000",
];

impl Browser {
    /// Starts chromedriver on `127.0.0.1:port` of `ns` and opens one Chromium session (its
    /// profile under `dir`, its window `width` wide).
    pub fn start(ns: &Netns, dir: &Path, port: u16, width: u32) -> Result<Browser> {
        let log = dir.join(format!("chromedriver-{port}.log"));
        let driver = ns
            .command("chromedriver")
            .arg(format!("--port={port}"))
            .arg(format!("--log-path={}", log.display()))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("starting chromedriver (apt-get install chromium-driver)")?;
        let profile = dir.join(format!("chromium-profile-{port}"));
        let mut args: Vec<String> = CHROMIUM_ARGS.iter().map(|s| s.to_string()).collect();
        args.retain(|a| !a.starts_with("--window-size"));
        args.push(format!("--window-size={width},1000"));
        args.push(format!("--user-data-dir={}", profile.display()));
        let caps: serde_json::Map<String, serde_json::Value> =
            serde_json::from_value(serde_json::json!({
                "browserName": "chrome",
                // A confirm() the page asks is answered by the test itself.
                "unhandledPromptBehavior": "ignore",
                "goog:chromeOptions": { "binary": "/usr/bin/chromium", "args": args },
            }))?;
        let (jobs, rx) = mpsc::channel::<Job>();
        let (ready_tx, ready_rx) = mpsc::channel::<Result<()>>();
        let ns_file = format!("/run/netns/{}", ns.name());
        let thread = std::thread::spawn(move || {
            let started = (|| -> Result<(tokio::runtime::Runtime, Client)> {
                let f = std::fs::File::open(&ns_file)?;
                nix::sched::setns(f, nix::sched::CloneFlags::CLONE_NEWNET)?;
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()?;
                let client = rt.block_on(connect(port, caps))?;
                Ok((rt, client))
            })();
            let (rt, client) = match started {
                Ok(s) => {
                    let _ = ready_tx.send(Ok(()));
                    s
                }
                Err(e) => {
                    let _ = ready_tx.send(Err(e));
                    return;
                }
            };
            for job in rx {
                rt.block_on(job(client.clone()));
            }
            let _ = rt.block_on(client.close());
        });
        let mut b = Browser {
            jobs: Some(jobs),
            thread: Some(thread),
            driver,
            log,
        };
        match ready_rx.recv() {
            Ok(Ok(())) => Ok(b),
            Ok(Err(e)) => {
                let _ = b.driver.kill();
                Err(e.context(format!(
                    "opening a Chromium session (see {})",
                    b.log.display()
                )))
            }
            Err(_) => bail!("the browser's thread ended before its session opened"),
        }
    }

    /// Runs `job` with the session, on the browser's thread, and returns what it returns.
    pub fn run<T: Send + 'static, F: Future<Output = T> + 'static>(
        &self,
        job: impl FnOnce(Client) -> F + Send + 'static,
    ) -> Result<T> {
        let (tx, rx) = mpsc::channel();
        let boxed: Job = Box::new(move |c| {
            Box::pin(async move {
                let _ = tx.send(job(c).await);
            })
        });
        self.jobs
            .as_ref()
            .expect("open until drop")
            .send(boxed)
            .map_err(|_| anyhow!("the browser's thread is gone"))?;
        rx.recv().map_err(|_| anyhow!("the browser's job panicked"))
    }
}

/// Connects to the chromedriver at `port`, waiting for it to listen (up to 30 s).
async fn connect(port: u16, caps: serde_json::Map<String, serde_json::Value>) -> Result<Client> {
    let url = format!("http://127.0.0.1:{port}");
    let end = Instant::now() + Duration::from_secs(30);
    loop {
        let connector = hyper_util::client::legacy::connect::HttpConnector::new();
        match fantoccini::ClientBuilder::new(connector)
            .capabilities(caps.clone())
            .connect(&url)
            .await
        {
            Ok(c) => return Ok(c),
            Err(e) if Instant::now() < end => {
                tracing::debug!("chromedriver not there yet: {e}");
                tokio::time::sleep(Duration::from_millis(300)).await;
            }
            Err(e) => return Err(anyhow!("chromedriver at {url}: {e}")),
        }
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        drop(self.jobs.take());
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        let _ = self.driver.kill();
        let _ = self.driver.wait();
    }
}
