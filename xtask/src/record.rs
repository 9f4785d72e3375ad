//! Recording a benchmark run in BENCHMARKS.md: the run's figures replace their rows in the
//! table of current figures (between two marker lines), and the run's record goes at the end
//! of its benchmark's `## NAME` section, after the earlier ones. The file is rewritten by
//! rename, so a failed write leaves it as it was.

use std::path::Path;

use anyhow::{Context, Result, bail};
use qemu_tests::report::Report;

/// The line before the table of current figures.
const BEGIN: &str = "<!-- current figures: rows replaced by cargo xtask bench -->";
/// The line after it.
const END: &str = "<!-- end of current figures -->";
/// The table's header and rule.
const HEADER: &str = "| benchmark | figure | goal | latest | met | machine | date |\n\
                      | --- | --- | --- | ---: | --- | --- | --- |\n";

/// The benchmarks in the order their sections and rows appear.
const ORDER: [&str; 8] = [
    "build",
    "initramfs",
    "serve",
    "boot",
    "disk",
    "install",
    "rollout",
    "page",
];

/// Records `report` in the BENCHMARKS.md at `path`.
pub fn write(path: &Path, report: &Report) -> Result<()> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let new = update(&text, report).with_context(|| format!("updating {}", path.display()))?;
    let tmp = path.with_extension("md.new");
    std::fs::write(&tmp, new).with_context(|| format!("writing {}", tmp.display()))?;
    std::fs::rename(&tmp, path).with_context(|| format!("replacing {}", path.display()))
}

/// One row of the table: benchmark, figure, and the other cells.
struct Row {
    bench: String,
    figure: String,
    line: String,
}

fn parse_rows(table: &str) -> Vec<Row> {
    table
        .lines()
        .filter(|l| {
            l.starts_with("| ") && !l.starts_with("| benchmark |") && !l.starts_with("| ---")
        })
        .map(|l| {
            let cells: Vec<&str> = l.split(" | ").collect();
            Row {
                bench: cells[0].trim_start_matches("| ").to_string(),
                figure: cells.get(1).unwrap_or(&"").to_string(),
                line: l.to_string(),
            }
        })
        .collect()
}

fn rank(bench: &str) -> usize {
    ORDER
        .iter()
        .position(|b| *b == bench)
        .unwrap_or(ORDER.len())
}

/// `text` (BENCHMARKS.md) with `report` recorded.
pub fn update(text: &str, report: &Report) -> Result<String> {
    let (Some(b), Some(e)) = (text.find(BEGIN), text.find(END)) else {
        bail!("no table of current figures (the lines {BEGIN:?} and {END:?})");
    };
    if e < b {
        bail!("the end of the table of current figures comes before its start");
    }
    let table_start = b + BEGIN.len() + 1;
    let mut rows = parse_rows(&text[table_start..e]);
    for f in &report.figures {
        let met = match f.met {
            Some(true) => "yes",
            Some(false) => "no",
            None => "-",
        };
        let line = format!(
            "| {} | {} | {} | {} | {met} | {} | {} |",
            report.bench, f.name, f.goal, f.value, report.machine, report.date
        );
        let row = Row {
            bench: report.bench.to_string(),
            figure: f.name.clone(),
            line,
        };
        match rows
            .iter_mut()
            .find(|r| r.bench == row.bench && r.figure == row.figure)
        {
            Some(old) => *old = row,
            None => {
                // A new figure goes after the last row of its benchmark, else by benchmark.
                let at = rows
                    .iter()
                    .rposition(|r| r.bench == row.bench)
                    .map(|i| i + 1)
                    .unwrap_or_else(|| {
                        rows.iter()
                            .position(|r| rank(&r.bench) > rank(&row.bench))
                            .unwrap_or(rows.len())
                    });
                rows.insert(at, row);
            }
        }
    }
    let mut out = String::with_capacity(text.len() + report.markdown.len() + 200);
    out.push_str(&text[..table_start]);
    out.push_str(HEADER);
    for r in &rows {
        out.push_str(&r.line);
        out.push('\n');
    }
    let rest = &text[e..];
    Ok(out + &with_record(rest, report))
}

/// `text` (the part after the table) with the run's record at the end of its section.
fn with_record(text: &str, report: &Report) -> String {
    let heading = format!("\n## {}\n", report.bench);
    let record = format!("\n{}", report.markdown.trim_end());
    match text.find(&heading) {
        Some(at) => {
            let body = at + heading.len();
            let end = text[body..].find("\n## ").map_or(text.len(), |i| body + i);
            let before = text[..end].trim_end();
            format!("{before}\n{record}\n{}", &text[end..])
        }
        None => format!("{}\n{heading}{record}\n", text.trim_end()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use qemu_tests::report::Figure;

    fn file() -> String {
        format!(
            "# Benchmarks\n\nIntro.\n\n## Current figures\n\n{BEGIN}\n{HEADER}\
             | build | ci-node: cold build / anchor | at most 1.15x | 0.90x | yes | m | 2026-11-23 |\n\
             | boot | power-on to ready, ci-node over PXE | under 45 s | 33.8 s | yes | m | 2026-11-23 |\n\
             {END}\n\n## build\n\nWhat it is.\n\n### build, 2026-11-23 (`x`)\n\nold run\n\n\
             ## boot\n\nWhat boot is.\n\n### boot, 2026-11-23 (`y`)\n\nold boot\n"
        )
    }

    fn report(bench: &'static str, figures: Vec<Figure>) -> Report {
        Report {
            bench,
            date: "2026-12-01".into(),
            machine: "2 cores".into(),
            markdown: format!("### {bench}, 2026-12-01 (`cargo xtask bench {bench}`)\n\nnew run\n"),
            figures,
            failed: None,
        }
    }

    #[test]
    fn a_run_replaces_its_rows_and_joins_its_history() {
        let r = report(
            "build",
            vec![
                Figure::goal(
                    "ci-node: cold build / anchor",
                    "at most 1.15x",
                    "1.20x".into(),
                    false,
                ),
                Figure::info("ci-node: cold build", "42.0 s".into()),
            ],
        );
        let new = update(&file(), &r).unwrap();
        assert!(new.contains(
            "| build | ci-node: cold build / anchor | at most 1.15x | 1.20x | no | 2 cores | 2026-12-01 |\n\
             | build | ci-node: cold build | - | 42.0 s | - | 2 cores | 2026-12-01 |\n\
             | boot | power-on to ready, ci-node over PXE |"
        ), "{new}");
        assert!(!new.contains("0.90x"), "the old row is replaced");
        let old = new.find("old run").unwrap();
        let run = new.find("new run").unwrap();
        let boot = new.find("## boot").unwrap();
        assert!(
            old < run && run < boot,
            "after the earlier runs, in its own section:\n{new}"
        );
        assert!(new.contains("33.8 s"), "other benchmarks' rows stay");
        let twice = update(&new, &r).unwrap();
        assert_eq!(
            twice.matches("| ci-node: cold build |").count(),
            1,
            "no duplicate rows"
        );
        let disk = update(
            &file(),
            &report("disk", vec![Figure::info("x", "1".into())]),
        )
        .unwrap();
        assert!(
            disk.trim_end().ends_with("new run"),
            "a new section at the end:\n{disk}"
        );
        assert!(disk.contains("| boot | power-on to ready, ci-node over PXE | under 45 s | 33.8 s | yes | m | 2026-11-23 |\n| disk | x |"));
        assert!(
            update("# Benchmarks\n", &r).is_err(),
            "no table: an error, not a guess"
        );
    }

    /// The repository's BENCHMARKS.md has the table the benches write to.
    #[test]
    fn the_repositorys_benchmarks_file_has_the_table() {
        let root = ironbake::project::discover_here(None).unwrap();
        let text = std::fs::read_to_string(root.join("BENCHMARKS.md")).unwrap();
        let r = report("boot", vec![]);
        let new = update(&text, &r).unwrap();
        assert!(new.len() > text.len());
        for b in ORDER {
            assert!(text.contains(&format!("\n## {b}\n")), "a section for {b}");
        }
    }
}
