//! A small HTTP server for the VM tests, inside a test's network namespace: serves a folder
//! with HEAD and single byte ranges, records every request and every ready report, and can
//! break a transfer on purpose. A test double, not the product's server.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read, Seek, SeekFrom, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use anyhow::{Context, Result};

use crate::netns::Netns;

/// One request as the server saw it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    /// Method.
    pub method: String,
    /// Path.
    pub path: String,
    /// The Range header, if any.
    pub range: Option<String>,
    /// The body (POSTs).
    pub body: String,
}

/// What the server does on purpose.
#[derive(Debug, Clone, Default)]
pub struct Behaviour {
    /// Cut the first full GET of this path after this many bytes.
    pub break_first: Option<(String, u64)>,
}

#[derive(Debug, Default)]
struct State {
    requests: Vec<Request>,
    broken: bool,
}

/// A running server; it stops with the test process.
#[derive(Debug, Clone)]
pub struct Httpd {
    /// Where it listens, inside the namespace.
    pub addr: SocketAddr,
    state: Arc<Mutex<State>>,
}

impl Httpd {
    /// Serves `root` on `port` of every address inside `ns`.
    pub fn start(ns: &Netns, port: u16, root: &Path, behaviour: Behaviour) -> Result<Httpd> {
        let state = Arc::new(Mutex::new(State::default()));
        let (tx, rx) = std::sync::mpsc::channel();
        let ns_name = ns.name().to_string();
        let root = root.to_owned();
        let st = Arc::clone(&state);
        // The listener is made on a thread that has joined the namespace.
        let ns_file = format!("/run/netns/{ns_name}");
        std::thread::spawn(move || {
            let bind = || -> Result<TcpListener> {
                let f = std::fs::File::open(&ns_file).context("opening the namespace")?;
                nix::sched::setns(f, nix::sched::CloneFlags::CLONE_NEWNET).context("setns")?;
                Ok(TcpListener::bind(("0.0.0.0", port))?)
            };
            let listener = match bind() {
                Ok(l) => {
                    let _ = tx.send(Ok(l.local_addr().expect("bound")));
                    l
                }
                Err(e) => {
                    let _ = tx.send(Err(e));
                    return;
                }
            };
            for conn in listener.incoming().flatten() {
                let root = root.clone();
                let st = Arc::clone(&st);
                let behaviour = behaviour.clone();
                std::thread::spawn(move || {
                    let _ = serve(conn, &root, &st, &behaviour);
                });
            }
        });
        let addr = rx.recv().context("the server thread died")??;
        Ok(Httpd { addr, state })
    }

    /// Every request so far.
    pub fn requests(&self) -> Vec<Request> {
        self.state.lock().expect("lock").requests.clone()
    }

    /// Waits until a request satisfies `pred` (the ready report is sent after the console
    /// line, so tests wait for it rather than look once).
    pub fn wait_for(
        &self,
        what: &str,
        deadline: std::time::Duration,
        pred: impl Fn(&Request) -> bool,
    ) -> Result<Request> {
        let start = std::time::Instant::now();
        loop {
            if let Some(r) = self.requests().into_iter().find(|r| pred(r)) {
                return Ok(r);
            }
            if start.elapsed() > deadline {
                anyhow::bail!(
                    "no {what} within {} s; requests: {:?}",
                    deadline.as_secs(),
                    self.requests()
                );
            }
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
    }
}

fn serve(conn: TcpStream, root: &Path, st: &Mutex<State>, behaviour: &Behaviour) -> Result<()> {
    let mut reader = BufReader::new(conn.try_clone()?);
    let mut w = conn;
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line)? == 0 {
            return Ok(());
        }
        let mut parts = line.split_whitespace();
        let (method, path) = (
            parts.next().unwrap_or("").to_string(),
            parts.next().unwrap_or("").to_string(),
        );
        let mut headers = BTreeMap::new();
        loop {
            let mut h = String::new();
            reader.read_line(&mut h)?;
            let h = h.trim_end();
            if h.is_empty() {
                break;
            }
            if let Some((k, v)) = h.split_once(':') {
                headers.insert(k.trim().to_ascii_lowercase(), v.trim().to_string());
            }
        }
        let len: usize = headers
            .get("content-length")
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
        let mut body = vec![0u8; len];
        reader.read_exact(&mut body)?;
        let req = Request {
            method: method.clone(),
            path: path.clone(),
            range: headers.get("range").cloned(),
            body: String::from_utf8_lossy(&body).into(),
        };
        st.lock().expect("lock").requests.push(req.clone());
        if method == "POST" {
            w.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")?;
            continue;
        }
        let file = resolve(root, &path);
        let Some(file) = file.filter(|f| f.is_file()) else {
            w.write_all(b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n")?;
            continue;
        };
        let size = std::fs::metadata(&file)?.len();
        let start: u64 = req
            .range
            .as_deref()
            .and_then(|r| r.strip_prefix("bytes="))
            .and_then(|r| r.strip_suffix('-'))
            .and_then(|n| n.parse().ok())
            .unwrap_or(0);
        let head = if req.range.is_some() {
            format!(
                "HTTP/1.1 206 Partial Content\r\nContent-Length: {}\r\nContent-Range: bytes {start}-{}/{size}\r\nAccept-Ranges: bytes\r\n\r\n",
                size - start,
                size.saturating_sub(1)
            )
        } else {
            format!("HTTP/1.1 200 OK\r\nContent-Length: {size}\r\nAccept-Ranges: bytes\r\n\r\n")
        };
        w.write_all(head.as_bytes())?;
        if method == "HEAD" {
            continue;
        }
        let mut f = std::fs::File::open(&file)?;
        f.seek(SeekFrom::Start(start))?;
        let cut = match &behaviour.break_first {
            Some((p, n)) if *p == path && req.range.is_none() => {
                let mut s = st.lock().expect("lock");
                if s.broken {
                    None
                } else {
                    s.broken = true;
                    Some(*n)
                }
            }
            _ => None,
        };
        match cut {
            Some(n) => {
                std::io::copy(&mut f.take(n), &mut w)?;
                return Ok(()); // close mid-transfer
            }
            None => {
                std::io::copy(&mut f, &mut w)?;
            }
        }
    }
}

fn resolve(root: &Path, path: &str) -> Option<PathBuf> {
    let rel = path.split('?').next()?.trim_start_matches('/');
    if rel.split('/').any(|c| c == ".." || c.is_empty()) {
        return None;
    }
    Some(root.join(rel))
}
