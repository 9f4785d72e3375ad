//! The server's view of the inventory: reloaded when `inventory.toml` changes (a broken edit
//! is logged and the last good inventory kept), MAC lookups for the protocol servers, and what
//! each machine boots (recipe, published version, manifest) with its settings archive.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use crate::boot::{self, ExtraFile};
use crate::hub::{Directory, Lookup};
use crate::inventory::{self, Inventory, LoadError};
use crate::layout::{self, LayoutError, Manifest};
use crate::secrets::{self, Secrets};
use crate::template::{TemplateError, TemplateSource};

/// Why a machine cannot be booted, in words for logs and for the iPXE console.
#[derive(Debug, thiserror::Error)]
pub enum TargetError {
    /// The recipe has no published version (or no `current`).
    #[error(
        "recipe {recipe} has no published version under {root} (run `cargo xtask build {recipe}`)"
    )]
    NotPublished {
        /// The recipe.
        recipe: String,
        /// The served root.
        root: String,
    },
    /// The published layout could not be read.
    #[error(transparent)]
    Layout(#[from] LayoutError),
    /// A node template failed for this node.
    #[error("{0}")]
    Template(#[from] TemplateError),
    /// A node template reads a secret that secrets.toml does not give this node.
    #[error(
        "{file} uses node.secrets.{secret}, which {secrets_file} does not give node {node}: \
         add it under [nodes.{node}] there"
    )]
    MissingSecret {
        /// The node.
        node: String,
        /// The template.
        file: String,
        /// The secret's name.
        secret: String,
        /// The secrets file.
        secrets_file: String,
    },
    /// A node named on the command line is not in the inventory.
    #[error("{inventory} lists no node named {node}: add a [nodes.{node}] table there")]
    UnknownNode {
        /// The name given.
        node: String,
        /// The inventory file.
        inventory: String,
    },
    /// Reading node templates or the state folder failed.
    #[error("{what}: {source}")]
    Io {
        /// What was being done.
        what: String,
        /// The error.
        source: std::io::Error,
    },
}

impl TargetError {
    /// What a client (an iPXE console, an HTTP body) is told: enough to know where to look,
    /// never a path of the server's (that goes to the server's log with the whole error).
    pub fn for_client(&self) -> String {
        match self {
            TargetError::NotPublished { recipe, .. } => {
                format!("recipe {recipe} has no published version on this server")
            }
            TargetError::Layout(_) => {
                "the published version cannot be read (the server's log says why)".into()
            }
            TargetError::Template(_) => {
                "a node template failed for this node (the server's log says where)".into()
            }
            TargetError::MissingSecret { secret, node, .. } => {
                format!(
                    "node {node} has no secret {secret} on the server (its log says which file)"
                )
            }
            TargetError::UnknownNode { node, .. } => format!("no node named {node}"),
            TargetError::Io { .. } => {
                "the server cannot read what this node needs (its log says why)".into()
            }
        }
    }
}

/// What one machine boots.
#[derive(Debug, Clone)]
pub struct Target {
    /// The node's name (its hostname): from the inventory, or `node-<mac digits>`.
    pub name: String,
    /// Its MAC address.
    pub mac: String,
    /// The manifest of the version it boots.
    pub manifest: Arc<Manifest>,
    /// That version's folder.
    pub version_dir: PathBuf,
    /// What its node templates see as `node.*`.
    pub node_vars: BTreeMap<String, toml::Value>,
    /// Where it keeps its persisted folders, if the inventory says.
    pub data: Option<inventory::DataDisk>,
}

/// Where a node's settings name its data disk (`disk=PATH`, `label=NAME`), for
/// `ironbake-persist.service`.
pub const DATA_DISK_PATH: &str = "/etc/ironbake/data-disk";

#[derive(Debug)]
struct Loaded {
    mtime: Option<SystemTime>,
    inventory: Arc<Inventory>,
    secrets_mtime: Option<SystemTime>,
    secrets: Arc<Secrets>,
}

/// The inventory, reloaded on change; see the module doc.
#[derive(Debug)]
pub struct Inventories {
    path: PathBuf,
    shown: String,
    secrets_path: PathBuf,
    state: Option<Arc<crate::fleet::State>>,
    loaded: Mutex<Loaded>,
    manifests: Mutex<HashMap<PathBuf, Arc<Manifest>>>,
    templates: Mutex<HashMap<PathBuf, Arc<Vec<TemplateSource>>>>,
    /// The server's URL and its peers', once it serves: written into every node's settings,
    /// so that a node reports to each, and one booted from its disk (whose command line names
    /// no server) still reports.
    servers: std::sync::OnceLock<(String, Vec<String>)>,
    /// Where a version's files come from when not from the servers (a cache in front).
    files_url: std::sync::OnceLock<String>,
}

/// A node's identity, derived from the site key and its name alone (so every server that
/// shares the site key gives the node the same one, and none needs to be kept).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    /// `/etc/machine-id`: 32 hex digits, shaped as a random (version 4) UUID, as systemd
    /// makes them.
    pub machine_id: String,
    /// The SSH host key (ed25519), OpenSSH private key format.
    pub host_key: String,
    /// Its public half, `ssh-ed25519 ... root@NAME`.
    pub host_key_pub: String,
}

/// The identity of node `name` under the site key of `keys`.
pub fn identity(keys: &crate::fleet::auth::Keys, name: &str) -> Identity {
    let mut id = keys.derive("machine-id", name);
    id[6] = (id[6] & 0x0f) | 0x40;
    id[8] = (id[8] & 0x3f) | 0x80;
    let seed = keys.derive("ssh host key ed25519", name);
    let pair = ssh_key::private::Ed25519Keypair::from_seed(&seed);
    let key = ssh_key::PrivateKey::new(
        ssh_key::private::KeypairData::Ed25519(pair),
        format!("root@{name}"),
    )
    .expect("an ed25519 key pair is a valid key");
    let host_key = key
        .to_openssh(ssh_key::LineEnding::LF)
        .expect("an ed25519 key encodes")
        .to_string();
    let public = key
        .public_key()
        .to_openssh()
        .expect("an ed25519 key encodes");
    Identity {
        machine_id: hex::encode(&id[..16]),
        host_key,
        host_key_pub: format!("{public}\n"),
    }
}

/// Where a node's settings name the boot servers, one URL a line, sorted (the first is used
/// when the kernel command line names none; reports go to each).
pub const SERVER_PATH: &str = "/etc/ironbake/server";

fn mtime(path: &Path) -> Option<SystemTime> {
    std::fs::metadata(path).and_then(|m| m.modified()).ok()
}

impl Inventories {
    /// Loads `path` (a missing file is an empty inventory: every machine is unknown); a
    /// malformed one is refused with its file:line. `state_dir`, when given, holds the
    /// site key that nodes' keys and identities are derived from. The nodes' secrets are read
    /// from `secrets.toml` beside the inventory (see [`crate::secrets`]).
    pub fn load(path: &Path, state_dir: Option<PathBuf>) -> Result<Inventories, LoadError> {
        let shown = path.display().to_string();
        let inv = inventory::load_file(path, &shown)?;
        let secrets_path = path.with_file_name(secrets::FILE);
        let secrets = secrets::load_file(&secrets_path).map_err(LoadError::Secrets)?;
        for node in secrets.nodes.keys() {
            if !inv.nodes.contains_key(node) {
                tracing::warn!(
                    "{}: secrets for {node}, which {shown} does not list",
                    secrets_path.display()
                );
            }
        }
        let state = match &state_dir {
            Some(dir) => Some(Arc::new(crate::fleet::State::load(dir).map_err(
                |source| LoadError::State {
                    path: dir.display().to_string(),
                    source,
                },
            )?)),
            None => None,
        };
        Ok(Inventories {
            path: path.to_path_buf(),
            shown,
            secrets_path: secrets_path.clone(),
            state,
            loaded: Mutex::new(Loaded {
                mtime: mtime(path),
                inventory: Arc::new(inv),
                secrets_mtime: mtime(&secrets_path),
                secrets: Arc::new(secrets),
            }),
            manifests: Mutex::new(HashMap::new()),
            servers: std::sync::OnceLock::new(),
            files_url: std::sync::OnceLock::new(),
            templates: Mutex::new(HashMap::new()),
        })
    }

    /// The current inventory, reloaded first if the file changed.
    pub fn get(&self) -> Arc<Inventory> {
        let mut l = self.loaded.lock().unwrap_or_else(|e| e.into_inner());
        let now = mtime(&self.path);
        if now != l.mtime {
            l.mtime = now;
            match inventory::load_file(&self.path, &self.shown) {
                Ok(inv) => {
                    tracing::info!(
                        nodes = inv.nodes.len(),
                        "inventory reloaded from {}",
                        self.shown
                    );
                    l.inventory = Arc::new(inv);
                }
                Err(e) => tracing::error!("inventory not reloaded, keeping the last good one: {e}"),
            }
        }
        Arc::clone(&l.inventory)
    }

    /// Adds node `name` for `mac` to the inventory file (see
    /// [`inventory::add_node`]) and reloads it at once; one writer at a time.
    pub fn add_node(&self, mac: &str, name: &str, recipe: Option<&str>) -> Result<String, String> {
        static WRITING: Mutex<()> = Mutex::new(());
        let _one = WRITING.lock().unwrap_or_else(|e| e.into_inner());
        let mac = inventory::add_node(&self.path, mac, name, recipe)?;
        self.loaded.lock().unwrap_or_else(|e| e.into_inner()).mtime = None;
        let inv = self.get();
        if !inv.nodes.contains_key(name) {
            return Err(format!(
                "{} was written but does not read back with {name}: see the server's log",
                self.shown
            ));
        }
        Ok(mac)
    }

    /// The server's fleet state (keys, desired versions), when it has a state folder.
    pub fn state(&self) -> Option<&Arc<crate::fleet::State>> {
        self.state.as_ref()
    }

    /// The inventory file, as messages name it.
    pub fn shown(&self) -> &str {
        &self.shown
    }

    /// The nodes' secrets, reloaded first if the file changed.
    pub fn secrets(&self) -> Arc<Secrets> {
        let mut l = self.loaded.lock().unwrap_or_else(|e| e.into_inner());
        let now = mtime(&self.secrets_path);
        if now != l.secrets_mtime {
            l.secrets_mtime = now;
            match secrets::load_file(&self.secrets_path) {
                Ok(s) => {
                    tracing::info!(
                        nodes = s.nodes.len(),
                        "secrets reloaded from {}",
                        self.secrets_path.display()
                    );
                    l.secrets = Arc::new(s);
                }
                Err(e) => tracing::error!("secrets not reloaded, keeping the last good ones: {e}"),
            }
        }
        Arc::clone(&l.secrets)
    }

    /// What the inventory says about `mac`.
    pub fn lookup(&self, mac: &str) -> Lookup {
        let inv = self.get();
        match inv.nodes.iter().find(|(_, n)| n.mac == mac) {
            Some((name, _)) => Lookup::Node(name.clone()),
            None => Lookup::Unknown {
                boot: inv.defaults.recipe.is_some(),
            },
        }
    }

    /// [`Self::lookup`] as the protocol servers take it.
    pub fn directory(self: &Arc<Self>) -> Directory {
        let me = Arc::clone(self);
        Arc::new(move |mac: &str| me.lookup(mac))
    }

    /// The MAC of the node named `name`.
    pub fn mac_of(&self, name: &str) -> Option<String> {
        self.get().nodes.get(name).map(|n| n.mac.clone())
    }

    /// The inventory name of `mac`.
    pub fn name_of(&self, mac: &str) -> Option<String> {
        match self.lookup(mac) {
            Lookup::Node(n) => Some(n),
            Lookup::Unknown { .. } => None,
        }
    }

    fn manifest(&self, dir: &Path) -> Result<Arc<Manifest>, LayoutError> {
        let mut cache = self.manifests.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(m) = cache.get(dir) {
            return Ok(Arc::clone(m));
        }
        let m = Arc::new(layout::load_manifest(dir)?);
        cache.insert(dir.to_path_buf(), Arc::clone(&m));
        Ok(m)
    }

    /// The manifest of `recipe`@`version` under `root`, if that is a published version
    /// (names checked first, so neither climbs out of `root`).
    pub fn published_manifest(
        &self,
        root: &Path,
        recipe: &str,
        version: &str,
    ) -> Option<Arc<Manifest>> {
        if !layout::valid_name(recipe) || !layout::valid_version(version) {
            return None;
        }
        self.manifest(&root.join(recipe).join(version)).ok()
    }

    /// What `mac` boots: `None` when it is unknown and the inventory boots no unknown machines.
    pub fn target(&self, root: &Path, mac: &str) -> Result<Option<Target>, TargetError> {
        let inv = self.get();
        let (name, recipe, pinned, node) = match inv.nodes.iter().find(|(_, n)| n.mac == mac) {
            Some((name, n)) => (
                name.clone(),
                n.recipe.clone(),
                n.version.clone(),
                Some(n.clone()),
            ),
            None => match &inv.defaults.recipe {
                Some(r) => (boot::unknown_node_name(mac), r.clone(), None, None),
                None => return Ok(None),
            },
        };
        let recipe_dir = root.join(&recipe);
        let desired = self
            .state
            .as_ref()
            .and_then(|s| s.desired.get(&name))
            .filter(|w| w.recipe == recipe)
            .map(|w| w.version);
        let version = match pinned.or(desired) {
            Some(v) => v,
            None => {
                layout::read_current(&recipe_dir)?.ok_or_else(|| TargetError::NotPublished {
                    recipe: recipe.clone(),
                    root: root.display().to_string(),
                })?
            }
        };
        let version_dir = recipe_dir.join(&version);
        if !version_dir.is_dir() {
            return Err(TargetError::NotPublished {
                recipe: format!("{recipe}@{version}"),
                root: root.display().to_string(),
            });
        }
        self.make_target(name, mac, &recipe, version_dir, node)
            .map(Some)
    }

    /// What the node named `name` gets when its own disk holds `recipe`@`version` (`cargo
    /// xtask disk flash --node`): the same variables and identity as when it boots from the
    /// network, whatever the inventory says it boots there.
    pub fn target_named(
        &self,
        root: &Path,
        name: &str,
        recipe: &str,
        version: &str,
    ) -> Result<Target, TargetError> {
        let inv = self.get();
        let node = inv
            .nodes
            .get(name)
            .cloned()
            .ok_or_else(|| TargetError::UnknownNode {
                node: name.to_string(),
                inventory: self.shown.clone(),
            })?;
        let version_dir = root.join(recipe).join(version);
        if !version_dir.is_dir() {
            return Err(TargetError::NotPublished {
                recipe: format!("{recipe}@{version}"),
                root: root.display().to_string(),
            });
        }
        let mac = node.mac.clone();
        self.make_target(name.to_string(), &mac, recipe, version_dir, Some(node))
    }

    fn make_target(
        &self,
        name: String,
        mac: &str,
        recipe: &str,
        version_dir: PathBuf,
        node: Option<inventory::Node>,
    ) -> Result<Target, TargetError> {
        let manifest = self.manifest(&version_dir)?;
        let node = node.unwrap_or(inventory::Node {
            mac: mac.to_string(),
            recipe: recipe.to_string(),
            version: None,
            wol: None,
            bmc: None,
            install: None,
            data: None,
            kernel_args: None,
            vars: BTreeMap::new(),
        });
        let mut node_vars = inventory::node_context(&name, &node);
        node_vars.insert("secrets".into(), self.secrets().of(&name));
        Ok(Target {
            data: node.data.clone(),
            node_vars,
            name,
            mac: mac.to_string(),
            manifest,
            version_dir,
        })
    }

    /// The node's machine-id: derived from the site key (see [`identity`]), unless the state
    /// folder keeps one from before (an earlier release made them at random and kept them).
    fn machine_id(&self, name: &str) -> Option<String> {
        let state = self.state.as_ref()?;
        let kept = std::fs::read_to_string(state.dir.join("machine-id").join(name))
            .ok()
            .map(|id| id.trim().to_string())
            .filter(|id| id.len() == 32 && id.chars().all(|c| c.is_ascii_hexdigit()));
        Some(kept.unwrap_or_else(|| identity(&state.keys, name).machine_id))
    }

    /// The node's SSH host key (ed25519), `(private, public)` in OpenSSH form: derived from
    /// the site key, unless the state folder keeps one from before.
    fn host_key(&self, name: &str) -> Result<Option<(String, String)>, TargetError> {
        let Some(state) = &self.state else {
            return Ok(None);
        };
        let path = state
            .dir
            .join("ssh")
            .join(name)
            .join("ssh_host_ed25519_key");
        let Ok(text) = std::fs::read_to_string(&path) else {
            let id = identity(&state.keys, name);
            return Ok(Some((id.host_key, id.host_key_pub)));
        };
        let bad = |e: ssh_key::Error| TargetError::Io {
            what: format!("reading {}", path.display()),
            source: std::io::Error::other(e.to_string()),
        };
        let key = ssh_key::PrivateKey::from_openssh(&text).map_err(bad)?;
        let private = key
            .to_openssh(ssh_key::LineEnding::LF)
            .map_err(bad)?
            .to_string();
        let public = key.public_key().to_openssh().map_err(bad)?;
        Ok(Some((private, format!("{public} root@{name}\n"))))
    }

    /// Names the server's URL (`http://ADDRESS:PORT`) and its peers' in every settings
    /// archive from now on.
    pub fn set_servers(&self, url: &str, peers: &[String]) {
        let own = url.trim_end_matches('/').to_string();
        let mut others: Vec<String> = peers
            .iter()
            .map(|p| p.trim_end_matches('/').to_string())
            .filter(|p| *p != own)
            .collect();
        others.sort();
        others.dedup();
        let _ = self.servers.set((own, others));
    }

    /// Where nodes fetch a version's files from, when not from the servers: a cache in
    /// front of them (`serve --files-url`).
    pub fn set_files_url(&self, url: &str) {
        let _ = self.files_url.set(url.trim_end_matches('/').to_string());
    }

    /// What a node's script names: this server (`own`), its peers, the files' cache.
    pub fn servers<'a>(&'a self, own: &'a str) -> crate::boot::Servers<'a> {
        crate::boot::Servers {
            own,
            peers: self.servers.get().map_or(&[], |(_, p)| p.as_slice()),
            files: self.files_url.get().map(String::as_str),
        }
    }

    /// The node's settings archive, ready to follow the version's initramfs.
    pub fn settings(&self, t: &Target) -> Result<Vec<u8>, TargetError> {
        let initrd_len = std::fs::metadata(t.version_dir.join(boot::INITRD)).map_or(0, |m| m.len());
        self.settings_after(t, initrd_len)
    }

    /// The node's settings archive on its own (no padding), as a disk's ESP carries it.
    pub fn settings_alone(&self, t: &Target) -> Result<Vec<u8>, TargetError> {
        self.settings_after(t, 0)
    }

    fn settings_after(&self, t: &Target, initrd_len: u64) -> Result<Vec<u8>, TargetError> {
        let templates = {
            let mut cache = self.templates.lock().unwrap_or_else(|e| e.into_inner());
            match cache.get(&t.version_dir) {
                Some(v) => Arc::clone(v),
                None => {
                    let v = Arc::new(
                        layout::load_node_templates(&t.version_dir, &t.manifest).map_err(
                            |source| TargetError::Io {
                                what: format!(
                                    "reading {}/{}",
                                    t.version_dir.display(),
                                    boot::NODE_TEMPLATES
                                ),
                                source,
                            },
                        )?,
                    );
                    cache.insert(t.version_dir.clone(), Arc::clone(&v));
                    v
                }
            }
        };
        let given = t.node_vars.get("secrets").and_then(|s| s.as_table());
        for tpl in templates.iter() {
            for secret in secrets::referenced(&tpl.text) {
                if !given.is_some_and(|g| g.contains_key(&secret)) {
                    return Err(TargetError::MissingSecret {
                        node: t.name.clone(),
                        file: tpl.file.clone(),
                        secret,
                        secrets_file: self.secrets_path.display().to_string(),
                    });
                }
            }
        }
        let mut extra = Vec::new();
        if let Some(id) = self.machine_id(&t.name) {
            extra.push(ExtraFile {
                dest: "/etc/machine-id".into(),
                data: format!("{id}\n").into_bytes(),
                mode: 0o444,
            });
        }
        if let Some((own, peers)) = self.servers.get() {
            // Every server, sorted: the same bytes whichever server renders them.
            let mut all: Vec<&str> = peers.iter().map(String::as_str).collect();
            all.push(own);
            all.sort();
            extra.push(ExtraFile {
                dest: SERVER_PATH.into(),
                data: all
                    .iter()
                    .map(|u| format!("{u}\n"))
                    .collect::<String>()
                    .into_bytes(),
                mode: 0o644,
            });
        }
        if let Some(d) = &t.data {
            extra.push(ExtraFile {
                dest: DATA_DISK_PATH.into(),
                data: format!("disk={}\nlabel={}\n", d.disk, d.label).into_bytes(),
                mode: 0o644,
            });
        }
        if let Some(state) = &self.state {
            extra.push(ExtraFile {
                dest: crate::fleet::auth::NODE_KEY_PATH.into(),
                data: format!("{}\n", state.keys.node_key(&t.name)).into_bytes(),
                mode: 0o600,
            });
        }
        if let Some((private, public)) = self.host_key(&t.name)? {
            extra.push(ExtraFile {
                dest: "/etc/ssh/ssh_host_ed25519_key".into(),
                data: private.into_bytes(),
                mode: 0o600,
            });
            extra.push(ExtraFile {
                dest: "/etc/ssh/ssh_host_ed25519_key.pub".into(),
                data: public.into_bytes(),
                mode: 0o644,
            });
        }
        Ok(boot::settings_archive(
            &t.manifest,
            &templates,
            t.node_vars.clone(),
            &extra,
            initrd_len,
        )?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn servers_that_share_the_site_key_give_a_node_the_same_identity() {
        let (a, b, c) = (
            tempfile::tempdir().unwrap(),
            tempfile::tempdir().unwrap(),
            tempfile::tempdir().unwrap(),
        );
        let ka = crate::fleet::auth::Keys::load(a.path()).unwrap();
        // B was given A's site key; C made its own.
        std::fs::remove_file(b.path().join(crate::fleet::auth::SITE_KEY_FILE)).ok();
        let site =
            std::fs::read_to_string(a.path().join(crate::fleet::auth::SITE_KEY_FILE)).unwrap();
        crate::fleet::auth::write_private(&b.path().join(crate::fleet::auth::SITE_KEY_FILE), &site)
            .unwrap();
        let kb = crate::fleet::auth::Keys::load(b.path()).unwrap();
        let kc = crate::fleet::auth::Keys::load(c.path()).unwrap();
        let (ia, ib, ic) = (
            identity(&ka, "n1"),
            identity(&kb, "n1"),
            identity(&kc, "n1"),
        );
        assert_eq!(ia, ib);
        assert_ne!(ia.machine_id, ic.machine_id);
        assert_ne!(ia.host_key, ic.host_key);
        let other = identity(&ka, "n2");
        assert_ne!(ia.machine_id, other.machine_id);
        assert_ne!(ia.host_key_pub, other.host_key_pub);
        // A machine-id systemd accepts (32 lowercase hex digits, a version 4 UUID's shape),
        // and a key OpenSSH reads back, whose public half is the one given.
        assert_eq!(ia.machine_id.len(), 32);
        assert!(
            ia.machine_id
                .chars()
                .all(|c| c.is_ascii_hexdigit() && !c.is_ascii_uppercase())
        );
        assert_eq!(&ia.machine_id[12..13], "4");
        let key = ssh_key::PrivateKey::from_openssh(&ia.host_key).unwrap();
        assert_eq!(
            format!("{}\n", key.public_key().to_openssh().unwrap()),
            ia.host_key_pub
        );
        assert!(
            ia.host_key_pub.ends_with(" root@n1\n"),
            "{}",
            ia.host_key_pub
        );
    }
}
