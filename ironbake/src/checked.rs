//! Values checked when they are parsed: a sha256, a file mode, a unit, package or module
//! name, an image path. Each deserializes only if valid, so a recipe or overlay with a bad
//! one is refused at the value's own position in the TOML, and code after parsing holds the
//! type, never a string to check again (pure).

use std::fmt;

use serde::{Deserialize, Serialize};

/// Defines a string newtype that deserializes through `$check`, with `as_str` and `Display`.
macro_rules! checked_string {
    ($(#[$doc:meta])* $name:ident, $check:expr) => {
        $(#[$doc])*
        #[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
        #[serde(try_from = "String", into = "String")]
        pub struct $name(String);

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                fmt::Debug::fmt(&self.0, f)
            }
        }

        impl $name {
            /// The checked text.
            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl TryFrom<String> for $name {
            type Error = String;
            fn try_from(s: String) -> Result<Self, String> {
                let check: fn(&str) -> Result<(), String> = $check;
                check(&s).map(|()| $name(s))
            }
        }

        impl TryFrom<&str> for $name {
            type Error = String;
            fn try_from(s: &str) -> Result<Self, String> {
                $name::try_from(s.to_string())
            }
        }

        impl From<$name> for String {
            fn from(v: $name) -> String {
                v.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl std::ops::Deref for $name {
            type Target = str;
            fn deref(&self) -> &str {
                &self.0
            }
        }
    };
}

fn lower_hex(s: &str, digits: usize, what: &str) -> Result<(), String> {
    let ok = s.len() == digits
        && s.chars()
            .all(|c| c.is_ascii_digit() || ('a'..='f').contains(&c));
    if ok {
        Ok(())
    } else {
        Err(format!(
            "{what} {s:?} must be {digits} lowercase hex digits"
        ))
    }
}

checked_string!(
    /// A sha256 digest: 64 lowercase hex digits.
    Sha256,
    |s| lower_hex(s, 64, "sha256")
);

checked_string!(
    /// A sha512 digest: 128 lowercase hex digits.
    Sha512,
    |s| lower_hex(s, 128, "sha512")
);

checked_string!(
    /// A Debian package name (Debian policy 5.6.1), optionally pinned: `name=version`.
    PackageName,
    |s| {
        let name = s.split_once('=').map_or(s, |(n, _)| n);
        let ok = name.len() >= 2
            && name
                .chars()
                .next()
                .is_some_and(|c| c.is_ascii_lowercase() || c.is_ascii_digit())
            && name
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || "+-.".contains(c));
        if ok {
            Ok(())
        } else {
            Err(format!("{s:?} is not a valid Debian package name"))
        }
    }
);

checked_string!(
    /// A systemd unit name: `ssh.service`, `opensm@0x1234.service`, `apt-daily.timer`.
    UnitName,
    |s| {
        if s.contains('.') && !s.contains('/') && !s.starts_with('.') && !s.contains(char::is_whitespace) {
            Ok(())
        } else {
            Err(format!("{s:?} is not a systemd unit name (e.g. \"ssh.service\")"))
        }
    }
);

checked_string!(
    /// A kernel module name (`mlx4_ib`, `ib_ipoib`).
    ModuleName,
    |s| {
        let ok = !s.is_empty()
            && s.chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-');
        if ok {
            Ok(())
        } else {
            Err(format!("{s:?} is not a kernel module name"))
        }
    }
);

checked_string!(
    /// An absolute, normalised path in an image: no `.`, `..` or empty parts, no NUL, no
    /// trailing `/`.
    ImagePath,
    |s| {
        let ok = s.starts_with('/')
            && s.len() > 1
            && !s.ends_with('/')
            && !s.contains('\0')
            && s[1..]
                .split('/')
                .all(|c| !c.is_empty() && c != "." && c != "..");
        if ok {
            Ok(())
        } else {
            Err(format!("{s:?} must be an absolute image path (like \"/etc/motd\")"))
        }
    }
);

checked_string!(
    /// One word of a kernel command line: not empty, no whitespace.
    CmdlineWord,
    |s| {
        if !s.is_empty() && !s.contains(char::is_whitespace) {
            Ok(())
        } else {
            Err(format!("cmdline entry {s:?} must be one non-empty word"))
        }
    }
);

checked_string!(
    /// A recipe, overlay or apt source name: lowercase letters, digits, `-` and `_` (it names
    /// folders and files).
    Name,
    |s| {
        if netboot::layout::valid_name(s) {
            Ok(())
        } else {
            Err(format!("name {s:?} must be lowercase letters, digits, '-' or '_'"))
        }
    }
);

checked_string!(
    /// A recipe's own version: 1 to 32 letters, digits, `.`, `+`, `~` or `_` (no `-`, which
    /// separates the input digest in a published version).
    RecipeVersion,
    |s| {
        let ok = !s.is_empty()
            && s.len() <= 32
            && s.chars().all(|c| c.is_ascii_alphanumeric() || ".+~_".contains(c));
        if ok {
            Ok(())
        } else {
            Err(format!(
                "version {s:?} must be 1 to 32 letters, digits, '.', '+', '~' or '_' (no '-', \
                 which separates the input digest)"
            ))
        }
    }
);

checked_string!(
    /// A template variable's name: an identifier, and not `ironbake` or `node` (reserved for
    /// what ironbake and the boot server set).
    VarName,
    |s| {
        let ok = s
            .chars()
            .next()
            .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
            && s.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
        if ok && s != "ironbake" && s != "node" {
            Ok(())
        } else {
            Err(format!(
                "variable name {s:?} must be an identifier, and not `ironbake` or `node` \
                 (reserved)"
            ))
        }
    }
);

checked_string!(
    /// A URL ironbake fetches from: `http://`, `https://` or `file://`.
    FetchUrl,
    |s| {
        if ["http://", "https://", "file://"].iter().any(|p| s.starts_with(p)) {
            Ok(())
        } else {
            Err(format!("{s:?} must be an http://, https:// or file:// URL"))
        }
    }
);

checked_string!(
    /// A signing key file inside an overlay folder: a relative `.asc` or `.gpg` path that
    /// stays inside it.
    KeyFile,
    |s| {
        let ok = (s.ends_with(".asc") || s.ends_with(".gpg"))
            && !s.starts_with('/')
            && !s.split('/').any(|c| c == "..");
        if ok {
            Ok(())
        } else {
            Err(format!("key {s:?} must be a .asc or .gpg file inside the overlay folder"))
        }
    }
);

/// File permission bits, written in TOML as an octal string (`"0755"`, `"600"`).
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Mode(u32);

impl Mode {
    /// The permission bits.
    pub fn bits(self) -> u32 {
        self.0
    }

    /// `0644`, the default for files.
    pub const FILE: Mode = Mode(0o644);
}

impl TryFrom<String> for Mode {
    type Error = String;
    fn try_from(s: String) -> Result<Mode, String> {
        match u32::from_str_radix(&s, 8) {
            Ok(m) if (3..=4).contains(&s.len()) && m <= 0o7777 => Ok(Mode(m)),
            _ => Err(format!(
                "mode {s:?} is not an octal mode (three or four digits, like \"0644\")"
            )),
        }
    }
}

impl From<Mode> for String {
    fn from(m: Mode) -> String {
        m.to_string()
    }
}

impl fmt::Display for Mode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:04o}", self.0)
    }
}

impl fmt::Debug for Mode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Mode({:04o})", self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_value_is_checked_once_when_parsed() {
        assert_eq!(Mode::try_from("0755".to_string()).unwrap().bits(), 0o755);
        assert_eq!(Mode::try_from("600".to_string()).unwrap().bits(), 0o600);
        assert_eq!(
            Mode::try_from("0600".to_string()).unwrap().to_string(),
            "0600"
        );
        for bad in ["0800", "7", "12345", "rw"] {
            assert!(Mode::try_from(bad.to_string()).is_err(), "{bad}");
        }
        assert!(Sha256::try_from("a".repeat(64)).is_ok());
        assert!(Sha256::try_from("A".repeat(64)).is_err());
        assert!(Sha256::try_from("a".repeat(63)).is_err());
        assert!(ImagePath::try_from("/etc/hostname").is_ok());
        for bad in ["etc/x", "/", "/etc/", "/a//b", "/a/./b", "/a/../b"] {
            assert!(ImagePath::try_from(bad).is_err(), "{bad}");
        }
        for ok in ["linux-image-amd64", "libc6=2.36-9", "g++"] {
            assert!(PackageName::try_from(ok).is_ok(), "{ok}");
        }
        for bad in ["a", "Foo", "-x", "Bad_Name"] {
            assert!(PackageName::try_from(bad).is_err(), "{bad}");
        }
        assert!(UnitName::try_from("ssh").is_err());
        assert!(ModuleName::try_from("mlx4_ib").is_ok() && ModuleName::try_from("a b").is_err());
        assert!(CmdlineWord::try_from("quiet").is_ok() && CmdlineWord::try_from("a b").is_err());
    }
}
