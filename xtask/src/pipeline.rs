//! `build`: recipe and overlays in, a published version out.
//!
//! resolve (recipe, overlays, inventory) -> pin apt sources -> fetch artifacts -> version
//! -> package layer (cached) -> overlay plan -> emit (overlay layer, kernel, node templates)
//! -> manifest and SHA256SUMS -> publish.

use std::collections::BTreeMap;
use std::fs;
use std::io::Write;
use std::os::unix::fs::{PermissionsExt, lchown, symlink};
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use serde::Serialize;

use crate::apt::{self, Source};
use crate::base::{self, BaseSpec, SourceUse, TreeView};
use crate::overlay::{self, Overlay};
use crate::plan::{self, Data, Kind, Plan};
use crate::progress::Progress;
use crate::publish::{self, Staging};
use crate::recipe::{self, Output, Recipe};
use crate::{artifact, disk, initramfs, inventory, ipxe, template, uki};

/// Where the disk image's pieces come from.
pub mod disk_image {
    /// systemd-boot (Debian package `systemd-boot-efi`), the disk's boot manager.
    pub const SYSTEMD_BOOT: &str = "/usr/lib/systemd/boot/efi/systemd-bootx64.efi";
    /// The disk image in a version folder.
    pub const FILE: &str = "disk.img";
}
use netboot::layout::{self, Manifest};

/// Where a build reads and writes.
#[derive(Debug, Clone)]
pub struct Paths {
    /// The project: `recipes/`, `overlays/`, `inventory.toml`.
    pub project: PathBuf,
    /// The published root.
    pub out: PathBuf,
    /// Caches: package layers, artifacts.
    pub cache: PathBuf,
    /// The host's apt configuration folder (for its sources).
    pub etc_apt: PathBuf,
}

/// What a build did.
#[derive(Debug)]
pub struct Built {
    /// The published folder.
    pub dir: PathBuf,
    /// Its manifest.
    pub manifest: Manifest,
    /// True if this version was already published and nothing was built.
    pub already_published: bool,
    /// True if the package layer came from the cache.
    pub base_cached: bool,
}

/// The name of the package layer in a version folder.
pub const BASE_LAYER: &str = "base.squashfs";
/// The name of the overlay layer in a version folder.
pub const OVERLAY_LAYER: &str = "overlay.squashfs";
/// The name of the initramfs in a version folder (iPXE names it on the kernel line).
pub const INITRAMFS: &str = "initrd.img";

#[derive(Serialize)]
struct InputsDigest<'a> {
    builder: &'a str,
    /// Overlays the recipe names that this build leaves out (`--without`).
    #[serde(skip_serializing_if = "<[String]>::is_empty")]
    left_out: &'a [String],
    recipe: &'a str,
    recipe_sha256: &'a str,
    base: String,
    overlays: Vec<(&'a str, &'a str)>,
    artifacts: Vec<(&'a str, &'a str, &'a str, &'a str, &'a str)>,
    outputs: &'a [Output],
    /// The first stage's scripts: a change to them is a new version.
    initramfs: String,
    /// The build host's EFI binaries a disk image carries, by path, with their sha256.
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    efi: &'a BTreeMap<String, String>,
    /// [`disk::REVISION`] when the recipe publishes a disk image.
    #[serde(skip_serializing_if = "Option::is_none")]
    disk: Option<u32>,
}

/// Renders each node template for each inventory node that boots `recipe_name`, so a missing
/// node variable fails the build, not the boot.
fn check_node_templates(
    templates: &BTreeMap<String, overlay::TemplateSource>,
    inv: &inventory::Inventory,
    recipe: &Recipe,
    recipe_name: &str,
    version: &str,
) -> Result<usize> {
    let mut n = 0;
    let mut nodes: Vec<(String, inventory::Node)> = inv
        .nodes
        .iter()
        .filter(|(_, node)| node.recipe == recipe_name)
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    if nodes.is_empty() && inv.defaults.recipe.as_deref() == Some(recipe_name) {
        // Unknown machines boot this recipe: they have a name and a MAC but no variables.
        nodes.push((
            "unknown-node".into(),
            inventory::Node {
                mac: "00:00:00:00:00:00".into(),
                recipe: recipe_name.into(),
                version: None,
                vars: BTreeMap::new(),
            },
        ));
    }
    // Secrets stay with the boot server: the build renders with a stand-in for each one a
    // template names, so everything else in the template is checked.
    let mut stand_ins = toml::Table::new();
    for t in templates.values() {
        for s in netboot::secrets::referenced(&t.text) {
            stand_ins.insert(s.clone(), toml::Value::String(format!("<secret {s}>")));
        }
    }
    for (name, node) in &nodes {
        #[derive(Serialize)]
        struct Ctx<'a> {
            #[serde(flatten)]
            vars: &'a BTreeMap<String, toml::Value>,
            ironbake: plan::ImageInfo,
            node: BTreeMap<String, toml::Value>,
        }
        let mut node_ctx = inventory::node_context(name, node);
        node_ctx.insert("secrets".into(), toml::Value::Table(stand_ins.clone()));
        let ctx = Ctx {
            vars: &recipe.variables,
            ironbake: plan::ImageInfo {
                recipe: recipe_name.into(),
                version: version.into(),
            },
            node: node_ctx,
        };
        for t in templates.values() {
            template::render(t, &ctx)
                .map_err(anyhow::Error::from)
                .with_context(|| format!("rendering for inventory node {name} (inventory.toml)"))?;
            n += 1;
        }
    }
    Ok(n)
}

/// An overlay's apt source as declared, with its overlay.
type OverlaySource<'a> = (Source, &'a Overlay, &'a overlay::AptSource);

fn resolve_sources<'a>(
    paths: &Paths,
    recipe: &Recipe,
    overlays: &'a [Overlay],
) -> Result<(Vec<Source>, Vec<OverlaySource<'a>>)> {
    let d = &recipe.debian;
    let mut main = match &d.mirror {
        Some(m) => {
            let mut v = vec![Source {
                origin: "recipe".into(),
                uri: m.trim_end_matches('/').into(),
                suite: d.suite.clone(),
                components: d.components.clone(),
            }];
            if let Some(sec) = &d.security_mirror {
                v.push(Source {
                    origin: "recipe".into(),
                    uri: sec.trim_end_matches('/').into(),
                    suite: format!("{}-security", d.suite),
                    components: d.components.clone(),
                });
            }
            v
        }
        None => apt::host_sources(&paths.etc_apt, &d.suite, &d.components)?,
    };
    main.retain(|s| !s.components.is_empty());
    let mut extra = Vec::new();
    for ov in overlays {
        for s in &ov.spec.apt_sources {
            extra.push((
                Source {
                    origin: ov.name.clone(),
                    uri: s.uri.trim_end_matches('/').into(),
                    suite: s.suite.clone(),
                    components: s.components.clone(),
                },
                ov,
                s,
            ));
        }
    }
    Ok((main, extra))
}

/// Choices made when a build is started.
#[derive(Debug, Clone, Default)]
pub struct BuildOptions {
    /// Overlays of the recipe to leave out of this build (`--without`), for example one whose
    /// repository cannot be reached from here. Recorded in the manifest.
    pub without: Vec<String>,
}

/// The overlays of `recipe` less those in `without`, each of which must be one of them.
pub fn kept_overlays(
    recipe_name: &str,
    overlays: &[String],
    without: &[String],
) -> Result<Vec<String>> {
    for w in without {
        if !overlays.contains(w) {
            bail!(
                "--without {w}: the recipe {recipe_name} has no overlay {w:?} (its overlays: {})",
                overlays.join(", ")
            );
        }
    }
    Ok(overlays
        .iter()
        .filter(|o| !without.contains(o))
        .cloned()
        .collect())
}

/// The kernel package: the recipe's, unless one overlay replaces it.
pub fn kernel_package(recipe: &Recipe, overlays: &[Overlay]) -> Result<String> {
    let replacing: Vec<&Overlay> = overlays
        .iter()
        .filter(|o| o.spec.kernel.is_some())
        .collect();
    match replacing.as_slice() {
        [] => Ok(recipe.kernel.package.clone()),
        [one] => Ok(one.spec.kernel.clone().expect("filtered")),
        many => bail!(
            "overlays {} each replace the kernel; a recipe can use one of them",
            many.iter()
                .map(|o| o.name.as_str())
                .collect::<Vec<_>>()
                .join(" and ")
        ),
    }
}

/// Everything a build is made from, resolved and pinned, before anything is built.
pub struct Prepared {
    /// The recipe.
    pub recipe: Recipe,
    /// sha256 of the recipe file.
    pub recipe_sha: String,
    /// The overlays in order.
    pub overlays: Vec<Overlay>,
    /// The package layer's inputs.
    pub base_spec: BaseSpec,
    /// Signing keys for overlay apt sources.
    pub keys: Vec<(String, PathBuf)>,
    /// Fetched artifacts.
    pub fetched: Vec<plan::FetchedArtifact>,
    /// SOURCE_DATE_EPOCH.
    pub epoch: u64,
    /// The digest of all inputs.
    pub inputs_sha256: String,
    /// The version to publish.
    pub version: String,
    /// The kernel package installed.
    pub kernel_package: String,
    /// The recipe's overlays that this build leaves out.
    pub left_out: Vec<String>,
}

/// Resolves and pins every input of `name`: recipe, overlays, apt sources, artifacts, version.
pub fn prepare(
    paths: &Paths,
    name: &str,
    options: &BuildOptions,
    progress: &Progress,
) -> Result<Prepared> {
    let stage = progress.stage("resolve recipe and overlays");
    let (recipe, recipe_text) = recipe::load(&paths.project, name)?;
    let recipe_sha = apt::sha256_hex(recipe_text.as_bytes());
    let mut left_out = options.without.clone();
    left_out.sort();
    left_out.dedup();
    let overlays = kept_overlays(name, &recipe.overlays, &left_out)?
        .iter()
        .map(|o| overlay::load(&paths.project, o))
        .collect::<Result<Vec<_>>>()?;
    let inv = inventory::load(&paths.project)?;
    let kernel_package = kernel_package(&recipe, &overlays)?;
    if left_out.is_empty() {
        stage.done(&format!("{} overlays", overlays.len()));
    } else {
        stage.done(&format!(
            "{} overlays; left out as asked: {}",
            overlays.len(),
            left_out.join(", ")
        ));
    }

    let stage = progress.stage("pin apt sources");
    let (main_sources, extra_sources) = resolve_sources(paths, &recipe, &overlays)?;
    let mut uses = Vec::new();
    let mut keys = Vec::new();
    let mut first_release = None;
    for s in &main_sources {
        let rel = apt::fetch_release(s, name)?;
        first_release.get_or_insert_with(|| rel.clone());
        uses.push(SourceUse {
            origin: s.origin.clone(),
            uri: s.uri.clone(),
            suite: s.suite.clone(),
            components: s.components.clone(),
            release_sha256: apt::sha256_hex(&rel),
            key: None,
        });
    }
    for (s, ov, declared) in &extra_sources {
        let rel = apt::fetch_release(s, name)?;
        let key_path = apt::resolve_key(name, &ov.name, &ov.dir, declared, &paths.cache)?;
        apt::verify_release(s, &rel, &key_path)?;
        let key_name = format!("{}-{}.{}", ov.name, declared.name, declared.key_extension());
        let key_bytes =
            fs::read(&key_path).with_context(|| format!("reading {}", key_path.display()))?;
        uses.push(SourceUse {
            origin: s.origin.clone(),
            uri: s.uri.clone(),
            suite: s.suite.clone(),
            components: s.components.clone(),
            release_sha256: apt::sha256_hex(&rel),
            key: Some((key_name.clone(), apt::sha256_hex(&key_bytes))),
        });
        keys.push((key_name, key_path));
    }
    let epoch = match std::env::var("SOURCE_DATE_EPOCH") {
        Ok(v) => v.trim().parse::<u64>().with_context(|| format!("SOURCE_DATE_EPOCH={v:?} is not a number of seconds"))?,
        Err(_) => match recipe.debian.source_date_epoch {
            Some(e) => e,
            None => first_release.as_deref().and_then(apt::release_date).context(
                "the suite's Release file has no readable Date:, so there is no default timestamp; \
                 set source-date-epoch under [debian] or SOURCE_DATE_EPOCH",
            )?,
        },
    };
    stage.done(&format!(
        "{} sources, SOURCE_DATE_EPOCH={epoch}",
        uses.len()
    ));

    let mut fetched = Vec::new();
    let n_artifacts: usize = overlays.iter().map(|o| o.spec.artifacts.len()).sum();
    if n_artifacts > 0 {
        let stage = progress.stage("fetch artifacts");
        for ov in &overlays {
            for a in &ov.spec.artifacts {
                stage.line(&format!("{} ({})", a.name, a.url));
                fetched.push(artifact::fetch(name, &ov.name, a, &paths.cache)?);
            }
        }
        stage.done(&format!("{n_artifacts} verified"));
    }

    let mut packages: Vec<String> = recipe.debian.packages.clone();
    packages.push(kernel_package.clone());
    if recipe.outputs.contains(&Output::Initramfs) {
        packages.push(initramfs::BUSYBOX_PACKAGE.into());
    }
    packages.extend(
        overlays
            .iter()
            .flat_map(|o| o.spec.packages.iter().cloned()),
    );
    packages.sort();
    packages.dedup();
    let base_spec = BaseSpec {
        revision: base::BASE_REVISION,
        suite: recipe.debian.suite.clone(),
        variant: recipe.debian.variant.to_string(),
        packages,
        sources: uses,
        slim: recipe.debian.slim,
        epoch,
        squashfs: recipe.squashfs.clone(),
    };
    let mut efi = BTreeMap::new();
    if recipe.outputs.contains(&Output::Disk) && !overlays.iter().any(|o| o.name == "disk-boot") {
        bail!(
            "recipes/{name}.toml: the \"disk\" output needs the \"disk-boot\" overlay in \
             `overlays` (it mounts the ESP and marks a slot good once the node is ready, which \
             the fallback between slots relies on)"
        );
    }
    if recipe.outputs.contains(&Output::Disk) {
        for p in [uki::STUB, disk_image::SYSTEMD_BOOT] {
            let (sha, _) = layout::sha256_file(Path::new(p)).with_context(|| {
                format!("reading {p} for the disk image (Debian package systemd-boot-efi)")
            })?;
            efi.insert(p.to_string(), sha);
        }
    }
    let digest_input = InputsDigest {
        builder: env!("CARGO_PKG_VERSION"),
        left_out: &left_out,
        recipe: name,
        recipe_sha256: &recipe_sha,
        base: base_spec.key(),
        overlays: overlays
            .iter()
            .map(|o| (o.name.as_str(), o.sha256.as_str()))
            .collect(),
        artifacts: fetched
            .iter()
            .map(|a| {
                (
                    a.overlay.as_str(),
                    a.spec.name.as_str(),
                    a.sha256.as_str(),
                    a.spec.dest.as_str(),
                    a.spec.mode.as_str(),
                )
            })
            .collect(),
        outputs: &recipe.outputs,
        initramfs: apt::sha256_hex(
            format!("{}{}", initramfs::INIT, initramfs::UDHCPC_SCRIPT).as_bytes(),
        ),
        efi: &efi,
        disk: recipe
            .outputs
            .contains(&Output::Disk)
            .then_some(disk::REVISION),
    };
    let inputs_sha256 = apt::sha256_hex(&serde_json::to_vec(&digest_input)?);
    let version = format!("{}-{}", recipe.version, &inputs_sha256[..10]);
    progress.println(&format!("      {name}@{version}"));

    // Render every template now, before the long steps, so a template error costs seconds.
    let ctx = plan::BuildContext {
        vars: recipe.variables.clone(),
        ironbake: plan::ImageInfo {
            recipe: name.into(),
            version: version.clone(),
        },
    };
    let mut node_templates = BTreeMap::new();
    for ov in &overlays {
        for t in &ov.templates {
            template::render(t, &ctx)?;
        }
        for t in &ov.node_templates {
            template::check_syntax(t)?;
            if netboot::secrets::uses_secrets(&t.text) && t.mode & 0o077 != 0 {
                bail!(
                    "{}: uses node.secrets but its file would be mode {:04o} in every node's \
                     settings; give it a mode only root can read: [permissions] \"{}\" = \
                     {{ mode = \"0600\" }} in overlays/{}/overlay.toml",
                    t.file,
                    t.mode,
                    t.dest,
                    ov.name
                );
            }
            node_templates.insert(t.dest.clone(), t.clone());
        }
    }
    let checked = check_node_templates(&node_templates, &inv, &recipe, name, &version)?;
    if checked > 0 {
        progress.println(&format!(
            "      {checked} node template renderings checked against inventory.toml"
        ));
    }
    Ok(Prepared {
        recipe,
        recipe_sha,
        overlays,
        base_spec,
        keys,
        fetched,
        epoch,
        inputs_sha256,
        version,
        kernel_package,
        left_out,
    })
}

/// Builds and publishes `name` with every overlay of its recipe.
pub fn build(paths: &Paths, name: &str, progress: &Progress) -> Result<Built> {
    build_with(paths, name, &BuildOptions::default(), progress)
}

/// Builds and publishes `name`.
pub fn build_with(
    paths: &Paths,
    name: &str,
    options: &BuildOptions,
    progress: &Progress,
) -> Result<Built> {
    let Prepared {
        recipe,
        recipe_sha,
        overlays,
        base_spec,
        keys,
        fetched,
        epoch,
        inputs_sha256,
        version,
        kernel_package,
        left_out,
    } = prepare(paths, name, options, progress)?;
    let existing = paths.out.join(name).join(&version);
    if existing.is_dir() {
        let manifest = layout::load_manifest(&existing)?;
        publish::set_current(&paths.out, name, &version)?;
        ipxe::publish(&paths.out)?;
        return Ok(Built {
            dir: existing,
            manifest,
            already_published: true,
            base_cached: true,
        });
    }
    publish::clean_stale(&paths.out)?;

    let base = base::ensure(&base_spec, &keys, &paths.cache, progress)?;
    if base.cached {
        progress.println(&format!(
            "      package layer: cached ({})",
            &base.info.key[..12]
        ));
    }

    let stage = progress.stage("plan overlay layer");
    let view = TreeView {
        root: base.rootfs(),
    };
    let plan = plan::resolve(&plan::Inputs {
        recipe_name: name,
        recipe: &recipe,
        version: &version,
        overlays: &overlays,
        artifacts: &fetched,
        base: &view,
        epoch,
    })?;
    stage.done(&format!("{} paths", plan.entries.len()));

    let staging = Staging::new(&paths.out, name, &version)?;
    let vdir = staging.version_dir();
    let mut known_digests: BTreeMap<String, (String, u64)> = BTreeMap::new();
    if recipe.outputs.contains(&Output::Rootfs) {
        let stage = progress.stage("mksquashfs overlay layer");
        let tree = staging.scratch("overlay");
        write_tree(&plan, &tree)?;
        base::mksquashfs(
            &tree,
            &vdir.join(OVERLAY_LAYER),
            &recipe.squashfs,
            epoch,
            &[],
            &stage,
        )?;
        stage.done("");
        link_or_copy(&base.squashfs(), &vdir.join(BASE_LAYER))?;
        known_digests.insert(
            BASE_LAYER.into(),
            (base.info.squashfs_sha256.clone(), base.info.squashfs_size),
        );
        for (dest, t) in &plan.node_templates {
            let p = vdir
                .join("node-templates")
                .join(format!("{}.j2", dest.trim_start_matches('/')));
            fs::create_dir_all(p.parent().expect("has parent"))?;
            write_synced(&p, t.text.as_bytes())?;
        }
    }
    if recipe.outputs.contains(&Output::Initramfs) {
        let stage = progress.stage("initramfs");
        let ird = initramfs::build(
            &view,
            &base.info.kernel_release,
            &recipe.initramfs.modules,
            &format!("{name}@{version}"),
            epoch,
        )?;
        write_synced(&vdir.join(INITRAMFS), &ird.bytes)?;
        if !ird.skipped.is_empty() {
            stage.line(&format!(
                "kernel {} lacks default drivers {}: left out",
                base.info.kernel_release,
                ird.skipped.join(", ")
            ));
        }
        stage.done(&format!(
            "{} modules, {:.1} MB ({:.1} MB unpacked)",
            ird.modules,
            ird.bytes.len() as f64 / 1e6,
            ird.uncompressed as f64 / 1e6
        ));
    }
    if recipe.outputs.contains(&Output::Kernel) {
        fs::copy(base.vmlinuz(), vdir.join("vmlinuz")).context("copying the kernel")?;
        write_synced(
            &vdir.join("cmdline"),
            format!("{}\n", plan.cmdline).as_bytes(),
        )?;
    }

    if recipe.outputs.contains(&Output::Disk) {
        let stage = progress.stage("disk image");
        let d = write_disk(
            &recipe,
            name,
            &version,
            &inputs_sha256,
            epoch,
            &plan.cmdline,
            &base.info.kernel_release,
            &vdir,
        )?;
        stage.done(&d);
    }

    let stage = progress.stage("manifest");
    let mut outputs = Vec::new();
    for path in layout::list_files(&vdir)? {
        let (sha256, size) = match known_digests.get(&path) {
            Some(d) => d.clone(),
            None => layout::sha256_file(&vdir.join(&path))?,
        };
        outputs.push(layout::OutputRecord { path, size, sha256 });
    }
    let manifest = Manifest {
        schema: layout::SCHEMA,
        recipe: name.into(),
        version: version.clone(),
        inputs_sha256,
        builder: env!("CARGO_PKG_VERSION").into(),
        source_date_epoch: epoch,
        recipe_file: layout::FileDigest {
            path: format!("recipes/{name}.toml"),
            sha256: recipe_sha,
        },
        debian: layout::DebianInputs {
            suite: base_spec.suite.clone(),
            variant: base_spec.variant.clone(),
            base_sha256: base.info.key.clone(),
            sources: base_spec
                .sources
                .iter()
                .map(|s| layout::SourceRecord {
                    origin: s.origin.clone(),
                    uri: s.uri.clone(),
                    suite: s.suite.clone(),
                    components: s.components.clone(),
                    release_sha256: s.release_sha256.clone(),
                    key_sha256: s.key.as_ref().map(|k| k.1.clone()),
                })
                .collect(),
        },
        left_out,
        overlays: overlays
            .iter()
            .map(|o| layout::OverlayInput {
                name: o.name.clone(),
                sha256: o.sha256.clone(),
            })
            .collect(),
        artifacts: fetched
            .iter()
            .map(|a| layout::ArtifactRecord {
                overlay: a.overlay.clone(),
                name: a.spec.name.clone(),
                url: a.spec.url.clone(),
                sha256_url: a.spec.sha256_url.clone(),
                sha256: a.sha256.clone(),
                dest: a.spec.dest.clone(),
            })
            .collect(),
        kernel: layout::KernelRecord {
            package: kernel_package,
            release: base.info.kernel_release.clone(),
            cmdline: plan.cmdline.clone(),
        },
        layers: if recipe.outputs.contains(&Output::Rootfs) {
            vec![BASE_LAYER.into(), OVERLAY_LAYER.into()]
        } else {
            vec![]
        },
        packages: base.info.packages.clone(),
        outputs,
        node_template_modes: plan
            .node_templates
            .values()
            .filter(|t| t.mode != 0o644)
            .map(|t| (t.dest.clone(), format!("{:04o}", t.mode)))
            .collect(),
        variables: recipe
            .variables
            .iter()
            .map(|(k, v)| Ok((k.clone(), serde_json::to_value(v)?)))
            .collect::<Result<_>>()?,
    };
    let mut json = serde_json::to_vec_pretty(&manifest)?;
    json.push(b'\n');
    write_synced(&vdir.join(layout::MANIFEST), &json)?;
    let sums = layout::sha256sums_text(&manifest.outputs, &apt::sha256_hex(&json));
    write_synced(&vdir.join(layout::SHA256SUMS), sums.as_bytes())?;
    stage.done(&format!(
        "{} outputs, {} packages",
        manifest.outputs.len(),
        manifest.packages.len()
    ));

    let stage = progress.stage("publish");
    let dir = staging.publish()?;
    ipxe::publish(&paths.out)?;
    stage.done(&format!("{}", dir.display()));
    Ok(Built {
        dir,
        manifest,
        already_published: false,
        base_cached: base.cached,
    })
}

/// Builds `disk.img` in the version folder from its kernel, initramfs and layers.
#[allow(clippy::too_many_arguments)]
fn write_disk(
    recipe: &Recipe,
    name: &str,
    version: &str,
    seed: &str,
    epoch: u64,
    cmdline: &str,
    kernel_release: &str,
    vdir: &Path,
) -> Result<String> {
    let read = |p: &Path| fs::read(p).with_context(|| format!("reading {}", p.display()));
    let base_len = fs::metadata(vdir.join(BASE_LAYER))?.len();
    let sizes = disk::Sizes {
        esp_mib: recipe.disk.esp_mib,
        base_mib: recipe
            .disk
            .base_mib
            .unwrap_or_else(|| disk::roomy_mib(base_len)),
        overlay_mib: recipe.disk.overlay_mib,
        data_mib: recipe.disk.data_mib,
    };
    let layout = disk::layout(&sizes, seed)?;
    let slot = 'a';
    let uki = disk::slot_uki(vdir, name, version, cmdline, kernel_release, slot, 1)?;
    let esp = [
        disk::EspFile {
            path: "EFI/BOOT/BOOTX64.EFI".into(),
            data: read(Path::new(disk_image::SYSTEMD_BOOT))?,
        },
        disk::EspFile {
            path: format!("EFI/Linux/{}", disk::UkiName::initial(name, slot).file()),
            data: uki,
        },
        disk::EspFile {
            path: "loader/loader.conf".into(),
            data: b"timeout 0\neditor no\n".to_vec(),
        },
    ];
    let dest = vdir.join(disk_image::FILE);
    disk::write(
        &dest,
        &layout,
        &disk::Contents {
            esp: &esp,
            slot_a: (&vdir.join(BASE_LAYER), &vdir.join(OVERLAY_LAYER)),
            copy_to_b: recipe.disk.slot_b == recipe::SlotB::Copy,
            epoch,
            seed,
        },
    )?;
    Ok(format!(
        "{} MiB, {} partitions, slot {slot} booting",
        layout.size >> 20,
        layout.parts.len()
    ))
}

fn write_synced(path: &Path, bytes: &[u8]) -> Result<()> {
    let mut f = fs::File::create(path).with_context(|| format!("creating {}", path.display()))?;
    f.write_all(bytes)?;
    f.sync_all()?;
    Ok(())
}

fn link_or_copy(from: &Path, to: &Path) -> Result<()> {
    if fs::hard_link(from, to).is_err() {
        fs::copy(from, to)
            .with_context(|| format!("copying {} to {}", from.display(), to.display()))?;
        fs::File::open(to)?.sync_all()?;
    }
    Ok(())
}

/// Writes the plan's entries under `dir` with their modes and owners (the build runs as root).
pub fn write_tree(plan: &Plan, dir: &Path) -> Result<()> {
    fs::create_dir_all(dir)?;
    fs::set_permissions(dir, fs::Permissions::from_mode(0o755))?;
    for (path, e) in &plan.entries {
        let p = dir.join(path.trim_start_matches('/'));
        match &e.kind {
            Kind::Dir => {
                fs::create_dir(&p).with_context(|| format!("creating {}", p.display()))?;
            }
            Kind::File(Data::Bytes(b)) => {
                fs::write(&p, b).with_context(|| format!("writing {}", p.display()))?
            }
            Kind::File(Data::Path(src)) => {
                fs::copy(src, &p)
                    .with_context(|| format!("copying {} to {}", src.display(), p.display()))?;
            }
            Kind::Symlink(t) => {
                symlink(t, &p).with_context(|| format!("linking {}", p.display()))?
            }
        }
        if !matches!(e.kind, Kind::Symlink(_)) {
            fs::set_permissions(&p, fs::Permissions::from_mode(e.mode))?;
        }
        lchown(&p, Some(e.uid), Some(e.gid))
            .with_context(|| format!("setting the owner of {path} (the build needs root)"))?;
    }
    Ok(())
}

/// Fails unless this process may build images (mmdebstrap's root mode, chown).
pub fn require_root() -> Result<()> {
    if !crate::host::is_root() {
        bail!(
            "building images needs root (mmdebstrap's root mode and file owners in the image): run it as root or with sudo"
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn without_leaves_out_only_overlays_the_recipe_has() {
        let all: Vec<String> = ["base", "infiniband", "proxmox-kernel"]
            .map(String::from)
            .to_vec();
        assert_eq!(
            kept_overlays("core-node", &all, &["proxmox-kernel".into()]).unwrap(),
            ["base", "infiniband"]
        );
        assert_eq!(kept_overlays("core-node", &all, &[]).unwrap(), all);
        let err = kept_overlays("core-node", &all, &["k3s".into()]).unwrap_err();
        assert_eq!(
            err.to_string(),
            "--without k3s: the recipe core-node has no overlay \"k3s\" \
             (its overlays: base, infiniband, proxmox-kernel)"
        );
    }

    #[test]
    fn one_overlay_at_most_replaces_the_kernel() {
        let (recipe, _) = recipe::load(&crate::cli::project_root(), "core-node").unwrap();
        let root = crate::cli::project_root();
        let overlays: Vec<Overlay> = ["base", "infiniband", "proxmox-kernel"]
            .iter()
            .map(|o| overlay::load(&root, o).unwrap())
            .collect();
        assert_eq!(
            kernel_package(&recipe, &overlays).unwrap(),
            "proxmox-default-kernel"
        );
        assert_eq!(
            kernel_package(&recipe, &overlays[..2]).unwrap(),
            "linux-image-amd64",
            "without the overlay, the recipe's kernel"
        );
        let mut twice = overlays.clone();
        let mut other = overlays[2].clone();
        other.name = "other-kernel".into();
        twice.push(other);
        let err = kernel_package(&recipe, &twice).unwrap_err().to_string();
        assert!(
            err.contains("proxmox-kernel and other-kernel each replace the kernel"),
            "{err}"
        );
    }
}
