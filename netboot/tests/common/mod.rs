//! What the server tests share: a published version written by hand.

use std::path::Path;

use netboot::layout;

/// Writes the test manifest's version under `root` (small files, a node template), with its
/// `SHA256SUMS` and `current`; `(recipe, version)`.
pub fn write_version(root: &Path) -> (String, String) {
    let mut m = layout::parse_manifest(include_str!("../data/manifest.json")).unwrap();
    let vdir = root.join(&m.recipe).join(&m.version);
    std::fs::create_dir_all(vdir.join("node-templates/etc")).unwrap();
    let files: Vec<(&str, Vec<u8>)> = vec![
        ("vmlinuz", vec![1u8; 5000]),
        ("initrd.img", vec![2u8; 4001]),
        (
            "base.squashfs",
            (0..200_000u32).map(|i| (i % 251) as u8).collect(),
        ),
        ("overlay.squashfs", vec![3u8; 4096]),
        (
            "node-templates/etc/hostname.j2",
            b"{{ node.name }} {{ site }} {{ node.rack }}\n".to_vec(),
        ),
    ];
    m.outputs.clear();
    for (name, data) in &files {
        std::fs::write(vdir.join(name), data).unwrap();
        let (sha256, size) = layout::sha256_file(&vdir.join(name)).unwrap();
        m.outputs.push(layout::OutputRecord {
            path: name.to_string(),
            size,
            sha256,
        });
    }
    m.outputs.sort_by(|a, b| a.path.cmp(&b.path));
    write_manifest(&vdir, &m);
    std::os::unix::fs::symlink(&m.version, root.join(&m.recipe).join("current")).unwrap();
    (m.recipe.clone(), m.version.clone())
}

/// Publishes a copy of `recipe@from` as `recipe@to` (its manifest names the new version).
#[allow(dead_code)]
pub fn copy_version(root: &Path, recipe: &str, from: &str, to: &str) {
    let src = root.join(recipe).join(from);
    let dst = root.join(recipe).join(to);
    for e in walk(&src) {
        let rel = e.strip_prefix(&src).unwrap();
        std::fs::create_dir_all(dst.join(rel).parent().unwrap()).unwrap();
        std::fs::copy(&e, dst.join(rel)).unwrap();
    }
    let mut m = layout::load_manifest(&dst).unwrap();
    m.version = to.to_string();
    write_manifest(&dst, &m);
}

/// Writes `m` as the manifest of the version folder `vdir`, with its SHA256SUMS.
#[allow(dead_code)]
pub fn write_manifest(vdir: &Path, m: &layout::Manifest) {
    let json = serde_json::to_vec_pretty(m).unwrap();
    std::fs::write(vdir.join(layout::MANIFEST), &json).unwrap();
    let (msha, _) = layout::sha256_reader(&json[..]).unwrap();
    std::fs::write(
        vdir.join(layout::SHA256SUMS),
        layout::sha256sums_text(&m.outputs, &msha),
    )
    .unwrap();
}

fn walk(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            out.extend(walk(&p));
        } else {
            out.push(p);
        }
    }
    out
}
