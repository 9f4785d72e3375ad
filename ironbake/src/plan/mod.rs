//! The resolved plan of an image's overlay layer: every path the overlays add, with its mode,
//! owner and contents, decided before anything is written. Pure: the base is seen through
//! [`BaseView`], the overlays' own files through [`HostFiles`], artifacts arrive already
//! fetched, and templates are rendered from their text.
//!
//! Order of application, later winning: each overlay in the recipe's order (its `files/`, then
//! its rendered `templates/`, then its artifacts), then users (account files and homes), then
//! enabled and masked units (`units.rs`), module list and release information, then every
//! overlay's `[permissions]`.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use serde::Serialize;

use crate::checked::VarName;
use crate::overlay::{self, FileEntry, Overlay, TemplateSource};
use crate::recipe::Recipe;
use netboot::template;

mod units;
pub mod users;

use users::Accounts;

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

/// Read access to files on the build host that the plan needs the text of: an overlay's own
/// `/etc/passwd` or unit file, say (everything else is only copied when emitted).
pub trait HostFiles {
    /// The bytes of the file at `path`.
    fn read(&self, path: &Path) -> std::io::Result<Vec<u8>>;
}

/// Where a file's bytes come from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Data {
    /// A file on the build host (overlay files, cached artifacts), with its sha256 and size.
    Path(PathBuf, (String, u64)),
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
    /// Its size.
    pub size: u64,
}

/// The context build-time templates see.
#[derive(Debug, Clone, Serialize)]
pub struct BuildContext {
    /// The recipe's variables, as top-level names.
    #[serde(flatten)]
    pub vars: BTreeMap<VarName, toml::Value>,
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
    /// The build host's files that overlays and artifacts point at.
    pub host: &'a dyn HostFiles,
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

/// The overlay layer as it is being resolved.
struct Builder<'a> {
    base: &'a dyn BaseView,
    host: &'a dyn HostFiles,
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
                    "overlay {origin:?} puts {path} under {cur}, which is a symlink to {target} \
                     in the image; put it under the link's target instead"
                );
            }
        }
        Ok(())
    }

    /// Adds the folders above `path` that the layer lacks, with the base's mode and owner.
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

    /// A generated text file, owned by root.
    fn put_text(&mut self, path: &str, text: String, mode: u32, origin: &str) -> Result<()> {
        self.put(
            path,
            Kind::File(Data::Bytes(text.into_bytes())),
            mode,
            origin,
        )
    }

    /// The text of `path` in the image as resolved so far: the layer's entry, else the
    /// base's file. An overlay file that cannot be read is an error, never an empty file.
    fn text_of(&self, path: &str) -> Result<Option<String>> {
        Ok(match self.entries.get(path).map(|e| &e.kind) {
            Some(Kind::File(Data::Bytes(bytes))) => {
                Some(String::from_utf8_lossy(bytes).into_owned())
            }
            Some(Kind::File(Data::Path(p, _))) => {
                let bytes = self
                    .host
                    .read(p)
                    .with_context(|| format!("reading {} (for {path})", p.display()))?;
                Some(String::from_utf8_lossy(&bytes).into_owned())
            }
            Some(_) => None,
            None => self
                .base
                .read(path)
                .map(|v| String::from_utf8_lossy(&v).into_owned()),
        })
    }
}

/// Resolves the overlay layer: one step per part of the image, in the order the module
/// documentation gives.
pub fn resolve(inp: &Inputs<'_>) -> Result<Plan> {
    let mut b = Builder {
        base: inp.base,
        host: inp.host,
        entries: BTreeMap::new(),
    };
    let mut node_templates = BTreeMap::new();
    for ov in inp.overlays {
        put_overlay(&mut b, inp, ov, &mut node_templates)?;
    }
    let accounts = put_users(&mut b, inp)?;
    units::enable(&mut b, inp.overlays)?;
    units::mask(&mut b, inp.overlays)?;
    put_modules(&mut b, inp.overlays)?;
    put_os_release(&mut b, inp)?;
    put_persist(&mut b, inp)?;
    apply_permissions(&mut b, inp.overlays, &accounts)?;
    if let Some((path, e)) = b.entries.iter().find(|(p, _)| is_identity_path(p)) {
        bail!(
            "overlay {:?} puts {path} into the image; machine identity (machine-id, SSH host keys, \
             random seed) is never baked in: each node gets its own in its per-node settings",
            e.origin
        );
    }
    let mut cmdline: Vec<&str> = inp.recipe.kernel.cmdline.split_whitespace().collect();
    for ov in inp.overlays {
        cmdline.extend(ov.spec.cmdline.iter().map(|w| w.as_str()));
    }
    Ok(Plan {
        entries: b.entries,
        node_templates,
        cmdline: cmdline.join(" "),
    })
}

/// One overlay's files, rendered templates and artifacts; its node templates are kept for
/// the boot server.
fn put_overlay(
    b: &mut Builder<'_>,
    inp: &Inputs<'_>,
    ov: &Overlay,
    node_templates: &mut BTreeMap<String, TemplateSource>,
) -> Result<()> {
    let ctx = BuildContext {
        vars: inp.recipe.variables.clone(),
        ironbake: ImageInfo {
            recipe: inp.recipe_name.into(),
            version: inp.version.into(),
        },
    };
    for (path, fe) in &ov.files {
        match fe {
            FileEntry::Dir { mode } => b.put(path, Kind::Dir, *mode, &ov.name)?,
            FileEntry::File {
                source,
                mode,
                digest,
            } => b.put(
                path,
                Kind::File(Data::Path(source.clone(), digest.clone())),
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
        b.put_text(&t.dest, text, t.mode, &ov.name)?;
    }
    for a in inp.artifacts.iter().filter(|a| a.overlay == ov.name) {
        b.put(
            &a.spec.dest,
            Kind::File(Data::Path(a.path.clone(), (a.sha256.clone(), a.size))),
            a.spec.mode.bits(),
            &ov.name,
        )?;
    }
    for t in &ov.node_templates {
        template::check_syntax(t)?;
        node_templates.insert(t.dest.clone(), t.clone());
    }
    Ok(())
}

/// The overlays' users: whole new account files over the base's, and their homes. Returns
/// the account files as they end up (for `[permissions]` owners).
fn put_users(b: &mut Builder<'_>, inp: &Inputs<'_>) -> Result<Accounts> {
    let read =
        |b: &Builder<'_>, p: &str| -> Result<String> { Ok(b.text_of(p)?.unwrap_or_default()) };
    let base = Accounts {
        passwd: read(b, "/etc/passwd")?,
        group: read(b, "/etc/group")?,
        shadow: read(b, "/etc/shadow")?,
        gshadow: read(b, "/etc/gshadow")?,
    };
    let users: Vec<_> = inp
        .overlays
        .iter()
        .flat_map(|o| o.spec.users.iter().map(move |u| (o, u)))
        .collect();
    if users.is_empty() {
        return Ok(base);
    }
    let specs: Vec<_> = users.iter().map(|(_, u)| (*u).clone()).collect();
    let accounts =
        users::add_users(&base, &specs, inp.epoch / 86400).context("adding the overlays' users")?;
    let origin = users
        .iter()
        .map(|(o, _)| o.name.as_str())
        .collect::<Vec<_>>()
        .join(",");
    // Debian's shadow files belong to group shadow.
    let shadow_gid = users::gid_of(&accounts.group, "shadow").unwrap_or(0);
    for (path, text, mode, gid) in [
        ("/etc/passwd", &accounts.passwd, 0o644, 0),
        ("/etc/group", &accounts.group, 0o644, 0),
        ("/etc/shadow", &accounts.shadow, 0o640, shadow_gid),
        ("/etc/gshadow", &accounts.gshadow, 0o640, shadow_gid),
    ] {
        b.put_text(path, text.clone(), mode, &origin)?;
        b.entries.get_mut(path).expect("just put").gid = gid;
    }
    for (o, u) in &users {
        let home = u
            .home
            .as_ref()
            .map_or_else(|| format!("/home/{}", &*u.name), |h| h.to_string());
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
        e.uid = u.uid.get();
        e.gid = u.gid.unwrap_or(u.uid.get());
    }
    Ok(accounts)
}

/// `/etc/modules-load.d/ironbake.conf`: the overlays' modules, each once, in order.
fn put_modules(b: &mut Builder<'_>, overlays: &[Overlay]) -> Result<()> {
    let mut modules: Vec<&str> = Vec::new();
    for m in overlays.iter().flat_map(|o| &o.spec.modules) {
        if !modules.contains(&m.as_str()) {
            modules.push(m);
        }
    }
    if modules.is_empty() {
        return Ok(());
    }
    let text: String = modules.iter().map(|m| format!("{m}\n")).collect();
    b.put_text("/etc/modules-load.d/ironbake.conf", text, 0o644, "ironbake")
}

/// The image says what it is, where systemd and people look: os-release's IMAGE_ID and
/// IMAGE_VERSION.
fn put_os_release(b: &mut Builder<'_>, inp: &Inputs<'_>) -> Result<()> {
    let os_release = b.text_of("/usr/lib/os-release")?.unwrap_or_default();
    let kept: String = os_release
        .lines()
        .filter(|l| !l.starts_with("IMAGE_ID=") && !l.starts_with("IMAGE_VERSION="))
        .map(|l| format!("{l}\n"))
        .collect();
    let text = format!(
        "{kept}IMAGE_ID={}\nIMAGE_VERSION={}\n",
        inp.recipe_name, inp.version
    );
    b.put_text("/usr/lib/os-release", text, 0o644, "ironbake")
}

/// Where the image lists the folders it keeps on the node's data partition, one a line, for
/// `ironbake-persist.service` (the base overlay's).
pub const PERSIST_LIST: &str = "/usr/lib/ironbake/persist.list";

/// Folders no image may persist as a whole: the system needs them before the data partition
/// is mounted.
const NOT_PERSISTED: &[&str] = &["/boot", "/efi", "/etc", "/var", "/var/lib"];

/// Folders nothing may be persisted in: the kernel's and systemd's own, the read-only image,
/// and where the data partition itself is mounted.
const NOTHING_UNDER: &[&str] = &[
    "/proc",
    "/sys",
    "/dev",
    "/run",
    "/tmp",
    "/usr",
    "/var/lib/ironbake",
];

/// The recipe's and every overlay's `persist`, checked (no folder the system needs before
/// the data partition is mounted, none inside another), into [`PERSIST_LIST`].
fn put_persist(b: &mut Builder<'_>, inp: &Inputs<'_>) -> Result<()> {
    let mut all: BTreeMap<String, String> = BTreeMap::new();
    let from_recipe = inp
        .recipe
        .persist
        .iter()
        .map(|p| (p, "the recipe".to_string()));
    let from_overlays = inp.overlays.iter().flat_map(|ov| {
        ov.spec
            .persist
            .iter()
            .map(|p| (p, format!("overlay {:?}", ov.name)))
    });
    for (path, who) in from_recipe.chain(from_overlays) {
        let path = path.as_str();
        let under = |top: &str| path == top || path.starts_with(&format!("{top}/"));
        if NOT_PERSISTED.contains(&path) || NOTHING_UNDER.iter().any(|t| under(t)) {
            bail!(
                "{who} persists {path}: that folder cannot be kept on the data partition (it is \
                 needed before the partition is mounted, is the read-only image, or holds the \
                 partition itself); persist the folders under it that hold state"
            );
        }
        all.entry(path.to_string()).or_insert(who);
    }
    for outer in all.keys() {
        if let Some(inner) = all.keys().find(|p| p.starts_with(&format!("{outer}/"))) {
            bail!(
                "{} persists {outer} and {} persists {inner}, which is inside it: persist one \
                 of them",
                all[outer],
                all[inner],
            );
        }
    }
    if all.is_empty() {
        return Ok(());
    }
    let text: String = all.keys().map(|p| format!("{p}\n")).collect();
    b.put_text(PERSIST_LIST, text, 0o644, "ironbake")
}

/// Every overlay's `[permissions]` over what the layer holds (node templates' modes were
/// applied when their overlay was loaded).
fn apply_permissions(b: &mut Builder<'_>, overlays: &[Overlay], acc: &Accounts) -> Result<()> {
    for ov in overlays {
        let toml = format!("overlays/{}/overlay.toml", ov.name);
        for (path, perm) in &ov.spec.permissions {
            let path = path.as_str();
            if ov.node_templates.iter().any(|t| t.dest == path) {
                continue;
            }
            let Some(e) = b.entries.get_mut(path) else {
                bail!("{toml}: [permissions] names {path}, which no overlay provides");
            };
            if let Some(m) = perm.mode {
                e.mode = m.bits();
            }
            if let Some(o) = &perm.owner {
                e.uid = users::uid_of(&acc.passwd, o).with_context(|| {
                    format!("{toml}: [permissions] {path}: no user {o:?} in the image")
                })?;
            }
            if let Some(g) = &perm.group {
                e.gid = users::gid_of(&acc.group, g).with_context(|| {
                    format!("{toml}: [permissions] {path}: no group {g:?} in the image")
                })?;
            }
        }
    }
    Ok(())
}

impl Plan {
    /// A readable listing of the overlay layer: one line per path with mode, owner, kind,
    /// size and digest, for tests.
    pub fn dump(&self) -> String {
        let mut s = String::new();
        for (path, e) in &self.entries {
            let what = match &e.kind {
                Kind::Dir => "dir".to_string(),
                Kind::Symlink(t) => format!("link -> {t}"),
                Kind::File(Data::Bytes(b)) => {
                    let d = crate::digest::sha256_hex(b);
                    format!("file {} {}", b.len(), &d[..12])
                }
                Kind::File(Data::Path(_, (d, n))) => format!("file {n} {}", &d[..12]),
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
mod tests;
