//! What a benchmark run found: a record in Markdown (the history entry of BENCHMARKS.md) and
//! its figures, each with its goal, which `cargo xtask bench` writes into the table of
//! current figures.

use std::process::Command;

/// One figure of a run.
#[derive(Debug, Clone, PartialEq)]
pub struct Figure {
    /// Its name, stable from run to run (the row it replaces is found by it).
    pub name: String,
    /// The goal in words (`at most 1.15x`), or `-`.
    pub goal: String,
    /// The value as people read it (`0.90x`, `25.0 s`).
    pub value: String,
    /// Whether the goal is met; `None` without a goal.
    pub met: Option<bool>,
}

impl Figure {
    /// A figure with a goal.
    pub fn goal(name: impl Into<String>, goal: &str, value: String, met: bool) -> Figure {
        Figure {
            name: name.into(),
            goal: goal.into(),
            value,
            met: Some(met),
        }
    }

    /// A figure without a goal.
    pub fn info(name: impl Into<String>, value: String) -> Figure {
        Figure {
            name: name.into(),
            goal: "-".into(),
            value,
            met: None,
        }
    }
}

/// A benchmark run's findings.
#[derive(Debug, Clone)]
pub struct Report {
    /// The benchmark: `build`, `initramfs`, `serve`, `boot`, `disk`.
    pub bench: &'static str,
    /// The date of the run (`YYYY-MM-DD`).
    pub date: String,
    /// The machine, for people: cores, CPU model, memory.
    pub machine: String,
    /// The history entry: a `### BENCH, DATE (...)` heading and its tables.
    pub markdown: String,
    /// The figures with their goals.
    pub figures: Vec<Figure>,
    /// Why the run failed, when it did after measuring (it is recorded all the same).
    pub failed: Option<String>,
}

impl Report {
    /// A report of `bench` run today on this machine.
    pub fn new(bench: &'static str, markdown: String, figures: Vec<Figure>) -> Report {
        Report {
            bench,
            date: today(),
            machine: machine(),
            markdown,
            figures,
            failed: None,
        }
    }
}

/// Today's date (UTC) as `YYYY-MM-DD`.
pub fn today() -> String {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let (y, m, d) = ironbake::date::civil_from_days((secs / 86400) as i64);
    format!("{y:04}-{m:02}-{d:02}")
}

/// The machine, for benchmark records: cores, CPU model, memory.
pub fn machine() -> String {
    let cpus = std::thread::available_parallelism().map_or(0, |n| n.get());
    let mem = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| {
            m.lines()
                .next()
                .and_then(|l| l.split_whitespace().nth(1)?.parse::<u64>().ok())
        })
        .map_or(0, |kb| kb / 1024 / 1024);
    let model = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|c| {
            c.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split_once(':'))
                .map(|(_, v)| v.trim().to_string())
        })
        .unwrap_or_default();
    format!("{cpus} cores ({model}), {mem} GiB")
}

/// QEMU's version as it reports it.
pub fn qemu_version() -> String {
    Command::new("qemu-system-x86_64")
        .arg("--version")
        .output()
        .ok()
        .and_then(|o| {
            String::from_utf8_lossy(&o.stdout)
                .lines()
                .next()
                .map(|l| l.trim_start_matches("QEMU emulator version ").to_string())
        })
        .unwrap_or_default()
}

/// The median of `v` (sorted in place); `v` must not be empty.
pub fn median(v: &mut [f64]) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).expect("no NaN"));
    v[v.len() / 2]
}

/// A two-column `| figure | value |` table of `rows`, appended to `md`.
pub fn figure_table(md: &mut String, rows: &[(String, String)]) {
    use std::fmt::Write as _;
    let _ = writeln!(md, "| figure | value |");
    let _ = writeln!(md, "| --- | ---: |");
    for (name, value) in rows {
        let _ = writeln!(md, "| {name} | {value} |");
    }
}
