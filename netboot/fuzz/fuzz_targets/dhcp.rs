//! Fuzz target: a datagram on the proxyDHCP ports, through `dhcp::parse`, the `dhcp::answer`
//! decision for every port, configuration and inventory answer, and the reply's `to_bytes`,
//! which must parse back to the same packet.
#![no_main]

use std::net::{Ipv4Addr, SocketAddr};

use libfuzzer_sys::fuzz_target;
use netboot::dhcp::{self, BootFiles, Config, Ignore, ListenPort, MessageType, opt};
use netboot::hub::Lookup;

/// Options a proxyDHCP answer never carries: it hands out no address.
const LEASE_OPTIONS: [u8; 5] = [
    1,  // subnet mask
    3,  // router
    6,  // DNS servers
    51, // lease time
    58, // renewal time
];

/// The two configurations answers are decided for: the usual one, and one with no arm64 iPXE
/// and an HTTP base so long that every URL goes in option 67 instead of the `file` field.
fn configs() -> [Config; 2] {
    let usual = Config {
        server_ip: Ipv4Addr::new(10, 33, 0, 1),
        http_base: "http://10.33.0.1:8080".into(),
        boot_files: BootFiles {
            bios: "ipxe/undionly.kpxe".into(),
            efi_x64: "ipxe/snponly.efi".into(),
            efi_arm64: Some("ipxe/arm64/snponly.efi".into()),
        },
    };
    let long = Config {
        http_base: format!("http://10.33.0.1:8080/{}", "x".repeat(120)),
        boot_files: BootFiles {
            efi_arm64: None,
            ..usual.boot_files.clone()
        },
        ..usual.clone()
    };
    [usual, long]
}

fuzz_target!(|data: &[u8]| {
    let Ok(req) = dhcp::parse(data) else {
        return;
    };
    // What was parsed, written out again, reads back the same.
    assert_eq!(
        dhcp::parse(&req.to_bytes()).as_ref(),
        Ok(&req),
        "a parsed packet does not survive to_bytes"
    );
    let lookups = [
        Lookup::Node("n1".into()),
        Lookup::Unknown { boot: true },
        Lookup::Unknown { boot: false },
    ];
    for cfg in &configs() {
        for port in [ListenPort::Dhcp, ListenPort::Pxe] {
            let _ = dhcp::destination(&req, port, SocketAddr::from(([0, 0, 0, 0], 68)));
            let _ = dhcp::destination(&req, port, SocketAddr::from(([10, 33, 0, 120], 4011)));
            for lookup in &lookups {
                let reply = match dhcp::answer(&req, port, cfg, lookup) {
                    Ok(reply) => reply,
                    Err(why) => {
                        let _ = why.to_string();
                        continue;
                    }
                };
                assert!(
                    !matches!(lookup, Lookup::Unknown { boot: false }),
                    "answered an unknown machine that the inventory does not boot"
                );
                let p = &reply.packet;
                assert_eq!(p.op, 2, "a reply is a BOOTREPLY");
                assert_eq!(
                    p.yiaddr,
                    Ipv4Addr::UNSPECIFIED,
                    "a proxy hands out no address"
                );
                assert_eq!(p.xid, req.xid);
                assert_eq!(p.chaddr, req.chaddr);
                let expected = match req.message_type() {
                    Some(MessageType::Discover) => MessageType::Offer,
                    _ => MessageType::Ack,
                };
                assert_eq!(p.message_type(), Some(expected));
                assert_eq!(
                    p.options.get(opt::SERVER_ID),
                    Some(&cfg.server_ip.octets()[..])
                );
                for code in LEASE_OPTIONS {
                    assert_eq!(p.options.get(code), None, "option {code} in a proxy answer");
                }
                // The boot target is in the file field, or in option 67 when too long for it.
                let boot = reply.boot.as_bytes();
                assert!(
                    p.file == boot || p.options.get(opt::BOOTFILE) == Some(boot),
                    "the reply does not carry its boot target {:?}",
                    reply.boot
                );
                let files = &cfg.boot_files;
                assert!(
                    reply.boot.starts_with(&format!("{}/", cfg.http_base))
                        || reply.boot == files.bios
                        || reply.boot == files.efi_x64
                        || Some(&reply.boot) == files.efi_arm64.as_ref(),
                    "boot target {:?} is neither a URL of ours nor a boot file",
                    reply.boot
                );
                // The reply as sent on the wire parses back to the same packet.
                let wire = p.to_bytes();
                assert!(wire.len() >= 300, "replies are padded to 300 bytes");
                assert_eq!(
                    dhcp::parse(&wire).as_ref(),
                    Ok(p),
                    "a reply does not survive to_bytes"
                );
            }
        }
    }
    // A well-formed message without a message type is plain BOOTP: never answered.
    if req.options.get(opt::MESSAGE_TYPE).is_none() && req.op == 1 && req.htype == 1 {
        let cfg = &configs()[0];
        let r = dhcp::answer(&req, ListenPort::Dhcp, cfg, &lookups[0]);
        assert!(matches!(
            r,
            Err(Ignore::NoMessageType | Ignore::NotEthernet { .. })
        ));
    }
});
