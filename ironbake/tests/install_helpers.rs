//! The first stage's install mode (`install.sh`) does byte-exact work in busybox sh: moving a
//! GPT's backup to the disk's end (with the header CRCs), signing its report to the boot server
//! (HMAC-SHA256), and the firmware's boot entry (an EFI_LOAD_OPTION). These tests run those
//! helpers under the build host's busybox against files, and check them against independent
//! implementations: the disk commands' own table code (gptman), the server's verifier, and a
//! load option built here field by field from the UEFI specification.

mod common;

use std::path::Path;
use std::process::Command;

use ironbake::disk;

const INSTALL_SH: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/src/initramfs/install.sh");

/// Runs `script` under busybox sh with install.sh sourced and `args` as $1...; its stdout.
fn sh(dir: &Path, script: &str, args: &[&str]) -> Vec<u8> {
    let o = Command::new("busybox")
        .arg("sh")
        .arg("-c")
        .arg(format!(". {INSTALL_SH} && {script}"))
        .arg("sh")
        .args(args)
        .env("IRONBAKE_TMP", dir)
        .output()
        .expect("running busybox sh");
    assert!(
        o.status.success(),
        "{script}: {}\n{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    o.stdout
}

#[test]
fn the_backup_table_moves_to_the_disk_end_as_the_disk_commands_move_it() {
    if !common::require(&["busybox"]) {
        return;
    }
    let t = common::scratch("install-gpt");
    let sizes = disk::layout::Sizes {
        esp_mib: 64,
        base_mib: 1,
        overlay_mib: 1,
        data_mib: 0,
    };
    let layout = disk::layout::layout(&sizes, "seed").unwrap();
    let base = t.path().join("base");
    let overlay = t.path().join("overlay");
    std::fs::write(&base, vec![7u8; 4096]).unwrap();
    std::fs::write(&overlay, vec![9u8; 4096]).unwrap();
    let image = t.path().join("disk.img");
    disk::write(
        &image,
        &layout,
        &disk::Contents {
            esp: &[disk::EspFile {
                path: "EFI/BOOT/BOOTX64.EFI".into(),
                data: b"a boot loader".to_vec(),
            }],
            slot_a: (&base, &overlay),
            copy_to_b: false,
            epoch: 1,
            seed: "seed",
        },
    )
    .unwrap();
    // Two disks 8 MiB (and a sector) larger than the image, the image at their start.
    let grown = layout.size + (8 << 20) + 512;
    let sectors = grown / 512;
    let by_rust = t.path().join("rust.disk");
    let by_shell = t.path().join("shell.disk");
    for d in [&by_rust, &by_shell] {
        std::fs::copy(&image, d).unwrap();
        std::fs::OpenOptions::new()
            .write(true)
            .open(d)
            .unwrap()
            .set_len(grown)
            .unwrap();
    }
    disk::flash::move_backup_table(&by_rust, layout.size).unwrap();
    sh(
        t.path(),
        "gpt_move_backup \"$1\" \"$2\"",
        &[by_shell.to_str().unwrap(), &sectors.to_string()],
    );
    let rust = std::fs::read(&by_rust).unwrap();
    let mut shell = std::fs::read(&by_shell).unwrap();
    // The first stage also makes the protective MBR's partition cover the whole disk.
    let pmbr = u32::from_le_bytes(shell[458..462].try_into().unwrap());
    assert_eq!(u64::from(pmbr), sectors - 1);
    shell[458..462].copy_from_slice(&rust[458..462]);
    let differ = rust
        .chunks(512)
        .zip(shell.chunks(512))
        .enumerate()
        .filter(|(_, (a, b))| a != b)
        .map(|(i, _)| i)
        .collect::<Vec<_>>();
    assert!(differ.is_empty(), "sectors that differ: {differ:?}");
    // And the table reads back, partitions and all, with the backup at the last sector.
    let gpt = gptman::GPT::read_from(&mut std::fs::File::open(&by_shell).unwrap(), 512).unwrap();
    assert_eq!(gpt.header.backup_lba, sectors - 1);
    assert_eq!(gpt[1].partition_name.as_str(), "ESP");
    // A disk the image already fills is left as it is.
    let before = std::fs::read(&image).unwrap();
    sh(
        t.path(),
        "gpt_move_backup \"$1\" \"$2\"",
        &[image.to_str().unwrap(), &(layout.size / 512).to_string()],
    );
    assert!(std::fs::read(&image).unwrap() == before);
}

#[test]
fn the_install_report_is_signed_as_the_server_verifies() {
    if !common::require(&["busybox"]) {
        return;
    }
    let t = common::scratch("install-hmac");
    let body = t.path().join("message");
    std::fs::write(
        &body,
        "node=d0\nnonce=abc\nkind=installed\ndisk=/dev/vda (serial x, 8 GiB)\n",
    )
    .unwrap();
    // A node key (64 hex digits, as the server makes them), a short key, and an empty body.
    for key in [&"5a".repeat(32), "k"] {
        let got = sh(
            t.path(),
            "hmac_sha256 \"$1\" \"$2\"",
            &[key, body.to_str().unwrap()],
        );
        let want = netboot::fleet::auth::sign(key.as_bytes(), &std::fs::read(&body).unwrap());
        assert_eq!(String::from_utf8(got).unwrap().trim(), want, "key {key}");
        assert!(netboot::fleet::auth::verify(
            key.as_bytes(),
            &std::fs::read(&body).unwrap(),
            &want
        ));
    }
    // A key longer than HMAC's block is refused rather than signed wrongly.
    let o = Command::new("busybox")
        .args(["sh", "-c"])
        .arg(format!(". {INSTALL_SH} && hmac_sha256 \"$1\" \"$2\""))
        .arg("sh")
        .arg("k".repeat(65))
        .arg(&body)
        .output()
        .unwrap();
    assert!(!o.status.success());
}

#[test]
fn the_boot_entry_is_the_load_option_the_uefi_specification_lays_out() {
    if !common::require(&["busybox"]) {
        return;
    }
    let t = common::scratch("install-efi");
    let guid: Vec<u8> = (1..=16).collect();
    let guid_file = t.path().join("guid");
    std::fs::write(&guid_file, &guid).unwrap();
    let got = sh(
        t.path(),
        "boot_option 1 2048 131072 \"$1\"",
        &[guid_file.to_str().unwrap()],
    );
    let utf16 = |s: &str| -> Vec<u8> {
        s.encode_utf16()
            .chain([0])
            .flat_map(|c| c.to_le_bytes())
            .collect()
    };
    let loader = utf16("\\EFI\\BOOT\\BOOTX64.EFI");
    let mut path = vec![4u8, 1, 42, 0]; // media, hard drive, length 42
    path.extend(1u32.to_le_bytes());
    path.extend(2048u64.to_le_bytes());
    path.extend(131072u64.to_le_bytes());
    path.extend(&guid);
    path.extend([2, 2]); // GPT, GUID signature
    path.extend([4, 4]); // media, file path
    path.extend(((4 + loader.len()) as u16).to_le_bytes());
    path.extend(&loader);
    path.extend([0x7f, 0xff, 4, 0]);
    let mut want = 7u32.to_le_bytes().to_vec(); // efivarfs: NV | BS | RT
    want.extend(1u32.to_le_bytes()); // LOAD_OPTION_ACTIVE
    want.extend((path.len() as u16).to_le_bytes());
    want.extend(utf16("ironbake"));
    want.extend(path);
    assert_eq!(got, want);
}
