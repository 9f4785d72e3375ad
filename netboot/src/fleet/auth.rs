//! Who may change the fleet, and proof that a report comes from its node.
//!
//! - The admin token: 32 random bytes (hex), made once in the state folder as `admin-token`
//!   (mode 0600) and sent by the CLI as `Authorization: Bearer TOKEN`. Power, desired-version
//!   and rollout requests without it get 401 and change nothing.
//! - The site key: 32 random bytes in the state folder as `site-key` (mode 0600). Each node's
//!   key is `HMAC-SHA256(site key, "ironbake node key v1:" + name)`; the node gets it in its
//!   settings archive as `/etc/ironbake/node-key` (mode 0600), so no list of keys is kept and
//!   servers that share the site key derive the same keys.
//! - A node's identity (its machine-id, its SSH host key) is derived the same way (see
//!   [`Keys::derive`]), so servers that share the site key give a node the same identity.
//! - A node's message (heartbeat, ready, acknowledgement) is `key=value` lines carrying a
//!   nonce the server handed out for that node moments before ([`Nonces`]: single use, short
//!   lived), signed as `X-Ironbake-Signature: hex(HMAC-SHA256(node key, body))`. A forged
//!   message (no key) fails the signature; a replayed one fails the nonce.
//! - The server's answer to a message is signed with the same key over the nonce and the
//!   answer, so a node obeys only commands that answer its own request.

use std::collections::{BTreeMap, VecDeque};
use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use hmac::{KeyInit, Mac};

type HmacSha256 = hmac::Hmac<sha2::Sha256>;

/// The admin token's file in the state folder.
pub const TOKEN_FILE: &str = "admin-token";
/// The site key's file in the state folder.
pub const SITE_KEY_FILE: &str = "site-key";
/// Where a node finds its key (in its settings archive).
pub const NODE_KEY_PATH: &str = "/etc/ironbake/node-key";
/// The header a signed message or answer carries.
pub const SIGNATURE_HEADER: &str = "x-ironbake-signature";

/// How long a nonce stays valid.
pub const NONCE_TTL: Duration = Duration::from_secs(60);
/// The most unused nonces kept per node (the oldest goes first), and nodes tracked.
pub const NONCES_PER_NODE: usize = 4;
const NONCE_NODES: usize = 4096;

fn random_hex(bytes: usize) -> std::io::Result<String> {
    let mut raw = vec![0u8; bytes];
    std::fs::File::open("/dev/urandom")?.read_exact(&mut raw)?;
    Ok(hex::encode(raw))
}

/// Writes `text` to `path` with mode 0600, atomically (a temporary file, then a rename).
pub fn write_private(path: &Path, text: &str) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent)?;
    }
    let tmp = path.with_extension("tmp");
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)?;
    f.write_all(text.as_bytes())?;
    f.sync_all()?;
    std::fs::rename(&tmp, path)
}

/// The hex secret in `dir/file`, made (32 random bytes) when missing. A file others may read
/// is refused: it would let anyone on the machine act as the admin or as any node.
pub fn secret_in(dir: &Path, file: &str) -> std::io::Result<String> {
    use std::os::unix::fs::PermissionsExt;
    let path = dir.join(file);
    match std::fs::read_to_string(&path) {
        Ok(text) => {
            let mode = std::fs::metadata(&path)?.permissions().mode() & 0o777;
            if mode & 0o077 != 0 {
                return Err(std::io::Error::other(format!(
                    "{} is readable by others (mode {mode:04o}): `chmod 600 {}`",
                    path.display(),
                    path.display()
                )));
            }
            let s = text.trim().to_string();
            if s.len() < 32 || !s.chars().all(|c| c.is_ascii_hexdigit()) {
                return Err(std::io::Error::other(format!(
                    "{} does not hold a hex secret; remove it to make a new one",
                    path.display()
                )));
            }
            Ok(s)
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let s = random_hex(32)?;
            write_private(&path, &format!("{s}\n"))?;
            tracing::info!("made {}", path.display());
            Ok(s)
        }
        Err(e) => Err(e),
    }
}

/// HMAC-SHA256 of `data` under `key`, in hex.
pub fn sign(key: &[u8], data: &[u8]) -> String {
    let mut m = HmacSha256::new_from_slice(key).expect("HMAC takes any key length");
    m.update(data);
    hex::encode(m.finalize().into_bytes())
}

/// Does `signature` (hex) sign `data` under `key`? Compared in constant time.
pub fn verify(key: &[u8], data: &[u8], signature: &str) -> bool {
    let Ok(sig) = hex::decode(signature.trim()) else {
        return false;
    };
    let mut m = HmacSha256::new_from_slice(key).expect("HMAC takes any key length");
    m.update(data);
    m.verify_slice(&sig).is_ok()
}

/// Is `given` the token? Compared in constant time (HMAC of both under one key).
pub fn token_matches(token: &str, given: &str) -> bool {
    let probe = sign(b"ironbake token check", token.as_bytes());
    verify(b"ironbake token check", given.as_bytes(), &probe)
}

/// The keys of one server: see the module doc.
#[derive(Debug)]
pub struct Keys {
    site: Vec<u8>,
    /// The admin token.
    pub token: String,
    /// The token's file (for messages).
    pub token_file: PathBuf,
}

impl Keys {
    /// Loads (or makes) the token and the site key in `state_dir`.
    pub fn load(state_dir: &Path) -> std::io::Result<Keys> {
        let site = secret_in(state_dir, SITE_KEY_FILE)?;
        let token = secret_in(state_dir, TOKEN_FILE)?;
        Ok(Keys {
            site: site.into_bytes(),
            token,
            token_file: state_dir.join(TOKEN_FILE),
        })
    }

    /// 32 bytes for one `purpose` of the node named `name`:
    /// `HMAC-SHA256(site key, "ironbake PURPOSE v1:" + name)`. Every server that shares the
    /// site key derives the same bytes, so a node's identity does not depend on which server
    /// it reached.
    pub fn derive(&self, purpose: &str, name: &str) -> [u8; 32] {
        let mut m = HmacSha256::new_from_slice(&self.site).expect("HMAC takes any key length");
        m.update(format!("ironbake {purpose} v1:{name}").as_bytes());
        m.finalize().into_bytes().into()
    }

    /// The key of the node named `name` (hex, as the node keeps it).
    pub fn node_key(&self, name: &str) -> String {
        sign(
            &self.site,
            format!("ironbake node key v1:{name}").as_bytes(),
        )
    }
}

/// Nonces handed to nodes and not yet used; see the module doc.
#[derive(Debug, Default)]
pub struct Nonces {
    by_node: Mutex<BTreeMap<String, VecDeque<(String, Instant)>>>,
}

impl Nonces {
    /// A fresh nonce for `node`.
    pub fn issue(&self, node: &str) -> std::io::Result<String> {
        let n = random_hex(16)?;
        let mut m = self.by_node.lock().unwrap_or_else(|e| e.into_inner());
        if !m.contains_key(node) && m.len() >= NONCE_NODES {
            // Forget the node whose newest nonce is oldest.
            if let Some(oldest) = m
                .iter()
                .min_by_key(|(_, q)| q.back().map(|(_, t)| *t))
                .map(|(k, _)| k.clone())
            {
                m.remove(&oldest);
            }
        }
        let q = m.entry(node.to_string()).or_default();
        q.retain(|(_, t)| t.elapsed() < NONCE_TTL);
        while q.len() >= NONCES_PER_NODE {
            q.pop_front();
        }
        q.push_back((n.clone(), Instant::now()));
        Ok(n)
    }

    /// Uses `nonce` of `node`: true once, if it was issued and has not expired.
    pub fn take(&self, node: &str, nonce: &str) -> bool {
        let mut m = self.by_node.lock().unwrap_or_else(|e| e.into_inner());
        let Some(q) = m.get_mut(node) else {
            return false;
        };
        match q.iter().position(|(n, _)| n == nonce) {
            Some(i) => {
                let (_, t) = q.remove(i).expect("found");
                t.elapsed() < NONCE_TTL
            }
            None => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_signature_verifies_only_with_its_key_and_its_data() {
        let sig = sign(b"key", b"node=a\nnonce=1\n");
        assert!(verify(b"key", b"node=a\nnonce=1\n", &sig));
        assert!(!verify(b"other", b"node=a\nnonce=1\n", &sig));
        assert!(!verify(b"key", b"node=b\nnonce=1\n", &sig));
        assert!(!verify(b"key", b"node=a\nnonce=1\n", "not hex"));
        assert!(!verify(b"key", b"node=a\nnonce=1\n", ""));
    }

    #[test]
    fn the_hmac_is_the_standard_one() {
        // RFC 4231, test case 2.
        assert_eq!(
            sign(b"Jefe", b"what do ya want for nothing?"),
            "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
    }

    #[test]
    fn a_nonce_passes_once_and_only_for_its_node() {
        let n = Nonces::default();
        let a = n.issue("a").unwrap();
        assert!(!n.take("b", &a));
        assert!(n.take("a", &a));
        assert!(!n.take("a", &a), "a nonce is used once");
        assert!(!n.take("a", "made-up"));
    }

    #[test]
    fn only_the_newest_nonces_of_a_node_are_kept() {
        let n = Nonces::default();
        let first = n.issue("a").unwrap();
        for _ in 0..NONCES_PER_NODE {
            n.issue("a").unwrap();
        }
        assert!(!n.take("a", &first));
    }

    #[test]
    fn secrets_are_made_private_and_kept() {
        use std::os::unix::fs::PermissionsExt;
        let d = tempfile::tempdir().unwrap();
        let k = Keys::load(d.path()).unwrap();
        let mode = std::fs::metadata(d.path().join(TOKEN_FILE))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        let again = Keys::load(d.path()).unwrap();
        assert_eq!(k.token, again.token);
        assert_eq!(k.node_key("a"), again.node_key("a"));
        assert_ne!(k.node_key("a"), k.node_key("b"));
        std::fs::set_permissions(
            d.path().join(TOKEN_FILE),
            std::fs::Permissions::from_mode(0o644),
        )
        .unwrap();
        let e = Keys::load(d.path()).unwrap_err().to_string();
        assert!(e.contains("chmod 600"), "{e}");
    }

    #[test]
    fn tokens_compare_exactly() {
        assert!(token_matches("abc", "abc"));
        assert!(!token_matches("abc", "abd"));
        assert!(!token_matches("abc", ""));
    }
}
