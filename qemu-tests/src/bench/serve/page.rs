//! `cargo xtask bench page`: what the fleet page costs the boot server. The size it adds to
//! the `netboot` binary (a release build with the default `page` feature against one built
//! without it, both made by the command), and the server's peak memory during the boot storm
//! of `bench serve` with the page open in [`PAGES`] headless Chromium browsers (each holding
//! its event stream, rendering every update), against the same storm without them, in the
//! same run. The inventory lists [`INVENTORY_NODES`] nodes, so each update renders a full
//! table.

use std::fmt::Write as _;
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};

use super::storm::{NODES, Storm};
use super::{Bench, SERVER, SOURCES, setup};
use crate::browser::Browser;
use crate::report::{Figure, Report, machine};

/// How many browsers hold the page open during the storm.
pub const PAGES: usize = 10;
/// How many nodes the inventory lists (the rows of the page).
pub const INVENTORY_NODES: usize = 100;

/// Opens the fleet page in `n` browsers in the clients' namespace and waits until each has
/// its live stream (the page's link marker says `live`).
pub(super) fn open(b: &Bench, n: usize) -> Result<Vec<Browser>> {
    let mut out = Vec::new();
    for i in 0..n {
        let browser = Browser::start(&b.c, &b.work, 9600 + i as u16, 1280)?;
        let url = format!("http://{SERVER}:8080/");
        browser
            .run(move |c| async move {
                c.goto(&url).await?;
                let end = Instant::now() + Duration::from_secs(30);
                loop {
                    if link_class(&c).await?.contains("live") {
                        return anyhow::Ok(());
                    }
                    anyhow::ensure!(Instant::now() < end, "the page never went live");
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
            })?
            .with_context(|| format!("browser {i}"))?;
        out.push(browser);
    }
    if n > 0 {
        eprintln!("the fleet page is open and live in {n} browsers");
    }
    Ok(out)
}

/// The class of the page's live-link marker (`link live` while its stream is open).
async fn link_class(c: &fantoccini::Client) -> Result<String> {
    Ok(c.find(fantoccini::Locator::Css("#link"))
        .await?
        .attr("class")
        .await?
        .unwrap_or_default())
}

/// How many of `browsers` still show a live page with every inventory row.
pub(super) fn still_live(browsers: &[Browser]) -> usize {
    browsers
        .iter()
        .filter(|b| {
            b.run(|c| async move {
                let rows = c
                    .find_all(fantoccini::Locator::Css("table.nodes tbody tr"))
                    .await?
                    .len();
                let live = link_class(&c).await?.contains("live");
                anyhow::Ok(rows == INVENTORY_NODES && live)
            })
            .ok()
            .and_then(Result::ok)
            .unwrap_or(false)
        })
        .count()
}

fn write_inventory(b: &Bench) -> Result<()> {
    let mut inv = String::from("# The page bench's nodes: placeholders that never boot.\n");
    for i in 0..INVENTORY_NODES {
        let _ = write!(
            inv,
            "[nodes.node{i:03}]\nmac = \"02:00:00:00:{:02x}:{:02x}\"\nrecipe = \"ci-node\"\n",
            i / 256,
            i % 256
        );
    }
    std::fs::write(b.work.join("inventory.toml"), inv)?;
    Ok(())
}

/// Runs the benchmark: `with` and `without` are release builds of `netboot` with and without
/// the page.
pub fn run(project: &Path, with: &Path, without: &Path) -> Result<Report> {
    let size = |p: &Path| -> Result<u64> {
        Ok(std::fs::metadata(p)
            .with_context(|| format!("{}", p.display()))?
            .len())
    };
    let (with_b, without_b) = (size(with)?, size(without)?);
    // Stripped copies too (symbols are a part of what the page adds).
    let stripped = |p: &Path, name: &str| -> Result<u64> {
        let copy = project.join("target").join(name);
        std::fs::copy(p, &copy)?;
        let st = std::process::Command::new("strip")
            .arg(&copy)
            .status()
            .context("running strip (binutils)")?;
        anyhow::ensure!(st.success(), "strip {} failed", copy.display());
        size(&copy)
    };
    let (with_s, without_s) = (
        stripped(with, "netboot-page-stripped")?,
        stripped(without, "netboot-nopage-stripped")?,
    );
    let added_stripped_kb = (with_s as f64 - without_s as f64) / 1000.0;
    let assets = netboot_assets_bytes(project)?;
    let b = setup(project, "bench-page")?;
    write_inventory(&b)?;
    let (alone, _) = super::storm::run_with(&b, 0, "netboot-storm-alone.log", None)?;
    let (paged, live) = super::storm::run_with(&b, PAGES, "netboot-storm-pages.log", None)?;
    let added_kb = (with_b as f64 - without_b as f64) / 1000.0;
    let mut md = String::new();
    let _ = writeln!(
        md,
        "### page, {} (`cargo xtask bench page`)\n\nMachine: {}. `netboot` release builds \
         with the default `page` feature and with `--no-default-features`. The boot storm of \
         `bench serve` ({NODES} simulated nodes from {SOURCES} addresses over the 1 Gbit/s \
         link), run twice against a fresh server whose inventory lists {INVENTORY_NODES} \
         nodes: alone, then with the fleet page open in {PAGES} headless Chromium browsers \
         (Debian's, over WebDriver), each holding its event stream.\n",
        crate::report::today(),
        machine()
    );
    let rows = vec![
        (
            "netboot binary with the page / without".to_string(),
            format!("{with_b} / {without_b} bytes"),
        ),
        (
            "size the page adds (goal: under 200 kB)".into(),
            format!("{added_kb:.1} kB (its templates, CSS and script: {assets} bytes)"),
        ),
        (
            "the same, both binaries stripped".into(),
            format!("{added_stripped_kb:.1} kB ({with_s} / {without_s} bytes)"),
        ),
        (
            "storm alone: nodes finished, wall time, server peak memory".into(),
            storm_words(&alone),
        ),
        (
            format!("storm with the page in {PAGES} browsers: the same"),
            storm_words(&paged),
        ),
        (
            "pages still live with every row after the storm".into(),
            format!("{live}/{PAGES}"),
        ),
        (
            "peak memory with the pages / alone".into(),
            format!("{:.2}x", paged.peak_mb / alone.peak_mb),
        ),
    ];
    crate::report::figure_table(&mut md, &rows);
    let figures = vec![
        Figure::goal(
            "page: size added to netboot",
            "under 200 kB",
            format!("{added_kb:.1} kB"),
            added_kb < 200.0,
        ),
        Figure::goal(
            "page: storm peak memory with 10 browsers",
            "under 50 MB",
            format!("{:.1} MB", paged.peak_mb),
            paged.peak_mb < 50.0,
        ),
        Figure::info(
            "page: size added to netboot, stripped",
            format!("{added_stripped_kb:.1} kB"),
        ),
        Figure::info(
            "page: storm peak memory without browsers",
            format!("{:.1} MB", alone.peak_mb),
        ),
    ];
    let mut report = Report::new("page", md, figures);
    if paged.finished != NODES || alone.finished != NODES || live != PAGES {
        report.failed = Some(format!(
            "storm nodes finished: {} alone, {} with pages; pages live: {live}/{PAGES}",
            alone.finished, paged.finished
        ));
    }
    Ok(report)
}

fn storm_words(s: &Storm) -> String {
    format!(
        "{}/{NODES}, {:.1} s, {:.1} MB",
        s.finished, s.wall_s, s.peak_mb
    )
}

/// Bytes of the page's own files, as compiled into the binary.
fn netboot_assets_bytes(project: &Path) -> Result<u64> {
    let dir = project.join("netboot/src/page/assets");
    let mut n = 0;
    for e in std::fs::read_dir(&dir).with_context(|| format!("{}", dir.display()))? {
        n += e?.metadata()?.len();
    }
    Ok(n)
}
