//! The plan's tests: a fake base and host, whole overlays resolved and dumped.

use super::*;
use crate::overlay::{Spec, parse_spec};

/// An overlay's settings from `overlay.toml` text.
fn spec(text: &str) -> Spec {
    parse_spec("overlay.toml", text).unwrap()
}

/// The host as the tests see it: an overlay file named "/missing" cannot be read.
struct Host;
impl HostFiles for Host {
    fn read(&self, path: &Path) -> std::io::Result<Vec<u8>> {
        Err(std::io::Error::new(
            std::io::ErrorKind::PermissionDenied,
            format!("{} is not readable", path.display()),
        ))
    }
}

struct Fake(BTreeMap<&'static str, (&'static str, u32, bool)>);
impl BaseView for Fake {
    fn read(&self, path: &str) -> Option<Vec<u8>> {
        self.0
            .get(path)
            .filter(|e| !e.2)
            .map(|e| e.0.as_bytes().to_vec())
    }
    fn stat(&self, path: &str) -> Option<(u32, u32, u32, bool)> {
        self.0.get(path).map(|e| (e.1, 0, 0, e.2))
    }
}

fn base() -> Fake {
    Fake(BTreeMap::from([
        ("/etc", ("", 0o755, true)),
        ("/home", ("", 0o755, true)),
        (
            "/etc/passwd",
            ("root:x:0:0:root:/root:/bin/bash\n", 0o644, false),
        ),
        (
            "/etc/group",
            ("root:x:0:\nshadow:x:42:\nsudo:x:27:\n", 0o644, false),
        ),
        ("/etc/shadow", ("root:*:1:0:99999:7:::\n", 0o640, false)),
        (
            "/etc/gshadow",
            ("root:*::\nshadow:*::\nsudo:*::\n", 0o640, false),
        ),
        ("/usr/lib/os-release", ("ID=debian\n", 0o644, false)),
        (
            "/lib/systemd/system/ssh.service",
            (
                "[Unit]\n[Service]\n[Install]\nWantedBy=multi-user.target\nAlias=sshd.service\n",
                0o644,
                false,
            ),
        ),
        (
            "/lib/systemd/system/noinstall.service",
            ("[Service]\n", 0o644, false),
        ),
    ]))
}

fn recipe() -> Recipe {
    crate::recipe::parse("r.toml", "version = \"1\"\n[debian]\nsuite = \"bookworm\"\n[kernel]\npackage = \"linux-image-amd64\"\ncmdline = \"console=ttyS0\"\n[variables]\nwho = \"world\"\n").unwrap()
}

fn overlay(name: &str, spec: Spec) -> Overlay {
    Overlay {
        name: name.into(),
        dir: PathBuf::new(),
        spec,
        files: BTreeMap::new(),
        templates: vec![],
        node_templates: vec![],
        sha256: String::new(),
    }
}

fn inputs<'a>(r: &'a Recipe, ovs: &'a [Overlay], base: &'a Fake) -> Inputs<'a> {
    Inputs {
        recipe_name: "demo",
        recipe: r,
        version: "1-abc",
        overlays: ovs,
        artifacts: &[],
        base,
        host: &Host,
        epoch: 86400 * 20000,
    }
}

#[test]
fn a_full_overlay_resolves_to_the_expected_layer() {
    let r = recipe();
    let spec = spec(
        r#"
units = ["ssh.service"]
mask = ["noinstall.service"]
modules = ["mlx4_ib"]
cmdline = ["quiet"]
[[users]]
name = "admin"
uid = 1000
groups = ["sudo"]
[permissions]
"/home/admin/.ssh" = { mode = "0700", owner = "admin", group = "admin" }
"#,
    );
    let mut ov = overlay("base", spec);
    ov.templates.push(TemplateSource {
        file: "t".into(),
        dest: "/home/admin/.ssh/authorized_keys".into(),
        text: "hello {{ who }} from {{ ironbake.recipe }}@{{ ironbake.version }}\n".into(),
        mode: 0o644,
    });
    ov.node_templates.push(TemplateSource {
        file: "n".into(),
        dest: "/etc/hostname".into(),
        text: "{{ node.name }}\n".into(),
        mode: 0o644,
    });
    let base = base();
    let ovs = [ov];
    let plan = resolve(&inputs(&r, &ovs, &base)).unwrap();
    let dump = plan.dump();
    let expected = "\
0755 0:0 /etc dir [base]
0644 0:0 /etc/group file 53 bac257503b05 [base]
0640 0:42 /etc/gshadow file 44 f6d7486b9138 [base]
0755 0:0 /etc/modules-load.d dir [ironbake]
0644 0:0 /etc/modules-load.d/ironbake.conf file 8 49f3d08934b3 [ironbake]
0644 0:0 /etc/passwd file 73 177911e82756 [base]
0640 0:42 /etc/shadow file 49 18f9c46b5d7d [base]
0755 0:0 /etc/systemd dir [base]
0755 0:0 /etc/systemd/system dir [base]
0755 0:0 /etc/systemd/system/multi-user.target.wants dir [base]
0777 0:0 /etc/systemd/system/multi-user.target.wants/ssh.service link -> /lib/systemd/system/ssh.service [base]
0777 0:0 /etc/systemd/system/noinstall.service link -> /dev/null [base]
0777 0:0 /etc/systemd/system/sshd.service link -> /lib/systemd/system/ssh.service [base]
0755 0:0 /home dir [base]
0700 1000:1000 /home/admin dir [base]
0700 1000:1000 /home/admin/.ssh dir [base]
0644 0:0 /home/admin/.ssh/authorized_keys file 28 8e6d175b05d1 [base]
0755 0:0 /usr dir [ironbake]
0755 0:0 /usr/lib dir [ironbake]
0644 0:0 /usr/lib/os-release file 44 f8a5529848b9 [ironbake]
";
    assert_eq!(dump, expected);
    let Kind::File(Data::Bytes(group)) = &plan.entries["/etc/group"].kind else {
        panic!()
    };
    assert_eq!(
        String::from_utf8_lossy(group),
        "root:x:0:\nshadow:x:42:\nsudo:x:27:admin\nadmin:x:1000:\n"
    );
    let Kind::File(Data::Bytes(osr)) = &plan.entries["/usr/lib/os-release"].kind else {
        panic!()
    };
    assert_eq!(
        String::from_utf8_lossy(osr),
        "ID=debian\nIMAGE_ID=demo\nIMAGE_VERSION=1-abc\n"
    );
    let Kind::File(Data::Bytes(keys)) = &plan.entries["/home/admin/.ssh/authorized_keys"].kind
    else {
        panic!()
    };
    assert_eq!(
        String::from_utf8_lossy(keys),
        "hello world from demo@1-abc\n"
    );
    assert_eq!(plan.cmdline, "console=ttyS0 quiet");
    assert_eq!(
        plan.node_templates["/etc/hostname"].text,
        "{{ node.name }}\n"
    );
}

#[test]
fn mistakes_are_refused_with_the_overlay_named() {
    let r = recipe();
    let base = base();
    let cases: &[(&str, &str)] = &[
        (
            "units = [\"nope.service\"]",
            "unit \"nope.service\" to enable was not found",
        ),
        (
            "units = [\"noinstall.service\"]",
            "has no [Install] section",
        ),
        (
            "mask = [\"nope.timer\"]",
            "unit \"nope.timer\" to mask was not found",
        ),
        (
            "units = [\"ssh.service\"]\nmask = [\"ssh.service\"]",
            "masks \"ssh.service\", which overlays/o/overlay.toml enables",
        ),
        (
            "[permissions]\n\"/etc/x\" = {}",
            "which no overlay provides",
        ),
    ];
    for (text, needle) in cases {
        let ovs = [overlay("o", spec(text))];
        let err = format!("{:#}", resolve(&inputs(&r, &ovs, &base)).unwrap_err());
        assert!(
            err.contains(needle) && err.contains("overlays/o/overlay.toml"),
            "{err}"
        );
    }
    let mut ov = overlay("leaky", Spec::default());
    ov.templates.push(TemplateSource {
        file: "t".into(),
        dest: "/etc/ssh/ssh_host_ed25519_key".into(),
        text: "k".into(),
        mode: 0o600,
    });
    let ovs = [ov];
    let err = format!("{:#}", resolve(&inputs(&r, &ovs, &base)).unwrap_err());
    assert!(err.contains("machine identity"), "{err}");
}

/// An overlay's own account file that cannot be read stops the build: the account files
/// are never rebuilt from nothing.
#[test]
fn an_unreadable_overlay_file_is_an_error_not_an_empty_file() {
    let r = recipe();
    let base = base();
    let mut ov = overlay(
        "accounts",
        spec("[[users]]\nname = \"admin\"\nuid = 1000\n"),
    );
    ov.files.insert(
        "/etc/passwd".into(),
        FileEntry::File {
            source: PathBuf::from("/missing"),
            mode: 0o644,
            digest: ("0".repeat(64), 0),
        },
    );
    let ovs = [ov];
    let err = format!("{:#}", resolve(&inputs(&r, &ovs, &base)).unwrap_err());
    assert!(
        err.contains("reading /missing (for /etc/passwd)") && err.contains("not readable"),
        "{err}"
    );
}

#[test]
fn persisted_folders_are_listed_once_and_unsafe_ones_refused() {
    let base = base();
    let mut r = recipe();
    r.persist = vec!["/var/lib/rancher".try_into().unwrap()];
    let ovs = [
        overlay(
            "pve",
            spec("persist = [\"/var/lib/pve-cluster\", \"/etc/corosync\"]\n"),
        ),
        overlay("k3s", spec("persist = [\"/var/lib/rancher\"]\n")),
    ];
    let plan = resolve(&inputs(&r, &ovs, &base)).unwrap();
    let list = plan.entries.get(PERSIST_LIST).expect("the persist list");
    match &list.kind {
        Kind::File(Data::Bytes(b)) => assert_eq!(
            String::from_utf8_lossy(b),
            "/etc/corosync\n/var/lib/pve-cluster\n/var/lib/rancher\n"
        ),
        other => panic!("{other:?}"),
    }
    for (bad, says) in [
        ("/etc", "cannot be kept on the data partition"),
        ("/run/x", "cannot be kept"),
        ("/var/lib/ironbake/data", "cannot be kept"),
        ("/var/lib/rancher/k3s", "which is inside it"),
    ] {
        let ovs = [
            overlay("k3s", spec("persist = [\"/var/lib/rancher\"]\n")),
            overlay("bad", spec(&format!("persist = [\"{bad}\"]\n"))),
        ];
        let e = resolve(&inputs(&recipe(), &ovs, &base))
            .unwrap_err()
            .to_string();
        assert!(e.contains(says) && e.contains(bad), "{bad}: {e}");
    }
    // Nothing persisted: no list.
    let plan = resolve(&inputs(&recipe(), &[], &base)).unwrap();
    assert!(!plan.entries.contains_key(PERSIST_LIST));
}
