//! Power control: Wake-on-LAN for machines without a BMC, IPMI (Debian's `ipmitool`) or Redfish
//! ([`super::redfish`]) for those with one. Off and reboot of a running node go through its agent (see [`super`]); these are
//! the ways that do not need the node's own help.

use std::net::{Ipv4Addr, SocketAddrV4};
use std::time::Duration;

use crate::inventory::{Bmc, BmcKind};
use crate::secrets::BmcLogin;

/// The UDP port magic packets go to (the discard port, as `wakeonlan` and `etherwake -b` use).
pub const WOL_PORT: u16 = 9;

/// The magic packet for `mac`: six 0xff bytes, then the MAC sixteen times.
pub fn magic_packet(mac: [u8; 6]) -> [u8; 102] {
    let mut p = [0xffu8; 102];
    for i in 0..16 {
        p[6 + i * 6..12 + i * 6].copy_from_slice(&mac);
    }
    p
}

/// The six bytes of a MAC written `aa:bb:cc:dd:ee:ff`.
pub fn mac_bytes(mac: &str) -> Option<[u8; 6]> {
    let mut out = [0u8; 6];
    let parts: Vec<&str> = mac.split(':').collect();
    if parts.len() != 6 {
        return None;
    }
    for (o, p) in out.iter_mut().zip(parts) {
        *o = u8::from_str_radix(p, 16).ok()?;
    }
    Some(out)
}

/// Where a magic packet goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WolTarget {
    /// The (broadcast) address.
    pub address: Ipv4Addr,
    /// The UDP port.
    pub port: u16,
    /// The interface to send it out of (`SO_BINDTODEVICE`), when named.
    pub interface: Option<String>,
}

/// Sends the magic packet for `mac` to `to`; the answer says what was sent where.
pub fn wake(mac: &str, to: &WolTarget) -> std::io::Result<String> {
    let bytes = mac_bytes(mac)
        .ok_or_else(|| std::io::Error::other(format!("{mac} is not a MAC address")))?;
    let sock = socket2::Socket::new(
        socket2::Domain::IPV4,
        socket2::Type::DGRAM,
        Some(socket2::Protocol::UDP),
    )?;
    sock.set_broadcast(true)?;
    if let Some(ifname) = &to.interface {
        sock.bind_device(Some(ifname.as_bytes())).map_err(|e| {
            std::io::Error::other(format!("sending out of interface {ifname}: {e}"))
        })?;
    }
    let dest = SocketAddrV4::new(to.address, to.port);
    sock.send_to(&magic_packet(bytes), &dest.into())
        .map_err(|e| std::io::Error::other(format!("sending a magic packet to {dest}: {e}")))?;
    Ok(format!(
        "Wake-on-LAN magic packet for {mac} sent to {dest}{}",
        to.interface
            .as_ref()
            .map(|i| format!(" on {i}"))
            .unwrap_or_default()
    ))
}

/// What a BMC is asked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BmcAction {
    /// Power on.
    On,
    /// Ask the OS to shut down (ACPI power button).
    Soft,
    /// Cut power.
    Off,
    /// Hard reset.
    Reset,
    /// Read the power state.
    Status,
}

impl BmcAction {
    fn ipmi(self) -> &'static str {
        match self {
            BmcAction::On => "on",
            BmcAction::Soft => "soft",
            BmcAction::Off => "off",
            BmcAction::Reset => "reset",
            BmcAction::Status => "status",
        }
    }
}

/// How long one BMC command may take.
pub const BMC_TIMEOUT: Duration = Duration::from_secs(20);

/// Runs `action` on `bmc` with `login`: IPMI by `ipmitool -I lanplus` (the password goes in
/// the environment, never on the command line; the answer is ipmitool's own words), Redfish
/// over HTTPS.
pub async fn bmc(bmc: &Bmc, login: &BmcLogin, action: BmcAction) -> std::io::Result<String> {
    match bmc.kind {
        BmcKind::Ipmi => ipmi(bmc, login, action).await,
        BmcKind::Redfish => {
            let (b, l) = (bmc.clone(), login.clone());
            tracing::info!(bmc = %bmc.address, port = bmc.port(), action = action.ipmi(), "redfish");
            tokio::task::spawn_blocking(move || super::redfish::act(&b, &l, action, BMC_TIMEOUT))
                .await
                .map_err(std::io::Error::other)?
                .map_err(std::io::Error::other)
        }
    }
}

/// The power state in a BMC's answer to [`BmcAction::Status`].
pub fn parse_status(kind: BmcKind, said: &str) -> Option<bool> {
    match kind {
        BmcKind::Ipmi => parse_ipmi_status(said),
        BmcKind::Redfish => super::redfish::parse_status(said),
    }
}

async fn ipmi(bmc: &Bmc, login: &BmcLogin, action: BmcAction) -> std::io::Result<String> {
    let mut cmd = tokio::process::Command::new("ipmitool");
    cmd.args(["-I", "lanplus", "-H"])
        .arg(&bmc.address)
        .arg("-p")
        .arg(bmc.port().to_string())
        .arg("-U")
        .arg(&login.username)
        .arg("-E")
        // Cipher suite 3 (RAKP-HMAC-SHA1, AES-CBC-128), which every IPMI 2.0 BMC has: asking
        // the BMC for its list first only adds a round trip and a warning.
        .args(["-C", "3", "-R", "2", "-N", "2"])
        .args(["chassis", "power", action.ipmi()])
        .env("IPMI_PASSWORD", &login.password)
        .stdin(std::process::Stdio::null())
        .kill_on_drop(true);
    tracing::info!(bmc = %bmc.address, port = bmc.port(), action = action.ipmi(), "ipmitool chassis power");
    let out = tokio::time::timeout(BMC_TIMEOUT, cmd.output())
        .await
        .map_err(|_| {
            std::io::Error::other(format!(
                "ipmitool did not answer within {} s (is the BMC at {}:{} up?)",
                BMC_TIMEOUT.as_secs(),
                bmc.address,
                bmc.port()
            ))
        })?
        .map_err(|e| {
            std::io::Error::other(format!(
                "running ipmitool: {e} (install Debian's ipmitool on the boot server)"
            ))
        })?;
    let said = format!(
        "{} {}",
        String::from_utf8_lossy(&out.stdout).trim(),
        String::from_utf8_lossy(&out.stderr).trim()
    )
    .trim()
    .to_string();
    if out.status.success() {
        Ok(said)
    } else {
        Err(std::io::Error::other(format!(
            "ipmitool chassis power {} at {}:{} failed: {said}",
            action.ipmi(),
            bmc.address,
            bmc.port()
        )))
    }
}

/// The power state in ipmitool's status answer ("Chassis Power is on").
fn parse_ipmi_status(said: &str) -> Option<bool> {
    let l = said.to_ascii_lowercase();
    if l.contains("power is on") {
        Some(true)
    } else if l.contains("power is off") {
        Some(false)
    } else {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_magic_packet_is_six_ff_then_the_mac_sixteen_times() {
        let p = magic_packet(mac_bytes("52:54:00:ab:cd:ef").unwrap());
        assert_eq!(&p[..6], &[0xff; 6]);
        for i in 0..16 {
            assert_eq!(
                &p[6 + i * 6..12 + i * 6],
                &[0x52, 0x54, 0x00, 0xab, 0xcd, 0xef]
            );
        }
        assert_eq!(mac_bytes("52:54:00:ab:cd"), None);
        assert_eq!(mac_bytes("52:54:00:ab:cd:zz"), None);
    }

    #[test]
    fn a_magic_packet_goes_where_it_is_sent() {
        let rx = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        rx.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let port = rx.local_addr().unwrap().port();
        let said = wake(
            "02:00:00:00:00:10",
            &WolTarget {
                address: Ipv4Addr::LOCALHOST,
                port,
                interface: None,
            },
        )
        .unwrap();
        assert!(said.contains("02:00:00:00:00:10") && said.contains(&format!(":{port}")));
        let mut buf = [0u8; 200];
        let n = rx.recv(&mut buf).unwrap();
        assert_eq!(&buf[..n], &magic_packet([2, 0, 0, 0, 0, 0x10])[..]);
    }

    #[test]
    fn ipmitool_status_is_read() {
        assert_eq!(
            parse_status(BmcKind::Ipmi, "Chassis Power is on"),
            Some(true)
        );
        assert_eq!(
            parse_status(BmcKind::Ipmi, "Chassis Power is off"),
            Some(false)
        );
        assert_eq!(parse_status(BmcKind::Ipmi, "Error"), None);
    }
}
