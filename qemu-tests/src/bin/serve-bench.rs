//! `cargo xtask bench serve`: the boot server (a release build of `netboot serve`) against its
//! anchors, in one run, on the same links:
//!
//! - TFTP: ours vs tftpd-hpa and dnsmasq, a 4 MB file at blksize 1468, without and with
//!   windowsize 16 (atftp as the client);
//! - HTTP: ours vs nginx, a 200 MB file (curl as the client);
//! - a boot storm: 100 simulated nodes fetch a bootloader (TFTP), a kernel, an initramfs and an
//!   image (HTTP) at once; every node must finish; aggregate throughput against one node alone,
//!   completion percentiles, and the server's peak memory.
//!
//! Links: a veth pair between two network namespaces shaped to 1 Gbit/s with `tc tbf` (a
//! gigabit LAN's bandwidth; this machine's kernel has no netem, so no delay is added), and
//! loopback inside the server's namespace. Nothing leaves the namespaces.

use std::fmt::Write as _;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use qemu_tests::netns::Netns;

const RUNS: usize = 3;
const SERVER: &str = "10.44.0.1";
const CLIENT: &str = "10.44.0.2";
const NODES: usize = 100;
const TFTP_FILE: &str = "tftp-4m.bin";
const HTTP_FILE: &str = "http-200m.bin";
const STORM: [(&str, usize); 4] = [
    ("storm/snponly.efi", 1 << 20),
    ("storm/vmlinuz", 8 << 20),
    ("storm/initrd.img", 4 << 20),
    ("storm/image.squashfs", 32 << 20),
];

fn ip(ns: Option<&Netns>, args: &[&str]) -> Result<()> {
    let mut c = Command::new("ip");
    if let Some(ns) = ns {
        c.args(["-n", ns.name()]);
    }
    let out = c.args(args).output()?;
    if !out.status.success() {
        bail!(
            "ip {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(())
}

fn tc(ns: &Netns, dev: &str) -> Result<()> {
    let out = ns
        .command("tc")
        .args([
            "qdisc", "add", "dev", dev, "root", "tbf", "rate", "1gbit", "burst", "64kb", "latency",
            "10ms",
        ])
        .output()?;
    if !out.status.success() {
        bail!("tc tbf on {dev}: {}", String::from_utf8_lossy(&out.stderr));
    }
    Ok(())
}

/// Pseudo-random bytes (xorshift), so nothing on the way can shortcut zeros.
fn write_file(path: &Path, len: usize) -> Result<()> {
    std::fs::create_dir_all(path.parent().expect("has parent"))?;
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15 ^ len as u64;
    let mut buf = Vec::with_capacity(len);
    while buf.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        buf.extend_from_slice(&x.to_le_bytes());
    }
    buf.truncate(len);
    std::fs::write(path, buf)?;
    Ok(())
}

struct Daemon {
    child: Child,
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn spawn(
    ns: &Netns,
    name: &'static str,
    program: &str,
    args: &[String],
    log: &Path,
) -> Result<Daemon> {
    let f = std::fs::File::create(log)?;
    let child = ns
        .command(program)
        .args(args)
        .stdin(Stdio::null())
        .stdout(f.try_clone()?)
        .stderr(f)
        .spawn()
        .with_context(|| format!("starting {name}"))?;
    Ok(Daemon { child })
}

/// Runs `program args` in `ns`; its wall time in seconds, or an error with its output.
fn timed(ns: &Netns, program: &str, args: &[&str]) -> Result<f64> {
    let t = Instant::now();
    let out = ns.command(program).args(args).output()?;
    let secs = t.elapsed().as_secs_f64();
    if !out.status.success() {
        bail!(
            "{program} {}: {}{}",
            args.join(" "),
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(secs)
}

fn tftp_get(ns: &Netns, file: &str, window: Option<u16>, dest: &Path) -> Result<f64> {
    let dest_s = dest.display().to_string();
    let mut args = vec![
        "--get",
        "--remote-file",
        file,
        "--local-file",
        &dest_s,
        "--option",
        "blksize 1468",
    ];
    let w;
    if let Some(n) = window {
        w = format!("windowsize {n}");
        args.extend(["--option", &w]);
    }
    args.extend([SERVER, "69"]);
    timed(ns, "atftp", &args)
}

fn http_get(ns: &Netns, port: u16, file: &str) -> Result<f64> {
    let url = format!("http://{SERVER}:{port}/{file}");
    timed(ns, "curl", &["-sf", "-o", "/dev/null", &url])
}

/// Retries `f` until it succeeds or `deadline` passes (a server still starting).
fn until_up(what: &str, deadline: Duration, mut f: impl FnMut() -> Result<f64>) -> Result<()> {
    let t = Instant::now();
    loop {
        match f() {
            Ok(_) => return Ok(()),
            Err(e) if t.elapsed() > deadline => {
                return Err(e.context(format!("{what} never answered")));
            }
            Err(_) => std::thread::sleep(Duration::from_millis(100)),
        }
    }
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).expect("no NaN"));
    v[v.len() / 2]
}

fn mbps(bytes: usize, secs: f64) -> f64 {
    bytes as f64 / 1e6 / secs
}

fn peak_rss_mb(pid: u32) -> Option<f64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let kb: f64 = status
        .lines()
        .find(|l| l.starts_with("VmHWM:"))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()?;
    Some(kb / 1024.0)
}

fn main() -> Result<()> {
    let record = !std::env::args().any(|a| a == "--no-record");
    if !qemu_tests::require::vm_tests() {
        bail!("the benchmark needs root and network namespaces");
    }
    let project = ironbake::cli::project_root();
    let netboot = project.join("target/release/netboot");
    if !netboot.is_file() {
        bail!(
            "{} is missing: `cargo build --release -p netboot` first (cargo xtask bench serve does)",
            netboot.display()
        );
    }
    let work = project.join("target").join("bench-serve");
    let _ = std::fs::remove_dir_all(&work);
    let root = work.join("root");
    eprintln!("writing test files under {}", root.display());
    write_file(&root.join(TFTP_FILE), 4 << 20)?;
    write_file(&root.join(HTTP_FILE), 200_000_000)?;
    for (f, len) in STORM {
        write_file(&root.join(f), len)?;
    }
    // Published roots always carry their digests; ETags come from them.
    let mut sums = String::new();
    for f in [TFTP_FILE, HTTP_FILE]
        .into_iter()
        .chain(STORM.iter().map(|(f, _)| *f))
    {
        let (h, _) = netboot::layout::sha256_file(&root.join(f))?;
        let _ = writeln!(sums, "{h}  {f}");
    }
    std::fs::write(root.join("SHA256SUMS"), sums)?;

    // The LAN: server and client namespaces joined by a veth pair shaped to 1 Gbit/s.
    let s = Netns::new("bsrv")?;
    let c = Netns::new("bcli")?;
    ip(
        None,
        &[
            "link",
            "add",
            "vs",
            "netns",
            s.name(),
            "type",
            "veth",
            "peer",
            "name",
            "vc",
            "netns",
            c.name(),
        ],
    )?;
    ip(
        Some(&s),
        &["addr", "add", &format!("{SERVER}/24"), "dev", "vs"],
    )?;
    ip(
        Some(&c),
        &["addr", "add", &format!("{CLIENT}/24"), "dev", "vc"],
    )?;
    ip(Some(&s), &["link", "set", "vs", "up"])?;
    ip(Some(&c), &["link", "set", "vc", "up"])?;
    tc(&s, "vs")?;
    tc(&c, "vc")?;
    let links: [(&str, &Netns); 2] = [("LAN (veth, 1 Gbit/s tbf)", &c), ("loopback", &s)];
    let scratch = work.join("dl");
    std::fs::create_dir_all(&scratch)?;
    let root_s = root.display().to_string();

    // --- TFTP ---------------------------------------------------------------------------
    let ours_args = |http_port: u16| -> Vec<String> {
        vec![
            "serve".into(),
            "--root".into(),
            root_s.clone(),
            "--inventory".into(),
            work.join("inventory.toml").display().to_string(),
            "--bind".into(),
            SERVER.into(),
            "--no-dhcp".into(),
            "--http-port".into(),
            http_port.to_string(),
            "--tftp-port".into(),
            "69".into(),
        ]
    };
    type Start<'a> = Box<dyn Fn() -> Result<Daemon> + 'a>;
    let tftp_servers: Vec<(&'static str, Start)> = vec![
        (
            "ironbake netboot",
            Box::new(|| {
                spawn(
                    &s,
                    "netboot",
                    &netboot.display().to_string(),
                    &ours_args(8080),
                    &work.join("netboot-tftp.log"),
                )
            }),
        ),
        (
            "tftpd-hpa",
            Box::new(|| {
                spawn(
                    &s,
                    "tftpd-hpa",
                    "/usr/sbin/in.tftpd",
                    &[
                        "--foreground".into(),
                        "--listen".into(),
                        "--address".into(),
                        format!("{SERVER}:69"),
                        "--user".into(),
                        "root".into(),
                        "--secure".into(),
                        root_s.clone(),
                    ],
                    &work.join("tftpd-hpa.log"),
                )
            }),
        ),
        (
            "dnsmasq",
            Box::new(|| {
                spawn(
                    &s,
                    "dnsmasq",
                    "dnsmasq",
                    &[
                        "--no-daemon".into(),
                        "--conf-file=/dev/null".into(),
                        "--port=0".into(),
                        "--enable-tftp".into(),
                        format!("--tftp-root={root_s}"),
                        format!("--listen-address={SERVER}"),
                        "--bind-interfaces".into(),
                        "--user=root".into(),
                        "--pid-file=".into(),
                        "--log-facility=-".into(),
                    ],
                    &work.join("dnsmasq.log"),
                )
            }),
        ),
    ];
    // (server, window) -> per link median MB/s
    let mut tftp_rows: Vec<(String, Option<u16>, Vec<f64>)> = Vec::new();
    for (name, start) in &tftp_servers {
        let daemon = start()?;
        let dest = scratch.join("tftp.bin");
        until_up(name, Duration::from_secs(10), || {
            tftp_get(&s, TFTP_FILE, None, &dest)
        })?;
        for window in [None, Some(16)] {
            let mut per_link = Vec::new();
            for (link, ns) in links {
                let mut times = Vec::new();
                for _ in 0..RUNS {
                    let _ = std::fs::remove_file(&dest);
                    let secs = tftp_get(ns, TFTP_FILE, window, &dest)?;
                    let got = std::fs::metadata(&dest).map(|m| m.len()).unwrap_or(0);
                    if got != 4 << 20 {
                        bail!("{name} sent {got} bytes of {TFTP_FILE}");
                    }
                    times.push(secs);
                }
                let m = mbps(4 << 20, median(times));
                eprintln!("tftp {name} window {window:?} {link}: {m:.2} MB/s");
                per_link.push(m);
            }
            tftp_rows.push((name.to_string(), window, per_link));
        }
        drop(daemon);
    }

    // --- HTTP ---------------------------------------------------------------------------
    let nginx_conf = work.join("nginx.conf");
    std::fs::write(
        &nginx_conf,
        format!(
            "daemon off;\nworker_processes auto;\npid {w}/nginx.pid;\nerror_log {w}/nginx-error.log;\n\
             events {{ worker_connections 1024; }}\n\
             http {{\n  access_log off;\n  sendfile on;\n  tcp_nopush on;\n  keepalive_timeout 65;\n\
               client_body_temp_path {w}/nginx-tmp;\n  proxy_temp_path {w}/nginx-tmp;\n  fastcgi_temp_path {w}/nginx-tmp;\n\
               uwsgi_temp_path {w}/nginx-tmp;\n  scgi_temp_path {w}/nginx-tmp;\n\
               server {{ listen {SERVER}:8081; root {root_s}; }}\n}}\n",
            w = work.display()
        ),
    )?;
    let mut http_rows: Vec<(String, Vec<f64>)> = Vec::new();
    for (name, port) in [("ironbake netboot", 8080u16), ("nginx", 8081)] {
        let daemon = if port == 8080 {
            spawn(
                &s,
                "netboot",
                &netboot.display().to_string(),
                &ours_args(8080),
                &work.join("netboot-http.log"),
            )?
        } else {
            spawn(
                &s,
                "nginx",
                "/usr/sbin/nginx",
                &[
                    "-c".into(),
                    nginx_conf.display().to_string(),
                    "-p".into(),
                    work.display().to_string(),
                ],
                &work.join("nginx.log"),
            )?
        };
        until_up(name, Duration::from_secs(10), || {
            http_get(&s, port, TFTP_FILE)
        })?;
        // One warm-up fetch each: both then serve from the page cache.
        http_get(&s, port, HTTP_FILE)?;
        let mut per_link = Vec::new();
        for (link, ns) in links {
            let times: Vec<f64> = (0..RUNS)
                .map(|_| http_get(ns, port, HTTP_FILE))
                .collect::<Result<_>>()?;
            let m = mbps(200_000_000, median(times));
            eprintln!("http {name} {link}: {m:.0} MB/s");
            per_link.push(m);
        }
        http_rows.push((name.to_string(), per_link));
        drop(daemon);
    }

    // --- Boot storm ---------------------------------------------------------------------
    let daemon = spawn(
        &s,
        "netboot",
        &netboot.display().to_string(),
        &ours_args(8080),
        &work.join("netboot-storm.log"),
    )?;
    until_up("netboot", Duration::from_secs(10), || {
        http_get(&c, 8080, TFTP_FILE)
    })?;
    let node_bytes: usize = STORM.iter().map(|(_, l)| l).sum();
    let boot_one = |ns: &Netns, i: usize| -> Result<(f64, u32)> {
        let t = Instant::now();
        let mut retries = 0;
        let dest = scratch.join(format!("node{i}.efi"));
        for (k, (f, _)) in STORM.iter().enumerate() {
            let mut tries = 0;
            loop {
                let r = if k == 0 {
                    tftp_get(ns, f, Some(4), &dest)
                } else {
                    http_get(ns, 8080, f)
                };
                match r {
                    Ok(_) => break,
                    Err(e) if tries >= 10 => return Err(e.context(format!("node {i}: {f}"))),
                    Err(_) => {
                        tries += 1;
                        retries += 1;
                        std::thread::sleep(Duration::from_secs(1));
                    }
                }
            }
        }
        let _ = std::fs::remove_file(&dest);
        Ok((t.elapsed().as_secs_f64(), retries))
    };
    let single: Vec<f64> = (0..RUNS)
        .map(|i| boot_one(&c, i).map(|r| r.0))
        .collect::<Result<_>>()?;
    let single_s = median(single);
    let single_mbps = mbps(node_bytes, single_s);
    eprintln!("one node alone: {single_s:.2} s ({single_mbps:.0} MB/s)");
    let t = Instant::now();
    let (cref, boot_ref) = (&c, &boot_one);
    let results: Vec<Result<(f64, u32)>> = std::thread::scope(|sc| {
        let hs: Vec<_> = (0..NODES)
            .map(|i| sc.spawn(move || boot_ref(cref, 1000 + i)))
            .collect();
        hs.into_iter()
            .map(|h| {
                h.join()
                    .unwrap_or_else(|_| Err(anyhow::anyhow!("node thread panicked")))
            })
            .collect()
    });
    let storm_s = t.elapsed().as_secs_f64();
    let peak = peak_rss_mb(daemon.child.id()).unwrap_or(f64::NAN);
    let ok: Vec<(f64, u32)> = results
        .iter()
        .filter_map(|r| r.as_ref().ok().copied())
        .collect();
    for r in results.iter().filter(|r| r.is_err()) {
        eprintln!("storm failure: {:#}", r.as_ref().unwrap_err());
    }
    let mut done: Vec<f64> = ok.iter().map(|r| r.0).collect();
    done.sort_by(|a, b| a.partial_cmp(b).expect("no NaN"));
    let pct = |p: f64| {
        done.get(((p * done.len() as f64).ceil() as usize).saturating_sub(1))
            .copied()
            .unwrap_or(f64::NAN)
    };
    let retries: u32 = ok.iter().map(|r| r.1).sum();
    let aggregate = mbps(node_bytes * ok.len(), storm_s);
    eprintln!(
        "storm: {}/{NODES} nodes in {storm_s:.1} s, {aggregate:.0} MB/s, peak RSS {peak:.1} MB",
        ok.len()
    );
    drop(daemon);

    // --- Report -------------------------------------------------------------------------
    let mut md = String::new();
    let _ = writeln!(
        md,
        "\n### serve, {} (`cargo xtask bench serve`)\n",
        ironbake::bench::today()
    );
    let _ = writeln!(
        md,
        "Machine: {}. `netboot serve` release build; anchors in the same run: tftpd-hpa {}, dnsmasq {}, nginx {}; clients atftp and curl; medians of {RUNS}. Links: {} and {}.\n",
        ironbake::bench::machine(),
        pkg_version("tftpd-hpa"),
        pkg_version("dnsmasq-base"),
        pkg_version("nginx-light"),
        links[0].0,
        links[1].0
    );
    let _ = writeln!(
        md,
        "TFTP, 4 MB file, blksize 1468 (MB/s; window: RFC 7440 windowsize the client asked for):\n"
    );
    let _ = writeln!(md, "| server | window | {} | {} |", links[0].0, links[1].0);
    let _ = writeln!(md, "| --- | ---: | ---: | ---: |");
    for (name, w, v) in &tftp_rows {
        let _ = writeln!(
            md,
            "| {name} | {} | {:.2} | {:.2} |",
            w.map_or("none".into(), |n| n.to_string()),
            v[0],
            v[1]
        );
    }
    let find = |n: &str, w: Option<u16>| {
        tftp_rows
            .iter()
            .find(|r| r.0 == n && r.1 == w)
            .map(|r| r.2.clone())
            .unwrap_or_default()
    };
    let ours16 = find("ironbake netboot", Some(16));
    let ours1 = find("ironbake netboot", None);
    let _ = writeln!(md);
    for (anchor, label) in [("tftpd-hpa", "tftpd-hpa"), ("dnsmasq", "dnsmasq")] {
        let best = |link: usize| {
            let a = find(anchor, None)[link].max(find(anchor, Some(16))[link]);
            (ours16[link] / a, ours1[link] / find(anchor, None)[link])
        };
        let (lan_w, lan_1) = best(0);
        let (lo_w, lo_1) = best(1);
        let _ = writeln!(
            md,
            "- ours / {label}: LAN {lan_w:.2}x with windowsize 16 (goal: {}), {lan_1:.2}x lock-step; loopback {lo_w:.2}x, {lo_1:.2}x",
            if anchor == "tftpd-hpa" {
                "at least 1.5x"
            } else {
                "at least 1.0x"
            }
        );
    }
    let _ = writeln!(md, "\nHTTP, 200 MB file (MB/s):\n");
    let _ = writeln!(md, "| server | {} | {} |", links[0].0, links[1].0);
    let _ = writeln!(md, "| --- | ---: | ---: |");
    for (name, v) in &http_rows {
        let _ = writeln!(md, "| {name} | {:.0} | {:.0} |", v[0], v[1]);
    }
    let _ = writeln!(
        md,
        "\n- ours / nginx: LAN {:.2}x, loopback {:.2}x (goal: at least 0.9x)",
        http_rows[0].1[0] / http_rows[1].1[0],
        http_rows[0].1[1] / http_rows[1].1[1]
    );
    let _ = writeln!(
        md,
        "\nBoot storm, LAN link: {NODES} simulated nodes at once, each fetching a 1 MB bootloader over TFTP (blksize 1468, windowsize 4, as edk2 asks) then an 8 MB kernel, a 4 MB initramfs and a 32 MB image over HTTP ({:.0} MB per node); a node retries a failed fetch after 1 s.\n",
        node_bytes as f64 / 1e6
    );
    let _ = writeln!(md, "| figure | value |");
    let _ = writeln!(md, "| --- | ---: |");
    let _ = writeln!(
        md,
        "| nodes that finished (goal: all) | {}/{NODES} |",
        ok.len()
    );
    let _ = writeln!(md, "| retries | {retries} |");
    let _ = writeln!(
        md,
        "| one node alone | {single_s:.2} s, {single_mbps:.0} MB/s |"
    );
    let _ = writeln!(md, "| storm wall time | {storm_s:.1} s |");
    let _ = writeln!(
        md,
        "| aggregate throughput / one node's (goal: at least 80%) | {aggregate:.0} MB/s, {:.0}% |",
        100.0 * aggregate / single_mbps
    );
    let _ = writeln!(
        md,
        "| completion p50 / p90 / p99 | {:.1} / {:.1} / {:.1} s |",
        pct(0.5),
        pct(0.9),
        pct(0.99)
    );
    let _ = writeln!(
        md,
        "| server peak memory, VmHWM (goal: under 50 MB) | {peak:.1} MB |"
    );
    print!("{md}");
    if record {
        ironbake::bench::append_record(&md)?;
    }
    if ok.len() != NODES {
        bail!(
            "{} of {NODES} nodes did not finish the boot storm",
            NODES - ok.len()
        );
    }
    Ok(())
}

fn pkg_version(pkg: &str) -> String {
    Command::new("dpkg-query")
        .args(["-W", "-f", "${Version}", pkg])
        .output()
        .ok()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .filter(|v| !v.is_empty())
        .unwrap_or_else(|| "?".into())
}
