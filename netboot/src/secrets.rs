//! Per-node secrets: `secrets.toml` beside the inventory, kept out of git (the project's
//! `.gitignore` lists it) and readable by its owner only. The boot server gives each node its
//! own table as `node.secrets` in node templates, so a secret reaches only that node's
//! settings archive, never an image and never another node.
//!
//! ```toml
//! # secrets.toml (mode 0600)
//! [nodes.k3s0]
//! k3s_token = "K10...::server:..."
//!
//! [bmc.machine3]       # the boot server's login to the node's BMC (never sent to a node)
//! username = "admin"
//! password = "..."
//! ```
//!
//! A node template that uses `node.secrets` must be given a mode without group or other bits
//! (`[permissions]` in its overlay); the build refuses it otherwise.

use std::collections::BTreeMap;
use std::path::Path;

use serde::Deserialize;

use crate::diag::{self, Located};

/// The file name, beside the inventory.
pub const FILE: &str = "secrets.toml";

/// The secrets of every node.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Secrets {
    /// Each node's secrets, by node name.
    #[serde(default)]
    pub nodes: BTreeMap<String, BTreeMap<String, toml::Value>>,
    /// Each node's BMC login, by node name (`[bmc.NODE] username = ..., password = ...`);
    /// used by the boot server only, never given to a node.
    #[serde(default)]
    pub bmc: BTreeMap<String, BmcLogin>,
}

/// A BMC's login.
#[derive(Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BmcLogin {
    /// The user.
    pub username: String,
    /// The password.
    pub password: String,
}

impl std::fmt::Debug for BmcLogin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BmcLogin")
            .field("username", &self.username)
            .field("password", &"(hidden)")
            .finish()
    }
}

impl Secrets {
    /// The `node.secrets` table of one node (empty when it has none).
    pub fn of(&self, node: &str) -> toml::Value {
        let table = self
            .nodes
            .get(node)
            .map(|m| m.iter().map(|(k, v)| (k.clone(), v.clone())).collect())
            .unwrap_or_default();
        toml::Value::Table(table)
    }
}

/// Why the secrets file could not be used.
#[derive(Debug, thiserror::Error)]
pub enum SecretsError {
    /// It exists but cannot be read.
    #[error("reading {path}: {source}")]
    Read {
        /// The file.
        path: String,
        /// The IO error.
        source: std::io::Error,
    },
    /// Others than its owner may read it.
    #[error("{path} is readable by others (mode {mode:04o}); it holds secrets: `chmod 600 {path}`")]
    Exposed {
        /// The file.
        path: String,
        /// Its mode bits.
        mode: u32,
    },
    /// It is not valid.
    #[error(transparent)]
    Invalid(#[from] Located),
}

/// Parses secrets text.
pub fn parse(file: &str, text: &str) -> Result<Secrets, Located> {
    let s: Secrets = diag::parse_toml(file, text)?;
    for (node, table) in &s.nodes {
        for key in table.keys() {
            let ok = !key.is_empty() && key.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
            if !ok {
                return Err(diag::locate(
                    file,
                    text,
                    key,
                    format!(
                        "nodes.{node}: secret name {key:?} must be letters, digits and '_' \
                         (templates name it node.secrets.NAME)"
                    ),
                ));
            }
        }
    }
    Ok(s)
}

/// Reads the secrets file; a missing file means no secrets.
pub fn load_file(path: &Path) -> Result<Secrets, SecretsError> {
    use std::os::unix::fs::PermissionsExt;
    let shown = path.display().to_string();
    let meta = match std::fs::metadata(path) {
        Ok(m) => m,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Secrets::default()),
        Err(source) => {
            return Err(SecretsError::Read {
                path: shown,
                source,
            });
        }
    };
    let mode = meta.permissions().mode() & 0o7777;
    if mode & 0o077 != 0 {
        return Err(SecretsError::Exposed { path: shown, mode });
    }
    let text = std::fs::read_to_string(path).map_err(|source| SecretsError::Read {
        path: shown.clone(),
        source,
    })?;
    Ok(parse(&shown, &text)?)
}

/// The names a template reads as `node.secrets.NAME`, so a build can check the template
/// without the secrets themselves.
pub fn referenced(template: &str) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for (i, _) in template.match_indices("node.secrets.") {
        let rest = &template[i + "node.secrets.".len()..];
        let name: String = rest
            .chars()
            .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
            .collect();
        if !name.is_empty() && !out.contains(&name) {
            out.push(name);
        }
    }
    out.sort();
    out
}

/// Does a template use secrets at all?
pub fn uses_secrets(template: &str) -> bool {
    template.contains("node.secrets")
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn each_node_sees_only_its_own_table() {
        let s = parse(
            "secrets.toml",
            "[nodes.k3s0]\nk3s_token = \"abc\"\n[nodes.k3s1]\nk3s_token = \"def\"\n",
        )
        .unwrap();
        assert_eq!(s.of("k3s0")["k3s_token"].as_str(), Some("abc"));
        assert_eq!(s.of("k3s1")["k3s_token"].as_str(), Some("def"));
        assert!(s.of("machine0").as_table().unwrap().is_empty());
        let err = parse("secrets.toml", "[nodes.a]\n\"bad-name\" = \"x\"\n").unwrap_err();
        assert_eq!(err.line, 2);
        assert!(
            parse("secrets.toml", "token = \"x\"\n")
                .unwrap_err()
                .message
                .contains("unknown field")
        );
    }

    #[test]
    fn a_file_others_can_read_is_refused_and_a_missing_one_is_empty() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join(FILE);
        assert_eq!(load_file(&p).unwrap(), Secrets::default());
        std::fs::write(&p, "[nodes.a]\nt = \"x\"\n").unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o644)).unwrap();
        let err = load_file(&p).unwrap_err().to_string();
        assert!(err.contains("chmod 600") && err.contains("0644"), "{err}");
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o600)).unwrap();
        assert_eq!(load_file(&p).unwrap().of("a")["t"].as_str(), Some("x"));
    }

    #[test]
    fn referenced_names_are_found_in_template_text() {
        let t = "token: {{ node.secrets.k3s_token }}\n{% if node.secrets.extra_1 %}x{% endif %}\n{{ node.secrets.k3s_token }}";
        assert_eq!(referenced(t), ["extra_1", "k3s_token"]);
        assert!(uses_secrets(t));
        assert!(!uses_secrets("{{ node.name }}"));
    }
}
