//! The serve benchmark's record: its tables and its figures.

use std::fmt::Write as _;

use super::slow::{ATTEMPTS, Slow};
use super::storm::{NODES, Storm, node_bytes};
use super::{Bench, HttpRows, RUNS, SOURCES, TFTP_ROUNDS, TftpRows, links, pkg_version};
use crate::report::{Figure, Report, machine};

/// The record of one run.
pub fn report(
    b: &Bench,
    tftp: &TftpRows,
    http: &HttpRows,
    storms: (&Storm, &Storm),
    slow: &Slow,
) -> Report {
    let links = links(b);
    let mut md = String::new();
    let _ = writeln!(
        md,
        "### serve, {} (`cargo xtask bench serve`)\n",
        crate::report::today()
    );
    let _ = writeln!(
        md,
        "Machine: {}. `netboot serve` release build; anchors in the same run: tftpd-hpa {}, \
         dnsmasq {}, nginx {}; clients atftp and curl; medians of {RUNS} (TFTP: of {TFTP_ROUNDS} rounds, the three \
         servers side by side, each round fetching from each in turn). Links: {} and {}.\n",
        machine(),
        pkg_version("tftpd-hpa"),
        pkg_version("dnsmasq-base"),
        pkg_version("nginx-light"),
        links[0].0,
        links[1].0
    );
    let mut figures = tftp_section(&mut md, tftp, &links);
    figures.extend(http_section(&mut md, http, &links));
    figures.extend(storm_section(&mut md, storms.0));
    figures.extend(pi_section(&mut md, storms.1));
    figures.extend(slow_section(&mut md, slow));
    Report::new("serve", md, figures)
}

fn tftp_section(
    md: &mut String,
    rows: &TftpRows,
    links: &[(&str, &crate::netns::Netns); 2],
) -> Vec<Figure> {
    let _ = writeln!(
        md,
        "TFTP, 4 MB file, blksize 1468 (MB/s; window: RFC 7440 windowsize the client asked \
         for):\n"
    );
    let _ = writeln!(md, "| server | window | {} | {} |", links[0].0, links[1].0);
    let _ = writeln!(md, "| --- | ---: | ---: | ---: |");
    for (name, w, v) in rows {
        let window = w.map_or("none".into(), |n| n.to_string());
        let _ = writeln!(md, "| {name} | {window} | {:.2} | {:.2} |", v[0], v[1]);
    }
    let find = |n: &str, w: Option<u16>| {
        rows.iter()
            .find(|r| r.0 == n && r.1 == w)
            .map(|r| r.2.clone())
            .unwrap_or_default()
    };
    let ours16 = find("ironbake netboot", Some(16));
    let ours1 = find("ironbake netboot", None);
    let _ = writeln!(md);
    let mut figures = Vec::new();
    for (anchor, goal) in [("tftpd-hpa", 1.5), ("dnsmasq", 1.0)] {
        let ratios = |link: usize| {
            let best = find(anchor, None)[link].max(find(anchor, Some(16))[link]);
            (ours16[link] / best, ours1[link] / find(anchor, None)[link])
        };
        let (lan_w, lan_1) = ratios(0);
        let (lo_w, lo_1) = ratios(1);
        let _ = writeln!(
            md,
            "- ours / {anchor}: LAN {lan_w:.2}x with windowsize 16 (goal: at least {goal:.1}x), \
             {lan_1:.2}x lock-step (goal: at least 1.0x); loopback {lo_w:.2}x, {lo_1:.2}x"
        );
        figures.push(Figure::goal(
            format!("TFTP windowsize 16 / {anchor}, LAN"),
            &format!("at least {goal:.1}x"),
            format!("{lan_w:.2}x"),
            lan_w >= goal,
        ));
        figures.push(Figure::goal(
            format!("TFTP lock-step / {anchor}, LAN"),
            "at least 1.0x",
            format!("{lan_1:.2}x"),
            lan_1 >= 1.0,
        ));
    }
    figures
}

fn http_section(
    md: &mut String,
    rows: &HttpRows,
    links: &[(&str, &crate::netns::Netns); 2],
) -> Vec<Figure> {
    let _ = writeln!(md, "\nHTTP, 200 MB file (MB/s):\n");
    let _ = writeln!(md, "| server | {} | {} |", links[0].0, links[1].0);
    let _ = writeln!(md, "| --- | ---: | ---: |");
    for (name, v) in rows {
        let _ = writeln!(md, "| {name} | {:.0} | {:.0} |", v[0], v[1]);
    }
    let lan = rows[0].1[0] / rows[1].1[0];
    let lo = rows[0].1[1] / rows[1].1[1];
    let _ = writeln!(
        md,
        "\n- ours / nginx: LAN {lan:.2}x, loopback {lo:.2}x (goal: at least 0.9x)"
    );
    vec![
        Figure::goal(
            "HTTP / nginx, loopback",
            "at least 0.9x",
            format!("{lo:.2}x"),
            lo >= 0.9,
        ),
        Figure::info("HTTP / nginx, LAN", format!("{lan:.2}x")),
    ]
}

fn storm_section(md: &mut String, s: &Storm) -> Vec<Figure> {
    let _ = writeln!(
        md,
        "\nBoot storm, LAN link: {NODES} simulated nodes at once, from {SOURCES} addresses, \
         each fetching a 1 MB bootloader over TFTP (blksize 1468, windowsize 4, as edk2 asks) \
         then an 8 MB kernel, a 4 MB initramfs and a 32 MB image over HTTP ({:.0} MB per node); \
         a node retries a failed fetch after 1 s. The server runs with its default limits.\n",
        node_bytes() as f64 / 1e6
    );
    storm_figures(md, s, ("one node's", s.single.1), "boot storm")
}

/// The storm again with the server held to a Raspberry Pi's CPU budget.
fn pi_section(md: &mut String, s: &Storm) -> Vec<Figure> {
    let _ = writeln!(
        md,
        "\nBoot storm, LAN link, the server held to a Raspberry Pi-like budget: {}. The same \
         {NODES} nodes and files; the link's rate is {LINK_MBPS:.0} MB/s.\n",
        super::pi::Budget::words()
    );
    storm_figures(md, s, ("the link's", LINK_MBPS), "boot storm, Pi budget")
}

/// A storm's table and goals; the aggregate is compared with `base` (what it is, MB/s).
fn storm_figures(md: &mut String, s: &Storm, base: (&str, f64), name: &str) -> Vec<Figure> {
    let (base_name, base_mbps) = base;
    let share = 100.0 * s.aggregate / base_mbps;
    let rows = [
        (
            "nodes that finished (goal: all)".to_string(),
            format!("{}/{NODES}", s.finished),
        ),
        ("retries".to_string(), s.retries.to_string()),
        (
            "one node alone".to_string(),
            format!("{:.2} s, {:.0} MB/s", s.single.0, s.single.1),
        ),
        ("storm wall time".to_string(), format!("{:.1} s", s.wall_s)),
        (
            format!("aggregate throughput / {base_name} (goal: at least 80%)"),
            format!("{:.0} MB/s, {share:.0}%", s.aggregate),
        ),
        (
            "completion p50 / p90 / p99".to_string(),
            format!(
                "{:.1} / {:.1} / {:.1} s",
                s.pct(0.5),
                s.pct(0.9),
                s.pct(0.99)
            ),
        ),
        (
            "server peak memory, VmHWM (goal: under 50 MB)".to_string(),
            format!("{:.1} MB", s.peak_mb),
        ),
    ];
    crate::report::figure_table(md, &rows);
    let short = base_name.trim_start_matches("the ").trim_end_matches("'s");
    vec![
        Figure::goal(
            format!("{name}: nodes finished"),
            "all",
            format!("{}/{NODES}", s.finished),
            s.finished == NODES,
        ),
        Figure::goal(
            format!("{name}: aggregate / {short}"),
            "at least 80%",
            format!("{share:.0}%"),
            share >= 80.0,
        ),
        Figure::goal(
            format!("{name}: server peak memory"),
            "under 50 MB",
            format!("{:.1} MB", s.peak_mb),
            s.peak_mb < 50.0,
        ),
    ]
}

/// The LAN link's rate, MB/s (1 Gbit/s).
const LINK_MBPS: f64 = 125.0;

fn slow_section(md: &mut String, s: &Slow) -> Vec<Figure> {
    let limits: Vec<String> = s.limits.iter().map(|(k, v)| format!("`{k}={v}`")).collect();
    let _ = writeln!(
        md,
        "\nSlow clients, LAN link: one address opens {ATTEMPTS} connections and sends no \
         request (half of them part of a request line), while another machine fetches the \
         storm's files, as `netboot serve` runs by default; its limits, from its start line: \
         {}.\n",
        limits.join(", ")
    );
    let slowdown = s.other_s.1 / s.other_s.0;
    let rows = [
        (
            "connections kept / refused with 503".to_string(),
            format!("{} / {}", s.held, s.refused),
        ),
        (
            "kept ones closed by the server (header timeout), the last after".into(),
            format!("{}/{}, {:.1} s", s.closed.0, s.held, s.closed.1),
        ),
        (
            "another machine's fetch: alone / meanwhile".into(),
            format!("{:.2} / {:.2} s ({slowdown:.2}x)", s.other_s.0, s.other_s.1),
        ),
        (
            "server peak memory, VmHWM".into(),
            format!("{:.1} MB", s.peak_mb),
        ),
    ];
    let rows: Vec<(String, String)> = rows.into_iter().map(|(n, v)| (n.to_string(), v)).collect();
    crate::report::figure_table(md, &rows);
    vec![
        Figure::goal(
            "slow clients: kept ones closed by the server",
            "all",
            format!("{}/{}", s.closed.0, s.held),
            s.closed.0 == s.held && s.held > 0,
        ),
        Figure::info(
            "slow clients: another machine's fetch meanwhile / alone",
            format!("{slowdown:.2}x"),
        ),
        Figure::goal(
            "slow clients: server peak memory",
            "under 50 MB",
            format!("{:.1} MB", s.peak_mb),
            s.peak_mb < 50.0,
        ),
    ]
}
