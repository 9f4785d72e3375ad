//! A/B slots: the UKI of each slot, its name (generation, slot, boot counter), and
//! `disk update`, which writes the inactive slot and makes it the next boot.

use std::fs;
use std::io::Write;
use std::path::Path;

use anyhow::{Context, Result};

use super::esp::edit_esp;
use super::image::{read_layout, write_raw};
use super::layout::{Part, slot_label};

/// The name of a slot's UKI under `EFI/Linux/`: `RECIPE-GENERATION-SLOT[+LEFT[-DONE]].efi`.
/// The generation grows by one with each update, so systemd-boot, which lists the newest
/// version first, offers the latest slot first; `+LEFT` is systemd-boot's boot counter (tries
/// left, tries done), absent on an entry known to be good.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UkiName {
    /// The recipe.
    pub recipe: String,
    /// The generation: 1 for a new disk, one more for each update.
    pub generation: u64,
    /// `a` or `b`.
    pub slot: char,
    /// Boot counting: (tries left, tries done).
    pub tries: Option<(u32, u32)>,
}

/// How many boots an updated slot gets to reach ready before systemd-boot falls back.
pub const TRIES: u32 = 3;

impl UkiName {
    /// The entry of a new disk's slot: generation 1, known good.
    pub fn initial(recipe: &str, slot: char) -> UkiName {
        UkiName {
            recipe: recipe.into(),
            generation: 1,
            slot,
            tries: None,
        }
    }

    /// Its file name.
    pub fn file(&self) -> String {
        // Always the full `+LEFT-DONE` form (the spec also allows `+LEFT`), so the name keeps
        // its length as systemd-boot renames it at each counted boot.
        let tries = match self.tries {
            None => String::new(),
            Some((left, done)) => format!("+{left}-{done}"),
        };
        format!(
            "{}-{}-{}{tries}.efi",
            self.recipe, self.generation, self.slot
        )
    }

    /// Parses a file name; `None` for files that are not ironbake's.
    pub fn parse(file: &str) -> Option<UkiName> {
        let stem = file.strip_suffix(".efi")?;
        let (stem, tries) = match stem.split_once('+') {
            None => (stem, None),
            Some((s, t)) => {
                let (left, done) = t.split_once('-').unwrap_or((t, "0"));
                (s, Some((left.parse().ok()?, done.parse().ok()?)))
            }
        };
        let (rest, slot) = stem.rsplit_once('-')?;
        let slot = match slot {
            "a" => 'a',
            "b" => 'b',
            _ => return None,
        };
        let (recipe, generation) = rest.rsplit_once('-')?;
        Some(UkiName {
            recipe: recipe.into(),
            generation: generation.parse().ok()?,
            slot,
            tries,
        })
    }
}

/// The os-release a UKI carries: systemd-boot orders entries by `IMAGE_VERSION`, newest first,
/// so it is the generation; the published version is there for people.
pub fn uki_osrel(recipe: &str, version: &str, slot: char, generation: u64) -> String {
    format!(
        "ID=debian\nNAME=\"ironbake {recipe}\"\nIMAGE_ID={recipe}\nIMAGE_VERSION={generation}\n\
         VERSION=\"{version}\"\nPRETTY_NAME=\"{recipe} {version} (slot {slot}, generation \
         {generation})\"\n"
    )
}

/// What a slot boots: a published version, as its UKI names it.
#[derive(Debug, Clone, Copy)]
pub struct SlotVersion<'a> {
    /// The recipe.
    pub recipe: &'a str,
    /// The published version.
    pub version: &'a str,
    /// The version's kernel command line.
    pub cmdline: &'a str,
    /// Its kernel release (`uname -r`).
    pub kernel_release: &'a str,
}

/// The UKI that boots a published version (its folder `vdir`) from `slot`: Debian's stub with
/// the version's kernel and initramfs, and a command line that names the slot's partitions.
pub fn slot_uki(vdir: &Path, v: &SlotVersion<'_>, slot: char, generation: u64) -> Result<Vec<u8>> {
    let read = |p: &Path| fs::read(p).with_context(|| format!("reading {}", p.display()));
    let cmdline = format!(
        "{} ironbake.root=partlabel:{},partlabel:{} ironbake.slot={slot}",
        v.cmdline.trim(),
        slot_label("base", slot),
        slot_label("overlay", slot)
    );
    let osrel = uki_osrel(v.recipe, v.version, slot, generation);
    super::uki::assemble(
        &read(Path::new(super::uki::STUB))?,
        &super::uki::Parts {
            osrel: osrel.as_bytes(),
            cmdline: cmdline.as_bytes(),
            uname: v.kernel_release.as_bytes(),
            initrd: &read(&vdir.join("initrd.img"))?,
            linux: &read(&vdir.join("vmlinuz"))?,
        },
    )
    .context("assembling the unified kernel image")
}

/// What [`update`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Updated {
    /// The slot written.
    pub slot: char,
    /// The new entry's file name.
    pub entry: String,
    /// Entries removed from that slot.
    pub removed: Vec<String>,
}

/// Writes a published version (folder `vdir`) into the inactive slot of the disk or image at
/// `target` and makes it the next boot, with [`TRIES`] boots to reach ready before
/// systemd-boot falls back to the other slot. The active slot is the one of the newest entry;
/// its partitions and entry are not touched.
pub fn update(target: &Path, vdir: &Path, m: &netboot::layout::Manifest) -> Result<Updated> {
    let mut disk = fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(target)
        .with_context(|| format!("opening {}", target.display()))?;
    let layout = read_layout(target)?;
    let part = |label: &str| -> Result<Part> {
        layout.part(label).cloned().with_context(|| {
            format!(
                "{}: no partition labelled {label}: not an ironbake disk",
                target.display()
            )
        })
    };
    let esp = part("ESP")?;
    let esp = (esp.offset(), esp.offset() + esp.bytes());
    let entries = read_entries(&mut disk, esp)?;
    let newest = entries.iter().max_by_key(|e| e.generation);
    let slot = match newest {
        Some(n) if n.slot == 'a' => 'b',
        _ => 'a',
    };
    let name = UkiName {
        recipe: m.recipe.clone(),
        generation: newest.map_or(1, |n| n.generation + 1),
        slot,
        tries: Some((TRIES, 0)),
    };
    // The layers first: until the entry is written, the slot is not booted.
    for (layer, file) in [("base", "base.squashfs"), ("overlay", "overlay.squashfs")] {
        write_raw(
            &mut disk,
            &part(&slot_label(layer, slot))?,
            &vdir.join(file),
        )?;
    }
    disk.sync_all()?;
    let cmdline =
        fs::read_to_string(vdir.join("cmdline")).context("reading the version's cmdline")?;
    let version = SlotVersion {
        recipe: &m.recipe,
        version: &m.version,
        cmdline: &cmdline,
        kernel_release: &m.kernel.release,
    };
    let image = slot_uki(vdir, &version, slot, name.generation)?;
    let removed = edit_esp(&mut disk, esp, m.source_date_epoch, |root| {
        replace_entries(&root.open_dir("EFI/Linux")?, &entries, &name, &image)
    })?;
    Ok(Updated {
        slot,
        entry: name.file(),
        removed,
    })
}

/// The ironbake entries under `EFI/Linux/` of the ESP at byte range `esp`.
fn read_entries(disk: &mut fs::File, esp: (u64, u64)) -> Result<Vec<UkiName>> {
    let slice = fscommon::StreamSlice::new(disk, esp.0, esp.1)?;
    let fs = fatfs::FileSystem::new(slice, fatfs::FsOptions::new()).context("reading the ESP")?;
    let dir = fs
        .root_dir()
        .open_dir("EFI/Linux")
        .context("the ESP has no EFI/Linux folder: not an ironbake disk")?;
    let mut v = Vec::new();
    for e in dir.iter() {
        if let Some(n) = UkiName::parse(&e?.file_name()) {
            v.push(n);
        }
    }
    Ok(v)
}

/// Removes the entries of `name`'s slot from `dir` and writes `image` as `name`; returns the
/// names removed.
fn replace_entries<T: fatfs::ReadWriteSeek>(
    dir: &fatfs::Dir<'_, T>,
    entries: &[UkiName],
    name: &UkiName,
    image: &[u8],
) -> Result<Vec<String>> {
    let mut removed = Vec::new();
    for e in entries.iter().filter(|e| e.slot == name.slot) {
        dir.remove(&e.file())
            .with_context(|| format!("removing EFI/Linux/{}", e.file()))?;
        removed.push(e.file());
    }
    let mut f = dir.create_file(&name.file())?;
    f.truncate()?;
    f.write_all(image)
        .with_context(|| format!("writing EFI/Linux/{} ({} bytes)", name.file(), image.len()))?;
    f.flush()?;
    Ok(removed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uki_names_carry_generation_slot_and_boot_counter() {
        let first = UkiName::initial("core-node", 'a');
        assert_eq!(first.file(), "core-node-1-a.efi");
        assert_eq!(UkiName::parse("core-node-1-a.efi"), Some(first));
        let counted = UkiName::parse("core-node-12-b+2-1.efi").unwrap();
        assert_eq!(
            (counted.generation, counted.slot, counted.tries),
            (12, 'b', Some((2, 1)))
        );
        assert_eq!(counted.file(), "core-node-12-b+2-1.efi");
        let short = UkiName::parse("core-node-3-a+3.efi").unwrap();
        assert_eq!(short.tries, Some((3, 0)));
        assert_eq!(
            short.file(),
            "core-node-3-a+3-0.efi",
            "written with both counts"
        );
        for not_ours in [
            "linux.efi",
            "core-node-x-a.efi",
            "core-node-1-c.efi",
            "a-1-a.conf",
        ] {
            assert_eq!(UkiName::parse(not_ours), None, "{not_ours}");
        }
    }
}
