//! Waiting on a serial console log: lines are matched as QEMU writes them, with a named
//! deadline; on failure the error carries the last lines.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Result, bail};

/// The fingerprint a node printed for its SSH host key (`ironbake: NODE ssh host key
/// SHA256:...`), the last one in `text`.
pub fn host_key_line(text: &str) -> Option<String> {
    text.lines().rev().find_map(|l| {
        l.split_once(" ssh host key ")
            .map(|(_, f)| f.trim().to_string())
    })
}

/// The `SHA256:...` fingerprint of an OpenSSH public key line, as `ssh-keygen -l` prints it.
pub fn fingerprint(public: &str) -> String {
    ssh_key::PublicKey::from_openssh(public.trim())
        .expect("an OpenSSH public key")
        .fingerprint(ssh_key::HashAlg::Sha256)
        .to_string()
}

/// How often the log is read again while waiting.
const POLL: Duration = Duration::from_millis(100);

/// A console log being written by a VM.
#[derive(Debug, Clone)]
pub struct Console {
    path: PathBuf,
}

/// The lines of a console log; `\r` also ends a line (countdowns redraw with it).
pub fn lines(text: &str) -> Vec<&str> {
    text.split(['\n', '\r'])
        .map(str::trim_end)
        .filter(|l| !l.is_empty())
        .collect()
}

/// The last `n` lines of `text` (console lines, as [`lines`] splits them), for messages.
pub fn last_lines(text: &str, n: usize) -> String {
    let l = lines(text);
    l[l.len().saturating_sub(n)..].join("\n")
}

/// Polls `f` until it gives a value or `deadline` passes.
pub fn wait_until<T>(deadline: Duration, mut f: impl FnMut() -> Option<T>) -> Option<T> {
    let end = Instant::now() + deadline;
    loop {
        if let Some(v) = f() {
            return Some(v);
        }
        if Instant::now() >= end {
            return None;
        }
        std::thread::sleep(POLL);
    }
}

impl Console {
    /// The log at `path`.
    pub fn new(path: &Path) -> Self {
        Console {
            path: path.to_owned(),
        }
    }

    /// Everything logged so far.
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&std::fs::read(&self.path).unwrap_or_default()).into_owned()
    }

    /// How many lines (as [`lines`] counts them, and `skip` means) are logged so far.
    pub fn line_count(&self) -> usize {
        lines(&self.text()).len()
    }

    /// The last `n` lines.
    pub fn tail(&self, n: usize) -> String {
        last_lines(&self.text(), n)
    }

    /// Waits until a line (after the first `skip` lines) satisfies `pred`, or `alive` says the
    /// VM is gone, or `deadline` passes. Returns the line and its index.
    pub fn wait_for(
        &self,
        what: &str,
        deadline: Duration,
        skip: usize,
        mut alive: impl FnMut() -> bool,
        pred: impl Fn(&str) -> bool,
    ) -> Result<(String, usize)> {
        let start = Instant::now();
        loop {
            let text = self.text();
            if let Some((i, l)) = lines(&text)
                .iter()
                .enumerate()
                .skip(skip)
                .find(|(_, l)| pred(l))
            {
                return Ok((l.to_string(), i));
            }
            if !alive() {
                bail!(
                    "the VM stopped before {what}; last console lines:\n{}",
                    self.tail(40)
                );
            }
            if start.elapsed() > deadline {
                bail!(
                    "no {what} within {} s; last console lines:\n{}",
                    deadline.as_secs(),
                    self.tail(40)
                );
            }
            std::thread::sleep(POLL);
        }
    }
}
