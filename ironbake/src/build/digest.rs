//! The version of a build: the recipe's own version and a digest of every input, the
//! builder's code among them, so that changed code or a changed input is a new version and
//! the same code with the same inputs is the same version (pure).

use std::collections::BTreeMap;

use serde::Serialize;

use crate::recipe::Output;

/// sha256 of the builder's sources (computed by `build.rs`; see `source_digest.rs`).
pub const BUILDER_SHA256: &str = env!("IRONBAKE_BUILDER_SHA256");

/// The builder's version as a manifest records it: the crate's version and the start of
/// [`BUILDER_SHA256`].
pub fn builder_version() -> String {
    format!(
        "{} (source sha256 {})",
        env!("CARGO_PKG_VERSION"),
        &BUILDER_SHA256[..16]
    )
}

/// Everything a version is made from; its canonical JSON is hashed.
#[derive(Debug, Serialize)]
pub struct Inputs<'a> {
    /// [`BUILDER_SHA256`], or another builder's in tests.
    pub builder: &'a str,
    /// Overlays the recipe names that this build leaves out (`--without`).
    #[serde(skip_serializing_if = "<[String]>::is_empty")]
    pub left_out: &'a [String],
    /// The recipe's name.
    pub recipe: &'a str,
    /// sha256 of the recipe file.
    pub recipe_sha256: &'a str,
    /// The package layer's cache key (its own inputs).
    pub base: String,
    /// Each overlay with the digest of its folder.
    pub overlays: Vec<(&'a str, &'a str)>,
    /// Each fetched artifact: overlay, name, sha256, destination, mode.
    pub artifacts: Vec<(&'a str, &'a str, &'a str, &'a str, String)>,
    /// What the recipe publishes.
    pub outputs: &'a [Output],
    /// The build host's EFI binaries a disk image carries, by path, with their sha256.
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub efi: &'a BTreeMap<String, String>,
}

impl Inputs<'_> {
    /// sha256 of the canonical JSON of these inputs.
    pub fn sha256(&self) -> String {
        crate::digest::sha256_hex(&serde_json::to_vec(self).expect("inputs serialise"))
    }
}

/// The published version: the recipe's version and the first ten digits of the inputs'
/// digest.
pub fn version(recipe_version: &str, inputs_sha256: &str) -> String {
    format!("{recipe_version}-{}", &inputs_sha256[..10])
}

#[cfg(test)]
#[path = "source_digest.rs"]
mod source_digest;

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    fn inputs(builder: &str) -> String {
        Inputs {
            builder,
            left_out: &[],
            recipe: "ci-node",
            recipe_sha256: "r",
            base: "b".into(),
            overlays: vec![("base", "o")],
            artifacts: vec![],
            outputs: &[Output::Kernel],
            efi: &BTreeMap::new(),
        }
        .sha256()
    }

    /// The digest compiled in is the digest of the tree this test was built from, and it
    /// moves with any change to what shapes an image (here the first stage's driver list).
    #[test]
    fn the_version_follows_the_builders_code() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR"));
        let files = source_digest::files(dir).unwrap();
        assert_eq!(
            source_digest::digest(&files),
            BUILDER_SHA256,
            "build.rs computed the digest of this very tree"
        );
        assert!(
            files
                .iter()
                .any(|(p, b)| p == "src/initramfs/init.sh" && b.is_some()),
            "the first stage's script counts"
        );
        let mut edited = files.clone();
        let (_, modules) = edited
            .iter_mut()
            .find(|(p, _)| p == "src/initramfs/mod.rs")
            .expect("the initramfs module counts");
        let text = String::from_utf8(modules.take().unwrap()).unwrap();
        let changed = text.replacen("\"virtio_net\",", "\"virtio_net\", \"e1000e\",", 1);
        assert_ne!(changed, text, "DEFAULT_MODULES lists virtio_net");
        *modules = Some(changed.into_bytes());
        let other = source_digest::digest(&edited);
        assert_ne!(
            other, BUILDER_SHA256,
            "a new driver in the list: a new digest"
        );
        let (same, new) = (inputs(BUILDER_SHA256), inputs(&other));
        assert_eq!(
            same,
            inputs(BUILDER_SHA256),
            "the same code: the same version"
        );
        assert_ne!(
            version("0.1.0", &same),
            version("0.1.0", &new),
            "changed code: a new version"
        );
    }
}
