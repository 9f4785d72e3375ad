//! The inventory: which machines exist, by MAC address, what they boot and their per-node
//! variables. The pipeline reads it only to check node templates against real nodes; the boot
//! server renders them.
//!
//! ```toml
//! # inventory.toml
//! [defaults]
//! recipe = "ci-node"        # what unknown machines boot; leave out to boot them nothing
//!
//! [server]                  # the machine running `netboot serve`
//! name = "raspi"
//! address = "192.168.88.2"  # its default --advertise
//!
//! [nodes.machine0]
//! mac = "52:54:00:12:34:01"
//! recipe = "core-node"
//! version = "1.2.0-0123456789"  # optional: pin a published version (default: current)
//! [nodes.machine0.vars]     # seen by node templates as node.NAME (name, mac, recipe and
//! port_type = "eth"         # secrets are reserved: node.secrets comes from secrets.toml,
//!                           # see crate::secrets)
//! [[nodes.machine0.vars.mesh]] # point-to-point links, checked as a whole: see crate::mesh
//! interface = "enp1s0"
//! address = "192.168.1.1/30"
//! peer = "machine1"
//! peer-interface = "enp1s0"
//! peer-address = "192.168.1.2/30"
//! ```

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::diag::{self, Located};
use crate::layout::valid_name;

mod load;
pub use load::{LoadError, add_node, load, load_file};

/// The whole inventory.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct Inventory {
    /// Settings for machines that are not listed.
    #[serde(default)]
    pub defaults: Defaults,
    /// The machine that runs the boot server, for people and as `netboot serve`'s default
    /// `--advertise`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub server: Option<ServerInfo>,
    /// The nodes by name (the name is also the node's hostname).
    #[serde(default)]
    pub nodes: BTreeMap<String, Node>,
}

/// The boot server's machine (`[server]`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct ServerInfo {
    /// Its hostname.
    pub name: String,
    /// The address nodes reach it at; `netboot serve` advertises it unless `--advertise` or
    /// a specific `--bind` says otherwise.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub address: Option<std::net::Ipv4Addr>,
    /// What it is, for people.
    #[serde(default)]
    pub description: String,
    /// Where Wake-on-LAN magic packets go, for nodes that do not say.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub wol: Option<Wol>,
}

/// Where a node's Wake-on-LAN magic packet goes (`wol = { broadcast = "192.168.88.255" }`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct Wol {
    /// The broadcast address of the node's LAN (the subnet's, or 255.255.255.255 with an
    /// `interface`).
    pub broadcast: std::net::Ipv4Addr,
    /// The UDP port.
    #[serde(default = "wol_port")]
    pub port: u16,
    /// The server's interface to send it out of (needed for 255.255.255.255 when the server
    /// has no default route).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub interface: Option<String>,
}

fn wol_port() -> u16 {
    crate::fleet::power::WOL_PORT
}

/// A node's BMC (`bmc = { address = "192.168.88.40" }`, or `bmc = { kind = "redfish",
/// address = "192.168.88.41", ca = "/etc/netboot/bmc-ca.pem" }`); its login is in secrets.toml
/// under `[bmc.NODE]`, never here.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct Bmc {
    /// The protocol.
    #[serde(default)]
    pub kind: BmcKind,
    /// Its address (name or IP).
    pub address: String,
    /// Its port (623 for IPMI, 443 for Redfish when not given).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<u16>,
    /// Redfish: the computer system to act on (`/redfish/v1/Systems/ID` or `ID`); when not
    /// given, the BMC must list exactly one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub system: Option<String>,
    /// Redfish: a PEM file with the certificate the BMC's HTTPS certificate is checked
    /// against (its own self-signed one, or the CA that signed it); when not given, the
    /// public web's roots.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca: Option<PathBuf>,
    /// Redfish: `false` accepts any certificate (anyone on the BMC's network can then
    /// pretend to be it and learn its password); `ca` is the safe way.
    #[serde(default = "yes", skip_serializing_if = "is_true")]
    pub verify: bool,
}

fn yes() -> bool {
    true
}

fn is_true(b: &bool) -> bool {
    *b
}

impl Bmc {
    /// The port, or the protocol's own.
    pub fn port(&self) -> u16 {
        self.port.unwrap_or(match self.kind {
            BmcKind::Ipmi => 623,
            BmcKind::Redfish => 443,
        })
    }
}

/// How a BMC is spoken to.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum BmcKind {
    /// IPMI 2.0 over LAN (`ipmitool -I lanplus`).
    #[default]
    Ipmi,
    /// DMTF Redfish over HTTPS (`ComputerSystem.Reset`, `PowerState`).
    Redfish,
}

impl BmcKind {
    /// Its name in the inventory.
    pub fn word(self) -> &'static str {
        match self {
            BmcKind::Ipmi => "ipmi",
            BmcKind::Redfish => "redfish",
        }
    }
}

/// Settings for machines the inventory does not list.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct Defaults {
    /// The recipe unknown machines boot; none means they are not booted.
    #[serde(default)]
    pub recipe: Option<String>,
}

/// One machine.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct Node {
    /// Its boot NIC's MAC address, lowercase, colon-separated.
    pub mac: String,
    /// The recipe it boots.
    pub recipe: String,
    /// The published version it boots; the recipe's `current` when left out.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
    /// Where its Wake-on-LAN packet goes (else `[server] wol`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub wol: Option<Wol>,
    /// Its BMC, if it has one: power goes through it instead of Wake-on-LAN.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bmc: Option<Bmc>,
    /// Install its recipe's disk image onto a disk of its own over the network, then boot
    /// from that disk (see [`Install`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub install: Option<Install>,
    /// Where it keeps what its image persists, when it boots from the network (see
    /// [`DataDisk`]; a node installed on its disk keeps it on that disk).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data: Option<DataDisk>,
    /// Kernel arguments added to its command line when it boots from the network
    /// (`kernel-args = "intel_iommu=on ironbake.analyze"`); a disk's command line is its
    /// image's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kernel_args: Option<String>,
    /// Per-node variables for node templates.
    #[serde(default)]
    pub vars: BTreeMap<String, toml::Value>,
}

/// The first stage's own parameters (the command line contract): the boot server sets them,
/// a node's `kernel-args` may not.
const SERVER_ARGS: &[&str] = &[
    "ironbake.image",
    "ironbake.layers",
    "ironbake.node",
    "ironbake.server",
    "ironbake.servers",
    "ironbake.root",
    "ironbake.slot",
    "ironbake.install",
    "ironbake.wipe",
    "ironbake.disk",
    "initrd",
];

/// Why `args` cannot be added to a kernel command line by the inventory, if it cannot.
pub fn kernel_args_problem(args: &str) -> Option<String> {
    if args.len() > 512 {
        return Some(format!("{} bytes: at most 512", args.len()));
    }
    if let Some(c) = args
        .chars()
        .find(|c| (!c.is_ascii_graphic() && *c != ' ') || "\"'\\`$;&|<>".contains(*c))
    {
        return Some(format!(
            "{c:?} cannot be in them: words of printable ASCII separated by spaces, without              quotes, backslashes or the shell's and iPXE's special characters"
        ));
    }
    args.split_whitespace().find_map(|w| {
        let key = w.split('=').next().unwrap_or(w);
        SERVER_ARGS.contains(&key).then(|| {
            format!("{key} is set by the boot server (see the kernel command line contract)")
        })
    })
}

/// Where a node's disk image goes (`install = { disk = "/dev/disk/by-id/ata-..." }`, or
/// `install = { min-gib = 100 }`): a PXE-booted node with one streams its recipe's published
/// `disk.img` onto that disk, then boots from it, until `ironbake install NODE` asks for a fresh
/// install.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct Install {
    /// The disk: a stable name under `/dev/disk/by-id/` (`virtio-SERIAL`, `nvme-MODEL_SERIAL`,
    /// `ata-MODEL_SERIAL`, `wwn-...`; the first stage matches the serial the kernel shows),
    /// or a kernel name (`/dev/sda`, `/dev/nvme0n1`), which can change between boots.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub disk: Option<String>,
    /// Instead of `disk`: the only disk of at least this many GiB (none or two is a refusal).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_gib: Option<u32>,
    /// Overwrite a disk that holds partitions or filesystems that are not ironbake's (without
    /// it, such a disk is refused and nothing is written).
    #[serde(default, skip_serializing_if = "is_false")]
    pub wipe: bool,
}

/// The disk a network-booted node keeps its persisted folders on (`data = { disk =
/// "/dev/disk/by-id/..." }`): the partition with `label` on it, made on first boot when the
/// disk is blank or ironbake's with free space, never on a disk holding other data.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct DataDisk {
    /// The disk, as for [`Install::disk`].
    pub disk: String,
    /// The data partition's GPT name.
    #[serde(default = "data_label")]
    pub label: String,
}

fn data_label() -> String {
    "ironbake-data".into()
}

impl DataDisk {
    /// Why this cannot be, if it cannot.
    pub fn problem(&self) -> Option<String> {
        let l = &self.label;
        if l.is_empty()
            || l.len() > 36
            || !l
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "-_".contains(c))
        {
            return Some(format!(
                "label {l:?} must be a GPT partition name: letters, digits, - and _, at most 36"
            ));
        }
        disk_path_problem(&self.disk)
    }
}

/// Why `d` cannot name a whole disk on a kernel command line or in a node's settings.
fn disk_path_problem(d: &str) -> Option<String> {
    let ok = d.starts_with("/dev/")
        && !d.contains("..")
        && !d.ends_with('/')
        && d.len() <= 200
        && d.chars()
            .all(|c| c.is_ascii_alphanumeric() || "/._:+-".contains(c));
    (!ok).then(|| {
        format!(
            "disk {d:?} must be a whole disk under /dev/ (letters, digits and /._:+- only), \
             like /dev/disk/by-id/nvme-MODEL_SERIAL"
        )
    })
}

fn is_false(b: &bool) -> bool {
    !*b
}

impl Install {
    /// The disk as the first stage reads it on the kernel command line: `disk:PATH` or
    /// `min-gib:N`.
    pub fn word(&self) -> String {
        match (&self.disk, self.min_gib) {
            (Some(d), _) => format!("disk:{d}"),
            (None, Some(n)) => format!("min-gib:{n}"),
            (None, None) => "min-gib:1".into(),
        }
    }

    /// Why this cannot be, if it cannot: exactly one of `disk` and `min-gib`, a disk path
    /// that can go on a kernel command line.
    pub fn problem(&self) -> Option<String> {
        match (&self.disk, self.min_gib) {
            (Some(_), Some(_)) => Some("give disk or min-gib, not both".into()),
            (None, None) => Some(
                "say which disk: disk = \"/dev/disk/by-id/...\" or min-gib = N (the only \
                 disk of at least N GiB)"
                    .into(),
            ),
            (None, Some(0)) => Some("min-gib must be at least 1".into()),
            (Some(d), None) => disk_path_problem(d),
            (None, Some(_)) => None,
        }
    }
}

/// Is `mac` six lowercase hex pairs separated by colons?
pub fn valid_mac(mac: &str) -> bool {
    let parts: Vec<_> = mac.split(':').collect();
    parts.len() == 6
        && parts.iter().all(|p| {
            p.len() == 2
                && p.chars()
                    .all(|c| c.is_ascii_digit() || ('a'..='f').contains(&c))
        })
}

/// Can `name` be a node's name, which is also its hostname (lowercase letters, digits and
/// `-`, at most 63)?
pub fn valid_hostname(name: &str) -> bool {
    name.len() <= 63 && valid_name(name) && !name.contains('_')
}

/// Parses and validates inventory text.
pub fn parse(file: &str, text: &str) -> Result<Inventory, Located> {
    let inv: Inventory = diag::parse_toml(file, text)?;
    let at = |needle: &str, message: String| diag::locate(file, text, needle, message);
    let mut macs: BTreeMap<&str, &str> = BTreeMap::new();
    for (name, node) in &inv.nodes {
        if !valid_hostname(name) {
            return Err(at(
                name,
                format!("node name {name:?} must be a hostname: lowercase letters, digits and '-'"),
            ));
        }
        if !valid_mac(&node.mac) {
            return Err(at(
                &node.mac,
                format!(
                    "node {name}: mac {:?} must look like 52:54:00:ab:cd:ef (lowercase)",
                    node.mac
                ),
            ));
        }
        if let Some(other) = macs.insert(&node.mac, name) {
            return Err(at(
                &node.mac,
                format!("nodes {other} and {name} have the same mac {}", node.mac),
            ));
        }
        if let Some(b) = &node.bmc
            && b.kind == BmcKind::Ipmi
            && (b.system.is_some() || b.ca.is_some() || !b.verify)
        {
            return Err(at(
                &b.address,
                format!(
                    "node {name}: bmc keys system, ca and verify are for kind = \"redfish\"; \
                     this BMC is IPMI (ipmitool authenticates with the password alone)"
                ),
            ));
        }
        if let Some(why) = node.install.as_ref().and_then(Install::problem) {
            let needle = node
                .install
                .as_ref()
                .and_then(|i| i.disk.clone())
                .unwrap_or_else(|| "install".into());
            return Err(diag::locate_after(
                file,
                text,
                &format!("nodes.{name}"),
                &needle,
                format!("node {name}: install: {why}"),
            ));
        }
        if let Some(d) = &node.data
            && let Some(why) = d.problem()
        {
            return Err(diag::locate_after(
                file,
                text,
                &format!("nodes.{name}"),
                &d.disk,
                format!("node {name}: data: {why}"),
            ));
        }
        if let Some(args) = &node.kernel_args
            && let Some(why) = kernel_args_problem(args)
        {
            return Err(diag::locate_after(
                file,
                text,
                &format!("nodes.{name}"),
                "kernel-args",
                format!("node {name}: kernel-args: {why}"),
            ));
        }
        for key in node.vars.keys() {
            if ["name", "mac", "recipe"].contains(&key.as_str()) {
                return Err(at(
                    key,
                    format!(
                        "node {name}: variable {key:?} is reserved (node.{key} is set from the node itself)"
                    ),
                ));
            }
            if key == "secrets" {
                return Err(at(
                    key,
                    format!(
                        "node {name}: variable \"secrets\" is reserved: node.secrets comes from \
                         secrets.toml beside the inventory, which stays out of git"
                    ),
                ));
            }
        }
    }
    crate::mesh::check(&inv).map_err(|e| {
        diag::locate_after(
            file,
            text,
            &format!("nodes.{}", e.node),
            &e.needle,
            e.message,
        )
    })?;
    Ok(inv)
}

/// The template context a node template sees under `node`.
pub fn node_context(name: &str, node: &Node) -> BTreeMap<String, toml::Value> {
    let mut m = node.vars.clone();
    m.insert("name".into(), toml::Value::String(name.into()));
    m.insert("mac".into(), toml::Value::String(node.mac.clone()));
    m.insert("recipe".into(), toml::Value::String(node.recipe.clone()));
    m
}

/// `text` with a `[nodes.NAME]` table appended for `mac`, everything already there (comments,
/// layout) kept as it is; refused, with the reason, if the result would not be a valid
/// inventory: a name or MAC already used, a malformed MAC, no recipe.
pub fn with_node(
    text: &str,
    mac: &str,
    name: &str,
    recipe: Option<&str>,
) -> Result<String, String> {
    let shown = "inventory.toml";
    let current = parse(shown, text).map_err(|e| e.to_string())?;
    let mac = crate::hub::normalize_mac(mac)
        .ok_or_else(|| format!("{mac:?} is not a MAC address (like 52:54:00:12:34:56)"))?;
    if !valid_hostname(name) {
        return Err(format!(
            "node name {name:?} must be a hostname: lowercase letters, digits and '-'"
        ));
    }
    if current.nodes.contains_key(name) {
        return Err(format!(
            "{shown} already has a node named {name}; pick another name"
        ));
    }
    if let Some((other, _)) = current.nodes.iter().find(|(_, n)| n.mac == mac) {
        return Err(format!("{shown} already has {mac} as node {other}"));
    }
    let Some(recipe) = recipe.or(current.defaults.recipe.as_deref()) else {
        return Err(format!(
            "say which recipe {name} boots: --recipe NAME (the inventory has no [defaults] recipe)"
        ));
    };
    let mut new = text.to_string();
    if !new.is_empty() && !new.ends_with('\n') {
        new.push('\n');
    }
    new.push_str(&format!(
        "\n[nodes.{name}]\nmac = \"{mac}\"\nrecipe = \"{recipe}\"\n"
    ));
    parse(shown, &new).map_err(|e| format!("the new inventory would not be valid: {e}"))?;
    Ok(new)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nodes_parse_and_are_checked() {
        let inv = parse("i.toml", "[defaults]\nrecipe = \"ci-node\"\n[nodes.m0]\nmac = \"52:54:00:00:00:01\"\nrecipe = \"core-node\"\n[nodes.m0.vars]\nip = \"10.0.0.1\"\n").unwrap();
        assert_eq!(inv.defaults.recipe.as_deref(), Some("ci-node"));
        let ctx = node_context("m0", &inv.nodes["m0"]);
        assert_eq!(ctx["name"].as_str(), Some("m0"));
        assert_eq!(ctx["ip"].as_str(), Some("10.0.0.1"));
        let dup = "[nodes.a]\nmac = \"52:54:00:00:00:01\"\nrecipe = \"r\"\n[nodes.b]\nmac = \"52:54:00:00:00:01\"\nrecipe = \"r\"\n";
        assert!(
            parse("i.toml", dup)
                .unwrap_err()
                .message
                .contains("same mac")
        );
        assert!(
            parse(
                "i.toml",
                "[nodes.a]\nmac = \"52:54:00:00:00:0G\"\nrecipe = \"r\"\n"
            )
            .unwrap_err()
            .message
            .contains("must look like")
        );
        assert!(parse("i.toml", "[nodes.a]\nmac = \"52:54:00:00:00:01\"\nrecipe = \"r\"\n[nodes.a.vars]\nname = \"x\"\n").unwrap_err().message.contains("reserved"));
    }

    #[test]
    fn a_bmc_port_follows_its_kind_and_redfish_keys_stay_with_redfish() {
        let node = |bmc: &str| {
            format!("[nodes.a]\nmac = \"52:54:00:00:00:01\"\nrecipe = \"r\"\nbmc = {{ {bmc} }}\n")
        };
        let ipmi = parse("i.toml", &node("address = \"10.0.0.9\"")).unwrap();
        let b = ipmi.nodes["a"].bmc.as_ref().unwrap();
        assert_eq!((b.kind, b.port(), b.verify), (BmcKind::Ipmi, 623, true));
        let rf = parse(
            "i.toml",
            &node("kind = \"redfish\", address = \"bmc-a\", system = \"1\", ca = \"/etc/netboot/bmc.pem\""),
        )
        .unwrap();
        let b = rf.nodes["a"].bmc.as_ref().unwrap();
        assert_eq!(
            (b.kind, b.port(), b.system.as_deref()),
            (BmcKind::Redfish, 443, Some("1"))
        );
        let wrong = parse("i.toml", &node("address = \"10.0.0.9\", verify = false")).unwrap_err();
        assert!(
            wrong.message.contains("kind = \"redfish\""),
            "{}",
            wrong.message
        );
        assert!(parse("i.toml", &node("kind = \"smash\", address = \"x\"")).is_err());
    }

    #[test]
    fn an_install_names_one_disk_that_fits_on_a_command_line() {
        let node = |install: &str| {
            format!(
                "[nodes.a]\nmac = \"52:54:00:00:00:01\"\nrecipe = \"r\"\ninstall = {{ {install} }}\n"
            )
        };
        let inv = parse("i.toml", &node("disk = \"/dev/disk/by-id/virtio-abc\"")).unwrap();
        let i = inv.nodes["a"].install.as_ref().unwrap();
        assert_eq!(
            (i.word(), i.wipe),
            ("disk:/dev/disk/by-id/virtio-abc".into(), false)
        );
        let inv = parse("i.toml", &node("min-gib = 100, wipe = true")).unwrap();
        let i = inv.nodes["a"].install.as_ref().unwrap();
        assert_eq!((i.word(), i.wipe), ("min-gib:100".into(), true));
        for (bad, says) in [
            ("disk = \"/dev/sda\", min-gib = 2", "not both"),
            ("wipe = true", "say which disk"),
            ("disk = \"sda\"", "under /dev/"),
            ("disk = \"/dev/disk/by-id/a b\"", "under /dev/"),
            ("disk = \"/dev/../etc/passwd\"", "under /dev/"),
            ("min-gib = 0", "at least 1"),
        ] {
            let e = parse("i.toml", &node(bad)).unwrap_err();
            assert!(e.message.contains(says), "{bad}: {}", e.message);
            assert_eq!(e.line, 4, "{bad}: {e}");
        }
        assert!(parse("i.toml", &node("disk = \"/dev/sda\", size = 3")).is_err());
        let data = |d: &str| {
            format!("[nodes.a]\nmac = \"52:54:00:00:00:01\"\nrecipe = \"r\"\ndata = {{ {d} }}\n")
        };
        let inv = parse("i.toml", &data("disk = \"/dev/disk/by-id/virtio-d1\"")).unwrap();
        assert_eq!(inv.nodes["a"].data.as_ref().unwrap().label, "ironbake-data");
        let e = parse(
            "i.toml",
            &data("disk = \"/dev/vdb\", label = \"no spaces\""),
        )
        .unwrap_err();
        assert!(e.message.contains("GPT partition name"), "{}", e.message);
        assert!(
            parse("i.toml", &data("disk = \"vdb\""))
                .unwrap_err()
                .message
                .contains("under /dev/")
        );
    }

    #[test]
    fn a_node_is_appended_and_mistakes_are_refused() {
        let text = "# the lab\n[defaults]\nrecipe = \"ci-node\"\n\n[nodes.a]\nmac = \"52:54:00:00:00:01\"\nrecipe = \"ci-node\"\n";
        let new = with_node(text, "52-54-00-00-00-99", "b", None).unwrap();
        assert!(new.starts_with(text), "comments and layout are kept");
        assert!(
            new.ends_with("\n[nodes.b]\nmac = \"52:54:00:00:00:99\"\nrecipe = \"ci-node\"\n"),
            "{new}"
        );
        let err = |mac: &str, name: &str, recipe: Option<&str>, t: &str| {
            with_node(t, mac, name, recipe).unwrap_err()
        };
        assert!(err("52:54:00:00:00:02", "a", None, text).contains("already has a node named a"));
        assert!(
            err("52:54:00:00:00:01", "c", None, text)
                .contains("already has 52:54:00:00:00:01 as node a")
        );
        assert!(err("nope", "c", None, text).contains("is not a MAC address"));
        assert!(err("52:54:00:00:00:03", "c", None, "").contains("--recipe"));
        assert!(err("52:54:00:00:00:03", "Bad_Name", Some("r"), "").contains("hostname"));
    }

    #[test]
    fn kernel_args_are_plain_words_and_leave_the_contract_to_the_server() {
        let node = |args: &str| {
            format!(
                "[nodes.a]\nmac = \"52:54:00:00:00:01\"\nrecipe = \"r\"\nkernel-args = {args:?}\n"
            )
        };
        let inv = parse("i.toml", &node("intel_iommu=on iommu=pt ironbake.analyze")).unwrap();
        assert_eq!(
            inv.nodes["a"].kernel_args.as_deref(),
            Some("intel_iommu=on iommu=pt ironbake.analyze")
        );
        for (args, says) in [
            ("ironbake.image=http://evil/", "set by the boot server"),
            ("quiet initrd=x", "initrd is set by the boot server"),
            ("a=${ip}", "'$' cannot be in them"),
            ("a\"b", "cannot be in them"),
            ("a;b", "cannot be in them"),
        ] {
            let e = parse("i.toml", &node(args)).unwrap_err();
            assert!(e.message.contains(says), "{args}: {}", e.message);
            assert!(
                e.message.starts_with("node a: kernel-args: "),
                "{}",
                e.message
            );
            assert_eq!(e.line, 4, "{args}: points at the line");
        }
        assert!(kernel_args_problem(&"x".repeat(513)).is_some());
    }
}
