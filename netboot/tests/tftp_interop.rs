//! Checks of the TFTP server against real clients (atftp, curl, tftp-hpa's `tftp`) and, for
//! what those cannot send, a raw UDP client. Tier (b): a missing tool fails its test when
//! `CI=true` and prints `SKIPPED: ...` otherwise. Every server runs inside the test process on
//! 127.0.0.1 with an ephemeral port; nothing leaves loopback.

use std::io::Read;
use std::net::{SocketAddr, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use netboot::fsroot;
use netboot::hub::Hub;
use netboot::tftp::{self, Config};

/// Bytes no answer may ever contain: the content of a file outside the served root.
const SECRET: &[u8] = b"TOP-SECRET-OUTSIDE-THE-ROOT";
/// How long any single receive or tool run may take before the test fails.
const PACKET_WAIT: Duration = Duration::from_secs(10);
const TOOL_WAIT: Duration = Duration::from_secs(300);

/// Deterministic test content (xorshift), different for each seed.
fn pattern(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

/// The files every server root holds: (name, content).
fn files() -> Vec<(&'static str, Vec<u8>)> {
    vec![
        ("small.bin", pattern(1000, 1)),
        // 187904 = 512 * 367 = 1468 * 128: an exact block multiple at both sizes, so the
        // final DATA is empty.
        ("exact.bin", pattern(187_904, 2)),
        ("empty.bin", Vec::new()),
        ("dir/nested.bin", pattern(3000, 3)),
        ("medium.bin", pattern(1_000_007, 4)),
    ]
}

/// A server running on its own runtime, with a temporary root.
struct Server {
    addr: SocketAddr,
    hub: Arc<Hub>,
    root: PathBuf,
    _dir: tempfile::TempDir,
    _rt: tokio::runtime::Runtime,
}

impl Server {
    fn start(cfg: Config) -> Server {
        let _ = tracing_subscriber::fmt()
            .with_test_writer()
            .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
            .try_init();
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("root");
        std::fs::create_dir_all(root.join("dir")).unwrap();
        for (name, data) in files() {
            std::fs::write(root.join(name), data).unwrap();
        }
        std::fs::write(dir.path().join("secret"), SECRET).unwrap();
        std::os::unix::fs::symlink("../secret", root.join("leak")).unwrap();
        std::os::unix::fs::symlink("/etc/passwd", root.join("passwd-link")).unwrap();
        let files = Arc::new(fsroot::Root::new(&root).unwrap());
        let root = files.path().to_path_buf();
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        let hub = Arc::new(Hub::new());
        let socket = rt
            .block_on(tokio::net::UdpSocket::bind("127.0.0.1:0"))
            .unwrap();
        let addr = socket.local_addr().unwrap();
        let task = tftp::serve(socket, files, cfg, Arc::clone(&hub));
        rt.spawn(async move {
            if let Err(e) = task.await {
                panic!("TFTP server failed: {e}");
            }
        });
        Server {
            addr,
            hub,
            root,
            _dir: dir,
            _rt: rt,
        }
    }

    fn port(&self) -> String {
        self.addr.port().to_string()
    }

    fn count(&self, pick: fn(&netboot::hub::Metrics) -> &AtomicU64) -> u64 {
        pick(&self.hub.metrics).load(Ordering::Relaxed)
    }

    /// Waits (bounded) until the counter reaches `want`; the server updates it just after
    /// the packet the test saw last.
    fn wait_count(&self, pick: fn(&netboot::hub::Metrics) -> &AtomicU64, want: u64, what: &str) {
        let end = Instant::now() + PACKET_WAIT;
        while self.count(pick) < want {
            assert!(
                Instant::now() < end,
                "{what}: counter stuck at {}, want {want}",
                self.count(pick)
            );
            std::thread::sleep(Duration::from_millis(10));
        }
        assert_eq!(self.count(pick), want, "{what}");
    }
}

/// Is `name` on PATH? When not: fail under CI=true, else print SKIPPED and say no.
fn have_tool(name: &str, package: &str) -> bool {
    let found = std::env::var_os("PATH")
        .is_some_and(|p| std::env::split_paths(&p).any(|d| d.join(name).is_file()));
    if !found {
        assert!(
            std::env::var("CI").as_deref() != Ok("true"),
            "`{name}` is required when CI=true: apt-get install {package}"
        );
        println!("SKIPPED: `{name}` is not installed (apt-get install {package})");
    }
    found
}

/// Runs a tool with a deadline; its output is collected for the failure message.
fn run_tool(cmd: &mut Command) -> Output {
    let line = format!("{cmd:?}");
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("{line}: {e}"));
    let drain = |mut r: Box<dyn Read + Send>| {
        std::thread::spawn(move || {
            let mut v = Vec::new();
            let _ = r.read_to_end(&mut v);
            v
        })
    };
    let out = drain(Box::new(child.stdout.take().unwrap()));
    let err = drain(Box::new(child.stderr.take().unwrap()));
    let end = Instant::now() + TOOL_WAIT;
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        if Instant::now() > end {
            let _ = child.kill();
            let _ = child.wait();
            panic!("{line}: still running after {TOOL_WAIT:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    Output {
        status,
        stdout: out.join().unwrap(),
        stderr: err.join().unwrap(),
    }
}

fn assert_same_file(got: &Path, want: &[u8], what: &str) {
    let got = std::fs::read(got).unwrap_or_else(|e| panic!("{what}: no local copy: {e}"));
    assert!(
        got == want,
        "{what}: downloaded {} bytes differ from the {} original bytes",
        got.len(),
        want.len()
    );
}

/// Downloads every test file with `fetch(name, local)` and compares the bytes.
fn fetch_all(server: &Server, tool: &str, fetch: impl Fn(&str, &Path) -> Output) {
    let out = tempfile::tempdir().unwrap();
    let all = files();
    for (i, (name, data)) in all.iter().enumerate() {
        let local = out.path().join(format!("{i}.got"));
        let o = fetch(name, &local);
        assert!(
            o.status.success(),
            "{tool} {name}: {:?}\n{}\n{}",
            o.status,
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        );
        assert_same_file(&local, data, &format!("{tool} {name}"));
    }
    server.wait_count(|m| &m.tftp_transfers, all.len() as u64, "transfers");
    assert_eq!(server.count(|m| &m.tftp_errors), 0);
}

/// Names that must be refused, fetched with a real client: it must show the server's
/// reason and keep no bytes. (tftp-hpa's client exits 0 even then, so the status is not
/// checked.)
fn refused_by_tool(tool: &str, fetch: impl Fn(&str, &Path) -> Output) {
    let out = tempfile::tempdir().unwrap();
    let corpus = [
        ("../etc/passwd", "file name component not allowed"),
        ("passwd-link", "access violation"),
        ("leak", "access violation"),
        ("/etc/passwd", "no such file"),
    ];
    for (i, (name, reason)) in corpus.iter().enumerate() {
        let local = out.path().join(format!("{i}.got"));
        let o = fetch(name, &local);
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        );
        assert!(
            text.contains(reason),
            "{tool} {name}: {:?}\n{text}",
            o.status
        );
        let kept = std::fs::read(&local).unwrap_or_default();
        assert!(kept.is_empty(), "{tool} {name}: {} bytes kept", kept.len());
    }
}

fn atftp_get(server: &Server, name: &str, local: &Path) -> Output {
    run_tool(
        Command::new("atftp")
            .args(["--get", "-r", name, "-l"])
            .arg(local)
            .args(["--option", "blksize 1468", "--option", "tsize 0"])
            .args(["--option", "windowsize 8"])
            .args(["127.0.0.1", &server.port()]),
    )
}

fn curl_get(server: &Server, name: &str, local: &Path) -> Output {
    let url = format!("tftp://127.0.0.1:{}/{name}", server.addr.port());
    run_tool(
        Command::new("curl")
            .args(["-sS", "--max-time", "250", "--tftp-blksize", "1468", "-o"])
            .arg(local)
            .arg(url),
    )
}

fn hpa_get(server: &Server, name: &str, local: &Path) -> Output {
    run_tool(
        Command::new("tftp")
            .args([
                "127.0.0.1",
                &server.port(),
                "-m",
                "binary",
                "-c",
                "get",
                name,
            ])
            .arg(local),
    )
}

#[test]
fn atftp_downloads_every_file() {
    if !have_tool("atftp", "atftp") {
        return;
    }
    let server = Server::start(Config::default());
    fetch_all(&server, "atftp", |n, l| atftp_get(&server, n, l));
    refused_by_tool("atftp", |n, l| atftp_get(&server, n, l));
}

#[test]
fn curl_downloads_every_file_and_sees_a_missing_one() {
    if !have_tool("curl", "curl") {
        return;
    }
    let server = Server::start(Config::default());
    fetch_all(&server, "curl", |n, l| curl_get(&server, n, l));
    let dir = tempfile::tempdir().unwrap();
    let o = curl_get(&server, "missing.bin", &dir.path().join("m"));
    // curl's exit code 68: "TFTP file not found".
    assert_eq!(o.status.code(), Some(68), "{o:?}");
}

#[test]
fn tftp_hpa_downloads_every_file() {
    if !have_tool("tftp", "tftp-hpa") {
        return;
    }
    let server = Server::start(Config::default());
    fetch_all(&server, "tftp-hpa", |n, l| hpa_get(&server, n, l));
    refused_by_tool("tftp-hpa", |n, l| hpa_get(&server, n, l));
}

/// A server granting at most 512-byte blocks, with `name` of `len` bytes added: more than
/// 65535 blocks, so the block number wraps.
fn rollover_server(name: &str, len: usize) -> (Server, Vec<u8>) {
    let server = Server::start(Config {
        max_blksize: 512,
        ..Config::default()
    });
    let data = pattern(len, 5);
    std::fs::write(server.root.join(name), &data).unwrap();
    (server, data)
}

#[test]
fn atftp_rolls_over_past_65535_blocks() {
    if !have_tool("atftp", "atftp") {
        return;
    }
    // Asks for 1468-byte blocks and a window of 8; gets 512 and 8: 65538 blocks.
    let (server, data) = rollover_server("big.bin", 65536 * 512 + 700);
    let dir = tempfile::tempdir().unwrap();
    let o = atftp_get(&server, "big.bin", &dir.path().join("big"));
    assert!(o.status.success(), "{o:?}");
    assert_same_file(&dir.path().join("big"), &data, "atftp big.bin");
    server.wait_count(|m| &m.tftp_transfers, 1, "transfers");
}

#[test]
fn curl_rolls_over_past_65535_blocks() {
    if !have_tool("curl", "curl") {
        return;
    }
    let (server, data) = rollover_server("big.bin", 65536 * 512 + 700);
    let dir = tempfile::tempdir().unwrap();
    let o = curl_get(&server, "big.bin", &dir.path().join("big"));
    assert!(o.status.success(), "{o:?}");
    assert_same_file(&dir.path().join("big"), &data, "curl big.bin");
    server.wait_count(|m| &m.tftp_transfers, 1, "transfers");
}

#[test]
fn tftp_hpa_rolls_over_past_65535_blocks() {
    if !have_tool("tftp", "tftp-hpa") {
        return;
    }
    // No options: 512-byte blocks; exactly 65536 full blocks, then an empty block 65537
    // (wire number 1).
    let (server, data) = rollover_server("big.bin", 65536 * 512);
    let dir = tempfile::tempdir().unwrap();
    let o = hpa_get(&server, "big.bin", &dir.path().join("big"));
    assert!(o.status.success(), "{o:?}");
    assert_same_file(&dir.path().join("big"), &data, "tftp-hpa big.bin");
    server.wait_count(|m| &m.tftp_transfers, 1, "transfers");
}

// ---- Raw UDP client -------------------------------------------------------------------

/// A TFTP packet, decoded enough for the checks.
#[derive(Debug, PartialEq, Eq)]
enum Packet {
    Data(u16, Vec<u8>),
    Error(u16, String),
    Oack(Vec<(String, String)>),
    Other(Vec<u8>),
}

fn decode(p: &[u8]) -> Packet {
    match p {
        [0, 3, a, b, data @ ..] => Packet::Data(u16::from_be_bytes([*a, *b]), data.to_vec()),
        [0, 5, a, b, msg @ ..] => {
            let msg = msg
                .strip_suffix(&[0])
                .expect("error message NUL-terminated");
            Packet::Error(
                u16::from_be_bytes([*a, *b]),
                String::from_utf8(msg.to_vec()).unwrap(),
            )
        }
        [0, 6, opts @ ..] => {
            let opts = opts.strip_suffix(&[0]).expect("OACK NUL-terminated");
            let fields: Vec<String> = opts
                .split(|&b| b == 0)
                .map(|f| String::from_utf8(f.to_vec()).unwrap())
                .collect();
            Packet::Oack(
                fields
                    .chunks(2)
                    .map(|c| (c[0].clone(), c[1].clone()))
                    .collect(),
            )
        }
        other => Packet::Other(other.to_vec()),
    }
}

fn request(opcode: u8, name: &[u8], mode: &str, opts: &[(&str, &str)]) -> Vec<u8> {
    let mut p = vec![0, opcode];
    p.extend_from_slice(name);
    p.push(0);
    p.extend_from_slice(mode.as_bytes());
    p.push(0);
    for (k, v) in opts {
        p.extend_from_slice(k.as_bytes());
        p.push(0);
        p.extend_from_slice(v.as_bytes());
        p.push(0);
    }
    p
}

fn ack(block: u16) -> Vec<u8> {
    let mut p = vec![0, 4];
    p.extend_from_slice(&block.to_be_bytes());
    p
}

/// A UDP socket on 127.0.0.1 talking to one server.
struct Raw {
    sock: UdpSocket,
    server: SocketAddr,
}

impl Raw {
    fn new(server: &Server) -> Raw {
        let sock = UdpSocket::bind("127.0.0.1:0").unwrap();
        sock.set_read_timeout(Some(PACKET_WAIT)).unwrap();
        Raw {
            sock,
            server: server.addr,
        }
    }

    fn rrq(&self, name: &str, opts: &[(&str, &str)]) {
        self.send_raw(&request(1, name.as_bytes(), "octet", opts));
    }

    fn send_raw(&self, packet: &[u8]) {
        self.sock.send_to(packet, self.server).unwrap();
    }

    fn send_to(&self, packet: &[u8], to: SocketAddr) {
        self.sock.send_to(packet, to).unwrap();
    }

    /// The next packet; fails the test after [`PACKET_WAIT`].
    fn recv(&self) -> (Packet, SocketAddr) {
        let mut buf = vec![0; 65536];
        let (n, from) = self
            .sock
            .recv_from(&mut buf)
            .unwrap_or_else(|e| panic!("no packet within {PACKET_WAIT:?}: {e}"));
        assert!(
            !buf[..n].windows(SECRET.len()).any(|w| w == SECRET),
            "the secret leaked"
        );
        (decode(&buf[..n]), from)
    }

    fn expect_data(&self, block: u16) -> (Vec<u8>, SocketAddr) {
        match self.recv() {
            (Packet::Data(b, data), from) if b == block => (data, from),
            other => panic!("want DATA {block}, got {other:?}"),
        }
    }

    fn expect_error(&self) -> (u16, String, SocketAddr) {
        match self.recv() {
            (Packet::Error(code, msg), from) => (code, msg, from),
            other => panic!("want ERROR, got {other:?}"),
        }
    }

    /// Lock-step download after DATA 1 was received, as a client would: a repeat of the
    /// block just acknowledged (a retransmission that crossed our ACK) is skipped.
    fn finish(&self, first: Vec<u8>, tid: SocketAddr, blksize: usize) -> Vec<u8> {
        let mut out = first;
        let mut block: u16 = 1;
        let mut last_len = out.len();
        loop {
            self.send_to(&ack(block), tid);
            if last_len < blksize {
                return out;
            }
            let data = loop {
                match self.recv() {
                    (Packet::Data(b, _), from) if b == block && from == tid => {}
                    (Packet::Data(b, data), from) if b == block.wrapping_add(1) && from == tid => {
                        break data;
                    }
                    other => panic!("want DATA {}, got {other:?}", block.wrapping_add(1)),
                }
            };
            block = block.wrapping_add(1);
            last_len = data.len();
            out.extend(data);
        }
    }
}

fn original(name: &str) -> Vec<u8> {
    files().into_iter().find(|(n, _)| *n == name).unwrap().1
}

#[test]
fn names_that_leave_the_root_get_an_error_and_never_the_bytes() {
    let server = Server::start(Config::default());
    let long = "a".repeat(2000);
    // (name, expected error code)
    let corpus: &[(&str, u16)] = &[
        ("../etc/passwd", 2),
        ("/../../etc/passwd", 2),
        ("..\\..\\etc\\passwd", 2),
        ("passwd-link", 2),
        ("leak", 2),
        ("../secret", 2),
        ("dir/../small.bin", 2),
        ("dir/../../secret", 2),
        ("./small.bin", 2),
        (".hidden", 2),
        ("/etc/passwd", 1),
        ("etc/passwd", 1),
        ("dir", 1),
        ("", 1),
        ("/", 1),
        (&long, 2),
    ];
    for (name, code) in corpus {
        let raw = Raw::new(&server);
        raw.rrq(name, &[("tsize", "0")]);
        let (got, msg, from) = raw.expect_error();
        assert_eq!(got, *code, "{name:?}: {msg}");
        assert!(!msg.is_empty());
        assert_eq!(from, server.addr, "refusals come from the server port");
    }
    // A NUL inside the name: what follows is read as the mode, which is refused.
    let raw = Raw::new(&server);
    raw.send_raw(b"\0\x01small.bin\0../../etc/passwd\0octet\0");
    let (code, msg, _) = raw.expect_error();
    assert_eq!(code, 4, "{msg}");
    let raw = Raw::new(&server);
    raw.send_raw(b"\0\x01passwd-link\0/\0octet\0");
    assert_eq!(raw.expect_error().0, 4);
    // And the same socket still gets a real file afterwards: nothing else was queued for it.
    raw.rrq("small.bin", &[]);
    let (first, tid) = raw.expect_data(1);
    assert_eq!(raw.finish(first, tid, 512), original("small.bin"));
    let refused = corpus.len() as u64 + 2;
    assert_eq!(server.count(|m| &m.tftp_errors), refused);
}

#[test]
fn write_requests_and_other_modes_are_refused() {
    let server = Server::start(Config::default());
    let raw = Raw::new(&server);
    raw.send_raw(&request(2, b"upload.bin", "octet", &[]));
    let (code, msg, _) = raw.expect_error();
    assert_eq!((code, msg.as_str()), (2, "read-only server"));
    assert!(!server.root.join("upload.bin").exists());
    raw.send_raw(&request(1, b"small.bin", "NetASCII", &[]));
    let (code, msg, _) = raw.expect_error();
    assert_eq!(code, 0, "{msg}");
    raw.send_raw(&request(1, b"small.bin", "mail", &[]));
    assert_eq!(raw.expect_error().0, 4);
    // Malformed: dropped without an answer; the next good request is answered first.
    raw.send_raw(b"\0\x01small.bin");
    raw.send_raw(&[0, 4, 0, 1]);
    raw.send_raw(&request(1, b"small.bin", "OCTET", &[]));
    let (first, tid) = raw.expect_data(1);
    assert_eq!(raw.finish(first, tid, 512), original("small.bin"));
}

#[test]
fn options_are_acknowledged_within_limits() {
    let server = Server::start(Config::default());
    let raw = Raw::new(&server);
    raw.rrq(
        "medium.bin",
        &[
            ("BlkSize", "65464"),
            ("tsize", "0"),
            ("timeout", "3"),
            ("windowsize", "64"),
            ("rollover", "0"),
        ],
    );
    let (oack, tid) = raw.recv();
    assert_ne!(tid, server.addr, "a transfer uses its own port");
    let want = [
        ("blksize", "1468"),
        ("tsize", "1000007"),
        ("timeout", "3"),
        ("windowsize", "16"),
    ]
    .map(|(k, v)| (k.to_string(), v.to_string()));
    assert_eq!(oack, Packet::Oack(want.to_vec()));
    // Bad values are left out; with nothing left, DATA 1 comes at once.
    let raw = Raw::new(&server);
    raw.rrq(
        "small.bin",
        &[("blksize", "7"), ("timeout", "0"), ("x", "1")],
    );
    let (first, tid) = raw.expect_data(1);
    assert_eq!(first.len(), 512);
    assert_eq!(raw.finish(first, tid, 512), original("small.bin"));
}

#[test]
fn repeated_acks_never_cause_retransmissions() {
    let server = Server::start(Config::default());
    // Window of 1, and a 30 s timeout so that no timer fires during the test.
    let raw = Raw::new(&server);
    let opts = [("blksize", "512"), ("timeout", "30"), ("windowsize", "1")];
    raw.rrq("medium.bin", &opts);
    let (Packet::Oack(_), tid) = raw.recv() else {
        panic!("want OACK")
    };
    raw.send_to(&ack(0), tid);
    raw.expect_data(1);
    raw.send_to(&ack(1), tid);
    raw.expect_data(2);
    for _ in 0..3 {
        raw.send_to(&ack(1), tid);
    }
    raw.send_to(&ack(0), tid);
    // Had any repeated ACK been answered, DATA 2 would arrive before DATA 3: packets from one
    // socket to another on loopback keep their order.
    raw.send_to(&ack(2), tid);
    raw.expect_data(3);

    // Window of 4: an ACK for the whole window slides it; repeats and old ACKs do nothing.
    let raw = Raw::new(&server);
    let opts = [("blksize", "512"), ("timeout", "30"), ("windowsize", "4")];
    raw.rrq("medium.bin", &opts);
    let (Packet::Oack(_), tid) = raw.recv() else {
        panic!("want OACK")
    };
    raw.send_to(&ack(0), tid);
    for b in 1..=4 {
        raw.expect_data(b);
    }
    raw.send_to(&ack(4), tid);
    for b in 5..=8 {
        raw.expect_data(b);
    }
    for _ in 0..3 {
        raw.send_to(&ack(4), tid);
    }
    raw.send_to(&ack(2), tid);
    // A partial ACK slides the window by two blocks.
    raw.send_to(&ack(6), tid);
    raw.expect_data(9);
    raw.expect_data(10);
    raw.send_to(&ack(10), tid);
    for b in 11..=14 {
        raw.expect_data(b);
    }
    assert_eq!(server.count(|m| &m.tftp_retransmits), 0);

    // Packets from another port get error 5 and leave the transfer alone.
    let stranger = Raw::new(&server);
    stranger.send_to(&ack(14), tid);
    let (code, _, from) = stranger.expect_error();
    assert_eq!((code, from), (5, tid));
    raw.send_to(&ack(14), tid);
    raw.expect_data(15);
}

#[test]
fn a_lost_ack_brings_the_window_again_then_the_transfer_is_abandoned() {
    let server = Server::start(Config {
        initial_timeout: Duration::from_millis(100),
        max_retries: 2,
        ..Config::default()
    });
    let raw = Raw::new(&server);
    raw.rrq("small.bin", &[]);
    let (first, tid) = raw.expect_data(1);
    assert_ne!(tid, server.addr);
    // No ACK: the same DATA 1 comes again from the same port, twice (max_retries), then an
    // error.
    for _ in 0..2 {
        let (again, from) = raw.expect_data(1);
        assert_eq!((again.as_slice(), from), (first.as_slice(), tid));
    }
    let (code, msg, from) = raw.expect_error();
    assert_eq!((code, from), (0, tid), "{msg}");
    assert_eq!(server.count(|m| &m.tftp_retransmits), 2);
    server.wait_count(|m| &m.tftp_errors, 1, "abandoned transfer");

    // One retransmission, then ACKs: the transfer completes.
    let raw = Raw::new(&server);
    raw.rrq("small.bin", &[]);
    let (first, tid) = raw.expect_data(1);
    let (again, _) = raw.expect_data(1);
    assert_eq!(again, first);
    assert!(server.count(|m| &m.tftp_retransmits) >= 3);
    assert_eq!(raw.finish(first, tid, 512), original("small.bin"));
    server.wait_count(|m| &m.tftp_transfers, 1, "transfers");
}

#[test]
fn a_transfer_past_its_deadline_is_abandoned() {
    let server = Server::start(Config {
        initial_timeout: Duration::from_secs(30),
        transfer_deadline: Duration::from_millis(300),
        ..Config::default()
    });
    let raw = Raw::new(&server);
    raw.rrq("small.bin", &[]);
    let (_, tid) = raw.expect_data(1);
    let (code, msg, from) = raw.expect_error();
    assert_eq!((code, from), (0, tid), "{msg}");
    server.wait_count(|m| &m.tftp_errors, 1, "abandoned transfer");
}

#[test]
fn a_tsize_probe_then_abort_is_quiet_and_the_next_request_is_served() {
    let server = Server::start(Config {
        max_transfers: 1,
        ..Config::default()
    });
    let raw = Raw::new(&server);
    raw.rrq("exact.bin", &[("tsize", "0")]);
    let (oack, tid) = raw.recv();
    assert_eq!(oack, Packet::Oack(vec![("tsize".into(), "187904".into())]));
    raw.send_to(b"\0\x05\0\0abort\0", tid);
    // With one transfer allowed, the next request is served once the probe has ended.
    let mut busy = 0;
    let end = Instant::now() + PACKET_WAIT;
    let (again, first, tid) = loop {
        let again = Raw::new(&server);
        again.rrq("exact.bin", &[]);
        match again.recv() {
            (Packet::Data(1, data), tid) => break (again, data, tid),
            (Packet::Error(0, _), _) if Instant::now() < end => {
                busy += 1;
                std::thread::sleep(Duration::from_millis(20));
            }
            other => panic!("{other:?}"),
        }
    };
    assert_eq!(again.finish(first, tid, 512), original("exact.bin"));
    // The probe's end counted as no error; only "busy" refusals did.
    assert_eq!(server.count(|m| &m.tftp_errors), busy);
    server.wait_count(|m| &m.tftp_transfers, 1, "transfers");
}

#[test]
fn the_transfer_cap_holds_and_a_repeated_request_is_ignored() {
    let server = Server::start(Config {
        max_transfers: 2,
        initial_timeout: Duration::from_secs(30),
        ..Config::default()
    });
    let a = Raw::new(&server);
    a.rrq("small.bin", &[]);
    let (first, tid) = a.expect_data(1);
    // The same request again from the same ip:port while its transfer runs: ignored. Had it
    // started a second transfer, both places would be taken and `b` would be told "busy".
    a.rrq("small.bin", &[]);
    let b = Raw::new(&server);
    b.rrq("small.bin", &[]);
    let (b_first, b_tid) = b.expect_data(1);
    let c = Raw::new(&server);
    c.rrq("small.bin", &[]);
    let (code, msg, _) = c.expect_error();
    assert_eq!((code, msg.as_str()), (0, "server busy, try again"));
    assert_eq!(a.finish(first, tid, 512), original("small.bin"));
    assert_eq!(b.finish(b_first, b_tid, 512), original("small.bin"));
    server.wait_count(|m| &m.tftp_transfers, 2, "transfers");
    assert_eq!(server.count(|m| &m.tftp_requests), 4);
}
