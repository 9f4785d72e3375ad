//! Progress for long steps: a spinner with the stage, its elapsed time and the tool's latest
//! line on a terminal; plain timestamped lines otherwise (CI, logs). Also keeps the time spent
//! in each stage for the build summary.

use std::io::IsTerminal;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressStyle};

/// The progress display of one command run.
#[derive(Debug)]
pub struct Progress {
    tty: bool,
    quiet: bool,
    start: Instant,
    times: Mutex<Vec<(String, Duration)>>,
}

/// One running stage.
#[derive(Debug)]
pub struct Stage<'a> {
    progress: &'a Progress,
    name: String,
    start: Instant,
    bar: Option<ProgressBar>,
}

impl Progress {
    /// A display that draws on a terminal unless `CI` is set, and prints nothing if `quiet`.
    pub fn new(quiet: bool) -> Self {
        let tty = std::io::stderr().is_terminal() && std::env::var_os("CI").is_none();
        Progress {
            tty,
            quiet,
            start: Instant::now(),
            times: Mutex::new(Vec::new()),
        }
    }

    /// Prints a line above any spinner.
    pub fn println(&self, line: &str) {
        if !self.quiet {
            eprintln!("{line}");
        }
    }

    /// Starts a stage.
    pub fn stage(&self, name: &str) -> Stage<'_> {
        let bar = if self.tty && !self.quiet {
            let bar = ProgressBar::new_spinner();
            bar.set_style(
                ProgressStyle::with_template(
                    "{spinner} {prefix:.bold} [{elapsed}] {wide_msg:.dim}",
                )
                .expect("valid template"),
            );
            bar.set_prefix(name.to_string());
            bar.enable_steady_tick(Duration::from_millis(120));
            Some(bar)
        } else {
            self.println(&format!(
                "[{:>6.1}s] {name}",
                self.start.elapsed().as_secs_f64()
            ));
            None
        };
        Stage {
            progress: self,
            name: name.to_string(),
            start: Instant::now(),
            bar,
        }
    }

    /// Each finished stage with its duration, in order.
    pub fn times(&self) -> Vec<(String, Duration)> {
        self.times.lock().expect("times lock").clone()
    }

    /// Time since this display was made.
    pub fn elapsed(&self) -> Duration {
        self.start.elapsed()
    }
}

impl Stage<'_> {
    /// Shows a line of the stage's tool output.
    pub fn line(&self, line: &str) {
        match &self.bar {
            Some(bar) => bar.set_message(line.to_string()),
            None => self.progress.println(&format!("           {line}")),
        }
    }

    /// Ends the stage, recording its time; `what` says what it produced.
    pub fn done(self, what: &str) {
        let took = self.start.elapsed();
        let text = if what.is_empty() {
            format!("{} ({:.1} s)", self.name, took.as_secs_f64())
        } else {
            format!("{}: {what} ({:.1} s)", self.name, took.as_secs_f64())
        };
        match &self.bar {
            Some(bar) => {
                bar.finish_and_clear();
                self.progress.println(&format!("  done  {text}"));
            }
            None => self.progress.println(&format!(
                "[{:>6.1}s] done {text}",
                self.progress.start.elapsed().as_secs_f64()
            )),
        }
        self.progress
            .times
            .lock()
            .expect("times lock")
            .push((self.name.clone(), took));
    }
}

impl Drop for Stage<'_> {
    fn drop(&mut self) {
        if let Some(bar) = &self.bar {
            bar.finish_and_clear();
        }
    }
}
