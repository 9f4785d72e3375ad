//! The resolved plan of an image's overlay layer: every path the overlays add, with its mode,
//! owner and contents, decided before anything is written. Pure: the base is seen through
//! [`BaseView`], artifacts arrive already fetched, and templates are rendered from their text.
//!
//! Order of application, later winning: each overlay in the recipe's order (its `files/`, then
//! its rendered `templates/`, then its artifacts), then users (account files and homes), then
//! enabled units, module list and release information, then every overlay's `[permissions]`.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::PathBuf;

use anyhow::{Context, Result, bail};
use serde::Serialize;

use crate::overlay::{self, FileEntry, Overlay, TemplateSource};
use crate::recipe::Recipe;
use crate::template;
use crate::users::{self, Accounts};

/// Read-only access to the package layer the plan sits on.
pub trait BaseView {
    /// The contents of a regular file (following no symlinks but the last), if it exists.
    fn read(&self, path: &str) -> Option<Vec<u8>>;
    /// `(mode, uid, gid, is_dir)` of a path, not following a final symlink.
    fn stat(&self, path: &str) -> Option<(u32, u32, u32, bool)>;
    /// The target of a symbolic link at `path` (its parents resolved), if it is one.
    fn link_target(&self, _path: &str) -> Option<String> {
        None
    }
}

/// Where a file's bytes come from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Data {
    /// A file on the build host (overlay files, cached artifacts).
    Path(PathBuf),
    /// Bytes made by the plan (rendered templates, account files).
    Bytes(Vec<u8>),
}

/// What a path is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Kind {
    /// A folder.
    Dir,
    /// A regular file.
    File(Data),
    /// A symbolic link to the target.
    Symlink(String),
}

/// One path of the overlay layer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// What it is.
    pub kind: Kind,
    /// Permission bits.
    pub mode: u32,
    /// Owner.
    pub uid: u32,
    /// Group.
    pub gid: u32,
    /// Who put it there: an overlay name, or `ironbake` for generated entries.
    pub origin: String,
}

/// An artifact that has been fetched and verified.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FetchedArtifact {
    /// The overlay that declared it.
    pub overlay: String,
    /// The declaration.
    pub spec: overlay::ArtifactSpec,
    /// The cached file.
    pub path: PathBuf,
    /// Its verified digest.
    pub sha256: String,
}

/// The context build-time templates see.
#[derive(Debug, Clone, Serialize)]
pub struct BuildContext {
    /// The recipe's variables, as top-level names.
    #[serde(flatten)]
    pub vars: BTreeMap<String, toml::Value>,
    /// `ironbake.recipe`, `ironbake.version`.
    pub ironbake: ImageInfo,
}

/// What an image is, as templates and the node see it.
#[derive(Debug, Clone, Serialize)]
pub struct ImageInfo {
    /// The recipe name.
    pub recipe: String,
    /// The published version.
    pub version: String,
}

/// Everything the plan is made from.
pub struct Inputs<'a> {
    /// The recipe's name.
    pub recipe_name: &'a str,
    /// The recipe.
    pub recipe: &'a Recipe,
    /// The published version.
    pub version: &'a str,
    /// The overlays, in the recipe's order.
    pub overlays: &'a [Overlay],
    /// Fetched artifacts.
    pub artifacts: &'a [FetchedArtifact],
    /// The package layer.
    pub base: &'a dyn BaseView,
    /// SOURCE_DATE_EPOCH, for account files.
    pub epoch: u64,
}

/// The resolved overlay layer and what goes beside it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    /// The overlay layer's entries by absolute path.
    pub entries: BTreeMap<String, Entry>,
    /// Node templates by image path (later overlays win), published for the boot server.
    pub node_templates: BTreeMap<String, TemplateSource>,
    /// The kernel command line.
    pub cmdline: String,
}

/// Paths that hold a machine's identity: never in an image, always per node.
pub const IDENTITY_PATHS: &[&str] = &[
    "/etc/machine-id",
    "/var/lib/dbus/machine-id",
    "/var/lib/systemd/random-seed",
    "/var/lib/systemd/credential.secret",
];

/// Is `path` a machine identity file (see [`IDENTITY_PATHS`], and SSH host keys)?
pub fn is_identity_path(path: &str) -> bool {
    IDENTITY_PATHS.contains(&path) || path.starts_with("/etc/ssh/ssh_host_")
}

struct Builder<'a> {
    base: &'a dyn BaseView,
    entries: BTreeMap<String, Entry>,
}

impl Builder<'_> {
    /// Refuses a path that goes through a symlink of the base: a folder in the overlay layer
    /// would hide the link itself (on Debian, `/lib` -> `usr/lib`) and break the image.
    fn check_parents(&self, path: &str, origin: &str) -> Result<()> {
        let parts: Vec<_> = path[1..].split('/').collect();
        let mut cur = String::new();
        for part in &parts[..parts.len() - 1] {
            cur.push('/');
            cur.push_str(part);
            if !self.entries.contains_key(&cur)
                && let Some(target) = self.base.link_target(&cur)
            {
                bail!(
                    "overlay {origin:?} puts {path} under {cur}, which is a symlink to {target} in the \
                     image; put it under the link's target instead"
                );
            }
        }
        Ok(())
    }

    fn parents(&mut self, path: &str, origin: &str) {
        let mut cur = String::new();
        let parts: Vec<_> = path[1..].split('/').collect();
        for part in &parts[..parts.len() - 1] {
            cur.push('/');
            cur.push_str(part);
            if self.entries.contains_key(&cur) {
                continue;
            }
            let (mode, uid, gid) = match self.base.stat(&cur) {
                Some((m, u, g, true)) => (m, u, g),
                _ => (0o755, 0, 0),
            };
            self.entries.insert(
                cur.clone(),
                Entry {
                    kind: Kind::Dir,
                    mode,
                    uid,
                    gid,
                    origin: origin.into(),
                },
            );
        }
    }

    fn put(&mut self, path: &str, kind: Kind, mode: u32, origin: &str) -> Result<()> {
        self.check_parents(path, origin)?;
        self.parents(path, origin);
        let (mode, uid, gid) = match (&kind, self.base.stat(path)) {
            // A folder the base has keeps the base's mode and owner unless [permissions] say so:
            // in overlayfs the upper folder's attributes win.
            (Kind::Dir, Some((m, u, g, true))) => (m, u, g),
            _ => (mode, 0, 0),
        };
        self.entries.insert(
            path.to_string(),
            Entry {
                kind,
                mode,
                uid,
                gid,
                origin: origin.into(),
            },
        );
        Ok(())
    }
}

fn text_of(b: &Builder<'_>, path: &str) -> Option<String> {
    match b.entries.get(path).map(|e| &e.kind) {
        Some(Kind::File(Data::Bytes(bytes))) => Some(String::from_utf8_lossy(bytes).into_owned()),
        Some(Kind::File(Data::Path(p))) => std::fs::read_to_string(p).ok(),
        _ => b
            .base
            .read(path)
            .map(|v| String::from_utf8_lossy(&v).into_owned()),
    }
}

/// What a unit's `[Install]` section asks `systemctl enable` to do.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Install {
    /// `(target, ".wants" | ".requires")` from WantedBy= and RequiredBy=.
    pub targets: Vec<(String, &'static str)>,
    /// Alias= names.
    pub aliases: Vec<String>,
    /// Also= units, enabled with this one.
    pub also: Vec<String>,
}

/// Reads a unit file's `[Install]` section.
pub fn install_section(unit_text: &str) -> Install {
    let mut out = Install::default();
    let mut in_install = false;
    for line in unit_text.lines() {
        let line = line.trim();
        if line.starts_with('[') {
            in_install = line == "[Install]";
            continue;
        }
        if !in_install {
            continue;
        }
        let Some((k, v)) = line.split_once('=') else {
            continue;
        };
        let words = v.split_whitespace().map(str::to_string);
        match k.trim() {
            "WantedBy" => out.targets.extend(words.map(|t| (t, ".wants"))),
            "RequiredBy" => out.targets.extend(words.map(|t| (t, ".requires"))),
            "Alias" => out.aliases.extend(words),
            "Also" => out.also.extend(words),
            _ => {}
        }
    }
    out
}

const UNIT_DIRS: &[&str] = &[
    "/etc/systemd/system",
    "/lib/systemd/system",
    "/usr/lib/systemd/system",
];

/// Resolves the overlay layer.
pub fn resolve(inp: &Inputs<'_>) -> Result<Plan> {
    let mut b = Builder {
        base: inp.base,
        entries: BTreeMap::new(),
    };
    let ctx = BuildContext {
        vars: inp.recipe.variables.clone(),
        ironbake: ImageInfo {
            recipe: inp.recipe_name.into(),
            version: inp.version.into(),
        },
    };
    let mut node_templates = BTreeMap::new();
    for ov in inp.overlays {
        for (path, fe) in &ov.files {
            match fe {
                FileEntry::Dir { mode } => b.put(path, Kind::Dir, *mode, &ov.name)?,
                FileEntry::File { source, mode } => b.put(
                    path,
                    Kind::File(Data::Path(source.clone())),
                    *mode,
                    &ov.name,
                )?,
                FileEntry::Symlink { target } => {
                    b.put(path, Kind::Symlink(target.clone()), 0o777, &ov.name)?
                }
            }
        }
        for t in &ov.templates {
            let text = template::render(t, &ctx)?;
            b.put(
                &t.dest,
                Kind::File(Data::Bytes(text.into_bytes())),
                t.mode,
                &ov.name,
            )?;
        }
        for a in inp.artifacts.iter().filter(|a| a.overlay == ov.name) {
            let mode = overlay::parse_mode(&a.spec.mode).expect("validated when parsed");
            b.put(
                &a.spec.dest,
                Kind::File(Data::Path(a.path.clone())),
                mode,
                &ov.name,
            )?;
        }
        for t in &ov.node_templates {
            template::check_syntax(t)?;
            node_templates.insert(t.dest.clone(), t.clone());
        }
    }

    // Users: whole new account files over the base's.
    let users: Vec<_> = inp
        .overlays
        .iter()
        .flat_map(|o| o.spec.users.iter().map(move |u| (o, u)))
        .collect();
    let read = |b: &Builder<'_>, p: &str| text_of(b, p).unwrap_or_default();
    let mut accounts = Accounts {
        passwd: read(&b, "/etc/passwd"),
        group: read(&b, "/etc/group"),
        shadow: read(&b, "/etc/shadow"),
        gshadow: read(&b, "/etc/gshadow"),
    };
    if !users.is_empty() {
        let specs: Vec<_> = users.iter().map(|(_, u)| (*u).clone()).collect();
        accounts = users::add_users(&accounts, &specs, inp.epoch / 86400)
            .context("adding the overlays' users")?;
        let origin = users
            .iter()
            .map(|(o, _)| o.name.as_str())
            .collect::<Vec<_>>()
            .join(",");
        for (path, text, mode) in [
            ("/etc/passwd", &accounts.passwd, 0o644),
            ("/etc/group", &accounts.group, 0o644),
            ("/etc/shadow", &accounts.shadow, 0o640),
            ("/etc/gshadow", &accounts.gshadow, 0o640),
        ] {
            b.put(
                path,
                Kind::File(Data::Bytes(text.clone().into_bytes())),
                mode,
                &origin,
            )?;
            if mode == 0o640 {
                // Debian's shadow files belong to group shadow.
                let gid = users::gid_of(&accounts.group, "shadow").unwrap_or(0);
                b.entries.get_mut(path).expect("just put").gid = gid;
            }
        }
        for (o, u) in &users {
            let home = u
                .home
                .clone()
                .unwrap_or_else(|| format!("/home/{}", u.name));
            if b.base.stat(&home).is_some() {
                // The base has it already (a system user's home): leave it as it is.
                continue;
            }
            if !b.entries.contains_key(&home) {
                b.put(&home, Kind::Dir, 0o700, &o.name)?;
            }
            let e = b
                .entries
                .get_mut(&home)
                .expect("home exists in the plan or was just put");
            e.mode = 0o700;
            e.uid = u.uid;
            e.gid = u.gid.unwrap_or(u.uid);
        }
    }

    // Units to enable: the links `systemctl enable` would make (WantedBy=, RequiredBy=,
    // Alias=, and the units named by Also=, recursively).
    for ov in inp.overlays {
        let mut queue: Vec<String> = ov.spec.units.clone();
        let mut done: Vec<String> = Vec::new();
        while let Some(unit) = queue.pop() {
            if done.contains(&unit) {
                continue;
            }
            done.push(unit.clone());
            let (file_name, link_name) = match unit.split_once('@') {
                Some((prefix, rest)) if !rest.starts_with('.') => {
                    let suffix = rest.rsplit_once('.').map_or("", |(_, s)| s);
                    (format!("{prefix}@.{suffix}"), unit.clone())
                }
                _ => (unit.clone(), unit.clone()),
            };
            let found = UNIT_DIRS.iter().find_map(|d| {
                let p = format!("{d}/{file_name}");
                text_of(&b, &p).map(|t| (p, t))
            });
            let Some((unit_path, text)) = found else {
                bail!(
                    "overlays/{}/overlay.toml: unit {unit:?} to enable was not found in the image \
                     (looked in {}); is its package in `packages`?",
                    ov.name,
                    UNIT_DIRS.join(", ")
                );
            };
            let install = install_section(&text);
            if install.targets.is_empty() && install.aliases.is_empty() && install.also.is_empty() {
                bail!(
                    "overlays/{}/overlay.toml: unit {unit:?} ({unit_path}) has no [Install] section, so it cannot be enabled",
                    ov.name
                );
            }
            for (target, suffix) in install.targets {
                let link = format!("/etc/systemd/system/{target}{suffix}/{link_name}");
                b.put(&link, Kind::Symlink(unit_path.clone()), 0o777, &ov.name)?;
            }
            for alias in install.aliases {
                b.put(
                    &format!("/etc/systemd/system/{alias}"),
                    Kind::Symlink(unit_path.clone()),
                    0o777,
                    &ov.name,
                )?;
            }
            queue.extend(install.also);
        }
    }

    // Units to mask: what `systemctl mask` does, a link to /dev/null where the admin's units
    // live. A unit that is not in the image is refused (a typo would otherwise mask nothing),
    // and so is one that an overlay also enables.
    for ov in inp.overlays {
        for unit in &ov.spec.mask {
            let file_name = match unit.split_once('@') {
                Some((prefix, rest)) if !rest.starts_with('.') => {
                    let suffix = rest.rsplit_once('.').map_or("", |(_, s)| s);
                    format!("{prefix}@.{suffix}")
                }
                _ => unit.clone(),
            };
            if !UNIT_DIRS
                .iter()
                .any(|d| text_of(&b, &format!("{d}/{file_name}")).is_some())
            {
                bail!(
                    "overlays/{}/overlay.toml: unit {unit:?} to mask was not found in the image \
                     (looked in {}); remove it from `mask` or add its package",
                    ov.name,
                    UNIT_DIRS.join(", ")
                );
            }
            if let Some(other) = inp.overlays.iter().find(|o| o.spec.units.contains(unit)) {
                bail!(
                    "overlays/{}/overlay.toml masks {unit:?}, which overlays/{}/overlay.toml enables; \
                     keep one of the two",
                    ov.name,
                    other.name
                );
            }
            b.put(
                &format!("/etc/systemd/system/{unit}"),
                Kind::Symlink("/dev/null".into()),
                0o777,
                &ov.name,
            )?;
        }
    }

    let modules: Vec<&str> = {
        let mut m: Vec<&str> = Vec::new();
        for ov in inp.overlays {
            for x in &ov.spec.modules {
                if !m.contains(&x.as_str()) {
                    m.push(x);
                }
            }
        }
        m
    };
    if !modules.is_empty() {
        let text: String = modules.iter().map(|m| format!("{m}\n")).collect();
        b.put(
            "/etc/modules-load.d/ironbake.conf",
            Kind::File(Data::Bytes(text.into_bytes())),
            0o644,
            "ironbake",
        )?;
    }

    // The image says what it is, where systemd and people look: os-release's IMAGE_ID and
    // IMAGE_VERSION.
    let os_release = text_of(&b, "/usr/lib/os-release").unwrap_or_default();
    let kept: String = os_release
        .lines()
        .filter(|l| !l.starts_with("IMAGE_ID=") && !l.starts_with("IMAGE_VERSION="))
        .map(|l| format!("{l}\n"))
        .collect();
    let os_release = format!(
        "{kept}IMAGE_ID={}\nIMAGE_VERSION={}\n",
        inp.recipe_name, inp.version
    );
    b.put(
        "/usr/lib/os-release",
        Kind::File(Data::Bytes(os_release.into_bytes())),
        0o644,
        "ironbake",
    )?;

    for ov in inp.overlays {
        for (path, perm) in &ov.spec.permissions {
            if ov.node_templates.iter().any(|t| &t.dest == path) {
                continue; // applied when the overlay was loaded
            }
            let Some(e) = b.entries.get_mut(path) else {
                bail!(
                    "overlays/{}/overlay.toml: [permissions] names {path}, which no overlay provides",
                    ov.name
                );
            };
            if let Some(m) = &perm.mode {
                e.mode = overlay::parse_mode(m).expect("validated when parsed");
            }
            if let Some(o) = &perm.owner {
                e.uid = users::uid_of(&accounts.passwd, o)
                    .with_context(|| format!("overlays/{}/overlay.toml: [permissions] {path}: no user {o:?} in the image", ov.name))?;
            }
            if let Some(g) = &perm.group {
                e.gid = users::gid_of(&accounts.group, g)
                    .with_context(|| format!("overlays/{}/overlay.toml: [permissions] {path}: no group {g:?} in the image", ov.name))?;
            }
        }
    }

    if let Some((path, e)) = b.entries.iter().find(|(p, _)| is_identity_path(p)) {
        bail!(
            "overlay {:?} puts {path} into the image; machine identity (machine-id, SSH host keys, \
             random seed) is never baked in: each node gets its own in its per-node settings",
            e.origin
        );
    }

    let mut cmdline: Vec<&str> = inp.recipe.kernel.cmdline.split_whitespace().collect();
    for ov in inp.overlays {
        cmdline.extend(ov.spec.cmdline.iter().map(String::as_str));
    }
    Ok(Plan {
        entries: b.entries,
        node_templates,
        cmdline: cmdline.join(" "),
    })
}

impl Plan {
    /// A readable listing of the overlay layer: one line per path with mode, owner, kind,
    /// size and digest, for tests and `--dump-plan`.
    pub fn dump(&self) -> String {
        let mut s = String::new();
        for (path, e) in &self.entries {
            let what = match &e.kind {
                Kind::Dir => "dir".to_string(),
                Kind::Symlink(t) => format!("link -> {t}"),
                Kind::File(Data::Bytes(b)) => {
                    let (d, n) = netboot::layout::sha256_reader(&b[..]).expect("reading memory");
                    format!("file {n} {}", &d[..12])
                }
                Kind::File(Data::Path(p)) => match netboot::layout::sha256_file(p) {
                    Ok((d, n)) => format!("file {n} {}", &d[..12]),
                    Err(err) => format!("file ? ({err})"),
                },
            };
            let _ = writeln!(
                s,
                "{:04o} {}:{} {path} {what} [{}]",
                e.mode, e.uid, e.gid, e.origin
            );
        }
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::overlay::{Permission, Spec, UserSpec};

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
            epoch: 86400 * 20000,
        }
    }

    #[test]
    fn a_full_overlay_resolves_to_the_expected_layer() {
        let r = recipe();
        let spec = Spec {
            units: vec!["ssh.service".into()],
            mask: vec!["noinstall.service".into()],
            modules: vec!["mlx4_ib".into()],
            cmdline: vec!["quiet".into()],
            users: vec![UserSpec {
                name: "admin".into(),
                uid: 1000,
                gid: None,
                groups: vec!["sudo".into()],
                shell: "/bin/bash".into(),
                home: None,
                comment: String::new(),
            }],
            permissions: BTreeMap::from([(
                "/home/admin/.ssh".to_string(),
                Permission {
                    mode: Some("0700".into()),
                    owner: Some("admin".into()),
                    group: Some("admin".into()),
                },
            )]),
            ..Spec::default()
        };
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
        let cases: Vec<(Spec, &str)> = vec![
            (
                Spec {
                    units: vec!["nope.service".into()],
                    ..Spec::default()
                },
                "unit \"nope.service\" to enable was not found",
            ),
            (
                Spec {
                    units: vec!["noinstall.service".into()],
                    ..Spec::default()
                },
                "has no [Install] section",
            ),
            (
                Spec {
                    mask: vec!["nope.timer".into()],
                    ..Spec::default()
                },
                "unit \"nope.timer\" to mask was not found",
            ),
            (
                Spec {
                    units: vec!["ssh.service".into()],
                    mask: vec!["ssh.service".into()],
                    ..Spec::default()
                },
                "masks \"ssh.service\", which overlays/o/overlay.toml enables",
            ),
            (
                Spec {
                    permissions: BTreeMap::from([("/etc/x".to_string(), Permission::default())]),
                    ..Spec::default()
                },
                "which no overlay provides",
            ),
        ];
        for (spec, needle) in cases {
            let ovs = [overlay("o", spec)];
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

    #[test]
    fn install_sections_are_read() {
        let t = "[Unit]\nWantedBy=nope\n[Install]\nWantedBy=multi-user.target graphical.target\nRequiredBy=x.target\nAlias=a.service\nAlso=b.socket\n";
        let i = install_section(t);
        assert_eq!(
            i.targets,
            vec![
                ("multi-user.target".into(), ".wants"),
                ("graphical.target".into(), ".wants"),
                ("x.target".into(), ".requires")
            ]
        );
        assert_eq!(
            (i.aliases, i.also),
            (vec!["a.service".to_string()], vec!["b.socket".to_string()])
        );
    }
}
