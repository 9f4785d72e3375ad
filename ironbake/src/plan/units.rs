//! Enabling and masking systemd units in the plan: the links `systemctl enable` and
//! `systemctl mask` would make, decided from the unit files' text (pure).

use anyhow::{Result, bail};

use super::{Builder, Kind};
use crate::overlay::Overlay;

/// Where unit files are looked for, in systemd's order.
const UNIT_DIRS: &[&str] = &[
    "/etc/systemd/system",
    "/lib/systemd/system",
    "/usr/lib/systemd/system",
];

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

impl Install {
    fn is_empty(&self) -> bool {
        self.targets.is_empty() && self.aliases.is_empty() && self.also.is_empty()
    }
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

/// The file that defines `unit`: a template's instance (`opensm@X.service`) is defined by
/// its template (`opensm@.service`).
fn unit_file_name(unit: &str) -> String {
    match unit.split_once('@') {
        Some((prefix, rest)) if !rest.starts_with('.') => {
            let suffix = rest.rsplit_once('.').map_or("", |(_, s)| s);
            format!("{prefix}@.{suffix}")
        }
        _ => unit.to_string(),
    }
}

/// The path and text of the file that defines `unit` in the image, if there is one.
fn find_unit(b: &Builder<'_>, unit: &str) -> Result<Option<(String, String)>> {
    let file = unit_file_name(unit);
    for d in UNIT_DIRS {
        let p = format!("{d}/{file}");
        if let Some(text) = b.text_of(&p)? {
            return Ok(Some((p, text)));
        }
    }
    Ok(None)
}

/// Each overlay's `units`, enabled: WantedBy=, RequiredBy=, Alias= links, and the units named
/// by Also=, recursively.
pub(super) fn enable(b: &mut Builder<'_>, overlays: &[Overlay]) -> Result<()> {
    for ov in overlays {
        let mut queue: Vec<String> = ov.spec.units.iter().map(|u| u.to_string()).collect();
        let mut done: Vec<String> = Vec::new();
        while let Some(unit) = queue.pop() {
            if done.contains(&unit) {
                continue;
            }
            done.push(unit.clone());
            let Some((unit_path, text)) = find_unit(b, &unit)? else {
                bail!(
                    "overlays/{}/overlay.toml: unit {unit:?} to enable was not found in the \
                     image (looked in {}); is its package in `packages`?",
                    ov.name,
                    UNIT_DIRS.join(", ")
                );
            };
            let install = install_section(&text);
            if install.is_empty() {
                bail!(
                    "overlays/{}/overlay.toml: unit {unit:?} ({unit_path}) has no [Install] \
                     section, so it cannot be enabled",
                    ov.name
                );
            }
            for (target, suffix) in &install.targets {
                let link = format!("/etc/systemd/system/{target}{suffix}/{unit}");
                b.put(&link, Kind::Symlink(unit_path.clone()), 0o777, &ov.name)?;
            }
            for alias in &install.aliases {
                let link = format!("/etc/systemd/system/{alias}");
                b.put(&link, Kind::Symlink(unit_path.clone()), 0o777, &ov.name)?;
            }
            queue.extend(install.also);
        }
    }
    Ok(())
}

/// Each overlay's `mask`: what `systemctl mask` does, a link to /dev/null where the admin's
/// units live. A unit that is not in the image is refused (a typo would otherwise mask
/// nothing), and so is one that an overlay also enables.
pub(super) fn mask(b: &mut Builder<'_>, overlays: &[Overlay]) -> Result<()> {
    for ov in overlays {
        for unit in &ov.spec.mask {
            if find_unit(b, unit)?.is_none() {
                bail!(
                    "overlays/{}/overlay.toml: unit {:?} to mask was not found in the image \
                     (looked in {}); remove it from `mask` or add its package",
                    ov.name,
                    unit.as_str(),
                    UNIT_DIRS.join(", ")
                );
            }
            if let Some(other) = overlays.iter().find(|o| o.spec.units.contains(unit)) {
                bail!(
                    "overlays/{}/overlay.toml masks {:?}, which overlays/{}/overlay.toml \
                     enables; keep one of the two",
                    ov.name,
                    unit.as_str(),
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
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

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
        assert_eq!(unit_file_name("opensm@0x12.service"), "opensm@.service");
        assert_eq!(unit_file_name("getty@.service"), "getty@.service");
    }
}
