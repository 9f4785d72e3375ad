//! The proxyDHCP responder (UDP ports 67 and 4011): tells PXE firmware, UEFI HTTP Boot firmware
//! and iPXE what to boot, next to the LAN's own DHCP server, and never hands out an address.
//!
//! # Who gets an answer
//!
//! Only a client request (BOOTP op 1, Ethernet) whose vendor class (option 60) starts with
//! `PXEClient` or `HTTPClient`. Everything else (phones, laptops, the router's own replies,
//! DHCPDECLINE/RELEASE/INFORM) is left alone and counted as ignored. A machine the inventory
//! does not list is noted in the hub (once, logged at info); when the inventory does not boot
//! unknown machines it gets no answer at all, so its firmware moves on to its next boot option.
//!
//! | port | message | answer |
//! | --- | --- | --- |
//! | 67 | DHCPDISCOVER (broadcast) | a proxy DHCPOFFER |
//! | 67 | DHCPREQUEST with option 54 = our `server_ip` | a DHCPACK with the same boot information |
//! | 67 | any other DHCPREQUEST | nothing: it selects, renews or confirms the router's lease |
//! | 4011 | DHCPREQUEST (unicast, after the client has an address) | a DHCPACK |
//! | 4011 | anything else | nothing |
//!
//! A DHCPREQUEST on port 67 without option 54 is an INIT-REBOOT, RENEWING or REBINDING client:
//! the lease is the router's business, and an ACK from us (with no address in it) could be taken
//! for the router's confirmation. So port 67 acknowledges only a request that names us.
//!
//! # Two ways to the boot file
//!
//! - The smee style, on port 67: the OFFER carries `siaddr`, option 54, the file in the BOOTP
//!   `file` field and option 43 with `PXE_DISCOVERY_CONTROL` (sub-option 6) = 8, "no boot
//!   server discovery, boot the file in this offer". BIOS PXE ROMs boot straight from it.
//! - The pixiecore (BINL) style, on port 4011: a client that keeps the router's lease and
//!   asks the proxy server again sends a DHCPREQUEST to our port 4011, and gets a DHCPACK with
//!   the same boot file, sent back to the address and port it came from. edk2 (OVMF) files an
//!   offer without a boot menu in option 43 as a "BINL" offer and takes this path; iPXE takes it
//!   too ("ProxyDHCP REQUEST"). When the request carries option 43 sub-option 71 (the PXE boot
//!   item), the ACK echoes it, as a PXE boot server does.
//!
//! Every answer has `yiaddr` 0.0.0.0 and no lease time, subnet mask, router or DNS options; it
//! echoes option 60 (`PXEClient` or `HTTPClient`, which UEFI HTTP Boot requires) and option 97
//! (the client GUID) when the client sent it. A missing option 97 is fine (old UNDI ROMs omit
//! it). `sname` is the server's address as text. The boot file goes in the BOOTP `file` field;
//! only a name too long for it (128 bytes) goes in option 67 instead.
//!
//! # What to boot
//!
//! The client architecture comes from option 93 (IANA "Processor Architecture Types"), else
//! from the `Arch:NNNNN` field of option 60, else, for a `PXEClient`, it is taken to be BIOS
//! (the pre-RFC 4578 ROMs that send neither are BIOS ROMs; UEFI firmware always sends 93). An
//! `HTTPClient` without an architecture gets no answer: guessing could send an x64 binary to an
//! arm64 machine.
//!
//! | option 93 | name | answer |
//! | --- | --- | --- |
//! | 0 | BIOS | `boot_files.bios` over TFTP |
//! | 6, 15 | IA32 UEFI (HTTP) | none (not supported; logged at info) |
//! | 7, 9 | x64 UEFI | `boot_files.efi_x64` over TFTP (9 is what VMware sends for x64) |
//! | 11 | arm64 UEFI | `boot_files.efi_arm64` when there is one, else none (logged) |
//! | 16 | x64 UEFI HTTP | `{http_base}/{efi_x64}` |
//! | 19 | arm64 UEFI HTTP | `{http_base}/{efi_arm64}` when there is one |
//! | other | `arch N` | none (logged) |
//!
//! The transport follows the vendor class: an `HTTPClient` always gets an `http://` URL (it
//! cannot do TFTP) and a `PXEClient` a TFTP file name, of the binary for its architecture.
//!
//! iPXE itself (option 77 contains `iPXE`, or option 175 is present) gets the URL of its boot
//! script, `{http_base}/boot.ipxe?mac=MAC`, whatever its architecture: firmware gets iPXE over
//! TFTP, iPXE gets the script over HTTP, and the loop is broken.
//!
//! # Where answers go
//!
//! From port 4011: back to the sender's address and port (broadcast to that port if the sender
//! had no address yet). From port 67 ([`destination`]): to `giaddr:67` when a relay agent
//! forwarded the request; to `ciaddr:68` when the client has an address and did not set the
//! broadcast flag; else broadcast to `255.255.255.255:68`. Broadcasts leave by the interface the
//! socket is bound to, so name the LAN's interface to [`bind_port`] on a machine with several.
//!
//! Parsing ([`parse`]) and deciding ([`answer`]) are pure; [`serve`] only moves datagrams.

use std::borrow::Cow;
use std::io;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::sync::Arc;

use socket2::{Domain, Protocol, Socket, Type};
use tokio::net::UdpSocket;

use crate::hub::{Directory, Hub, Lookup, Metrics, Stage};

/// Boot files, relative to the TFTP root, by client kind.
#[derive(Debug, Clone)]
pub struct BootFiles {
    /// BIOS PXE (option 93 = 0).
    pub bios: String,
    /// x64 UEFI PXE (option 93 = 7 or 9).
    pub efi_x64: String,
    /// arm64 UEFI PXE (option 93 = 11), when an arm64 iPXE is published.
    pub efi_arm64: Option<String>,
}

/// proxyDHCP settings.
#[derive(Debug, Clone)]
pub struct Config {
    /// The boot server's address on the LAN (option 54, `siaddr`).
    pub server_ip: Ipv4Addr,
    /// Base URL of the HTTP server, e.g. `http://10.33.0.1:8080` (no trailing slash).
    pub http_base: String,
    /// What firmware gets over TFTP.
    pub boot_files: BootFiles,
}

/// The DHCP server port, where broadcast DISCOVERs arrive.
pub const SERVER_PORT: u16 = 67;
/// The DHCP client port, where broadcast answers go.
pub const CLIENT_PORT: u16 = 68;
/// The PXE boot server port (the BINL path).
pub const PXE_PORT: u16 = 4011;

/// DHCP option codes this module reads or writes.
pub mod opt {
    /// Padding (no length byte).
    pub const PAD: u8 = 0;
    /// Vendor-specific information (PXE sub-options).
    pub const VENDOR_SPECIFIC: u8 = 43;
    /// Option overload: more options in `file` (1), `sname` (2) or both (3).
    pub const OVERLOAD: u8 = 52;
    /// DHCP message type.
    pub const MESSAGE_TYPE: u8 = 53;
    /// Server identifier.
    pub const SERVER_ID: u8 = 54;
    /// Host name (RFC 2132 3.14), as the client calls itself.
    pub const HOST_NAME: u8 = 12;
    /// Vendor class identifier (`PXEClient:Arch:00007:UNDI:003016`).
    pub const VENDOR_CLASS: u8 = 60;
    /// Boot file name (used only when the BOOTP `file` field is too small).
    pub const BOOTFILE: u8 = 67;
    /// User class (iPXE sends `iPXE`).
    pub const USER_CLASS: u8 = 77;
    /// Client system architecture (RFC 4578).
    pub const CLIENT_ARCH: u8 = 93;
    /// Client network interface identifier (RFC 4578).
    pub const CLIENT_NDI: u8 = 94;
    /// Client machine identifier, the GUID (RFC 4578).
    pub const CLIENT_GUID: u8 = 97;
    /// iPXE's encapsulated options; only iPXE sends it.
    pub const IPXE: u8 = 175;
    /// End of options (no length byte).
    pub const END: u8 = 255;
}

/// PXE sub-options of option 43.
const PXE_DISCOVERY_CONTROL: u8 = 6;
const PXE_BOOT_ITEM: u8 = 71;
/// Discovery control bit 3: boot the file named in this offer, no boot server discovery.
const DISCOVERY_USE_BOOTFILE: u8 = 8;

const MAGIC_COOKIE: [u8; 4] = [99, 130, 83, 99];
const HEADER_LEN: usize = 236;
const SNAME: std::ops::Range<usize> = 44..108;
const FILE: std::ops::Range<usize> = 108..236;
/// The shortest BOOTP message relays must forward (RFC 1542); replies are padded to it.
const MIN_MESSAGE_LEN: usize = 300;
const BROADCAST_FLAG: u16 = 0x8000;
const BOOTREQUEST: u8 = 1;
const BOOTREPLY: u8 = 2;

/// Why bytes are not a DHCP message.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PacketError {
    /// Shorter than the fixed header plus the magic cookie.
    #[error("{0} bytes is too short for a DHCP message (at least 240)")]
    TooShort(usize),
    /// No DHCP magic cookie after the BOOTP header.
    #[error("no DHCP magic cookie (a plain BOOTP message?)")]
    NoMagicCookie,
    /// An option's length runs past the end of its area.
    #[error("option {code} runs past the end of the {area}")]
    TruncatedOption {
        /// The option code.
        code: u8,
        /// `options`, `file` or `sname`.
        area: &'static str,
    },
    /// Option 52 is not one byte of 1, 2 or 3.
    #[error("option 52 (overload) has a bad value {0:02x?}")]
    BadOverload(Vec<u8>),
}

/// DHCP message types (option 53).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MessageType {
    /// 1: a client looks for servers.
    Discover,
    /// 2: a server's offer.
    Offer,
    /// 3: a client asks a server for its offer (or to confirm a lease).
    Request,
    /// 4: a client refuses an address.
    Decline,
    /// 5: a server confirms.
    Ack,
    /// 6: a server refuses.
    Nak,
    /// 7: a client gives its address back.
    Release,
    /// 8: a client with an address asks for settings.
    Inform,
}

impl MessageType {
    /// The type for an option 53 value.
    pub fn from_code(code: u8) -> Option<MessageType> {
        Some(match code {
            1 => MessageType::Discover,
            2 => MessageType::Offer,
            3 => MessageType::Request,
            4 => MessageType::Decline,
            5 => MessageType::Ack,
            6 => MessageType::Nak,
            7 => MessageType::Release,
            8 => MessageType::Inform,
            _ => return None,
        })
    }

    /// The option 53 value.
    pub fn code(self) -> u8 {
        match self {
            MessageType::Discover => 1,
            MessageType::Offer => 2,
            MessageType::Request => 3,
            MessageType::Decline => 4,
            MessageType::Ack => 5,
            MessageType::Nak => 6,
            MessageType::Release => 7,
            MessageType::Inform => 8,
        }
    }
}

/// DHCP options in the order first seen, one entry per code; an option that appears several
/// times is one value, the parts concatenated (RFC 3396).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Options {
    entries: Vec<(u8, Vec<u8>)>,
}

impl Options {
    /// The value of option `code`.
    pub fn get(&self, code: u8) -> Option<&[u8]> {
        self.entries
            .iter()
            .find(|(c, _)| *c == code)
            .map(|(_, v)| v.as_slice())
    }

    /// Sets option `code`, replacing any value. Codes 0 (pad) and 255 (end) carry no value and
    /// are never written.
    pub fn set(&mut self, code: u8, value: impl Into<Vec<u8>>) {
        let value = value.into();
        match self.entries.iter_mut().find(|(c, _)| *c == code) {
            Some(e) => e.1 = value,
            None => self.entries.push((code, value)),
        }
    }

    /// Removes option `code`, returning its value.
    pub fn remove(&mut self, code: u8) -> Option<Vec<u8>> {
        let i = self.entries.iter().position(|(c, _)| *c == code)?;
        Some(self.entries.remove(i).1)
    }

    /// Every option, in order.
    pub fn iter(&self) -> impl Iterator<Item = (u8, &[u8])> {
        self.entries.iter().map(|(c, v)| (*c, v.as_slice()))
    }

    fn append(&mut self, code: u8, part: &[u8]) {
        match self.entries.iter_mut().find(|(c, _)| *c == code) {
            Some(e) => e.1.extend_from_slice(part),
            None => self.entries.push((code, part.to_vec())),
        }
    }
}

/// A BOOTP/DHCP message (RFC 2131 layout).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Packet {
    /// 1 = request (client to server), 2 = reply.
    pub op: u8,
    /// Hardware type (1 = Ethernet).
    pub htype: u8,
    /// Hardware address length (6 for Ethernet).
    pub hlen: u8,
    /// Relay hops.
    pub hops: u8,
    /// Transaction id, chosen by the client.
    pub xid: u32,
    /// Seconds since the client began.
    pub secs: u16,
    /// Flags; the top bit asks for broadcast replies.
    pub flags: u16,
    /// The client's address, when it has one.
    pub ciaddr: Ipv4Addr,
    /// "Your" address: what a server gives out (always 0.0.0.0 from us).
    pub yiaddr: Ipv4Addr,
    /// The next server (TFTP) address.
    pub siaddr: Ipv4Addr,
    /// The relay agent's address.
    pub giaddr: Ipv4Addr,
    /// The client hardware address, padded.
    pub chaddr: [u8; 16],
    /// Server host name, up to its first NUL (empty when the field holds options).
    pub sname: Vec<u8>,
    /// Boot file name, up to its first NUL (empty when the field holds options).
    pub file: Vec<u8>,
    /// The options, overloaded ones included; option 52 itself is consumed.
    pub options: Options,
}

/// Bytes up to the first NUL.
fn c_string(field: &[u8]) -> Vec<u8> {
    let end = field.iter().position(|&b| b == 0).unwrap_or(field.len());
    field[..end].to_vec()
}

/// Reads options from one area into `out`. Stops at END or at the end of the area; an option
/// whose length or value does not fit is an error. In the `file` and `sname` areas option 52
/// is skipped (it may only appear in the options field).
fn parse_options(area: &[u8], name: &'static str, out: &mut Options) -> Result<(), PacketError> {
    let mut i = 0;
    while let Some(&code) = area.get(i) {
        match code {
            opt::PAD => i += 1,
            opt::END => return Ok(()),
            _ => {
                let truncated = || PacketError::TruncatedOption { code, area: name };
                let len = usize::from(*area.get(i + 1).ok_or_else(truncated)?);
                let value = area.get(i + 2..i + 2 + len).ok_or_else(truncated)?;
                if !(code == opt::OVERLOAD && name != "options") {
                    out.append(code, value);
                }
                i += 2 + len;
            }
        }
    }
    Ok(())
}

/// Parses a DHCP message. Pure, linear in the input, and total: any input gives a packet or
/// an error. Repeated options are concatenated (RFC 3396); option overload (52) is followed,
/// options field first, then `file`, then `sname`; a missing END option is tolerated.
pub fn parse(buf: &[u8]) -> Result<Packet, PacketError> {
    if buf.len() < HEADER_LEN + MAGIC_COOKIE.len() {
        return Err(PacketError::TooShort(buf.len()));
    }
    let (h, rest) = buf.split_at(HEADER_LEN);
    let (cookie, area) = rest.split_at(MAGIC_COOKIE.len());
    if cookie != MAGIC_COOKIE {
        return Err(PacketError::NoMagicCookie);
    }
    let ip = |i: usize| Ipv4Addr::new(h[i], h[i + 1], h[i + 2], h[i + 3]);
    let u16_at = |i: usize| u16::from_be_bytes([h[i], h[i + 1]]);
    let mut chaddr = [0u8; 16];
    chaddr.copy_from_slice(&h[28..44]);

    let mut options = Options::default();
    parse_options(area, "options", &mut options)?;
    let overload = match options.remove(opt::OVERLOAD) {
        None => 0,
        Some(v) if v.len() == 1 && (1..=3).contains(&v[0]) => v[0],
        Some(v) => return Err(PacketError::BadOverload(v)),
    };
    let (mut sname, mut file) = (c_string(&h[SNAME]), c_string(&h[FILE]));
    if overload & 1 != 0 {
        parse_options(&h[FILE], "file", &mut options)?;
        file.clear();
    }
    if overload & 2 != 0 {
        parse_options(&h[SNAME], "sname", &mut options)?;
        sname.clear();
    }
    Ok(Packet {
        op: h[0],
        htype: h[1],
        hlen: h[2],
        hops: h[3],
        xid: u32::from_be_bytes([h[4], h[5], h[6], h[7]]),
        secs: u16_at(8),
        flags: u16_at(10),
        ciaddr: ip(12),
        yiaddr: ip(16),
        siaddr: ip(20),
        giaddr: ip(24),
        chaddr,
        sname,
        file,
        options,
    })
}

impl Packet {
    /// The message as bytes: header, magic cookie, the options (values longer than 255 bytes
    /// split into several instances, RFC 3396), END, padded to 300 bytes. `sname` and `file`
    /// are cut to their fields (64 and 128 bytes).
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut b = Vec::with_capacity(512);
        b.extend([self.op, self.htype, self.hlen, self.hops]);
        b.extend(self.xid.to_be_bytes());
        b.extend(self.secs.to_be_bytes());
        b.extend(self.flags.to_be_bytes());
        for a in [self.ciaddr, self.yiaddr, self.siaddr, self.giaddr] {
            b.extend(a.octets());
        }
        b.extend(self.chaddr);
        for (value, len) in [(&self.sname, SNAME.len()), (&self.file, FILE.len())] {
            let n = value.len().min(len);
            b.extend(&value[..n]);
            b.resize(b.len() + len - n, 0);
        }
        b.extend(MAGIC_COOKIE);
        for (code, value) in self.options.iter() {
            if code == opt::PAD || code == opt::END {
                continue;
            }
            if value.is_empty() {
                b.extend([code, 0]);
            }
            for part in value.chunks(255) {
                b.extend([code, part.len() as u8]);
                b.extend(part);
            }
        }
        b.push(opt::END);
        if b.len() < MIN_MESSAGE_LEN {
            b.resize(MIN_MESSAGE_LEN, 0);
        }
        b
    }

    /// The message type (option 53), if it is a DHCP message of a known type.
    pub fn message_type(&self) -> Option<MessageType> {
        match self.options.get(opt::MESSAGE_TYPE)? {
            [code] => MessageType::from_code(*code),
            _ => None,
        }
    }

    /// The client's MAC address, lowercase and colon-separated, for Ethernet messages.
    pub fn mac(&self) -> Option<String> {
        (self.htype == 1 && self.hlen == 6).then(|| {
            let h = &self.chaddr[..6];
            format!(
                "{:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}",
                h[0], h[1], h[2], h[3], h[4], h[5]
            )
        })
    }

    /// Did the client ask for broadcast replies?
    pub fn broadcast_flag(&self) -> bool {
        self.flags & BROADCAST_FLAG != 0
    }
}

/// A client system architecture (option 93; IANA "Processor Architecture Types").
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Arch(pub u16);

/// Which binary an architecture boots.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Family {
    Bios,
    X64,
    Arm64,
}

impl Arch {
    /// A name for logs and the hub.
    pub fn name(self) -> Cow<'static, str> {
        Cow::Borrowed(match self.0 {
            0 => "BIOS",
            6 => "IA32 UEFI",
            7 | 9 => "x64 UEFI",
            10 => "arm32 UEFI",
            11 => "arm64 UEFI",
            15 => "IA32 UEFI HTTP",
            16 => "x64 UEFI HTTP",
            18 => "arm32 UEFI HTTP",
            19 => "arm64 UEFI HTTP",
            25 => "riscv32 UEFI",
            27 => "riscv64 UEFI",
            28 => "riscv64 UEFI HTTP",
            39 => "loongarch64 UEFI",
            41 => "arm rpiboot",
            n => return Cow::Owned(format!("arch {n}")),
        })
    }

    fn family(self) -> Option<Family> {
        match self.0 {
            0 => Some(Family::Bios),
            7 | 9 | 16 => Some(Family::X64),
            11 | 19 => Some(Family::Arm64),
            _ => None,
        }
    }
}

/// Where an architecture was learnt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ArchSource {
    /// Option 93.
    ClientArch,
    /// The `Arch:` field of option 60.
    VendorClass,
    /// Neither: a `PXEClient` that names no architecture is taken for BIOS.
    Assumed,
}

/// The socket a request arrived on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ListenPort {
    /// The DHCP server port (67): broadcasts, shared with the LAN's DHCP server.
    Dhcp,
    /// The PXE boot server port (4011): requests aimed at us.
    Pxe,
}

/// Why a request gets no answer.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Ignore {
    /// A BOOTP reply (some server's answer), not a request.
    #[error("not a client request (BOOTP op {0})")]
    NotARequest(u8),
    /// Not an Ethernet hardware address.
    #[error("not Ethernet (htype {htype}, hlen {hlen})")]
    NotEthernet {
        /// Hardware type.
        htype: u8,
        /// Hardware address length.
        hlen: u8,
    },
    /// No option 53: plain BOOTP.
    #[error("plain BOOTP (no DHCP message type)")]
    NoMessageType,
    /// Not a PXE or HTTP Boot client.
    #[error("not a PXE or HTTP Boot client (vendor class {0:?})")]
    NotPxe(String),
    /// A message type a proxyDHCP server does not answer (on this port).
    #[error("a {0:?} on port {1}")]
    Message(MessageType, u16),
    /// A DHCPREQUEST on port 67 for another server (the router).
    #[error("a DHCPREQUEST for the DHCP server {0}")]
    ForAnotherServer(Ipv4Addr),
    /// A DHCPREQUEST on port 67 that names no server: a lease renewal or confirmation.
    #[error("a DHCPREQUEST without server identifier (the router's lease)")]
    NoServerId,
    /// An `HTTPClient` that names no architecture.
    #[error("an HTTP Boot client that names no architecture")]
    NoArch,
    /// An architecture this server has nothing for.
    #[error("{arch} clients are not served: {why}")]
    UnsupportedArch {
        /// The architecture's name.
        arch: String,
        /// What is missing.
        why: &'static str,
    },
    /// The inventory does not list the machine and does not boot unknown machines.
    #[error("an unknown machine, and the inventory boots only known ones")]
    UnknownMachine,
}

/// What a request says about its client, once it is known to be a PXE or HTTP Boot request
/// this port should consider.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Client {
    /// Lowercase, colon-separated MAC address.
    pub mac: String,
    /// DISCOVER or REQUEST.
    pub message: MessageType,
    /// `HTTPClient` (UEFI HTTP Boot) rather than `PXEClient`.
    pub http: bool,
    /// The whole option 60, printable characters only.
    pub vendor_class: String,
    /// Option 12, the name the client gives itself, printable characters only (empty when
    /// absent).
    pub hostname: String,
    /// The architecture, when known, and where it came from.
    pub arch: Option<(Arch, ArchSource)>,
    /// iPXE is asking (option 77 contains `iPXE` or option 175 is present).
    pub ipxe: bool,
}

impl Client {
    /// The architecture's name, `unknown` when there is none.
    pub fn arch_name(&self) -> Cow<'static, str> {
        self.arch
            .map_or(Cow::Borrowed("unknown"), |(a, _)| a.name())
    }
}

/// Bytes as text for logs and the hub: printable ASCII kept, anything else shown as `?`.
fn printable(bytes: &[u8]) -> String {
    bytes
        .iter()
        .map(|&b| {
            if b.is_ascii_graphic() || b == b' ' {
                char::from(b)
            } else {
                '?'
            }
        })
        .collect()
}

/// The `Arch:NNNNN` field of a vendor class such as `PXEClient:Arch:00007:UNDI:003016`.
fn arch_from_vendor_class(vc: &[u8]) -> Option<Arch> {
    let mut fields = vc.split(|&b| b == b':');
    fields.find(|f| *f == b"Arch")?;
    let digits = fields.next()?;
    if digits.is_empty() || digits.len() > 5 || !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    std::str::from_utf8(digits).ok()?.parse().ok().map(Arch)
}

/// Checks that `req` is a PXE request this port should consider, and reads what it says about
/// its client. Pure.
pub fn inspect(req: &Packet, port: ListenPort, server_ip: Ipv4Addr) -> Result<Client, Ignore> {
    if req.op != BOOTREQUEST {
        return Err(Ignore::NotARequest(req.op));
    }
    let mac = req.mac().ok_or(Ignore::NotEthernet {
        htype: req.htype,
        hlen: req.hlen,
    })?;
    let message = req.message_type().ok_or(Ignore::NoMessageType)?;
    let vc = req.options.get(opt::VENDOR_CLASS).unwrap_or_default();
    let http = vc.starts_with(b"HTTPClient");
    if !http && !vc.starts_with(b"PXEClient") {
        return Err(Ignore::NotPxe(printable(vc)));
    }
    let port_number = match port {
        ListenPort::Dhcp => SERVER_PORT,
        ListenPort::Pxe => PXE_PORT,
    };
    match (message, port) {
        (MessageType::Discover, ListenPort::Dhcp) | (MessageType::Request, ListenPort::Pxe) => {}
        (MessageType::Request, ListenPort::Dhcp) => {
            match req.options.get(opt::SERVER_ID) {
                Some(&[a, b, c, d]) if Ipv4Addr::new(a, b, c, d) == server_ip => {}
                Some(&[a, b, c, d]) => {
                    return Err(Ignore::ForAnotherServer(Ipv4Addr::new(a, b, c, d)));
                }
                // A malformed server identifier names nobody we know: not us.
                Some(_) | None => return Err(Ignore::NoServerId),
            }
        }
        (m, _) => return Err(Ignore::Message(m, port_number)),
    }
    let arch = match req.options.get(opt::CLIENT_ARCH) {
        Some(&[hi, lo, ..]) => Some((Arch(u16::from_be_bytes([hi, lo])), ArchSource::ClientArch)),
        _ => arch_from_vendor_class(vc)
            .map(|a| (a, ArchSource::VendorClass))
            .or((!http).then_some((Arch(0), ArchSource::Assumed))),
    };
    let user_class = req.options.get(opt::USER_CLASS).unwrap_or_default();
    let ipxe = user_class.windows(4).any(|w| w == b"iPXE") || req.options.get(opt::IPXE).is_some();
    Ok(Client {
        mac,
        message,
        http,
        vendor_class: printable(vc),
        hostname: printable(req.options.get(opt::HOST_NAME).unwrap_or_default()),
        arch,
        ipxe,
    })
}

/// An answer to send.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    /// The DHCPOFFER or DHCPACK.
    pub packet: Packet,
    /// Who asked, for logs: the architecture's name, with `iPXE on` in front for iPXE.
    pub client: String,
    /// What it is told to boot: a TFTP file name or a URL.
    pub boot: String,
}

/// What the client boots (a TFTP file or a URL), or why it gets nothing.
fn boot_target(client: &Client, cfg: &Config) -> Result<String, Ignore> {
    if client.ipxe {
        return Ok(format!("{}/boot.ipxe?mac={}", cfg.http_base, client.mac));
    }
    let (arch, _) = client.arch.ok_or(Ignore::NoArch)?;
    let unsupported = |why| Ignore::UnsupportedArch {
        arch: arch.name().into_owned(),
        why,
    };
    let file = match arch.family() {
        Some(Family::Bios) if client.http => {
            return Err(unsupported("BIOS has no HTTP Boot"));
        }
        Some(Family::Bios) => &cfg.boot_files.bios,
        Some(Family::X64) => &cfg.boot_files.efi_x64,
        Some(Family::Arm64) => cfg
            .boot_files
            .efi_arm64
            .as_ref()
            .ok_or_else(|| unsupported("no arm64 iPXE is published"))?,
        None => return Err(unsupported("there is no iPXE for it")),
    };
    Ok(if client.http {
        format!("{}/{}", cfg.http_base, file)
    } else {
        file.clone()
    })
}

/// The PXE boot item (option 43 sub-option 71) of a request, to echo in a boot server's ACK.
fn boot_item(req: &Packet) -> Option<[u8; 4]> {
    let v = req.options.get(opt::VENDOR_SPECIFIC)?;
    let mut i = 0;
    while let Some(&code) = v.get(i) {
        match code {
            opt::PAD => i += 1,
            opt::END => return None,
            _ => {
                let len = usize::from(*v.get(i + 1)?);
                let value = v.get(i + 2..i + 2 + len)?;
                if code == PXE_BOOT_ITEM {
                    return value.try_into().ok();
                }
                i += 2 + len;
            }
        }
    }
    None
}

/// The proxyDHCP decision: the answer to `req`, which arrived on `port`, for a machine the
/// inventory knows as `lookup`; or why there is none. Pure; see the module doc for the rules.
pub fn answer(
    req: &Packet,
    port: ListenPort,
    cfg: &Config,
    lookup: &Lookup,
) -> Result<Reply, Ignore> {
    let client = inspect(req, port, cfg.server_ip)?;
    if let Lookup::Unknown { boot: false } = lookup {
        return Err(Ignore::UnknownMachine);
    }
    let boot = boot_target(&client, cfg)?;
    let message = match client.message {
        MessageType::Discover => MessageType::Offer,
        _ => MessageType::Ack,
    };
    let mut options = Options::default();
    options.set(opt::MESSAGE_TYPE, [message.code()]);
    options.set(opt::SERVER_ID, cfg.server_ip.octets());
    let vendor: &[u8] = if client.http {
        b"HTTPClient"
    } else {
        b"PXEClient"
    };
    options.set(opt::VENDOR_CLASS, vendor);
    if let Some(guid) = req.options.get(opt::CLIENT_GUID) {
        options.set(opt::CLIENT_GUID, guid);
    }
    if !client.http {
        match port {
            ListenPort::Dhcp => options.set(
                opt::VENDOR_SPECIFIC,
                [PXE_DISCOVERY_CONTROL, 1, DISCOVERY_USE_BOOTFILE, opt::END],
            ),
            ListenPort::Pxe => {
                if let Some(item) = boot_item(req) {
                    let mut v = vec![PXE_BOOT_ITEM, 4];
                    v.extend(item);
                    v.push(opt::END);
                    options.set(opt::VENDOR_SPECIFIC, v);
                }
            }
        }
    }
    // The `file` field holds 128 bytes; keep a NUL. A longer name (a long URL) goes in
    // option 67, which iPXE and UEFI HTTP Boot read.
    let file = if boot.len() < FILE.len() {
        boot.as_bytes().to_vec()
    } else {
        options.set(opt::BOOTFILE, boot.as_bytes());
        Vec::new()
    };
    let packet = Packet {
        op: BOOTREPLY,
        htype: req.htype,
        hlen: req.hlen,
        hops: 0,
        xid: req.xid,
        secs: 0,
        flags: req.flags,
        ciaddr: match message {
            MessageType::Offer => Ipv4Addr::UNSPECIFIED,
            _ => req.ciaddr,
        },
        yiaddr: Ipv4Addr::UNSPECIFIED,
        siaddr: cfg.server_ip,
        giaddr: req.giaddr,
        chaddr: req.chaddr,
        sname: cfg.server_ip.to_string().into_bytes(),
        file,
        options,
    };
    let arch = client.arch_name();
    Ok(Reply {
        packet,
        client: if client.ipxe {
            format!("iPXE on {arch}")
        } else {
            arch.into_owned()
        },
        boot,
    })
}

/// Where the answer to `req`, received on `port` from `from`, goes; see the module doc.
pub fn destination(req: &Packet, port: ListenPort, from: SocketAddr) -> SocketAddrV4 {
    match port {
        ListenPort::Pxe => match from {
            SocketAddr::V4(a) if !a.ip().is_unspecified() => a,
            _ => SocketAddrV4::new(Ipv4Addr::BROADCAST, from.port()),
        },
        ListenPort::Dhcp if !req.giaddr.is_unspecified() => {
            SocketAddrV4::new(req.giaddr, SERVER_PORT)
        }
        ListenPort::Dhcp if !req.ciaddr.is_unspecified() && !req.broadcast_flag() => {
            SocketAddrV4::new(req.ciaddr, CLIENT_PORT)
        }
        ListenPort::Dhcp => SocketAddrV4::new(Ipv4Addr::BROADCAST, CLIENT_PORT),
    }
}

/// A UDP socket for proxyDHCP bound to `addr` (`0.0.0.0:67`, `0.0.0.0:4011`): `SO_REUSEADDR`
/// (a DHCP server on the same host may hold the port too), `SO_BROADCAST` (answers to
/// unconfigured clients are broadcasts), and `SO_BINDTODEVICE` when `interface` is named, so
/// that only that LAN is answered and broadcasts leave by it. Call it inside a tokio runtime.
pub fn bind_port(addr: SocketAddrV4, interface: Option<&str>) -> io::Result<UdpSocket> {
    let s = Socket::new(Domain::IPV4, Type::DGRAM, Some(Protocol::UDP))?;
    s.set_reuse_address(true)?;
    s.set_broadcast(true)?;
    if let Some(name) = interface {
        s.bind_device(Some(name.as_bytes()))
            .map_err(|e| io::Error::new(e.kind(), format!("binding to interface {name:?}: {e}")))?;
    }
    s.set_nonblocking(true)?;
    s.bind(&SocketAddr::V4(addr).into())
        .map_err(|e| io::Error::new(e.kind(), format!("binding {addr}: {e}")))?;
    UdpSocket::from_std(s.into())
}

/// What the receive loops share.
struct Responder {
    cfg: Config,
    directory: Directory,
    hub: Arc<Hub>,
}

impl Responder {
    /// One datagram in; the bytes to send and where, if it deserves an answer. Counts and logs.
    fn handle(
        &self,
        datagram: &[u8],
        port: ListenPort,
        from: SocketAddr,
    ) -> Option<(Vec<u8>, SocketAddrV4)> {
        let m = &self.hub.metrics;
        Metrics::inc(&m.dhcp_packets);
        let req = match parse(datagram) {
            Ok(p) => p,
            Err(e) => {
                Metrics::inc(&m.dhcp_malformed);
                tracing::debug!(%from, "malformed DHCP packet: {e}");
                return None;
            }
        };
        let client = match inspect(&req, port, self.cfg.server_ip) {
            Ok(c) => c,
            Err(why) => {
                Metrics::inc(&m.dhcp_ignored);
                tracing::debug!(%from, xid = req.xid, "DHCP packet ignored: {why}");
                return None;
            }
        };
        let lookup = (self.directory)(&client.mac);
        let name = match &lookup {
            Lookup::Node(n) => Some(n.as_str()),
            Lookup::Unknown { .. } => {
                let arch = client.arch_name();
                if self
                    .hub
                    .discovered(&client.mac, &arch, &client.vendor_class, &client.hostname)
                {
                    tracing::info!(
                        mac = %client.mac,
                        "unknown machine {} arch {arch} vendor-class {} hostname {:?}",
                        client.mac,
                        client.vendor_class,
                        client.hostname
                    );
                }
                None
            }
        };
        match answer(&req, port, &self.cfg, &lookup) {
            Ok(reply) => {
                let to = destination(&req, port, from);
                let detail = format!("{} -> {}", reply.client, reply.boot);
                tracing::info!(mac = %client.mac, node = name.unwrap_or("-"), %to, "proxyDHCP: {detail}");
                self.hub.stage(&client.mac, name, Stage::Dhcp, &detail);
                Some((reply.packet.to_bytes(), to))
            }
            Err(why) => {
                Metrics::inc(&m.dhcp_ignored);
                if let Ignore::UnsupportedArch { .. } = why {
                    tracing::info!(mac = %client.mac, "proxyDHCP: not answering: {why}");
                } else {
                    tracing::debug!(mac = %client.mac, "proxyDHCP: not answering: {why}");
                }
                None
            }
        }
    }

    /// Answers what arrives on `sock` until the socket fails.
    async fn listen(&self, sock: &UdpSocket, port: ListenPort) -> io::Result<()> {
        // Any UDP datagram fits, so none is read truncated.
        let mut buf = vec![0u8; 65536];
        loop {
            let (n, from) = match sock.recv_from(&mut buf).await {
                Ok(r) => r,
                Err(e) if transient(&e) => {
                    tracing::debug!("proxyDHCP receive: {e}");
                    continue;
                }
                Err(e) => return Err(e),
            };
            let Some((bytes, to)) = self.handle(&buf[..n], port, from) else {
                continue;
            };
            match sock.send_to(&bytes, to).await {
                Ok(_) => Metrics::inc(&self.hub.metrics.dhcp_replies),
                Err(e) => tracing::warn!(%to, "proxyDHCP: sending the answer: {e}"),
            }
        }
    }
}

/// Receive errors that say nothing about the socket itself (ICMP errors from earlier sends).
fn transient(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::ConnectionRefused
            | io::ErrorKind::ConnectionReset
            | io::ErrorKind::Interrupted
            | io::ErrorKind::WouldBlock
    )
}

/// Answers PXE clients arriving on `port67` (when given) and `port4011`, until a socket fails.
/// Never returns `Ok`. See the module doc for what is answered and how.
pub async fn serve(
    port67: Option<UdpSocket>,
    port4011: UdpSocket,
    cfg: Config,
    directory: Directory,
    hub: Arc<Hub>,
) -> io::Result<()> {
    if let Ok(a) = port4011.local_addr() {
        tracing::debug!(server_ip = %cfg.server_ip, pxe = %a, "proxyDHCP listening");
    }
    let r = Responder {
        cfg,
        directory,
        hub,
    };
    match &port67 {
        Some(s67) => {
            tokio::try_join!(
                r.listen(s67, ListenPort::Dhcp),
                r.listen(&port4011, ListenPort::Pxe)
            )?;
        }
        None => r.listen(&port4011, ListenPort::Pxe).await?,
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const SERVER: Ipv4Addr = Ipv4Addr::new(10, 33, 0, 1);
    const ROUTER: Ipv4Addr = Ipv4Addr::new(10, 33, 0, 254);
    const MAC: [u8; 6] = [0x52, 0x54, 0x00, 0x12, 0x34, 0x56];
    const OVMF_VC: &[u8] = b"PXEClient:Arch:00007:UNDI:003016";
    const GUID: [u8; 17] = [
        0, 0x8b, 0x9c, 0x2a, 0x1e, 0x44, 0x51, 0x4b, 0x9f, 0x2d, 0x0c, 0x11, 0x22, 0x33, 0x44,
        0x55, 0x66,
    ];

    fn cfg() -> Config {
        Config {
            server_ip: SERVER,
            http_base: "http://10.33.0.1:8080".into(),
            boot_files: BootFiles {
                bios: "ipxe/undionly.kpxe".into(),
                efi_x64: "ipxe/snponly.efi".into(),
                efi_arm64: None,
            },
        }
    }

    fn known() -> Lookup {
        Lookup::Node("n1".into())
    }

    /// A client request with the given message type and options (after 53).
    fn request(message: MessageType, options: &[(u8, &[u8])]) -> Packet {
        let mut chaddr = [0u8; 16];
        chaddr[..6].copy_from_slice(&MAC);
        let mut o = Options::default();
        o.set(opt::MESSAGE_TYPE, [message.code()]);
        for (c, v) in options {
            o.set(*c, *v);
        }
        Packet {
            op: BOOTREQUEST,
            htype: 1,
            hlen: 6,
            hops: 0,
            xid: 0x1234_5678,
            secs: 4,
            flags: BROADCAST_FLAG,
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

    /// What OVMF's PXE sends: option 60, 93 = 7, 94, 97.
    fn ovmf(message: MessageType) -> Packet {
        request(
            message,
            &[
                (opt::VENDOR_CLASS, OVMF_VC),
                (opt::CLIENT_ARCH, &[0, 7]),
                (opt::CLIENT_NDI, &[1, 3, 0x10]),
                (opt::CLIENT_GUID, &GUID),
            ],
        )
    }

    /// The reply as it goes on the wire, parsed back.
    fn wire(r: &Reply) -> Packet {
        parse(&r.packet.to_bytes()).expect("our reply parses")
    }

    #[test]
    fn ovmf_discover_gets_a_proxy_offer() {
        let r = answer(
            &ovmf(MessageType::Discover),
            ListenPort::Dhcp,
            &cfg(),
            &known(),
        )
        .unwrap();
        let p = wire(&r);
        assert_eq!(p.op, BOOTREPLY);
        assert_eq!(p.xid, 0x1234_5678);
        assert_eq!(p.message_type(), Some(MessageType::Offer));
        assert_eq!(p.file, b"ipxe/snponly.efi");
        assert_eq!(p.siaddr, SERVER);
        assert_eq!(p.yiaddr, Ipv4Addr::UNSPECIFIED);
        assert_eq!(p.ciaddr, Ipv4Addr::UNSPECIFIED);
        assert_eq!(p.sname, b"10.33.0.1");
        assert_eq!(p.mac().as_deref(), Some("52:54:00:12:34:56"));
        assert!(p.broadcast_flag());
        assert_eq!(p.options.get(opt::SERVER_ID), Some(&SERVER.octets()[..]));
        assert_eq!(p.options.get(opt::VENDOR_CLASS), Some(&b"PXEClient"[..]));
        assert_eq!(p.options.get(opt::CLIENT_GUID), Some(&GUID[..]));
        assert_eq!(
            p.options.get(opt::VENDOR_SPECIFIC),
            Some(&[6, 1, 8, 255][..])
        );
        // Never an address, a lease, a mask, a router or a boot file option.
        for code in [1, 3, 6, 50, 51, opt::BOOTFILE] {
            assert_eq!(p.options.get(code), None, "option {code}");
        }
        assert_eq!(r.client, "x64 UEFI");
        assert_eq!(r.boot, "ipxe/snponly.efi");
    }

    #[test]
    fn ipxe_gets_its_script_over_http() {
        let vc: &[u8] = b"PXEClient:Arch:00007:UNDI:003010";
        for marker in [(opt::USER_CLASS, &b"iPXE"[..]), (opt::IPXE, &[1, 1, 1][..])] {
            let req = request(
                MessageType::Discover,
                &[(opt::VENDOR_CLASS, vc), (opt::CLIENT_ARCH, &[0, 7]), marker],
            );
            let r = answer(&req, ListenPort::Dhcp, &cfg(), &known()).unwrap();
            let p = wire(&r);
            assert_eq!(
                p.file, b"http://10.33.0.1:8080/boot.ipxe?mac=52:54:00:12:34:56",
                "{marker:?}"
            );
            assert_eq!(r.client, "iPXE on x64 UEFI");
        }
        // A user class in the RFC 3004 form, with iPXE among others.
        let req = request(
            MessageType::Discover,
            &[
                (opt::VENDOR_CLASS, vc),
                (opt::USER_CLASS, b"\x03abc\x04iPXE"),
            ],
        );
        assert!(
            answer(&req, ListenPort::Dhcp, &cfg(), &known())
                .unwrap()
                .boot
                .contains("boot.ipxe")
        );
    }

    #[test]
    fn uefi_http_boot_gets_a_url_and_httpclient() {
        let req = request(
            MessageType::Discover,
            &[
                (opt::VENDOR_CLASS, b"HTTPClient:Arch:00016:UNDI:003001"),
                (opt::CLIENT_ARCH, &[0, 16]),
                (opt::CLIENT_GUID, &GUID),
            ],
        );
        let r = answer(&req, ListenPort::Dhcp, &cfg(), &known()).unwrap();
        let p = wire(&r);
        assert_eq!(p.file, b"http://10.33.0.1:8080/ipxe/snponly.efi");
        assert_eq!(p.options.get(opt::VENDOR_CLASS), Some(&b"HTTPClient"[..]));
        assert_eq!(p.options.get(opt::VENDOR_SPECIFIC), None);
        assert_eq!(r.client, "x64 UEFI HTTP");

        // arm64 HTTP: only when an arm64 iPXE is published.
        let arm = request(
            MessageType::Discover,
            &[
                (opt::VENDOR_CLASS, b"HTTPClient:Arch:00019:UNDI:003001"),
                (opt::CLIENT_ARCH, &[0, 19]),
            ],
        );
        assert!(matches!(
            answer(&arm, ListenPort::Dhcp, &cfg(), &known()),
            Err(Ignore::UnsupportedArch { .. })
        ));
        let mut c = cfg();
        c.boot_files.efi_arm64 = Some("ipxe/arm64/snp.efi".into());
        let r = answer(&arm, ListenPort::Dhcp, &c, &known()).unwrap();
        assert_eq!(r.boot, "http://10.33.0.1:8080/ipxe/arm64/snp.efi");

        // HTTPClient with no architecture at all: no guess.
        let bare = request(MessageType::Discover, &[(opt::VENDOR_CLASS, b"HTTPClient")]);
        assert_eq!(
            answer(&bare, ListenPort::Dhcp, &cfg(), &known()),
            Err(Ignore::NoArch)
        );
    }

    #[test]
    fn architectures_pick_their_binary() {
        let boot = |code: u16, c: &Config| {
            let vc = format!("PXEClient:Arch:{code:05}:UNDI:002001");
            let req = request(
                MessageType::Discover,
                &[
                    (opt::VENDOR_CLASS, vc.as_bytes()),
                    (opt::CLIENT_ARCH, &code.to_be_bytes()),
                ],
            );
            answer(&req, ListenPort::Dhcp, c, &known()).map(|r| (r.client, r.boot))
        };
        let c = cfg();
        assert_eq!(
            boot(0, &c),
            Ok(("BIOS".into(), "ipxe/undionly.kpxe".into()))
        );
        assert_eq!(
            boot(7, &c),
            Ok(("x64 UEFI".into(), "ipxe/snponly.efi".into()))
        );
        assert_eq!(
            boot(9, &c),
            Ok(("x64 UEFI".into(), "ipxe/snponly.efi".into()))
        );
        for code in [6, 10, 11, 25, 27, 41, 1234] {
            assert!(
                matches!(boot(code, &c), Err(Ignore::UnsupportedArch { .. })),
                "arch {code}"
            );
        }
        let mut arm = cfg();
        arm.boot_files.efi_arm64 = Some("ipxe/arm64/snp.efi".into());
        assert_eq!(
            boot(11, &arm),
            Ok(("arm64 UEFI".into(), "ipxe/arm64/snp.efi".into()))
        );
        assert_eq!(Arch(6).name(), "IA32 UEFI");
        assert_eq!(Arch(300).name(), "arch 300");
    }

    #[test]
    fn missing_options_97_and_93_are_tolerated() {
        // No GUID: answered, and no GUID echoed.
        let req = request(
            MessageType::Discover,
            &[(opt::VENDOR_CLASS, OVMF_VC), (opt::CLIENT_ARCH, &[0, 7])],
        );
        let p = wire(&answer(&req, ListenPort::Dhcp, &cfg(), &known()).unwrap());
        assert_eq!(p.options.get(opt::CLIENT_GUID), None);
        assert_eq!(p.file, b"ipxe/snponly.efi");

        // No option 93: the Arch field of option 60.
        let req = request(MessageType::Discover, &[(opt::VENDOR_CLASS, OVMF_VC)]);
        let c = inspect(&req, ListenPort::Dhcp, SERVER).unwrap();
        assert_eq!(c.arch, Some((Arch(7), ArchSource::VendorClass)));
        assert_eq!(
            answer(&req, ListenPort::Dhcp, &cfg(), &known())
                .unwrap()
                .boot,
            "ipxe/snponly.efi"
        );

        // A one-byte option 93 is no architecture either.
        let req = request(
            MessageType::Discover,
            &[(opt::VENDOR_CLASS, OVMF_VC), (opt::CLIENT_ARCH, &[7])],
        );
        let c = inspect(&req, ListenPort::Dhcp, SERVER).unwrap();
        assert_eq!(c.arch, Some((Arch(7), ArchSource::VendorClass)));

        // Neither: a PXEClient is taken for BIOS.
        let req = request(MessageType::Discover, &[(opt::VENDOR_CLASS, b"PXEClient")]);
        let c = inspect(&req, ListenPort::Dhcp, SERVER).unwrap();
        assert_eq!(c.arch, Some((Arch(0), ArchSource::Assumed)));
        assert_eq!(
            answer(&req, ListenPort::Dhcp, &cfg(), &known())
                .unwrap()
                .boot,
            "ipxe/undionly.kpxe"
        );
        assert_eq!(arch_from_vendor_class(b"PXEClient:Arch:x7"), None);
        assert_eq!(arch_from_vendor_class(b"PXEClient:Arch:000070"), None);
        assert_eq!(arch_from_vendor_class(b"PXEClient:Arch:"), None);
        assert_eq!(arch_from_vendor_class(b"PXEClient:Arch:99999"), None);
        assert_eq!(
            arch_from_vendor_class(b"PXEClient:Arch:00011"),
            Some(Arch(11))
        );
    }

    #[test]
    fn non_pxe_clients_are_left_alone() {
        for vc in [
            None,
            Some(&b"MSFT 5.0"[..]),
            Some(&b"pxeclient"[..]),
            Some(&b""[..]),
        ] {
            let opts: Vec<(u8, &[u8])> = vc.map(|v| (opt::VENDOR_CLASS, v)).into_iter().collect();
            let req = request(MessageType::Discover, &opts);
            assert!(
                matches!(
                    answer(&req, ListenPort::Dhcp, &cfg(), &known()),
                    Err(Ignore::NotPxe(_))
                ),
                "{vc:?}"
            );
        }
        // Plain BOOTP, a server's reply, a token-ring client.
        let mut req = ovmf(MessageType::Discover);
        req.options.remove(opt::MESSAGE_TYPE);
        assert_eq!(
            answer(&req, ListenPort::Dhcp, &cfg(), &known()),
            Err(Ignore::NoMessageType)
        );
        let mut req = ovmf(MessageType::Discover);
        req.op = BOOTREPLY;
        assert_eq!(
            answer(&req, ListenPort::Dhcp, &cfg(), &known()),
            Err(Ignore::NotARequest(2))
        );
        let mut req = ovmf(MessageType::Discover);
        req.htype = 6;
        assert!(matches!(
            answer(&req, ListenPort::Dhcp, &cfg(), &known()),
            Err(Ignore::NotEthernet { .. })
        ));
        for m in [
            MessageType::Decline,
            MessageType::Release,
            MessageType::Inform,
            MessageType::Offer,
        ] {
            assert_eq!(
                answer(&ovmf(m), ListenPort::Dhcp, &cfg(), &known()),
                Err(Ignore::Message(m, 67))
            );
        }
    }

    #[test]
    fn requests_on_port_67_are_answered_only_when_they_name_us() {
        let with_server_id = |id: &[u8]| {
            let mut req = ovmf(MessageType::Request);
            req.options.set(opt::SERVER_ID, id);
            req.options.set(50, [10, 33, 0, 120]);
            req
        };
        // Selecting the router's offer.
        assert_eq!(
            answer(
                &with_server_id(&ROUTER.octets()),
                ListenPort::Dhcp,
                &cfg(),
                &known()
            ),
            Err(Ignore::ForAnotherServer(ROUTER))
        );
        // INIT-REBOOT / renewal: no server identifier, the router's lease.
        assert_eq!(
            answer(
                &ovmf(MessageType::Request),
                ListenPort::Dhcp,
                &cfg(),
                &known()
            ),
            Err(Ignore::NoServerId)
        );
        assert_eq!(
            answer(
                &with_server_id(&[10, 33]),
                ListenPort::Dhcp,
                &cfg(),
                &known()
            ),
            Err(Ignore::NoServerId)
        );
        // Aimed at us: an ACK, still with no address.
        let r = answer(
            &with_server_id(&SERVER.octets()),
            ListenPort::Dhcp,
            &cfg(),
            &known(),
        )
        .unwrap();
        let p = wire(&r);
        assert_eq!(p.message_type(), Some(MessageType::Ack));
        assert_eq!(p.yiaddr, Ipv4Addr::UNSPECIFIED);
        assert_eq!(p.file, b"ipxe/snponly.efi");
    }

    #[test]
    fn requests_on_port_4011_get_an_ack() {
        let mut req = ovmf(MessageType::Request);
        req.ciaddr = Ipv4Addr::new(10, 33, 0, 120);
        req.flags = 0;
        req.options.set(opt::SERVER_ID, SERVER.octets());
        let r = answer(&req, ListenPort::Pxe, &cfg(), &known()).unwrap();
        let p = wire(&r);
        assert_eq!(p.message_type(), Some(MessageType::Ack));
        assert_eq!(p.file, b"ipxe/snponly.efi");
        assert_eq!(p.ciaddr, req.ciaddr);
        assert_eq!(p.yiaddr, Ipv4Addr::UNSPECIFIED);
        assert_eq!(p.siaddr, SERVER);
        assert_eq!(p.options.get(opt::VENDOR_CLASS), Some(&b"PXEClient"[..]));
        assert_eq!(p.options.get(opt::CLIENT_GUID), Some(&GUID[..]));
        // No discovery control on the boot server's ACK; no boot item asked, none echoed.
        assert_eq!(p.options.get(opt::VENDOR_SPECIFIC), None);

        // Even one without option 54, and even one naming another server: it came to us.
        req.options.set(opt::SERVER_ID, ROUTER.octets());
        assert!(answer(&req, ListenPort::Pxe, &cfg(), &known()).is_ok());

        // A PXE boot item (type 0x8000, layer 0) is echoed.
        req.options
            .set(opt::VENDOR_SPECIFIC, [71, 4, 0x80, 0, 0, 0, 255]);
        let p = wire(&answer(&req, ListenPort::Pxe, &cfg(), &known()).unwrap());
        assert_eq!(
            p.options.get(opt::VENDOR_SPECIFIC),
            Some(&[71, 4, 0x80, 0, 0, 0, 255][..])
        );

        // A DISCOVER on 4011 is not how PXE works.
        assert_eq!(
            answer(
                &ovmf(MessageType::Discover),
                ListenPort::Pxe,
                &cfg(),
                &known()
            ),
            Err(Ignore::Message(MessageType::Discover, 4011))
        );
    }

    #[test]
    fn unknown_machines_follow_the_inventory_default() {
        let req = ovmf(MessageType::Discover);
        assert_eq!(
            answer(
                &req,
                ListenPort::Dhcp,
                &cfg(),
                &Lookup::Unknown { boot: false }
            ),
            Err(Ignore::UnknownMachine)
        );
        assert!(
            answer(
                &req,
                ListenPort::Dhcp,
                &cfg(),
                &Lookup::Unknown { boot: true }
            )
            .is_ok()
        );
    }

    #[test]
    fn replies_go_where_the_client_can_hear_them() {
        let from = SocketAddr::from(([0, 0, 0, 0], 68));
        let mut req = ovmf(MessageType::Discover);
        assert_eq!(
            destination(&req, ListenPort::Dhcp, from),
            SocketAddrV4::new(Ipv4Addr::BROADCAST, 68)
        );
        // No broadcast flag, but no address either: still a broadcast.
        req.flags = 0;
        assert_eq!(
            destination(&req, ListenPort::Dhcp, from),
            SocketAddrV4::new(Ipv4Addr::BROADCAST, 68)
        );
        req.ciaddr = Ipv4Addr::new(10, 33, 0, 120);
        assert_eq!(
            destination(&req, ListenPort::Dhcp, from),
            SocketAddrV4::new(req.ciaddr, 68)
        );
        req.flags = BROADCAST_FLAG;
        assert_eq!(
            destination(&req, ListenPort::Dhcp, from),
            SocketAddrV4::new(Ipv4Addr::BROADCAST, 68)
        );
        // Relayed: back to the relay agent's server port.
        req.giaddr = Ipv4Addr::new(10, 44, 0, 1);
        assert_eq!(
            destination(
                &req,
                ListenPort::Dhcp,
                SocketAddr::from(([10, 44, 0, 1], 67))
            ),
            SocketAddrV4::new(req.giaddr, 67)
        );
        let r = answer(&req, ListenPort::Dhcp, &cfg(), &known()).unwrap();
        assert_eq!(r.packet.giaddr, req.giaddr);
        // Port 4011: back to the sender, whatever the packet says.
        let sender = SocketAddr::from(([10, 33, 0, 120], 4011));
        assert_eq!(
            destination(&req, ListenPort::Pxe, sender),
            SocketAddrV4::new(Ipv4Addr::new(10, 33, 0, 120), 4011)
        );
        assert_eq!(
            destination(&req, ListenPort::Pxe, from),
            SocketAddrV4::new(Ipv4Addr::BROADCAST, 68)
        );
    }

    #[test]
    fn a_boot_name_too_long_for_the_file_field_goes_in_option_67() {
        let mut c = cfg();
        c.http_base = format!("http://10.33.0.1:8080/{}", "x".repeat(100));
        let req = request(
            MessageType::Discover,
            &[(opt::VENDOR_CLASS, OVMF_VC), (opt::USER_CLASS, b"iPXE")],
        );
        let r = answer(&req, ListenPort::Dhcp, &c, &known()).unwrap();
        let p = wire(&r);
        assert!(p.file.is_empty());
        assert_eq!(p.options.get(opt::BOOTFILE), Some(r.boot.as_bytes()));
    }

    /// A DISCOVER written out byte by byte, independently of the builder.
    fn handmade_discover() -> Vec<u8> {
        let mut b = vec![1, 1, 6, 0, 0xde, 0xad, 0xbe, 0xef, 0, 4, 0x80, 0];
        b.extend([0; 16]); // ciaddr, yiaddr, siaddr, giaddr
        b.extend(MAC);
        b.extend([0; 10 + 64 + 128]);
        b.extend([99, 130, 83, 99]);
        b.extend([53, 1, 1]);
        b.extend([57, 2, 5, 192]);
        b.extend([0, 0]); // padding between options
        b.push(60);
        b.push(OVMF_VC.len() as u8);
        b.extend(OVMF_VC);
        b.extend([93, 2, 0, 7, 94, 3, 1, 3, 16, 97, 17]);
        b.extend(GUID);
        b.push(255);
        b.extend([0xaa; 20]); // after END: ignored
        b
    }

    #[test]
    fn parse_reads_a_handmade_discover() {
        let p = parse(&handmade_discover()).unwrap();
        assert_eq!((p.op, p.htype, p.hlen, p.hops), (1, 1, 6, 0));
        assert_eq!(p.xid, 0xdead_beef);
        assert_eq!(p.secs, 4);
        assert!(p.broadcast_flag());
        assert_eq!(p.mac().as_deref(), Some("52:54:00:12:34:56"));
        assert_eq!(p.message_type(), Some(MessageType::Discover));
        assert_eq!(p.options.get(57), Some(&[5, 192][..]));
        assert_eq!(p.options.get(opt::VENDOR_CLASS), Some(OVMF_VC));
        assert_eq!(p.options.get(opt::CLIENT_ARCH), Some(&[0, 7][..]));
        assert_eq!(p.options.get(opt::CLIENT_GUID), Some(&GUID[..]));
        assert_eq!(p.options.iter().count(), 6);
        assert!(p.file.is_empty() && p.sname.is_empty());
        let r = answer(&p, ListenPort::Dhcp, &cfg(), &known()).unwrap();
        assert_eq!(r.boot, "ipxe/snponly.efi");
    }

    #[test]
    fn build_then_parse_round_trips() {
        let mut p = ovmf(MessageType::Request);
        p.ciaddr = Ipv4Addr::new(10, 33, 0, 120);
        p.giaddr = Ipv4Addr::new(10, 44, 0, 1);
        p.hops = 1;
        p.sname = b"server".to_vec();
        p.file = vec![b'f'; 128];
        p.options.set(77, vec![7u8; 600]); // split in three, joined again
        p.options.set(12, Vec::new());
        let bytes = p.to_bytes();
        assert!(bytes.len() >= MIN_MESSAGE_LEN);
        assert_eq!(parse(&bytes), Ok(p.clone()));
        // Short replies are padded to 300 bytes.
        let small = request(MessageType::Discover, &[]);
        assert_eq!(small.to_bytes().len(), MIN_MESSAGE_LEN);
        assert_eq!(parse(&small.to_bytes()), Ok(small));
    }

    #[test]
    fn repeated_options_are_concatenated() {
        let mut b = handmade_discover();
        let end = b.iter().rposition(|&x| x == 255).unwrap();
        b.truncate(end);
        b.extend([77, 2, b'i', b'P', 77, 2, b'X', b'E', 255]);
        let p = parse(&b).unwrap();
        assert_eq!(p.options.get(77), Some(&b"iPXE"[..]));
    }

    #[test]
    fn option_overload_is_followed() {
        let mut b = handmade_discover();
        // file (offset 108) and sname (offset 44) hold options.
        b[108..113].copy_from_slice(&[77, 2, b'i', b'P', 255]);
        b[44..50].copy_from_slice(&[0, 77, 2, b'X', b'E', 255]);
        let end = b.iter().rposition(|&x| x == 255).unwrap();
        b.truncate(end);
        b.extend([52, 1, 3, 255]);
        let p = parse(&b).unwrap();
        assert_eq!(p.options.get(77), Some(&b"iPXE"[..]));
        assert_eq!(p.options.get(opt::OVERLOAD), None);
        assert!(p.file.is_empty() && p.sname.is_empty());
        // Round trip: the rebuilt message needs no overload.
        assert_eq!(parse(&p.to_bytes()), Ok(p));

        // Overload of the file only: sname stays a name.
        let mut b1 = b.clone();
        b1[44..50].copy_from_slice(b"srv\0\0\0");
        let n = b1.len();
        b1[n - 2] = 1;
        let p = parse(&b1).unwrap();
        assert_eq!(
            (p.sname.as_slice(), p.options.get(77)),
            (&b"srv"[..], Some(&b"iP"[..]))
        );

        // Bad overload values, truncated overloaded areas.
        for bad in [[52, 1, 0], [52, 1, 4]] {
            let mut b2 = b.clone();
            let n = b2.len();
            b2[n - 4..n - 1].copy_from_slice(&bad);
            assert!(
                matches!(parse(&b2), Err(PacketError::BadOverload(_))),
                "{bad:?}"
            );
        }
        let mut b3 = b.clone();
        b3[108..236].fill(0);
        b3[234] = 77;
        b3[235] = 9;
        assert_eq!(
            parse(&b3),
            Err(PacketError::TruncatedOption {
                code: 77,
                area: "file"
            })
        );
    }

    #[test]
    fn broken_packets_are_errors() {
        let good = handmade_discover();
        assert_eq!(parse(&[]), Err(PacketError::TooShort(0)));
        assert_eq!(parse(&good[..239]), Err(PacketError::TooShort(239)));
        let mut bad = good.clone();
        bad[236] = 98;
        assert_eq!(parse(&bad), Err(PacketError::NoMagicCookie));
        // Header and cookie only: no options, no END, no message type.
        let p = parse(&good[..240]).unwrap();
        assert_eq!(p.message_type(), None);
        // An option cut after its code, and one cut inside its value.
        assert_eq!(
            parse(&good[..241]),
            Err(PacketError::TruncatedOption {
                code: 53,
                area: "options"
            })
        );
        assert_eq!(
            parse(&good[..244]),
            Err(PacketError::TruncatedOption {
                code: 57,
                area: "options"
            })
        );
        // A message type option of the wrong length is no message type.
        let mut odd = good.clone();
        odd[241] = 2;
        odd[243] = 0;
        let p = parse(&odd);
        assert!(p.is_err() || p.unwrap().message_type().is_none());
    }

    /// xorshift64*: deterministic noise for the robustness test.
    struct Noise(u64);
    impl Noise {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 >> 12;
            self.0 ^= self.0 << 25;
            self.0 ^= self.0 >> 27;
            self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
        }
        fn below(&mut self, n: usize) -> usize {
            (self.next() % n as u64) as usize
        }
    }

    #[test]
    fn no_input_makes_parse_or_answer_panic() {
        let mut rng = Noise(0x1b0b_a4e5);
        let seeds = [
            handmade_discover(),
            ovmf(MessageType::Request).to_bytes(),
            request(
                MessageType::Discover,
                &[
                    (opt::VENDOR_CLASS, b"HTTPClient"),
                    (opt::USER_CLASS, b"iPXE"),
                ],
            )
            .to_bytes(),
        ];
        let c = cfg();
        let mut parsed = 0;
        for i in 0..30_000 {
            let mut b = seeds[i % seeds.len()].clone();
            for _ in 0..=rng.below(8) {
                match rng.below(4) {
                    0 if !b.is_empty() => {
                        let at = rng.below(b.len());
                        b[at] = rng.next() as u8;
                    }
                    1 => b.truncate(rng.below(b.len() + 1)),
                    2 => {
                        // Damage the options area, where the lengths are.
                        let at = 240 + rng.below(b.len().saturating_sub(240).max(1));
                        if at < b.len() {
                            b[at] = rng.next() as u8;
                        }
                    }
                    _ => b.extend((0..rng.below(40)).map(|_| rng.next() as u8)),
                }
            }
            if let Ok(p) = parse(&b) {
                parsed += 1;
                assert_eq!(parse(&p.to_bytes()).as_ref(), Ok(&p), "input {b:02x?}");
                for port in [ListenPort::Dhcp, ListenPort::Pxe] {
                    if let Ok(r) = answer(&p, port, &c, &known()) {
                        assert_eq!(r.packet.yiaddr, Ipv4Addr::UNSPECIFIED);
                        let _ = destination(&p, port, SocketAddr::from(([0, 0, 0, 0], 68)));
                    }
                }
            }
        }
        assert!(parsed > 1000, "only {parsed} mutants parsed");
        // Pure noise of every length up to a full message.
        for len in 0..700 {
            let b: Vec<u8> = (0..len).map(|_| rng.next() as u8).collect();
            let _ = parse(&b);
        }
    }

    fn responder(lookup: Lookup) -> Responder {
        Responder {
            cfg: cfg(),
            directory: Arc::new(move |_: &str| lookup.clone()),
            hub: Arc::new(Hub::new()),
        }
    }

    #[test]
    fn the_responder_counts_and_records() {
        let from = SocketAddr::from(([0, 0, 0, 0], 68));
        let r = responder(known());
        let (bytes, to) = r
            .handle(&handmade_discover(), ListenPort::Dhcp, from)
            .unwrap();
        assert_eq!(to, SocketAddrV4::new(Ipv4Addr::BROADCAST, 68));
        assert_eq!(parse(&bytes).unwrap().file, b"ipxe/snponly.efi");
        assert!(r.handle(b"garbage", ListenPort::Dhcp, from).is_none());
        let non_pxe = request(MessageType::Discover, &[]).to_bytes();
        assert!(r.handle(&non_pxe, ListenPort::Dhcp, from).is_none());
        let m = &r.hub.metrics;
        let load = |c: &std::sync::atomic::AtomicU64| c.load(std::sync::atomic::Ordering::Relaxed);
        assert_eq!(
            (
                load(&m.dhcp_packets),
                load(&m.dhcp_malformed),
                load(&m.dhcp_ignored)
            ),
            (3, 1, 1)
        );
        let boots = r.hub.boots();
        assert_eq!(boots.len(), 1);
        assert_eq!(boots[0].name.as_deref(), Some("n1"));
        assert_eq!(boots[0].stages[0].stage, Stage::Dhcp);
        assert_eq!(boots[0].stages[0].detail, "x64 UEFI -> ipxe/snponly.efi");
        assert!(r.hub.discovered_list().is_empty());

        // An unknown machine is discovered, and not answered when unknown machines do not boot.
        let r = responder(Lookup::Unknown { boot: false });
        assert!(
            r.handle(&handmade_discover(), ListenPort::Dhcp, from)
                .is_none()
        );
        assert!(
            r.handle(&handmade_discover(), ListenPort::Dhcp, from)
                .is_none()
        );
        let d = r.hub.discovered_list();
        assert_eq!(d.len(), 1);
        assert_eq!(
            (
                d[0].mac.as_str(),
                d[0].arch.as_str(),
                d[0].vendor_class.as_str(),
                d[0].requests
            ),
            (
                "52:54:00:12:34:56",
                "x64 UEFI",
                "PXEClient:Arch:00007:UNDI:003016",
                2
            )
        );
        assert!(r.hub.boots().is_empty());
    }

    #[test]
    fn vendor_class_text_is_made_printable() {
        assert_eq!(printable(b"PXEClient\n\x1b[31m"), "PXEClient??[31m");
    }
}
