//! The one place that starts external tools (mmdebstrap, mksquashfs, apt-get, ...).
//!
//! Every command is logged as an exact, copy-pasteable line; its output is streamed into
//! tracing (and into the progress display); a failure becomes an error that quotes the tool's
//! last lines. No shell string is ever built. A tool's path can be replaced for one run with
//! `IRONBAKE_TOOL_<NAME>` (name upper-cased, `-` as `_`), e.g. `IRONBAKE_TOOL_MKSQUASHFS`.

use std::collections::VecDeque;
use std::ffi::{OsStr, OsString};
use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::thread;

use anyhow::{Context, Result, bail};

/// How many of a tool's last output lines an error quotes.
const TAIL_LINES: usize = 25;

/// A callback that sees each output line of a running tool (for progress displays).
pub type LineSink<'a> = &'a (dyn Fn(&str) + Sync);

/// The path to run for `tool`: its override from the environment, or its name.
pub fn tool_path(tool: &str) -> OsString {
    let var = format!(
        "IRONBAKE_TOOL_{}",
        tool.to_ascii_uppercase().replace('-', "_")
    );
    std::env::var_os(var).unwrap_or_else(|| tool.into())
}

/// Is `tool` on the PATH (or overridden)?
pub fn have_tool(tool: &str) -> bool {
    let path = PathBuf::from(tool_path(tool));
    if path.components().count() > 1 {
        return path.is_file();
    }
    std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).any(|d| d.join(&path).is_file()))
        .unwrap_or(false)
}

/// A command line to run, built argument by argument.
#[derive(Debug)]
pub struct Tool {
    name: String,
    args: Vec<OsString>,
    env: Vec<(OsString, Option<OsString>)>,
    dir: Option<PathBuf>,
}

impl Tool {
    /// A new command for the tool `name` (looked up with [`tool_path`]).
    pub fn new(name: &str) -> Self {
        Tool {
            name: name.to_string(),
            args: Vec::new(),
            env: Vec::new(),
            dir: None,
        }
    }

    /// Appends one argument.
    pub fn arg(mut self, arg: impl AsRef<OsStr>) -> Self {
        self.args.push(arg.as_ref().to_owned());
        self
    }

    /// Appends several arguments.
    pub fn args<I, S>(mut self, args: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        self.args
            .extend(args.into_iter().map(|a| a.as_ref().to_owned()));
        self
    }

    /// Sets an environment variable for the tool.
    pub fn env(mut self, key: impl AsRef<OsStr>, value: impl AsRef<OsStr>) -> Self {
        self.env
            .push((key.as_ref().to_owned(), Some(value.as_ref().to_owned())));
        self
    }

    /// Removes an environment variable for the tool.
    pub fn env_remove(mut self, key: impl AsRef<OsStr>) -> Self {
        self.env.push((key.as_ref().to_owned(), None));
        self
    }

    /// Runs the tool in `dir` rather than the current folder.
    pub fn current_dir(mut self, dir: impl AsRef<std::path::Path>) -> Self {
        self.dir = Some(dir.as_ref().to_owned());
        self
    }

    fn command(&self) -> Command {
        let mut cmd = Command::new(tool_path(&self.name));
        cmd.args(&self.args);
        for (k, v) in &self.env {
            match v {
                Some(v) => cmd.env(k, v),
                None => cmd.env_remove(k),
            };
        }
        if let Some(d) = &self.dir {
            cmd.current_dir(d);
        }
        cmd
    }

    /// Runs the tool on this process's own standard input, output and error, for tools
    /// whose output is for the person watching (`cargo test`); fails if it exits non-zero.
    pub fn run_attached(self) -> Result<()> {
        let line = self.display();
        tracing::debug!(target: "exec", "running: {line}");
        let status = self
            .command()
            .status()
            .with_context(|| format!("starting {}: is it installed?", self.name))?;
        if !status.success() {
            bail!("{} failed ({status})\n  command: {line}", self.name);
        }
        Ok(())
    }

    /// The command as one line a person can paste into a shell.
    pub fn display(&self) -> String {
        let mut parts = vec![shell_quote(&tool_path(&self.name))];
        parts.extend(self.args.iter().map(|a| shell_quote(a)));
        parts.join(" ")
    }

    /// Runs the tool to completion, streaming its output (stdout and stderr, merged by line)
    /// to tracing and to `sink`. Fails with the last lines quoted if it exits non-zero.
    pub fn run(self, sink: Option<LineSink<'_>>) -> Result<()> {
        self.run_capture(sink).map(|_| ())
    }

    /// Like [`Tool::run`], and returns what the tool wrote to stdout.
    pub fn run_capture(self, sink: Option<LineSink<'_>>) -> Result<String> {
        let line = self.display();
        tracing::debug!(target: "exec", "running: {line}");
        let mut cmd = self.command();
        cmd.stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = cmd.spawn().with_context(|| {
            format!(
                "starting {}: is it installed? (its Debian package; `cargo xtask setup` in \
                 ironbake's repository installs every tool it uses)",
                self.name
            )
        })?;
        let tail = Arc::new(Mutex::new(VecDeque::with_capacity(TAIL_LINES)));
        let stdout = child.stdout.take().expect("stdout was piped");
        let stderr = child.stderr.take().expect("stderr was piped");
        let name = self.name.clone();
        let captured = thread::scope(|s| {
            let tail_err = Arc::clone(&tail);
            let name_err = name.clone();
            s.spawn(move || {
                for l in BufReader::new(stderr).lines().map_while(Result::ok) {
                    note_line(&name_err, &l, &tail_err, sink);
                }
            });
            let mut captured = String::new();
            for l in BufReader::new(stdout).lines().map_while(Result::ok) {
                note_line(&name, &l, &tail, sink);
                captured.push_str(&l);
                captured.push('\n');
            }
            captured
        });
        let status = child
            .wait()
            .with_context(|| format!("waiting for {}", self.name))?;
        if !status.success() {
            let lines: Vec<String> = tail.lock().expect("tail lock").iter().cloned().collect();
            let quoted = if lines.is_empty() {
                "    (it printed nothing)".to_string()
            } else {
                lines
                    .iter()
                    .map(|l| format!("    {l}"))
                    .collect::<Vec<_>>()
                    .join("\n")
            };
            bail!(
                "{} failed ({status}); its last lines:\n{quoted}\n  command: {line}",
                self.name
            );
        }
        Ok(captured)
    }
}

fn note_line(tool: &str, line: &str, tail: &Mutex<VecDeque<String>>, sink: Option<LineSink<'_>>) {
    tracing::debug!(target: "exec", "{tool}: {line}");
    let mut t = tail.lock().expect("tail lock");
    if t.len() == TAIL_LINES {
        t.pop_front();
    }
    t.push_back(line.to_string());
    drop(t);
    if let Some(sink) = sink {
        sink(line);
    }
}

/// Quotes an argument for display in a POSIX shell (display only; nothing runs a shell).
pub fn shell_quote(arg: &OsStr) -> String {
    let s = arg.to_string_lossy();
    let safe = !s.is_empty()
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_./=:,+@%".contains(c));
    if safe {
        s.into_owned()
    } else {
        format!("'{}'", s.replace('\'', r"'\''"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quoting_is_only_added_where_needed() {
        assert_eq!(
            shell_quote(OsStr::new("--variant=minbase")),
            "--variant=minbase"
        );
        assert_eq!(shell_quote(OsStr::new("a b")), "'a b'");
        assert_eq!(shell_quote(OsStr::new("it's")), r"'it'\''s'");
        assert_eq!(shell_quote(OsStr::new("")), "''");
    }

    #[test]
    fn a_failing_tool_is_quoted_in_the_error() {
        let err = Tool::new("sh")
            .args(["-c", "echo first; echo second >&2; exit 3"])
            .run(None)
            .unwrap_err();
        let msg = format!("{err:#}");
        assert!(msg.contains("sh failed"), "{msg}");
        assert!(
            msg.contains("    first") && msg.contains("    second"),
            "{msg}"
        );
        assert!(msg.contains("exit status: 3"), "{msg}");
    }

    #[test]
    fn stdout_is_captured() {
        let out = Tool::new("sh")
            .args(["-c", "echo hello"])
            .run_capture(None)
            .unwrap();
        assert_eq!(out, "hello\n");
    }
}
