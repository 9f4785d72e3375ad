//! Unified kernel images: systemd's EFI stub with the kernel, the initramfs, the command line
//! and os-release appended as PE sections, as the UAPI Unified Kernel Image specification
//! lays out (`.osrel`, `.cmdline`, `.uname`, `.initrd`, `.linux` last). Hand-written and small:
//! the stub's headers are read, new section headers go in the room before its first section,
//! and each section's data is appended at the file alignment.

use anyhow::{Result, bail, ensure};

/// Debian's stub (package `systemd-boot-efi`).
pub const STUB: &str = "/usr/lib/systemd/boot/efi/linuxx64.efi.stub";

/// `IMAGE_SCN_CNT_INITIALIZED_DATA | IMAGE_SCN_MEM_READ`.
const DATA_READ: u32 = 0x4000_0040;

/// What goes into a UKI besides the stub.
#[derive(Debug, Clone)]
pub struct Parts<'a> {
    /// The os-release text.
    pub osrel: &'a [u8],
    /// The kernel command line.
    pub cmdline: &'a [u8],
    /// The kernel release (`uname -r`).
    pub uname: &'a [u8],
    /// The initramfs.
    pub initrd: &'a [u8],
    /// The kernel image.
    pub linux: &'a [u8],
}

fn u16_at(b: &[u8], at: usize) -> Result<u16> {
    b.get(at..at + 2)
        .map(|s| u16::from_le_bytes([s[0], s[1]]))
        .ok_or_else(|| anyhow::anyhow!("the stub is truncated at offset {at}"))
}

fn u32_at(b: &[u8], at: usize) -> Result<u32> {
    b.get(at..at + 4)
        .map(|s| u32::from_le_bytes([s[0], s[1], s[2], s[3]]))
        .ok_or_else(|| anyhow::anyhow!("the stub is truncated at offset {at}"))
}

fn put_u16(b: &mut [u8], at: usize, v: u16) {
    b[at..at + 2].copy_from_slice(&v.to_le_bytes());
}

fn put_u32(b: &mut [u8], at: usize, v: u32) {
    b[at..at + 4].copy_from_slice(&v.to_le_bytes());
}

fn align(v: u64, to: u64) -> u64 {
    v.div_ceil(to) * to
}

/// One section header as read from a PE file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Section {
    /// The name, NULs trimmed.
    pub name: String,
    /// VirtualSize.
    pub virtual_size: u32,
    /// VirtualAddress.
    pub virtual_address: u32,
    /// SizeOfRawData.
    pub raw_size: u32,
    /// PointerToRawData.
    pub raw_pointer: u32,
}

/// The headers of a PE32+ image that the assembler needs.
#[derive(Debug, Clone)]
pub struct Headers {
    coff: usize,
    opt: usize,
    table: usize,
    /// SectionAlignment.
    pub section_alignment: u32,
    /// FileAlignment.
    pub file_alignment: u32,
    /// The sections.
    pub sections: Vec<Section>,
}

/// Reads the PE32+ headers of `pe`.
pub fn headers(pe: &[u8]) -> Result<Headers> {
    ensure!(pe.get(..2) == Some(b"MZ"), "not a PE image (no MZ header)");
    let lfanew = u32_at(pe, 0x3c)? as usize;
    ensure!(
        pe.get(lfanew..lfanew + 4) == Some(b"PE\0\0"),
        "not a PE image (no PE signature at {lfanew:#x})"
    );
    let coff = lfanew + 4;
    let n = u16_at(pe, coff + 2)? as usize;
    let opt_size = u16_at(pe, coff + 16)? as usize;
    let opt = coff + 20;
    ensure!(
        u16_at(pe, opt)? == 0x20b,
        "not a PE32+ (64-bit) image: this stub cannot carry an x86-64 kernel"
    );
    let table = opt + opt_size;
    let mut sections = Vec::with_capacity(n);
    for i in 0..n {
        let h = table + 40 * i;
        let raw_name = pe
            .get(h..h + 8)
            .ok_or_else(|| anyhow::anyhow!("the section table is truncated"))?;
        sections.push(Section {
            name: String::from_utf8_lossy(raw_name)
                .trim_end_matches('\0')
                .to_string(),
            virtual_size: u32_at(pe, h + 8)?,
            virtual_address: u32_at(pe, h + 12)?,
            raw_size: u32_at(pe, h + 16)?,
            raw_pointer: u32_at(pe, h + 20)?,
        });
    }
    Ok(Headers {
        coff,
        opt,
        table,
        section_alignment: u32_at(pe, opt + 32)?,
        file_alignment: u32_at(pe, opt + 36)?,
        sections,
    })
}

/// Appends section `name` with `data` at the end of `out`, padded to the file alignment `fa`,
/// at virtual address `va`, and writes its header at offset `header`.
fn append_section(
    out: &mut Vec<u8>,
    header: usize,
    name: &str,
    data: &[u8],
    va: u64,
    fa: u64,
) -> Result<()> {
    let raw = out.len() as u64;
    let raw_size = align(data.len() as u64, fa);
    ensure!(
        va + raw_size < u64::from(u32::MAX),
        "{name} does not fit in a PE image"
    );
    out.extend_from_slice(data);
    out.resize((raw + raw_size) as usize, 0);
    let at = header;
    let mut name8 = [0u8; 8];
    name8[..name.len()].copy_from_slice(name.as_bytes());
    out[at..at + 8].copy_from_slice(&name8);
    put_u32(out, at + 8, data.len() as u32);
    put_u32(out, at + 12, va as u32);
    put_u32(out, at + 16, raw_size as u32);
    put_u32(out, at + 20, raw as u32);
    out[at + 24..at + 36].fill(0);
    put_u32(out, at + 36, DATA_READ);
    Ok(())
}

/// Assembles a UKI from `stub` and `parts`.
pub fn assemble(stub: &[u8], parts: &Parts<'_>) -> Result<Vec<u8>> {
    let h = headers(stub)?;
    for s in &h.sections {
        if [".osrel", ".cmdline", ".uname", ".initrd", ".linux"].contains(&s.name.as_str()) {
            bail!(
                "the stub already has a {} section: is it a UKI already?",
                s.name
            );
        }
    }
    let new: [(&str, &[u8]); 5] = [
        (".osrel", parts.osrel),
        (".cmdline", parts.cmdline),
        (".uname", parts.uname),
        (".initrd", parts.initrd),
        (".linux", parts.linux),
    ];
    let first_raw = h
        .sections
        .iter()
        .filter(|s| s.raw_size > 0)
        .map(|s| s.raw_pointer as usize)
        .min()
        .unwrap_or(stub.len());
    let table_end = h.table + 40 * (h.sections.len() + new.len());
    ensure!(
        table_end <= first_raw,
        "the stub has no room for {} more section headers ({table_end} > {first_raw})",
        new.len()
    );
    let (sa, fa) = (u64::from(h.section_alignment), u64::from(h.file_alignment));
    ensure!(
        sa.is_power_of_two() && fa.is_power_of_two(),
        "the stub's alignments are not powers of two"
    );
    let mut out = stub.to_vec();
    let raw_end = h
        .sections
        .iter()
        .map(|s| u64::from(s.raw_pointer) + u64::from(s.raw_size))
        .max()
        .unwrap_or(0)
        .max(out.len() as u64);
    out.resize(align(raw_end, fa) as usize, 0);
    let mut va = h
        .sections
        .iter()
        .map(|s| u64::from(s.virtual_address) + u64::from(s.virtual_size.max(s.raw_size)))
        .max()
        .unwrap_or(0);
    for (i, (name, data)) in new.iter().enumerate() {
        va = align(va, sa);
        let header = h.table + 40 * (h.sections.len() + i);
        append_section(&mut out, header, name, data, va, fa)?;
        va += data.len() as u64;
    }
    put_u16(&mut out, h.coff + 2, (h.sections.len() + new.len()) as u16);
    // SizeOfImage covers every section; SizeOfInitializedData grows by what was added; the
    // checksum is not used by UEFI firmware and would be stale: zero it.
    put_u32(&mut out, h.opt + 56, align(va, sa) as u32);
    let init = u32_at(&out, h.opt + 8)?;
    let added: u64 = new.iter().map(|(_, d)| align(d.len() as u64, fa)).sum();
    put_u32(&mut out, h.opt + 8, init.saturating_add(added as u32));
    put_u32(&mut out, h.opt + 64, 0);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A minimal PE32+ image: headers in 0x400 bytes, one `.text` section of 0x10 bytes.
    fn tiny_pe() -> Vec<u8> {
        let mut b = vec![0u8; 0x600];
        b[..2].copy_from_slice(b"MZ");
        put_u32(&mut b, 0x3c, 0x80);
        b[0x80..0x84].copy_from_slice(b"PE\0\0");
        let coff = 0x84;
        put_u16(&mut b, coff, 0x8664);
        put_u16(&mut b, coff + 2, 1);
        put_u16(&mut b, coff + 16, 240);
        let opt = coff + 20;
        put_u16(&mut b, opt, 0x20b);
        put_u32(&mut b, opt + 32, 0x1000);
        put_u32(&mut b, opt + 36, 0x200);
        put_u32(&mut b, opt + 56, 0x2000);
        let t = opt + 240;
        b[t..t + 5].copy_from_slice(b".text");
        put_u32(&mut b, t + 8, 0x10);
        put_u32(&mut b, t + 12, 0x1000);
        put_u32(&mut b, t + 16, 0x200);
        put_u32(&mut b, t + 20, 0x400);
        b
    }

    #[test]
    fn sections_are_appended_aligned_with_linux_last() {
        let parts = Parts {
            osrel: b"ID=debian\n",
            cmdline: b"console=ttyS0",
            uname: b"6.1.0-test",
            initrd: &[7u8; 0x300],
            linux: &[9u8; 0x1234],
        };
        let uki = assemble(&tiny_pe(), &parts).unwrap();
        let h = headers(&uki).unwrap();
        let names: Vec<&str> = h.sections.iter().map(|s| s.name.as_str()).collect();
        assert_eq!(
            names,
            [".text", ".osrel", ".cmdline", ".uname", ".initrd", ".linux"]
        );
        let mut last_end = 0x1010u64;
        for s in &h.sections[1..] {
            assert_eq!(s.virtual_address % 0x1000, 0, "{s:?}");
            assert_eq!(s.raw_pointer % 0x200, 0, "{s:?}");
            assert!(u64::from(s.virtual_address) >= last_end, "{s:?} overlaps");
            last_end = u64::from(s.virtual_address) + u64::from(s.virtual_size);
            let data = &uki[s.raw_pointer as usize..][..s.virtual_size as usize];
            let want: &[u8] = match s.name.as_str() {
                ".osrel" => parts.osrel,
                ".cmdline" => parts.cmdline,
                ".uname" => parts.uname,
                ".initrd" => parts.initrd,
                _ => parts.linux,
            };
            assert_eq!(data, want, "{}", s.name);
        }
        let size_of_image = u32_at(&uki, h.opt + 56).unwrap();
        assert_eq!(u64::from(size_of_image), align(last_end, 0x1000));
        assert_eq!(uki.len() % 0x200, 0);
        assert_eq!(assemble(&tiny_pe(), &parts).unwrap(), uki, "deterministic");
    }

    #[test]
    fn a_stub_without_room_or_a_uki_is_refused() {
        let parts = Parts {
            osrel: b"",
            cmdline: b"",
            uname: b"",
            initrd: b"",
            linux: b"x",
        };
        let uki = assemble(&tiny_pe(), &parts).unwrap();
        let err = assemble(&uki, &parts).unwrap_err().to_string();
        assert!(err.contains("UKI already"), "{err}");
        let mut cramped = tiny_pe();
        let t = 0x84 + 20 + 240;
        put_u32(&mut cramped, t + 20, (t + 80) as u32);
        let err = assemble(&cramped, &parts).unwrap_err().to_string();
        assert!(err.contains("no room"), "{err}");
        assert!(headers(b"not a pe").is_err());
    }
}
