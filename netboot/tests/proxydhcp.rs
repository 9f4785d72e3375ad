//! proxyDHCP on a LAN made for the test: `dhcp::serve` runs in one network namespace, a
//! hand-made PXE client in another, joined by a veth pair; nothing touches the machine's own
//! interfaces. Needs root and `ip` (iproute2): under `CI=true` their absence fails the test,
//! elsewhere it prints `SKIPPED: ...` and returns.

use std::fs::File;
use std::io;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, UdpSocket};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use netboot::dhcp::{self, BootFiles, Config, MessageType, Options, Packet, opt};
use netboot::hub::{Hub, Lookup, Stage};
use socket2::{Domain, Protocol, Socket, Type};

const SERVER_IP: Ipv4Addr = Ipv4Addr::new(10, 77, 0, 1);
const CLIENT_IP: Ipv4Addr = Ipv4Addr::new(10, 77, 0, 50);
/// The LAN's DHCP server, as a client's DHCPREQUEST names it (no one runs there).
const ROUTER_IP: Ipv4Addr = Ipv4Addr::new(10, 77, 0, 254);
const SERVER_IF: &str = "srv0";
const CLIENT_IF: &str = "cli0";
/// In the inventory, as node `n1`.
const KNOWN: [u8; 6] = [0x52, 0x54, 0x00, 0x77, 0x00, 0x01];
/// Not in the inventory; the test's directory stands for a default that does not boot it.
const STRANGER: [u8; 6] = [0x52, 0x54, 0x00, 0x77, 0x00, 0x99];
const HTTP_BASE: &str = "http://10.77.0.1:8080";

/// How long an expected answer may take to arrive (it takes milliseconds).
const REPLY_DEADLINE: Duration = Duration::from_secs(5);
/// How long to listen for answers that must not come.
const SILENCE: Duration = Duration::from_secs(1);
/// How long the server may take to bind its sockets.
const SERVER_START_DEADLINE: Duration = Duration::from_secs(10);

/// True if the test can run here; see the module doc for what happens otherwise.
fn requirements_met() -> bool {
    let mut missing = Vec::new();
    let root = std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            let line = s.lines().find(|l| l.starts_with("Uid:"))?.to_string();
            // Real, effective, saved, filesystem: the effective one decides.
            line.split_whitespace().nth(2).map(|e| e == "0")
        })
        .unwrap_or(false);
    if !root {
        missing.push("root (network namespaces)");
    }
    let have_ip = Command::new("ip")
        .arg("-V")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !have_ip {
        missing.push("ip (apt-get install iproute2)");
    }
    if missing.is_empty() {
        return true;
    }
    let msg = format!("the proxyDHCP test needs: {}", missing.join(", "));
    if std::env::var("CI").is_ok_and(|v| v == "true") {
        panic!("CI=true and {msg}");
    }
    eprintln!("SKIPPED: {msg}");
    false
}

fn ip(args: &[&str]) {
    let out = Command::new("ip")
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("running ip");
    assert!(
        out.status.success(),
        "ip {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr).trim()
    );
}

/// Two namespaces joined by a veth pair: `SERVER_IF` (SERVER_IP/24) in `server`, `CLIENT_IF`
/// (CLIENT_IP/24) in `client`. Both namespaces are deleted on drop, panic or not.
struct Lan {
    server: String,
    client: String,
}

impl Lan {
    fn new() -> Lan {
        let base = format!("ib-dhcp-{}", std::process::id());
        let lan = Lan {
            server: format!("{base}-s"),
            client: format!("{base}-c"),
        };
        // The guard exists before the namespaces do, so a failure below still removes them.
        for ns in [&lan.server, &lan.client] {
            ip(&["netns", "add", ns]);
            ip(&["-n", ns, "link", "set", "lo", "up"]);
        }
        ip(&[
            "link",
            "add",
            SERVER_IF,
            "netns",
            &lan.server,
            "type",
            "veth",
            "peer",
            "name",
            CLIENT_IF,
            "netns",
            &lan.client,
        ]);
        for (ns, dev, addr) in [
            (&lan.server, SERVER_IF, SERVER_IP),
            (&lan.client, CLIENT_IF, CLIENT_IP),
        ] {
            ip(&["-n", ns, "addr", "add", &format!("{addr}/24"), "dev", dev]);
            ip(&["-n", ns, "link", "set", dev, "up"]);
        }
        lan
    }
}

impl Drop for Lan {
    fn drop(&mut self) {
        for ns in [&self.server, &self.client] {
            let _ = Command::new("ip")
                .args(["netns", "del", ns])
                .stderr(Stdio::null())
                .status();
        }
    }
}

/// Moves the calling thread into network namespace `ns`.
fn enter(ns: &str) {
    let f = File::open(format!("/run/netns/{ns}")).expect("opening the namespace");
    nix::sched::setns(f, nix::sched::CloneFlags::CLONE_NEWNET).expect("setns");
}

/// The proxyDHCP server, running on its own thread inside the server namespace.
struct Server {
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<thread::JoinHandle<io::Result<()>>>,
}

impl Server {
    fn start(ns: &str, hub: Arc<Hub>) -> Server {
        let ns = ns.to_string();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let (ready_tx, ready) = std::sync::mpsc::channel::<io::Result<()>>();
        let thread = thread::spawn(move || -> io::Result<()> {
            enter(&ns);
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            rt.block_on(async move {
                let any = Ipv4Addr::UNSPECIFIED;
                let socks =
                    dhcp::bind_port(SocketAddrV4::new(any, 67), Some(SERVER_IF)).and_then(|s67| {
                        let s4011 = dhcp::bind_port(SocketAddrV4::new(any, 4011), Some(SERVER_IF))?;
                        Ok((s67, s4011))
                    });
                let (s67, s4011) = match socks {
                    Ok(s) => {
                        let _ = ready_tx.send(Ok(()));
                        s
                    }
                    Err(e) => {
                        let _ = ready_tx.send(Err(io::Error::new(e.kind(), e.to_string())));
                        return Err(e);
                    }
                };
                let cfg = Config {
                    server_ip: SERVER_IP,
                    http_base: HTTP_BASE.into(),
                    boot_files: BootFiles {
                        bios: "ipxe/undionly.kpxe".into(),
                        efi_x64: "ipxe/snponly.efi".into(),
                        efi_arm64: None,
                    },
                };
                // The inventory knows KNOWN; its default boots unknown machines, except
                // STRANGER, which stands for a default that does not.
                let (known, stranger) = (mac_text(&KNOWN), mac_text(&STRANGER));
                let directory: netboot::hub::Directory = Arc::new(move |mac: &str| {
                    if mac == known {
                        Lookup::Node("n1".into())
                    } else {
                        Lookup::Unknown {
                            boot: mac != stranger,
                        }
                    }
                });
                tokio::select! {
                    r = dhcp::serve(Some(s67), s4011, cfg, directory, hub) => r,
                    _ = stopped => Ok(()),
                }
            })
        });
        match ready.recv_timeout(SERVER_START_DEADLINE) {
            Ok(Ok(())) => {}
            Ok(Err(e)) => panic!("the proxyDHCP server did not start: {e}"),
            Err(e) => {
                panic!("the proxyDHCP server did not start within {SERVER_START_DEADLINE:?}: {e}")
            }
        }
        Server {
            stop: Some(stop),
            thread: Some(thread),
        }
    }

    /// Stops the server; its error, if it failed on its own.
    fn stop(mut self) -> io::Result<()> {
        let _ = self.stop.take().map(|s| s.send(()));
        match self.thread.take().map(thread::JoinHandle::join) {
            Some(Ok(r)) => r,
            Some(Err(_)) => Err(io::Error::other("the server thread panicked")),
            None => Ok(()),
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.stop.take().map(|s| s.send(()));
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn mac_text(mac: &[u8; 6]) -> String {
    mac.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

/// A client request, as a PXE ROM builds it.
fn request(mac: [u8; 6], xid: u32, message: MessageType, options: &[(u8, &[u8])]) -> Packet {
    let mut chaddr = [0u8; 16];
    chaddr[..6].copy_from_slice(&mac);
    let mut o = Options::default();
    o.set(opt::MESSAGE_TYPE, [message.code()]);
    for (code, value) in options {
        o.set(*code, *value);
    }
    Packet {
        op: 1,
        htype: 1,
        hlen: 6,
        hops: 0,
        xid,
        secs: 0,
        flags: 0x8000,
        ciaddr: Ipv4Addr::UNSPECIFIED,
        yiaddr: Ipv4Addr::UNSPECIFIED,
        siaddr: Ipv4Addr::UNSPECIFIED,
        giaddr: Ipv4Addr::UNSPECIFIED,
        chaddr,
        sname: Vec::new(),
        file: Vec::new(),
        options: o,
    }
}

const GUID: [u8; 17] = [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16];

/// What OVMF's PXE sends.
fn pxe(mac: [u8; 6], xid: u32, message: MessageType) -> Packet {
    request(
        mac,
        xid,
        message,
        &[
            (opt::VENDOR_CLASS, b"PXEClient:Arch:00007:UNDI:003016"),
            (opt::CLIENT_ARCH, &[0, 7]),
            (opt::CLIENT_NDI, &[1, 3, 16]),
            (opt::CLIENT_GUID, &GUID),
        ],
    )
}

/// The client's socket: port 68 on the client's interface, allowed to broadcast.
fn client_socket() -> UdpSocket {
    let s = Socket::new(Domain::IPV4, Type::DGRAM, Some(Protocol::UDP)).expect("socket");
    s.set_reuse_address(true).expect("SO_REUSEADDR");
    s.set_broadcast(true).expect("SO_BROADCAST");
    s.bind_device(Some(CLIENT_IF.as_bytes()))
        .expect("SO_BINDTODEVICE");
    s.bind(&SocketAddr::from(([0, 0, 0, 0], 68)).into())
        .expect("binding port 68");
    s.into()
}

/// The next DHCP message to arrive before `deadline`, with its sender.
fn receive(sock: &UdpSocket, deadline: Instant) -> Option<(Packet, SocketAddr)> {
    let mut buf = [0u8; 1500];
    loop {
        let left = deadline.checked_duration_since(Instant::now())?;
        sock.set_read_timeout(Some(left.max(Duration::from_millis(1))))
            .expect("read timeout");
        match sock.recv_from(&mut buf) {
            Ok((n, from)) => {
                let p = dhcp::parse(&buf[..n]).expect("the server's answer parses");
                return Some((p, from));
            }
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) =>
            {
                return None;
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => panic!("receiving: {e}"),
        }
    }
}

fn send(sock: &UdpSocket, p: &Packet, to: SocketAddrV4) {
    sock.send_to(&p.to_bytes(), to).expect("sending");
}

fn load(c: &AtomicU64) -> u64 {
    c.load(Ordering::Relaxed)
}

/// The client side of the test, inside the client namespace.
fn client_checks() {
    let sock = client_socket();
    let broadcast = SocketAddrV4::new(Ipv4Addr::BROADCAST, 67);
    let server = SocketAddr::from(SocketAddrV4::new(SERVER_IP, 67));

    // 1. The firmware's broadcast DISCOVER gets a proxy OFFER, broadcast back to port 68.
    send(&sock, &pxe(KNOWN, 1, MessageType::Discover), broadcast);
    let (offer, from) = receive(&sock, Instant::now() + REPLY_DEADLINE)
        .unwrap_or_else(|| panic!("no OFFER within {REPLY_DEADLINE:?}"));
    assert_eq!(from, server);
    assert_eq!(offer.xid, 1);
    assert_eq!(offer.op, 2);
    assert_eq!(offer.message_type(), Some(MessageType::Offer));
    assert_eq!(offer.yiaddr, Ipv4Addr::UNSPECIFIED);
    assert_eq!(offer.siaddr, SERVER_IP);
    assert_eq!(offer.file, b"ipxe/snponly.efi");
    assert_eq!(offer.mac(), Some(mac_text(&KNOWN)));
    assert_eq!(
        offer.options.get(opt::SERVER_ID),
        Some(&SERVER_IP.octets()[..])
    );
    assert_eq!(
        offer.options.get(opt::VENDOR_CLASS),
        Some(&b"PXEClient"[..])
    );
    assert_eq!(offer.options.get(opt::CLIENT_GUID), Some(&GUID[..]));
    assert_eq!(
        offer.options.get(opt::VENDOR_SPECIFIC),
        Some(&[6, 1, 8, 255][..])
    );
    for code in [1, 3, 51] {
        assert_eq!(offer.options.get(code), None, "option {code} in the OFFER");
    }

    // 2. With the router's lease, the client asks port 4011 and gets an ACK back where it
    //    came from.
    let mut req = pxe(KNOWN, 2, MessageType::Request);
    req.ciaddr = CLIENT_IP;
    req.flags = 0;
    req.options.set(opt::SERVER_ID, SERVER_IP.octets());
    send(&sock, &req, SocketAddrV4::new(SERVER_IP, 4011));
    let (ack, from) = receive(&sock, Instant::now() + REPLY_DEADLINE)
        .unwrap_or_else(|| panic!("no ACK from port 4011 within {REPLY_DEADLINE:?}"));
    assert_eq!(from, SocketAddr::from(SocketAddrV4::new(SERVER_IP, 4011)));
    assert_eq!(ack.xid, 2);
    assert_eq!(ack.message_type(), Some(MessageType::Ack));
    assert_eq!(ack.yiaddr, Ipv4Addr::UNSPECIFIED);
    assert_eq!(ack.ciaddr, CLIENT_IP);
    assert_eq!(ack.file, b"ipxe/snponly.efi");

    // 3. What must go unanswered, then iPXE. The server answers the port's packets in order,
    //    so an answer to any of the first ones would arrive before iPXE's.
    let laptop = request(
        [0x52, 0x54, 0x00, 0x77, 0x00, 0x42],
        3,
        MessageType::Discover,
        &[(opt::VENDOR_CLASS, b"MSFT 5.0")],
    );
    send(&sock, &laptop, broadcast);
    let mut to_router = pxe(KNOWN, 4, MessageType::Request);
    to_router.options.set(opt::SERVER_ID, ROUTER_IP.octets());
    to_router.options.set(50, CLIENT_IP.octets());
    send(&sock, &to_router, broadcast);
    sock.send_to(b"not a DHCP message", broadcast)
        .expect("sending");
    send(&sock, &pxe(STRANGER, 5, MessageType::Discover), broadcast);
    let ipxe = request(
        KNOWN,
        6,
        MessageType::Discover,
        &[
            (opt::VENDOR_CLASS, b"PXEClient:Arch:00007:UNDI:003010"),
            (opt::CLIENT_ARCH, &[0, 7]),
            (opt::USER_CLASS, b"iPXE"),
            (opt::IPXE, &[177, 5, 1, 0x80, 0x86, 0x10, 0x0e]),
        ],
    );
    send(&sock, &ipxe, broadcast);
    let (offer, _) = receive(&sock, Instant::now() + REPLY_DEADLINE)
        .unwrap_or_else(|| panic!("no OFFER for iPXE within {REPLY_DEADLINE:?}"));
    assert_eq!(
        offer.xid, 6,
        "answered a request that must be ignored: {offer:?}"
    );
    assert_eq!(
        String::from_utf8_lossy(&offer.file),
        format!("{HTTP_BASE}/boot.ipxe?mac={}", mac_text(&KNOWN))
    );
    if let Some((p, from)) = receive(&sock, Instant::now() + SILENCE) {
        panic!("unexpected answer from {from}: {p:?}");
    }
}

#[test]
fn proxydhcp_answers_pxe_clients_on_a_lan() {
    if !requirements_met() {
        return;
    }
    let lan = Lan::new();
    let hub = Arc::new(Hub::new());
    let server = Server::start(&lan.server, Arc::clone(&hub));
    let client_ns = lan.client.clone();
    let client = thread::spawn(move || {
        enter(&client_ns);
        client_checks();
    })
    .join();
    let served = server.stop();
    if let Err(panic) = client {
        std::panic::resume_unwind(panic);
    }
    served.expect("the proxyDHCP server failed");

    let m = &hub.metrics;
    assert_eq!(load(&m.dhcp_packets), 7);
    assert_eq!(load(&m.dhcp_replies), 3);
    assert_eq!(load(&m.dhcp_malformed), 1);
    assert_eq!(load(&m.dhcp_ignored), 3);
    let boots = hub.boots();
    assert_eq!(boots.len(), 1, "{boots:?}");
    assert_eq!(boots[0].mac, mac_text(&KNOWN));
    assert_eq!(boots[0].name.as_deref(), Some("n1"));
    assert_eq!(boots[0].stages[0].stage, Stage::Dhcp);
    assert_eq!(boots[0].stages[0].detail, "x64 UEFI -> ipxe/snponly.efi");
    let found = hub.discovered_list();
    assert_eq!(found.len(), 1, "{found:?}");
    assert_eq!(found[0].mac, mac_text(&STRANGER));
    assert_eq!(found[0].arch, "x64 UEFI");
    drop(lan);
}
