//! `cargo xtask bench serve`: the boot server (a release build of `netboot serve`) against its
//! anchors, in one run, on the same links:
//!
//! - TFTP: ours vs tftpd-hpa and dnsmasq, a 4 MB file at blksize 1468, without and with
//!   windowsize 16 (atftp as the client); the three run side by side and the fetches take
//!   turns, medians of [`TFTP_ROUNDS`];
//! - HTTP: ours vs nginx, a 200 MB file (curl as the client);
//! - a boot storm: 100 simulated nodes fetch a bootloader (TFTP), a kernel, an initramfs and an
//!   image (HTTP) at once; every node must finish; aggregate throughput against one node alone,
//!   completion percentiles, and the server's peak memory;
//! - the same storm with the server held to a Raspberry Pi-like CPU budget (one core at half
//!   its time, through cgroup CPU controls; see `pi.rs`): all nodes, aggregate against the
//!   link's rate, memory.
//!
//! Links: a veth pair between two network namespaces shaped to 1 Gbit/s with `tc tbf` (a
//! gigabit LAN's bandwidth; this machine's kernel has no netem, so no delay is added), and
//! loopback inside the server's namespace. Nothing leaves the namespaces.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

use super::RUNS;
use crate::netns::Netns;
use crate::report::Report;

pub mod page;
mod pi;
mod record;
mod slow;
mod storm;

const SERVER: &str = "10.44.0.1";
const CLIENT: &str = "10.44.0.2";
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
    tftp_get_from(ns, SERVER, file, window, dest)
}

fn tftp_get_from(
    ns: &Netns,
    server: &str,
    file: &str,
    window: Option<u16>,
    dest: &Path,
) -> Result<f64> {
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
    args.extend([server, "69"]);
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
    crate::report::median(&mut v)
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

/// The two namespaces, the files served, and the server binary under test.
struct Bench {
    /// The server's namespace.
    s: Netns,
    /// The clients' namespace, across the shaped veth link; its bridge is the LAN's switch.
    c: Netns,
    /// The storm's machines: [`SOURCES`] namespaces on the switch, each its own address
    /// (as real nodes are), so that per-source limits apply as they would on a LAN.
    nodes: Vec<Netns>,
    work: PathBuf,
    root: PathBuf,
    netboot: PathBuf,
    scratch: PathBuf,
}

/// The links measured: across the 1 Gbit/s veth pair, and loopback in the server's namespace.
fn links(b: &Bench) -> [(&'static str, &Netns); 2] {
    [("LAN (veth, 1 Gbit/s tbf)", &b.c), ("loopback", &b.s)]
}

impl Bench {
    /// `netboot serve` (the release build) on the test root, HTTP on `http_port`, TFTP on 69.
    fn netboot(&self, http_port: u16, log: &str) -> Result<Daemon> {
        let args: Vec<String> = vec![
            "serve".into(),
            "--root".into(),
            self.root.display().to_string(),
            "--inventory".into(),
            self.work.join("inventory.toml").display().to_string(),
            "--bind".into(),
            SERVER.into(),
            "--no-dhcp".into(),
            "--http-port".into(),
            http_port.to_string(),
            "--tftp-port".into(),
            "69".into(),
        ];
        spawn(
            &self.s,
            "netboot",
            &self.netboot.display().to_string(),
            &args,
            &self.work.join(log),
        )
    }
}

/// Runs the benchmark for the project at `project`; needs `target/release/netboot` (a
/// release build, as users run it).
pub fn run(project: &Path) -> Result<Report> {
    let b = setup(project, "bench-serve")?;
    let tftp = tftp(&b)?;
    let http = http(&b)?;
    let storm = storm::run(&b)?;
    let pi = storm::run_pi(&b)?;
    let slow = slow::run(&b)?;
    let mut report = record::report(&b, &tftp, &http, (&storm, &pi), &slow);
    for (s, what) in [
        (&storm, "the boot storm"),
        (&pi, "the Pi-budget boot storm"),
    ] {
        if s.finished != storm::NODES {
            report.failed = Some(format!(
                "{} of {} nodes did not finish {what}",
                storm::NODES - s.finished,
                storm::NODES
            ));
        }
    }
    Ok(report)
}

/// The LAN, the files and the scratch folder under `target/WORK`, for the release build of
/// `netboot serve`.
fn setup(project: &Path, work: &str) -> Result<Bench> {
    if !crate::require::vm_tests() {
        bail!("the benchmark needs root and network namespaces");
    }
    let netboot = project.join("target/release/netboot");
    if !netboot.is_file() {
        bail!(
            "{} is missing: `cargo build --release -p netboot` first (cargo xtask bench serve does)",
            netboot.display()
        );
    }
    let work = project.join("target").join(work);
    let _ = std::fs::remove_dir_all(&work);
    let root = work.join("root");
    write_files(&root)?;
    let (s, c, nodes) = lan()?;
    let scratch = work.join("dl");
    std::fs::create_dir_all(&scratch)?;
    Ok(Bench {
        s,
        c,
        nodes,
        root,
        netboot,
        scratch,
        work,
    })
}

/// The files served, with their SHA256SUMS (published roots always carry their digests;
/// ETags come from them).
fn write_files(root: &Path) -> Result<()> {
    eprintln!("writing test files under {}", root.display());
    write_file(&root.join(TFTP_FILE), 4 << 20)?;
    write_file(&root.join(HTTP_FILE), 200_000_000)?;
    for (f, len) in STORM {
        write_file(&root.join(f), len)?;
    }
    let mut sums = String::new();
    for f in [TFTP_FILE, HTTP_FILE]
        .into_iter()
        .chain(STORM.iter().map(|(f, _)| *f))
    {
        let (h, _) = netboot::layout::sha256_file(&root.join(f))?;
        let _ = writeln!(sums, "{h}  {f}");
    }
    std::fs::write(root.join("SHA256SUMS"), sums)?;
    Ok(())
}

/// How many source addresses the storm's machines come from.
pub const SOURCES: usize = 10;

/// The LAN: server and client namespaces joined by a veth pair shaped to 1 Gbit/s; in the
/// client namespace a bridge (the switch) holds that link and one veth to each of
/// [`SOURCES`] node namespaces (10.44.0.20 and up).
fn lan() -> Result<(Netns, Netns, Vec<Netns>)> {
    let s = Netns::new("bsrv")?;
    let c = Netns::new("bcli")?;
    let veth = [
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
    ];
    ip(None, &veth)?;
    ip(
        Some(&s),
        &["addr", "add", &format!("{SERVER}/24"), "dev", "vs"],
    )?;
    ip(Some(&s), &["link", "set", "vs", "up"])?;
    ip(Some(&c), &["link", "add", "br0", "type", "bridge"])?;
    ip(Some(&c), &["link", "set", "vc", "master", "br0"])?;
    ip(
        Some(&c),
        &["addr", "add", &format!("{CLIENT}/24"), "dev", "br0"],
    )?;
    ip(Some(&c), &["link", "set", "vc", "up"])?;
    ip(Some(&c), &["link", "set", "br0", "up"])?;
    tc(&s, "vs")?;
    tc(&c, "vc")?;
    let mut nodes = Vec::new();
    for i in 0..SOURCES {
        let n = Netns::new(&format!("bn{i}"))?;
        let (inner, outer) = (format!("n{i}"), format!("p{i}"));
        let veth = [
            "link",
            "add",
            &outer,
            "netns",
            c.name(),
            "type",
            "veth",
            "peer",
            "name",
            &inner,
            "netns",
            n.name(),
        ];
        ip(None, &veth)?;
        ip(Some(&c), &["link", "set", &outer, "master", "br0"])?;
        ip(Some(&c), &["link", "set", &outer, "up"])?;
        let addr = format!("10.44.0.{}/24", 20 + i);
        ip(Some(&n), &["addr", "add", &addr, "dev", &inner])?;
        ip(Some(&n), &["link", "set", &inner, "up"])?;
        nodes.push(n);
    }
    Ok((s, c, nodes))
}

/// TFTP rows: (server, window asked for, MB/s per link).
type TftpRows = Vec<(String, Option<u16>, Vec<f64>)>;

/// Fetches of the TFTP file per server, window and link. The three servers run side by side,
/// each on its own address, and each round fetches from each in turn, so that a slower or
/// busier moment of the machine falls on all three alike (a 4 MB lock-step fetch takes about
/// 0.2 s, and runs measured one server after the other swung by a quarter).
const TFTP_ROUNDS: usize = 9;

/// The TFTP servers measured, each with its own address on the server's side of the link.
const TFTP_SERVERS: [(&str, &str); 3] = [
    ("ironbake netboot", SERVER),
    ("tftpd-hpa", "10.44.0.4"),
    ("dnsmasq", "10.44.0.5"),
];

/// TFTP: ours, tftpd-hpa and dnsmasq, lock-step and with windowsize 16, on each link.
fn tftp(b: &Bench) -> Result<TftpRows> {
    let root_s = b.root.display().to_string();
    let (hpa_addr, dnsmasq_addr) = (TFTP_SERVERS[1].1, TFTP_SERVERS[2].1);
    for addr in [hpa_addr, dnsmasq_addr] {
        ip(
            Some(&b.s),
            &["addr", "add", &format!("{addr}/24"), "dev", "vs"],
        )?;
    }
    let tftpd_args: Vec<String> = vec![
        "--foreground".into(),
        "--listen".into(),
        "--address".into(),
        format!("{hpa_addr}:69"),
        "--user".into(),
        "root".into(),
        "--secure".into(),
        root_s.clone(),
    ];
    let dnsmasq_args: Vec<String> = vec![
        "--no-daemon".into(),
        "--conf-file=/dev/null".into(),
        "--port=0".into(),
        "--enable-tftp".into(),
        format!("--tftp-root={root_s}"),
        format!("--listen-address={dnsmasq_addr}"),
        "--bind-interfaces".into(),
        "--user=root".into(),
        "--pid-file=".into(),
        "--log-facility=-".into(),
    ];
    let _daemons = [
        b.netboot(8080, "netboot-tftp.log")?,
        spawn(
            &b.s,
            "tftpd-hpa",
            "/usr/sbin/in.tftpd",
            &tftpd_args,
            &b.work.join("tftpd-hpa.log"),
        )?,
        spawn(
            &b.s,
            "dnsmasq",
            "dnsmasq",
            &dnsmasq_args,
            &b.work.join("dnsmasq.log"),
        )?,
    ];
    let dest = b.scratch.join("tftp.bin");
    for (name, addr) in TFTP_SERVERS {
        until_up(name, Duration::from_secs(10), || {
            tftp_get_from(&b.s, addr, TFTP_FILE, None, &dest)
        })?;
    }
    let mut rows = TftpRows::new();
    for window in [None, Some(16)] {
        // times[link][server]
        let mut times = vec![vec![Vec::new(); TFTP_SERVERS.len()]; 2];
        for _ in 0..TFTP_ROUNDS {
            for (l, (_, ns)) in links(b).into_iter().enumerate() {
                for (k, (name, addr)) in TFTP_SERVERS.iter().enumerate() {
                    let _ = std::fs::remove_file(&dest);
                    let secs = tftp_get_from(ns, addr, TFTP_FILE, window, &dest)?;
                    let got = std::fs::metadata(&dest).map(|m| m.len()).unwrap_or(0);
                    if got != 4 << 20 {
                        bail!("{name} sent {got} bytes of {TFTP_FILE}");
                    }
                    times[l][k].push(secs);
                }
            }
        }
        for (k, (name, _)) in TFTP_SERVERS.iter().enumerate() {
            let per_link: Vec<f64> = (0..2)
                .map(|l| mbps(4 << 20, median(times[l][k].clone())))
                .collect();
            for (l, (link, _)) in links(b).into_iter().enumerate() {
                eprintln!(
                    "tftp {name} window {window:?} {link}: {:.2} MB/s",
                    per_link[l]
                );
            }
            rows.push((name.to_string(), window, per_link));
        }
    }
    rows.sort_by_key(|r| (TFTP_SERVERS.iter().position(|s| s.0 == r.0), r.1));
    Ok(rows)
}

/// HTTP rows: (server, MB/s per link).
type HttpRows = Vec<(String, Vec<f64>)>;

/// HTTP: ours and nginx, a 200 MB file on each link, after one warm-up fetch each (both then
/// serve from the page cache).
fn http(b: &Bench) -> Result<HttpRows> {
    let nginx_conf = b.work.join("nginx.conf");
    std::fs::write(
        &nginx_conf,
        format!(
            "daemon off;\nworker_processes auto;\npid {w}/nginx.pid;\nerror_log {w}/nginx-error.log;\n\
             events {{ worker_connections 1024; }}\n\
             http {{\n  access_log off;\n  sendfile on;\n  tcp_nopush on;\n  keepalive_timeout 65;\n\
               client_body_temp_path {w}/nginx-tmp;\n  proxy_temp_path {w}/nginx-tmp;\n  fastcgi_temp_path {w}/nginx-tmp;\n\
               uwsgi_temp_path {w}/nginx-tmp;\n  scgi_temp_path {w}/nginx-tmp;\n\
               server {{ listen {SERVER}:8081; root {root}; }}\n}}\n",
            w = b.work.display(),
            root = b.root.display()
        ),
    )?;
    let nginx_args: Vec<String> = vec![
        "-c".into(),
        nginx_conf.display().to_string(),
        "-p".into(),
        b.work.display().to_string(),
    ];
    let mut rows = HttpRows::new();
    for (name, port) in [("ironbake netboot", 8080u16), ("nginx", 8081)] {
        let _daemon = if port == 8080 {
            b.netboot(8080, "netboot-http.log")?
        } else {
            spawn(
                &b.s,
                "nginx",
                "/usr/sbin/nginx",
                &nginx_args,
                &b.work.join("nginx.log"),
            )?
        };
        until_up(name, Duration::from_secs(10), || {
            http_get(&b.s, port, TFTP_FILE)
        })?;
        http_get(&b.s, port, HTTP_FILE)?;
        let mut per_link = Vec::new();
        for (link, ns) in links(b) {
            let times: Vec<f64> = (0..RUNS)
                .map(|_| http_get(ns, port, HTTP_FILE))
                .collect::<Result<_>>()?;
            let m = mbps(200_000_000, median(times));
            eprintln!("http {name} {link}: {m:.0} MB/s");
            per_link.push(m);
        }
        rows.push((name.to_string(), per_link));
    }
    Ok(rows)
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
