//! A virtual LAN made of network namespaces, the shape of a homelab's: a home router that
//! hands out addresses and knows nothing of network boot, and a LAN where the boot server
//! listens and the VMs' tap devices are plugged into one bridge.
//!
//! ```text
//! netns ROUTER: eth0 10.33.0.254/24   dnsmasq: plain DHCP (10.33.0.100-199), no boot options,
//!               fd00:33::254/64      and IPv6 router advertisements (SLAAC), as home routers do
//! netns LAN:    br0  10.33.0.1/24     the boot server (or a test's HTTP server) listens here
//!               vr0 (veth peer of the router's eth0), tap0, tap1, ... are ports of br0
//! ```
//!
//! Nothing is routed anywhere else: neither namespace has a default route or a link outside.

use std::path::Path;
use std::process::{Child, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};

use anyhow::{Context, Result, bail};

use crate::netns::Netns;

/// The boot server's address on the LAN (the bridge's own address).
pub const SERVER_IP: &str = "10.33.0.1";
/// The router's address: the DHCP server and the default gateway it announces.
pub const ROUTER_IP: &str = "10.33.0.254";

/// The LAN; both namespaces and the router's DHCP server go away on drop.
#[derive(Debug)]
pub struct Lan {
    /// The LAN namespace: the bridge, the taps, the server.
    pub ns: Netns,
    router: Netns,
    dhcpd: Option<Child>,
    taps: AtomicU32,
}

fn run(cmd: &mut std::process::Command) -> Result<()> {
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("running {cmd:?}"))?;
    if !out.status.success() {
        bail!(
            "{cmd:?} failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

fn ip(ns: &Netns, args: &[&str]) -> Result<()> {
    run(std::process::Command::new("ip")
        .args(["-n", ns.name()])
        .args(args))
}

impl Lan {
    /// Makes the LAN and starts the router's DHCP server; its config, lease file and log go
    /// into `dir`.
    pub fn new(tag: &str, dir: &Path) -> Result<Lan> {
        std::fs::create_dir_all(dir)?;
        let ns = Netns::new(tag)?;
        let router = Netns::new(&format!("{tag}-rt"))?;
        ip(&ns, &["link", "add", "br0", "type", "bridge"])?;
        ip(
            &ns,
            &["addr", "add", &format!("{SERVER_IP}/24"), "dev", "br0"],
        )?;
        ip(&ns, &["link", "set", "br0", "up"])?;
        run(std::process::Command::new("ip").args([
            "link",
            "add",
            "vr0",
            "netns",
            ns.name(),
            "type",
            "veth",
            "peer",
            "name",
            "eth0",
            "netns",
            router.name(),
        ]))?;
        ip(&ns, &["link", "set", "vr0", "master", "br0"])?;
        ip(&ns, &["link", "set", "vr0", "up"])?;
        ip(
            &router,
            &["addr", "add", &format!("{ROUTER_IP}/24"), "dev", "eth0"],
        )?;
        ip(
            &router,
            &[
                "-6",
                "addr",
                "add",
                "fd00:33::254/64",
                "dev",
                "eth0",
                "nodad",
            ],
        )?;
        ip(&router, &["link", "set", "eth0", "up"])?;

        // The home router: dnsmasq as a plain DHCP server (no DNS, no boot options), logging
        // each DHCP exchange to a file of the test.
        let leases = dir.join("router-dnsmasq.leases");
        let log = std::fs::File::create(dir.join("router-dnsmasq.log"))?;
        let dhcpd = router
            .command("dnsmasq")
            .args([
                "--no-daemon",
                "--conf-file=/dev/null",
                // No DNS server: this router only hands out addresses.
                "--port=0",
                "--interface=eth0",
                "--bind-interfaces",
                "--dhcp-range=10.33.0.100,10.33.0.199,1h",
                &format!("--dhcp-option=option:router,{ROUTER_IP}"),
                // IPv6 router advertisements, as home routers send: without one, iPXE waits
                // about 15 s for IPv6 autoconfiguration before it goes on.
                "--enable-ra",
                "--dhcp-range=fd00:33::,ra-only",
                // No ICMP probe of an address before offering it: the LAN is ours alone.
                "--no-ping",
                "--log-dhcp",
                "--log-facility=-",
                "--user=root",
                "--pid-file=",
            ])
            .arg(format!("--dhcp-leasefile={}", leases.display()))
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .context("starting dnsmasq (the LAN's router) in its namespace")?;
        Ok(Lan {
            ns,
            router,
            dhcpd: Some(dhcpd),
            taps: AtomicU32::new(0),
        })
    }

    /// A new tap device plugged into the bridge, for one VM.
    pub fn tap(&self) -> Result<String> {
        let name = format!("tap{}", self.taps.fetch_add(1, Ordering::Relaxed));
        ip(&self.ns, &["tuntap", "add", "dev", &name, "mode", "tap"])?;
        ip(&self.ns, &["link", "set", &name, "master", "br0"])?;
        ip(&self.ns, &["link", "set", &name, "up"])?;
        Ok(name)
    }

    /// Another machine on the LAN: a namespace of its own whose `eth0` (a veth whose peer is
    /// a port of the bridge) has `address`/24, as a second boot server would.
    pub fn host(&self, tag: &str, address: &str) -> Result<Netns> {
        let host = Netns::new(tag)?;
        let port = format!("vh{}", self.taps.fetch_add(1, Ordering::Relaxed));
        run(std::process::Command::new("ip").args([
            "link",
            "add",
            &port,
            "netns",
            self.ns.name(),
            "type",
            "veth",
            "peer",
            "name",
            "eth0",
            "netns",
            host.name(),
        ]))?;
        ip(&self.ns, &["link", "set", &port, "master", "br0"])?;
        ip(&self.ns, &["link", "set", &port, "up"])?;
        ip(
            &host,
            &["addr", "add", &format!("{address}/24"), "dev", "eth0"],
        )?;
        ip(&host, &["link", "set", "eth0", "up"])?;
        Ok(host)
    }

    /// The router's namespace (a machine on the LAN beside the boot server).
    pub fn router(&self) -> &Netns {
        &self.router
    }

    /// The router's namespace name (for logs).
    pub fn router_name(&self) -> &str {
        self.router.name()
    }
}

impl Drop for Lan {
    fn drop(&mut self) {
        if let Some(mut c) = self.dhcpd.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}
