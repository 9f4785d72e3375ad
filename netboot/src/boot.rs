//! What a node gets when it asks to boot: its iPXE script, and its per-node settings archive
//! (the node templates published with the image, rendered for this node, as a cpio archive
//! the kernel unpacks after the initramfs). Pure functions; [`crate::http`] serves them.

use std::collections::BTreeMap;

use serde::Serialize;

use crate::cpio::{self, Body, Entry};
use crate::inventory::Install;
use crate::layout::{self, Manifest};
use crate::template::{self, TemplateError, TemplateSource};

/// The initramfs file in a published version.
pub const INITRD: &str = "initrd.img";
/// The kernel file in a published version.
pub const KERNEL: &str = "vmlinuz";
/// Where node templates are published in a version folder.
pub use crate::layout::NODE_TEMPLATES;
/// Where the settings archive puts files: the first stage copies `ironbake/node/*` onto the
/// root (see ARCHITECTURE.md).
pub const SETTINGS_PREFIX: &str = "ironbake/node";

/// The name a machine that the inventory does not list gets: `node-` and its MAC's digits.
pub fn unknown_node_name(mac: &str) -> String {
    format!("node-{}", mac.replace(':', ""))
}

/// The node's iPXE script. `http_base` is the server's base URL (`http://10.33.0.1:8080`),
/// `settings_url` the node's settings archive, `peers` the LAN's other boot servers. Every
/// fetch is retried (a server that restarts mid-boot only delays the node), from the next
/// server when there are several (one that dies mid-boot costs a retry); the kernel line
/// names both initrds, which iPXE on UEFI needs; `kernel_args` (the inventory's, checked by
/// [`crate::inventory::kernel_args_problem`]) go at the end of its command line.
pub fn ipxe_script(
    m: &Manifest,
    servers: &Servers<'_>,
    node: &str,
    mac: &str,
    settings_url: &str,
    kernel_args: &str,
) -> String {
    boot_script(m, servers, node, mac, settings_url, kernel_args, "boots")
}

/// Where a node's script sends it: this server, the LAN's other boot servers, and where a
/// version's files come from when not from the servers themselves (an HTTP cache in front).
#[derive(Debug, Clone, Copy)]
pub struct Servers<'a> {
    /// This server's base URL, `http://10.33.0.1:8080`.
    pub own: &'a str,
    /// The others'.
    pub peers: &'a [String],
    /// The base URL a version's files (kernel, initramfs, layers) are fetched from, if not
    /// the server's: a cache or mirror holding the same published paths.
    pub files: Option<&'a str>,
}

impl<'a> Servers<'a> {
    /// One server, nothing else.
    pub fn alone(own: &'a str) -> Servers<'a> {
        Servers {
            own,
            peers: &[],
            files: None,
        }
    }
}

/// The iPXE script of a node that installs its disk image (see [`install_args`]): the same
/// kernel and initramfs, whose first stage runs in install mode.
pub fn ipxe_install_script(
    m: &Manifest,
    servers: &Servers<'_>,
    node: &str,
    mac: &str,
    settings_url: &str,
    kernel_args: &str,
    install: &Install,
) -> Result<String, String> {
    let args = format!("{} {kernel_args}", install_args(m, install)?);
    Ok(boot_script(
        m,
        servers,
        node,
        mac,
        settings_url,
        &args,
        "installs",
    ))
}

/// The install-mode parameters for the first stage (the contract is in ARCHITECTURE.md):
/// `ironbake.install=disk:PATH|min-gib:N`, `ironbake.wipe` when the inventory allows it, and
/// `ironbake.disk=CHUNKS_SHA256:IMAGE_SHA256:IMAGE_BYTES`, from the manifest. Refused when the
/// version has no disk image or no chunk list.
pub fn install_args(m: &Manifest, install: &Install) -> Result<String, String> {
    let find = |path: &str| m.outputs.iter().find(|o| o.path == path);
    let (Some(image), Some(chunks)) = (find(layout::DISK_IMAGE), find(layout::DISK_CHUNKS)) else {
        return Err(format!(
            "{}@{} has no {} and {}: add \"disk\" to the recipe's outputs (and the disk-boot \
             overlay), rebuild, and boot the node again",
            m.recipe,
            m.version,
            layout::DISK_IMAGE,
            layout::DISK_CHUNKS
        ));
    };
    let mut args = format!(" ironbake.install={}", install.word());
    if install.wipe {
        args.push_str(" ironbake.wipe");
    }
    args.push_str(&format!(
        " ironbake.disk={}:{}:{}",
        chunks.sha256, image.sha256, image.size
    ));
    Ok(args)
}

/// The script for a node installed on its disk: it says so and exits to the firmware, which
/// boots its next option (the disk).
pub fn ipxe_boot_disk(node: &str, mac: &str, installed: &str) -> String {
    format!(
        "#!ipxe\n\
         # ironbake: {node} ({mac}) is installed on its disk\n\
         echo ironbake: {node} is installed on its disk ({installed}): booting from it\n\
         echo ironbake: (ironbake install {node} asks for a fresh install)\n\
         exit 1\n"
    )
}

fn boot_script(
    m: &Manifest,
    servers_in: &Servers<'_>,
    node: &str,
    mac: &str,
    settings_url: &str,
    extra_args: &str,
    verb: &str,
) -> String {
    let extra_args = extra_args.trim();
    let own = servers_in.own.trim_end_matches('/');
    let mut servers = vec![own.to_string()];
    for p in servers_in.peers {
        let p = p.trim_end_matches('/');
        if !servers.iter().any(|s| s == p) {
            servers.push(p.to_string());
        }
    }
    // One server: every URL is literal and a failed fetch is tried again. Several: the URLs
    // go through ${srv}, this server first, and a failed fetch starts the boot over from the
    // next server (the published paths are the same on each, and so are the settings).
    let several = servers.len() > 1;
    let (server, settings) = if several {
        let path = settings_url.strip_prefix(own).unwrap_or(settings_url);
        ("${srv}".to_string(), format!("${{srv}}{path}"))
    } else {
        (own.to_string(), settings_url.to_string())
    };
    // The version's files from the cache in front, when there is one (its published paths
    // are the servers'); scripts, settings and reports stay with the servers.
    let files = servers_in
        .files
        .map_or(server.clone(), |f| f.trim_end_matches('/').to_string());
    let base = format!("{files}/{}/{}", m.recipe, m.version);
    let mut cmdline = layout::boot_cmdline(m, &files, node, &server);
    if several {
        let mut all = servers.clone();
        all.sort();
        cmdline.push_str(&format!(" ironbake.servers={}", all.join(",")));
    }
    if !extra_args.is_empty() {
        cmdline.push(' ');
        cmdline.push_str(extra_args);
    }
    let again = |label: &str| {
        if several {
            "next_server".to_string()
        } else {
            label.to_string()
        }
    };
    let from = if several { " from ${srv}" } else { "" };
    let mut script = format!(
        "#!ipxe\n\
         # ironbake: {node} ({mac}) {verb} {recipe}@{version}\n\
         echo ironbake: {node} {verb} {recipe}@{version}\n",
        recipe = m.recipe,
        version = m.version,
    );
    if several {
        script.push_str(&format!("set srv {own}\n"));
    }
    script.push_str(&format!(
        ":net\n\
         isset ${{ip}} || dhcp || goto net_retry\n\
         :kernel\n\
         kernel --name {KERNEL} {base}/{KERNEL} initrd={INITRD} initrd=settings.img {cmdline} || goto kernel_retry\n\
         :initrd\n\
         initrd --name {INITRD} {base}/{INITRD} || goto initrd_retry\n\
         :settings\n\
         initrd --name settings.img {settings} || goto settings_retry\n\
         boot || goto boot_retry\n\
         :net_retry\n\
         echo ironbake: no network configuration yet; retrying in 3 s\n\
         sleep 3\n\
         goto net\n\
         :kernel_retry\n\
         echo ironbake: fetching the kernel{from} failed; retrying in 3 s\n\
         sleep 3\n\
         goto {kernel}\n\
         :initrd_retry\n\
         echo ironbake: fetching the initramfs{from} failed; retrying in 3 s\n\
         sleep 3\n\
         goto {initrd}\n\
         :settings_retry\n\
         echo ironbake: fetching this node's settings{from} failed; retrying in 3 s\n\
         sleep 3\n\
         goto {settings_label}\n\
         :boot_retry\n\
         echo ironbake: boot failed; starting over in 5 s\n\
         sleep 5\n\
         imgfree\n\
         goto {kernel}\n",
        kernel = again("kernel"),
        initrd = again("initrd"),
        settings_label = again("settings"),
    ));
    if several {
        // The next server in the list, round and round; what was fetched is dropped, so the
        // kernel, initramfs and settings always come from one server.
        script.push_str(":next_server\n");
        script.push_str(&format!("set next {}\n", servers[0]));
        for pair in servers.windows(2) {
            script.push_str(&format!(
                "iseq ${{srv}} {} && set next {} || echo -n\n",
                pair[0], pair[1]
            ));
        }
        script.push_str(
            "set srv ${next}\n\
             echo ironbake: trying ${srv}\n\
             imgfree\n\
             goto kernel\n",
        );
    }
    script
}

/// The script for a machine the server will not boot: it says why and exits to the firmware,
/// which moves on to its next boot option.
pub fn ipxe_refusal(mac: &str, why: &str) -> String {
    format!("#!ipxe\necho ironbake: not booting {mac}: {why}\nsleep 5\nexit 1\n")
}

/// What a node template sees: the recipe's variables as top-level names, `ironbake.recipe`
/// and `ironbake.version`, and `node.*` (name, mac, recipe and the inventory's variables) -
/// the same context the build checks them with.
#[derive(Debug, Serialize)]
pub struct NodeContext<'a> {
    /// The recipe's `[variables]`.
    #[serde(flatten)]
    pub vars: &'a BTreeMap<String, serde_json::Value>,
    /// The image.
    pub ironbake: ImageInfo<'a>,
    /// The node.
    pub node: BTreeMap<String, toml::Value>,
}

/// `ironbake.*` in a node template.
#[derive(Debug, Serialize)]
pub struct ImageInfo<'a> {
    /// The recipe's name.
    pub recipe: &'a str,
    /// The published version.
    pub version: &'a str,
}

/// A file the settings archive carries besides the rendered templates (e.g. the node's
/// machine-id), at an image path.
#[derive(Debug, Clone)]
pub struct ExtraFile {
    /// Absolute path in the image.
    pub dest: String,
    /// Contents.
    pub data: Vec<u8>,
    /// Mode bits.
    pub mode: u32,
}

/// Renders the settings archive. `initrd_len` is the size of the initramfs the archive will
/// follow: the archive starts with as many zero bytes as put it at a 4-byte-aligned offset,
/// where the kernel looks for the next archive (zeros between archives are skipped).
pub fn settings_archive(
    m: &Manifest,
    templates: &[TemplateSource],
    node: BTreeMap<String, toml::Value>,
    extra: &[ExtraFile],
    initrd_len: u64,
) -> Result<Vec<u8>, TemplateError> {
    let ctx = NodeContext {
        vars: &m.variables,
        ironbake: ImageInfo {
            recipe: &m.recipe,
            version: &m.version,
        },
        node,
    };
    let mut files: BTreeMap<String, (Vec<u8>, u32)> = BTreeMap::new();
    for t in templates {
        let text = template::render(t, &ctx)?;
        files.insert(t.dest.clone(), (text.into_bytes(), t.mode));
    }
    for f in extra {
        files.insert(f.dest.clone(), (f.data.clone(), f.mode));
    }
    let mut entries = vec![
        Entry {
            path: "ironbake".into(),
            mode: 0o755,
            body: Body::Dir,
        },
        Entry {
            path: SETTINGS_PREFIX.into(),
            mode: 0o755,
            body: Body::Dir,
        },
    ];
    let mut dirs: Vec<String> = Vec::new();
    for (dest, (data, mode)) in files {
        let rel = dest.trim_start_matches('/');
        let parts: Vec<&str> = rel.split('/').collect();
        for i in 1..parts.len() {
            let d = parts[..i].join("/");
            if !dirs.contains(&d) {
                dirs.push(d.clone());
                entries.push(Entry {
                    path: format!("{SETTINGS_PREFIX}/{d}"),
                    mode: 0o755,
                    body: Body::Dir,
                });
            }
        }
        entries.push(Entry {
            path: format!("{SETTINGS_PREFIX}/{rel}"),
            mode,
            body: Body::File(data),
        });
    }
    let pad = ((4 - initrd_len % 4) % 4) as usize;
    let mut out = vec![0u8; pad];
    cpio::write(&mut out, &entries, m.source_date_epoch)
        .expect("writing to memory cannot fail and the paths are relative");
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn manifest() -> Manifest {
        let text = include_str!("../tests/data/manifest.json");
        layout::parse_manifest(text).unwrap()
    }

    #[test]
    fn an_install_script_carries_the_disk_and_its_digests_or_says_what_is_missing() {
        let mut m = manifest();
        m.outputs.retain(|o| !o.path.starts_with("disk."));
        let install = Install {
            disk: Some("/dev/disk/by-id/virtio-d0".into()),
            min_gib: None,
            wipe: false,
        };
        let url = "http://10.33.0.1:8080/nodes/52:54:00:00:00:01/settings.img";
        let e = ipxe_install_script(
            &m,
            &Servers::alone("http://10.33.0.1:8080"),
            "d0",
            "m",
            url,
            "",
            &install,
        )
        .unwrap_err();
        assert!(e.contains("add \"disk\" to the recipe's outputs"), "{e}");
        for (path, sha) in [("disk.img", "aa"), ("disk.chunks", "cc")] {
            m.outputs.push(layout::OutputRecord {
                path: path.into(),
                size: 1 << 30,
                sha256: sha.repeat(32),
            });
        }
        let s = ipxe_install_script(
            &m,
            &Servers::alone("http://10.33.0.1:8080"),
            "d0",
            "m",
            url,
            "",
            &install,
        )
        .unwrap();
        let kernel = s.lines().find(|l| l.starts_with("kernel ")).unwrap();
        let want = format!(
            " ironbake.install=disk:/dev/disk/by-id/virtio-d0 ironbake.disk={}:{}:1073741824 || goto",
            "cc".repeat(32),
            "aa".repeat(32)
        );
        assert!(kernel.contains(&want), "{kernel}");
        assert!(s.contains("echo ironbake: d0 installs "), "{s}");
        let wipe = Install {
            wipe: true,
            ..install
        };
        assert!(install_args(&m, &wipe).unwrap().contains(" ironbake.wipe "));
        let disk = ipxe_boot_disk("d0", "m", "r@1 on /dev/vda");
        assert!(
            disk.ends_with("exit 1\n") && !disk.contains("kernel "),
            "{disk}"
        );
    }

    #[test]
    fn with_several_servers_a_failed_fetch_starts_over_from_the_next() {
        let m = manifest();
        let peers = vec!["http://10.33.0.2:8080".to_string()];
        let s = ipxe_script(
            &m,
            &Servers {
                own: "http://10.33.0.1:8080",
                peers: &peers,
                files: None,
            },
            "ci0",
            "52:54:00:00:00:01",
            "http://10.33.0.1:8080/nodes/52:54:00:00:00:01/settings.img",
            "",
        );
        assert!(s.contains("\nset srv http://10.33.0.1:8080\n"), "{s}");
        let kernel = s.lines().find(|l| l.starts_with("kernel ")).unwrap();
        assert!(
            kernel.contains(&format!("${{srv}}/{}/{}/vmlinuz", m.recipe, m.version))
                && kernel.contains(&format!(
                    "ironbake.image=${{srv}}/{}/{}/",
                    m.recipe, m.version
                ))
                && kernel.contains("ironbake.server=${srv} ")
                && kernel.contains(" ironbake.servers=http://10.33.0.1:8080,http://10.33.0.2:8080"),
            "{kernel}"
        );
        assert!(
            s.contains("initrd --name settings.img ${srv}/nodes/52:54:00:00:00:01/settings.img")
        );
        // Every retry goes through the next server; the rotation covers both and comes back.
        assert_eq!(s.matches("goto next_server").count(), 4, "{s}");
        assert!(
            s.contains(
                ":next_server\nset next http://10.33.0.1:8080\n\
             iseq ${srv} http://10.33.0.1:8080 && set next http://10.33.0.2:8080 || echo -n\n\
             set srv ${next}\n"
            ),
            "{s}"
        );
        // The same script from the other server names the same servers, itself first.
        let other = ipxe_script(
            &m,
            &Servers {
                own: "http://10.33.0.2:8080",
                peers: &["http://10.33.0.1:8080".to_string()],
                files: None,
            },
            "ci0",
            "52:54:00:00:00:01",
            "http://10.33.0.2:8080/nodes/52:54:00:00:00:01/settings.img",
            "",
        );
        assert_eq!(
            other
                .replace(
                    "set srv http://10.33.0.2:8080\n",
                    "set srv http://10.33.0.1:8080\n"
                )
                .lines()
                .filter(|l| !l.starts_with("set next") && !l.starts_with("iseq"))
                .collect::<Vec<_>>(),
            s.lines()
                .filter(|l| !l.starts_with("set next") && !l.starts_with("iseq"))
                .collect::<Vec<_>>()
        );
    }

    #[test]
    fn behind_a_cache_the_files_come_from_it_and_the_rest_from_the_server() {
        let m = manifest();
        let s = ipxe_script(
            &m,
            &Servers {
                own: "http://10.33.0.1:8080",
                peers: &[],
                files: Some("http://10.33.0.3:8081/"),
            },
            "ci0",
            "52:54:00:00:00:01",
            "http://10.33.0.1:8080/nodes/52:54:00:00:00:01/settings.img",
            "",
        );
        let v = format!("{}/{}", m.recipe, m.version);
        let kernel = s.lines().find(|l| l.starts_with("kernel ")).unwrap();
        assert!(
            kernel.contains(&format!(" http://10.33.0.3:8081/{v}/vmlinuz "))
                && kernel.contains(&format!("ironbake.image=http://10.33.0.3:8081/{v}/ "))
                && kernel.contains("ironbake.server=http://10.33.0.1:8080"),
            "{kernel}"
        );
        assert!(s.contains(&format!(
            "initrd --name initrd.img http://10.33.0.3:8081/{v}/initrd.img "
        )));
        assert!(s.contains("initrd --name settings.img http://10.33.0.1:8080/nodes/"));
    }

    /// ci0's script from one server, with `kernel_args`.
    fn ci0_script(m: &Manifest, kernel_args: &str) -> String {
        ipxe_script(
            m,
            &Servers::alone("http://10.33.0.1:8080"),
            "ci0",
            "52:54:00:00:00:01",
            "http://10.33.0.1:8080/nodes/52:54:00:00:00:01/settings.img",
            kernel_args,
        )
    }

    #[test]
    fn the_script_names_both_initrds_and_retries_every_fetch() {
        let m = manifest();
        let s = ci0_script(&m, "");
        assert!(s.starts_with("#!ipxe\n"));
        let kernel = s.lines().find(|l| l.starts_with("kernel ")).unwrap();
        assert!(
            kernel.contains("initrd=initrd.img initrd=settings.img")
                && kernel.contains("ironbake.node=ci0")
                && kernel.contains(&format!(
                    "ironbake.image=http://10.33.0.1:8080/{}/{}/",
                    m.recipe, m.version
                ))
                && kernel.ends_with("|| goto kernel_retry"),
            "{kernel}"
        );
        for label in [
            "net_retry",
            "kernel_retry",
            "initrd_retry",
            "settings_retry",
            "boot_retry",
        ] {
            assert!(
                s.contains(&format!("goto {label}")) && s.contains(&format!(":{label}\n")),
                "{label}"
            );
        }
    }

    #[test]
    fn settings_are_rendered_per_node_and_aligned() {
        let m = manifest();
        let t = vec![TemplateSource {
            file: "node-templates/etc/hostname.j2".into(),
            dest: "/etc/hostname".into(),
            text: "{{ node.name }} {{ ironbake.recipe }}\n".into(),
            mode: 0o644,
        }];
        let mut node = BTreeMap::new();
        node.insert("name".to_string(), toml::Value::String("ci0".into()));
        let extra = [ExtraFile {
            dest: "/etc/machine-id".into(),
            data: b"0123\n".to_vec(),
            mode: 0o444,
        }];
        let a = settings_archive(&m, &t, node.clone(), &extra, 4001).unwrap();
        assert_eq!(&a[..3], &[0, 0, 0]);
        assert_eq!(&a[3..9], b"070701");
        let text = String::from_utf8_lossy(&a);
        assert!(text.contains("ironbake/node/etc/hostname\0"));
        assert!(text.contains(&format!("ci0 {}\n", m.recipe)));
        assert!(text.contains("ironbake/node/etc/machine-id\0"));
        let b = settings_archive(&m, &t, node, &extra, 4000).unwrap();
        assert_eq!(&b[..6], b"070701");
        let bad = vec![TemplateSource {
            text: "{{ node.nope }}".into(),
            ..t[0].clone()
        }];
        let err = settings_archive(&m, &bad, BTreeMap::new(), &[], 0).unwrap_err();
        assert!(
            err.to_string().contains("node-templates/etc/hostname.j2"),
            "{err}"
        );
    }

    #[test]
    fn a_nodes_kernel_args_end_its_command_line() {
        let s = ci0_script(&manifest(), "intel_iommu=on ironbake.analyze");
        let kernel = s.lines().find(|l| l.starts_with("kernel ")).unwrap();
        assert!(
            kernel.ends_with(" intel_iommu=on ironbake.analyze || goto kernel_retry"),
            "{kernel}"
        );
        assert!(!kernel.contains("  "), "{kernel}");
    }
}
