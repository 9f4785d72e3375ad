//! Tier (b): `netboot serve` against hostile and careless clients, on loopback (sources told
//! apart by address: 127.0.0.2, 127.0.0.3, ...). Each test is one weakness an outside tester
//! found: idle and half-sent HTTP connections kept for ever, one source taking every
//! connection, abandoned TFTP transfers filling every slot, a symlink swapped between a check
//! and an open, an unbounded discovered list, error bodies naming server paths.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, TcpStream, UdpSocket};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// A `netboot serve` process on loopback, its log lines kept.
struct Serve {
    child: Child,
    http: SocketAddr,
    tftp: SocketAddr,
    start: serde_json::Value,
    log: Arc<Mutex<Vec<String>>>,
    _dir: tempfile::TempDir,
}

impl Drop for Serve {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Pseudo-random bytes, so that nothing on the way can shortcut zeros.
fn pattern(len: usize) -> Vec<u8> {
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

/// Starts `netboot serve` on a root of its own (with `hello.txt` and a 16 MB `big.bin`)
/// and `extra` flags; `nofile` runs it under `prlimit` with that open-file limit.
fn serve(nofile: Option<u64>, extra: &[&str], setup: impl FnOnce(&Path)) -> Serve {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("out");
    std::fs::create_dir_all(&root).unwrap();
    std::fs::write(root.join("hello.txt"), b"hello\n").unwrap();
    std::fs::write(root.join("big.bin"), pattern(16 << 20)).unwrap();
    setup(dir.path());
    let mut cmd = match nofile {
        Some(n) => {
            let mut c = Command::new("prlimit");
            c.arg(format!("--nofile={n}:{n}")).arg("--");
            c.arg(env!("CARGO_BIN_EXE_netboot"));
            c
        }
        None => Command::new(env!("CARGO_BIN_EXE_netboot")),
    };
    cmd.args(["serve", "--root"])
        .arg(&root)
        .arg("--inventory")
        .arg(dir.path().join("inventory.toml"))
        .args(["--bind", "127.0.0.1", "--no-dhcp", "--http-port", "0"])
        .args(["--tftp-port", "0", "--log-format", "json"])
        .args(extra)
        .env("NETBOOT_LOG", "info")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit());
    let mut child = cmd
        .spawn()
        .expect("starting netboot (and prlimit, from util-linux)");
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let mut start = None;
    for line in lines.by_ref() {
        let line = line.unwrap();
        let v: serde_json::Value = serde_json::from_str(&line).unwrap();
        if v["fields"]["message"] == "netboot serving" {
            start = Some(v["fields"].clone());
            break;
        }
    }
    let start = start.expect("a 'netboot serving' line");
    let log = Arc::new(Mutex::new(Vec::new()));
    let keep = Arc::clone(&log);
    // Drained all along: a full pipe would stop the server.
    std::thread::spawn(move || {
        for line in lines.map_while(Result::ok) {
            keep.lock().unwrap().push(line);
        }
    });
    let addr = |k: &str| start[k].as_str().unwrap().parse().unwrap();
    Serve {
        http: addr("http"),
        tftp: addr("tftp"),
        start,
        child,
        log,
        _dir: dir,
    }
}

/// A TCP connection to `to` from loopback address 127.0.0.`host`.
fn connect_from(host: u8, to: SocketAddr) -> std::io::Result<TcpStream> {
    let s = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None)?;
    s.bind(&SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::new(127, 0, 0, host), 0)).into())?;
    s.connect(&to.into())?;
    Ok(s.into())
}

/// `GET path` on a fresh connection from 127.0.0.`host`; the status line and the body.
fn get_from(host: u8, to: SocketAddr, path: &str) -> (String, Vec<u8>) {
    let mut s = connect_from(host, to).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut resp = Vec::new();
    s.read_to_end(&mut resp).unwrap();
    let split = resp
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .expect("a whole response head");
    let head = String::from_utf8_lossy(&resp[..split]).into_owned();
    let status = head.lines().next().unwrap_or("").to_string();
    (status, resp[split + 4..].to_vec())
}

/// How long until the server closes `s` (reads until EOF or a reset), at most `limit`.
fn closed_after(s: &mut TcpStream, limit: Duration) -> Option<Duration> {
    let t = Instant::now();
    s.set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    let mut buf = [0u8; 4096];
    while t.elapsed() < limit {
        match s.read(&mut buf) {
            Ok(0) => return Some(t.elapsed()),
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
            Err(e) if e.kind() == std::io::ErrorKind::TimedOut => {}
            Err(_) => return Some(t.elapsed()),
        }
    }
    None
}

#[test]
fn idle_and_half_sent_connections_are_closed_but_a_slow_download_is_not() {
    let srv = serve(
        None,
        &["--http-header-timeout", "2", "--http-idle-timeout", "3"],
        |_| {},
    );
    assert_eq!(srv.start["http_header_timeout_s"], 2.0);
    // Connected, nothing sent: the header timeout.
    let mut silent = connect_from(2, srv.http).unwrap();
    // Half a request line.
    let mut half = connect_from(2, srv.http).unwrap();
    half.write_all(b"GET /hello.txt HT").unwrap();
    // One request answered, then the connection kept and left idle: the idle timeout.
    let mut idle = connect_from(2, srv.http).unwrap();
    idle.write_all(b"GET /hello.txt HTTP/1.1\r\nHost: x\r\n\r\n")
        .unwrap();
    let mut first = [0u8; 256];
    let n = idle.read(&mut first).unwrap();
    assert!(
        first[..n].starts_with(b"HTTP/1.1 200"),
        "{:?}",
        String::from_utf8_lossy(&first[..n])
    );
    let limit = Duration::from_secs(15);
    let t_silent = closed_after(&mut silent, limit).expect("a silent connection is closed");
    let t_half = closed_after(&mut half, limit).expect("a half-sent request is closed");
    let t_idle = closed_after(&mut idle, limit).expect("an idle keep-alive connection is closed");
    for (what, t, timeout) in [
        ("silent", t_silent, 2.0),
        ("half", t_half, 2.0),
        ("idle", t_idle, 3.0),
    ] {
        let secs = t.as_secs_f64();
        assert!(secs < timeout + 4.0, "{what} closed after {secs:.1} s");
    }
    // A slow but live download: 16 MB read 256 KiB at a time, 10 times a second (about 6 s,
    // twice the idle timeout), through a small receive buffer so the server waits on it.
    let s = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    s.set_recv_buffer_size(64 << 10).unwrap();
    s.bind(&SocketAddr::from(([127, 0, 0, 3], 0)).into())
        .unwrap();
    s.connect(&srv.http.into()).unwrap();
    let mut s: TcpStream = s.into();
    s.write_all(b"GET /big.bin HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .unwrap();
    let mut got = Vec::new();
    let mut buf = vec![0u8; 256 << 10];
    let t = Instant::now();
    loop {
        let n = s.read(&mut buf).unwrap();
        if n == 0 {
            break;
        }
        got.extend_from_slice(&buf[..n]);
        std::thread::sleep(Duration::from_millis(100));
    }
    let body_at = got.windows(4).position(|w| w == b"\r\n\r\n").unwrap() + 4;
    assert_eq!(got.len() - body_at, 16 << 20, "the slow download was cut");
    assert!(
        got[body_at..] == pattern(16 << 20)[..],
        "the slow download's bytes differ"
    );
    assert!(
        t.elapsed() > Duration::from_secs(3),
        "it was slow: {:?}",
        t.elapsed()
    );
}

#[test]
fn one_source_cannot_take_every_connection() {
    // 256 descriptors: room for 96 connections, 64 of them from one source.
    let srv = serve(
        Some(256),
        &["--http-idle-timeout", "60", "--http-header-timeout", "60"],
        |_| {},
    );
    assert_eq!(srv.start["open_files"], 256, "{}", srv.start);
    assert_eq!(srv.start["http_max_connections"], 96);
    let per_source = srv.start["http_max_per_source"].as_u64().unwrap() as usize;
    assert_eq!(per_source, 64);
    // One source opens 200 connections and holds them: the server keeps 64, and tells the
    // others it is busy.
    let mut conns: Vec<TcpStream> = (0..200)
        .map(|_| connect_from(2, srv.http).unwrap())
        .collect();
    std::thread::sleep(Duration::from_secs(1));
    let (mut held, mut refused) = (0, 0);
    for c in &mut conns {
        c.set_nonblocking(true).unwrap();
        let mut b = [0u8; 64];
        match c.read(&mut b) {
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => held += 1,
            Ok(n) if n > 0 => {
                let text = String::from_utf8_lossy(&b[..n]).into_owned();
                assert!(text.starts_with("HTTP/1.1 503"), "{text}");
                refused += 1;
            }
            other => panic!("a held connection ended: {other:?}"),
        }
    }
    assert_eq!((held, refused), (per_source, 200 - per_source));
    // Another source is still served, whole.
    let (status, body) = get_from(3, srv.http, "/big.bin");
    assert!(status.starts_with("HTTP/1.1 200"), "{status}");
    assert!(
        body == pattern(16 << 20),
        "the other source's download differs"
    );
    let metrics = get_from(3, srv.http, "/metrics").1;
    let metrics = String::from_utf8_lossy(&metrics);
    assert!(
        metrics.contains("ironbake_http_refused_total 136\n"),
        "{metrics}"
    );
    drop(conns);
}

/// A TFTP read request.
fn rrq(name: &str) -> Vec<u8> {
    let mut p = vec![0, 1];
    p.extend_from_slice(name.as_bytes());
    p.extend_from_slice(b"\0octet\0");
    p
}

/// Fetches `name` over TFTP (512-byte blocks, no options) from 127.0.0.`host`.
fn tftp_get(host: u8, server: SocketAddr, name: &str) -> Result<Vec<u8>, String> {
    let s = UdpSocket::bind(SocketAddr::from(([127, 0, 0, host], 0))).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    s.send_to(&rrq(name), server).unwrap();
    let mut out = Vec::new();
    let mut buf = [0u8; 600];
    loop {
        let (n, from) = s
            .recv_from(&mut buf)
            .map_err(|e| format!("no answer: {e}"))?;
        match buf[..n] {
            [0, 3, hi, lo, ..] => {
                out.extend_from_slice(&buf[4..n]);
                s.send_to(&[0, 4, hi, lo], from).unwrap();
                if n < 516 {
                    return Ok(out);
                }
            }
            [0, 5, ..] => return Err(String::from_utf8_lossy(&buf[4..n - 1]).into_owned()),
            _ => return Err("an unexpected packet".into()),
        }
    }
}

#[test]
fn abandoned_tftp_transfers_from_one_source_do_not_stop_another() {
    let srv = serve(None, &[], |_| {});
    assert_eq!(srv.start["tftp_max_per_source"], 16);
    // 300 requests from one source, each from its own port, none ever acknowledged.
    let flood: Vec<UdpSocket> = (0..300)
        .map(|_| {
            let s = UdpSocket::bind("127.0.0.2:0").unwrap();
            s.set_read_timeout(Some(Duration::from_millis(500)))
                .unwrap();
            s.send_to(&rrq("hello.txt"), srv.tftp).unwrap();
            s
        })
        .collect();
    let (mut started, mut busy) = (0, 0);
    let mut buf = [0u8; 600];
    for s in &flood {
        match s.recv_from(&mut buf) {
            Ok((n, _)) if buf[..2] == [0, 3] && n > 4 => started += 1,
            Ok((n, _)) if buf[..2] == [0, 5] => {
                let why = String::from_utf8_lossy(&buf[4..n - 1]).into_owned();
                assert!(why.contains("too many transfers to this address"), "{why}");
                busy += 1;
            }
            other => panic!("flood request: {other:?}"),
        }
    }
    assert_eq!(
        (started, busy),
        (16, 284),
        "one source gets 16 transfers at once"
    );
    // Another source is served at once, while the flood's transfers are still held.
    let t = Instant::now();
    assert_eq!(tftp_get(3, srv.tftp, "hello.txt").unwrap(), b"hello\n");
    assert!(t.elapsed() < Duration::from_secs(3), "{:?}", t.elapsed());
    // The abandoned transfers go once their retries run out (seconds, not minutes): the
    // flooding source is served again.
    let t = Instant::now();
    loop {
        match tftp_get(2, srv.tftp, "hello.txt") {
            Ok(b) => {
                assert_eq!(b, b"hello\n");
                break;
            }
            Err(why) => assert!(why.contains("too many transfers"), "{why}"),
        }
        assert!(
            t.elapsed() < Duration::from_secs(60),
            "the flood's slots were never freed"
        );
        std::thread::sleep(Duration::from_secs(1));
    }
    let freed = t.elapsed().as_secs_f64();
    eprintln!("the flood's transfers were abandoned {freed:.1} s after they started");
    let log = srv.log.lock().unwrap().join("\n");
    assert!(log.contains("TFTP transfer abandoned"), "{log}");
}

/// A folder of the root swapped, again and again, with a symlink to a folder outside it
/// (`renameat2` with `RENAME_EXCHANGE`: at every moment `real` is one or the other), while
/// clients ask for `real/f` over HTTP and TFTP from four threads. A server that checks a
/// path and then opens it again sends `SECRET` now and then; one that opens beneath the
/// root in one step never does.
#[test]
fn a_symlink_swap_loop_never_yields_a_byte_from_outside() {
    let srv = serve(None, &[], |dir| {
        let root = dir.join("out");
        std::fs::create_dir_all(root.join("real")).unwrap();
        std::fs::write(root.join("real/f"), b"inside\n").unwrap();
        std::fs::create_dir_all(dir.join("outside")).unwrap();
        std::fs::write(dir.join("outside/f"), b"SECRET\n").unwrap();
        std::os::unix::fs::symlink("../outside", root.join(".swap")).unwrap();
    });
    let root = srv._dir.path().join("out");
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let flipper = {
        let stop = Arc::clone(&stop);
        std::thread::spawn(move || {
            let (a, b) = (root.join("real"), root.join(".swap"));
            let mut flips = 0u64;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let cwd = rustix::fs::CWD;
                rustix::fs::renameat_with(cwd, &a, cwd, &b, rustix::fs::RenameFlags::EXCHANGE)
                    .unwrap();
                flips += 1;
            }
            flips
        })
    };
    let (http, tftp) = (srv.http, srv.tftp);
    let clients: Vec<_> = (0..4u8)
        .map(|k| {
            std::thread::spawn(move || {
                let (mut inside, mut refused) = (0u32, 0u32);
                for i in 0..2500 {
                    let body = if (i + u32::from(k)) % 4 == 3 {
                        match tftp_get(2 + k, tftp, "real/f") {
                            Ok(b) => b,
                            Err(_) => {
                                refused += 1;
                                continue;
                            }
                        }
                    } else {
                        let (status, body) = get_from(2 + k, http, "/real/f");
                        if !status.starts_with("HTTP/1.1 200") {
                            refused += 1;
                            continue;
                        }
                        body
                    };
                    assert!(
                        !String::from_utf8_lossy(&body).contains("SECRET"),
                        "client {k}, request {i}: a file from outside the root"
                    );
                    assert_eq!(body, b"inside\n");
                    inside += 1;
                }
                (inside, refused)
            })
        })
        .collect();
    let mut totals = (0, 0);
    let mut panicked = None;
    for c in clients {
        match c.join() {
            Ok((i, r)) => totals = (totals.0 + i, totals.1 + r),
            Err(e) => panicked = Some(e),
        }
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let flips = flipper.join().unwrap();
    if let Some(e) = panicked {
        std::panic::resume_unwind(e);
    }
    let (inside, refused) = totals;
    eprintln!("{inside} served from inside, {refused} refused, {flips} swaps");
    assert!(
        inside > 100 && refused > 100,
        "the swap raced both ways: {inside}, {refused}"
    );
}

#[test]
fn the_discovered_list_stops_at_its_bound_and_errors_name_no_server_path() {
    let srv = serve(None, &[], |dir| {
        std::fs::write(
            dir.join("inventory.toml"),
            "[nodes.lost0]\nmac = \"52:54:00:00:00:01\"\nrecipe = \"never-built\"\n",
        )
        .unwrap();
    });
    let root = std::fs::canonicalize(srv._dir.path()).unwrap();
    let root = root.display().to_string();
    for i in 0..3000u32 {
        let mac = format!(
            "02:00:00:{:02x}:{:02x}:{:02x}",
            i >> 16,
            (i >> 8) & 0xff,
            i & 0xff
        );
        let mut s = connect_from(2, srv.http).unwrap();
        write!(
            s,
            "GET /boot.ipxe?mac={mac} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
        )
        .unwrap();
        s.read_to_end(&mut Vec::new()).unwrap();
    }
    let (_, list) = get_from(3, srv.http, "/api/v1/discovered");
    let list: serde_json::Value = serde_json::from_slice(&list).unwrap();
    assert_eq!(list.as_array().unwrap().len(), 1024);
    let metrics = String::from_utf8_lossy(&get_from(3, srv.http, "/metrics").1).into_owned();
    assert!(
        metrics.contains("ironbake_discovered_dropped_total 1976\n"),
        "{metrics}"
    );
    // A node whose recipe is not published: refused in words, with no path of the server's.
    let (_, script) = get_from(3, srv.http, "/boot.ipxe?mac=52:54:00:00:00:01");
    let script = String::from_utf8_lossy(&script).into_owned();
    assert!(
        script.contains("no published version on this server"),
        "{script}"
    );
    let (status, body) = get_from(3, srv.http, "/nodes/52:54:00:00:00:01/settings.img");
    let body = String::from_utf8_lossy(&body).into_owned();
    for text in [&script, &body] {
        assert!(
            !text.contains(&root) && !text.contains("/out"),
            "{status}: {text}"
        );
    }
    let log = srv.log.lock().unwrap().join("\n");
    assert!(log.contains(&root), "the log has the details");
}
