//! Adding overlay users to the base's account files (passwd, group, shadow, gshadow), as text.
//!
//! The package layer is built once and cached; users come from overlays, so the overlay layer
//! carries whole new copies of these four files. Pure: text in, text out.

use anyhow::{Result, bail};

use crate::overlay::UserSpec;

/// The four account files of an image.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Accounts {
    /// `/etc/passwd`.
    pub passwd: String,
    /// `/etc/group`.
    pub group: String,
    /// `/etc/shadow`.
    pub shadow: String,
    /// `/etc/gshadow`.
    pub gshadow: String,
}

fn field(line: &str, i: usize) -> Option<&str> {
    line.split(':').nth(i)
}

/// The uid of `name` in passwd text, or `name` itself if it is numeric.
pub fn uid_of(passwd: &str, name: &str) -> Option<u32> {
    name.parse().ok().or_else(|| {
        passwd
            .lines()
            .find(|l| field(l, 0) == Some(name))
            .and_then(|l| field(l, 2)?.parse().ok())
    })
}

/// The gid of `name` in group text, or `name` itself if it is numeric.
pub fn gid_of(group: &str, name: &str) -> Option<u32> {
    name.parse().ok().or_else(|| {
        group
            .lines()
            .find(|l| field(l, 0) == Some(name))
            .and_then(|l| field(l, 2)?.parse().ok())
    })
}

fn push_line(text: &mut String, line: &str) {
    if !text.is_empty() && !text.ends_with('\n') {
        text.push('\n');
    }
    text.push_str(line);
    text.push('\n');
}

/// Adds `member` to group `group` in group-format text (field 3 of group, 3 of gshadow).
fn add_member(text: &str, group: &str, member_field: usize, member: &str) -> Option<String> {
    let mut found = false;
    let mut out = String::with_capacity(text.len() + member.len() + 1);
    for line in text.lines() {
        if field(line, 0) == Some(group) {
            found = true;
            let mut parts: Vec<String> = line.split(':').map(str::to_string).collect();
            while parts.len() <= member_field {
                parts.push(String::new());
            }
            let members = &mut parts[member_field];
            if !members.split(',').any(|m| m == member) {
                if !members.is_empty() {
                    members.push(',');
                }
                members.push_str(member);
            }
            out.push_str(&parts.join(":"));
        } else {
            out.push_str(line);
        }
        out.push('\n');
    }
    found.then_some(out)
}

/// Returns `base` with `users` added. Passwords are `*`: no password login, keys only.
/// `days` is the shadow "last changed" day (SOURCE_DATE_EPOCH / 86400).
pub fn add_users(base: &Accounts, users: &[UserSpec], days: u64) -> Result<Accounts> {
    let mut acc = base.clone();
    for u in users {
        add_user(&mut acc, u, days)?;
    }
    Ok(acc)
}

/// Is `id` the numeric id (field 3) of a line of passwd- or group-format `text`?
fn id_taken(text: &str, id: u32) -> bool {
    let id = id.to_string();
    text.lines().any(|l| field(l, 2) == Some(id.as_str()))
}

/// The primary group of `u`: the gid it names, which must exist, else a new group of its
/// own name with gid = uid.
fn primary_group(acc: &mut Accounts, u: &UserSpec) -> Result<u32> {
    if let Some(g) = u.gid {
        if !id_taken(&acc.group, g) {
            bail!(
                "user {:?}: primary gid {g} does not exist in the image",
                u.name
            );
        }
        return Ok(g);
    }
    if gid_of(&acc.group, &u.name).is_some() {
        bail!(
            "user {:?}: a group of that name already exists; set gid to use it",
            u.name
        );
    }
    if id_taken(&acc.group, u.uid.get()) {
        bail!(
            "user {:?}: gid {} (= uid) is already taken; set gid",
            u.name,
            u.uid
        );
    }
    push_line(&mut acc.group, &format!("{}:x:{}:", u.name, u.uid));
    push_line(&mut acc.gshadow, &format!("{}:!::", u.name));
    Ok(u.uid.get())
}

/// Adds one user: passwd and shadow lines, its group, its supplementary groups.
fn add_user(acc: &mut Accounts, u: &UserSpec, days: u64) -> Result<()> {
    if uid_of(&acc.passwd, &u.name).is_some() {
        bail!("user {:?} already exists in the image", u.name);
    }
    if id_taken(&acc.passwd, u.uid.get()) {
        bail!(
            "user {:?}: uid {} is already taken in the image",
            u.name,
            u.uid
        );
    }
    let gid = primary_group(acc, u)?;
    let home = u
        .home
        .as_ref()
        .map_or_else(|| format!("/home/{}", u.name), |h| h.to_string());
    push_line(
        &mut acc.passwd,
        &format!(
            "{}:x:{}:{}:{}:{}:{}",
            u.name, u.uid, gid, u.comment, home, u.shell
        ),
    );
    push_line(
        &mut acc.shadow,
        &format!("{}:*:{days}:0:99999:7:::", u.name),
    );
    for g in &u.groups {
        acc.group = add_member(&acc.group, g, 3, &u.name).ok_or_else(|| {
            anyhow::anyhow!(
                "user {:?}: supplementary group {g:?} does not exist in the image",
                u.name
            )
        })?;
        if let Some(gs) = add_member(&acc.gshadow, g, 3, &u.name) {
            acc.gshadow = gs;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn base() -> Accounts {
        Accounts {
            passwd: "root:x:0:0:root:/root:/bin/bash\n".into(),
            group: "root:x:0:\nsudo:x:27:\nadm:x:4:syslog\n".into(),
            shadow: "root:*:19000:0:99999:7:::\n".into(),
            gshadow: "root:*::\nsudo:*::\nadm:*::syslog\n".into(),
        }
    }

    fn user(name: &str, uid: u32, groups: &[&str]) -> UserSpec {
        let text = format!("[[users]]\nname = \"{name}\"\nuid = {uid}\ngroups = {groups:?}\n");
        let spec = crate::overlay::parse_spec("overlay.toml", &text).unwrap();
        spec.users[0].clone()
    }

    #[test]
    fn a_user_gets_a_group_a_locked_password_and_memberships() {
        let acc = add_users(&base(), &[user("admin", 1000, &["sudo", "adm"])], 19700).unwrap();
        assert_eq!(
            acc.passwd,
            "root:x:0:0:root:/root:/bin/bash\nadmin:x:1000:1000::/home/admin:/bin/bash\n"
        );
        assert_eq!(
            acc.group,
            "root:x:0:\nsudo:x:27:admin\nadm:x:4:syslog,admin\nadmin:x:1000:\n"
        );
        assert_eq!(
            acc.shadow,
            "root:*:19000:0:99999:7:::\nadmin:*:19700:0:99999:7:::\n"
        );
        assert_eq!(
            acc.gshadow,
            "root:*::\nsudo:*::admin\nadm:*::syslog,admin\nadmin:!::\n"
        );
        assert_eq!(uid_of(&acc.passwd, "admin"), Some(1000));
        assert_eq!(gid_of(&acc.group, "admin"), Some(1000));
        assert_eq!(uid_of(&acc.passwd, "42"), Some(42));
    }

    #[test]
    fn conflicts_are_refused() {
        assert!(
            add_users(&base(), &[user("root", 1000, &[])], 1)
                .unwrap_err()
                .to_string()
                .contains("already exists")
        );
        assert!(
            add_users(&base(), &[user("a", 1000, &[]), user("b", 1000, &[])], 1)
                .unwrap_err()
                .to_string()
                .contains("uid 1000 is already taken")
        );
        assert!(
            add_users(&base(), &[user("a", 1000, &["wheel"])], 1)
                .unwrap_err()
                .to_string()
                .contains("\"wheel\" does not exist")
        );
        assert!(
            add_users(&base(), &[user("sudo", 1000, &[])], 1)
                .unwrap_err()
                .to_string()
                .contains("group of that name")
        );
    }
}
