//! Bad input gets a clear error (what, where, how to get past it), a non-zero exit, and leaves
//! `out/` exactly as it was. Each case edits a private copy of the project.

mod common;

use std::fs;
use std::path::Path;

use common::{project, require, run_ironbake, scratch, snapshot};

/// Runs a build of `recipe` after `edit`; asserts it fails with every `needles` in stderr
/// and that neither out/ nor the staging folder beside it gained anything.
fn refused(recipe: &str, edit: impl FnOnce(&Path), needles: &[&str]) -> String {
    let dir = scratch("bad");
    let project = project(dir.path());
    edit(&project);
    let out = dir.path().join("out");
    // An out/ that already holds something must keep it, byte for byte.
    fs::create_dir_all(out.join("ci-node/0.0.1-existing")).unwrap();
    fs::write(out.join("ci-node/0.0.1-existing/manifest.json"), "{}").unwrap();
    let before = snapshot(&out);
    let r = run_ironbake(
        &project,
        &out,
        &dir.path().join("cache"),
        &["build", recipe],
    );
    assert!(!r.ok, "the build should have failed:\n{}", r.stderr);
    for n in needles {
        assert!(r.stderr.contains(n), "stderr lacks {n:?}:\n{}", r.stderr);
    }
    assert_eq!(snapshot(&out), before, "out/ changed");
    let staging = dir.path().join(".out-staging");
    assert!(
        snapshot(&staging).len() <= 1,
        "staging left behind: {:?}",
        snapshot(&staging)
    );
    r.stderr
}

fn write(path: &Path, text: &str) {
    fs::create_dir_all(path.parent().unwrap()).unwrap();
    fs::write(path, text).unwrap();
}

fn append(path: &Path, text: &str) {
    let mut s = fs::read_to_string(path).unwrap();
    s.push_str(text);
    fs::write(path, s).unwrap();
}

fn replace(path: &Path, from: &str, to: &str) {
    let s = fs::read_to_string(path).unwrap();
    assert!(s.contains(from), "{} lacks {from:?}", path.display());
    fs::write(path, s.replacen(from, to, 1)).unwrap();
}

#[test]
fn malformed_toml_is_located() {
    let err = refused(
        "broken",
        |p| {
            fs::write(
                p.join("recipes/broken.toml"),
                "version = \"1\"\n[debian\nsuite = \"bookworm\"\n",
            )
            .unwrap()
        },
        &["recipes/broken.toml:2:"],
    );
    assert!(err.contains("| [debian"), "{err}");
}

#[test]
fn an_unknown_key_is_located() {
    refused(
        "ci-node",
        |p| {
            replace(
                &p.join("recipes/ci-node.toml"),
                "[kernel]\n",
                "[kernel]\ncolour = \"blue\"\n",
            )
        },
        &["recipes/ci-node.toml:14:1: unknown field `colour`, expected `package` or `cmdline`"],
    );
}

#[test]
fn an_unknown_overlay_key_is_located() {
    refused(
        "ci-node",
        |p| {
            let path = p.join("overlays/base/overlay.toml");
            let text = fs::read_to_string(&path).unwrap();
            fs::write(&path, format!("enable = [\"x\"]\n{text}")).unwrap();
        },
        &["overlays/base/overlay.toml:1:1: unknown field `enable`"],
    );
}

#[test]
fn an_unknown_overlay_is_named() {
    refused(
        "ci-node",
        |p| {
            replace(
                &p.join("recipes/ci-node.toml"),
                "overlays = [\"base\",",
                "overlays = [\"base\", \"infiniband-typo\",",
            )
        },
        &["no overlay \"infiniband-typo\"", "overlays here: base"],
    );
}

#[test]
fn an_unknown_recipe_lists_the_known_ones() {
    refused(
        "no-such-recipe",
        |_| {},
        &[
            "no recipe \"no-such-recipe\"",
            "ci-node, core-node, k3s-node",
        ],
    );
}

#[test]
fn an_undefined_template_variable_names_file_and_line() {
    refused(
        "ci-node",
        |p| {
            write(
                &p.join("overlays/base/templates/etc/motd.j2"),
                "Welcome to {{ ironbake.recipe }}\n{{ motd_text }}\n",
            )
        },
        &[
            "overlays/base/templates/etc/motd.j2:2: undefined value",
            "names defined here:",
            "ssh_authorized_keys",
        ],
    );
}

#[test]
fn an_undefined_node_variable_names_the_node() {
    refused(
        "ci-node",
        |p| {
            fs::write(
                p.join("overlays/base/node-templates/etc/mesh.j2"),
                "{{ node.mesh_ip }}\n",
            )
            .unwrap()
        },
        &[
            "overlays/base/node-templates/etc/mesh.j2:1: undefined value",
            "inventory node ci0",
        ],
    );
}

#[test]
fn a_template_syntax_error_is_located() {
    refused(
        "ci-node",
        |p| {
            write(
                &p.join("overlays/base/templates/etc/motd.j2"),
                "ok\n{% if %}\n",
            )
        },
        &["overlays/base/templates/etc/motd.j2:2: syntax error"],
    );
}

const ABC: &str = "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad";

#[test]
fn a_missing_artifact_is_named() {
    refused(
        "ci-node",
        |p| {
            append(
                &p.join("overlays/base/overlay.toml"),
                &format!(
                    "\n[[artifacts]]\nname = \"tool\"\nurl = \"file:///nonexistent/ironbake/tool\"\nsha256 = \"{ABC}\"\ndest = \"/usr/local/bin/tool\"\nmode = \"0755\"\n"
                ),
            )
        },
        &[
            "artifact \"tool\" of overlay \"base\"",
            "/nonexistent/ironbake/tool",
            "ironbake build ci-node --without base",
        ],
    );
}

#[test]
fn a_node_template_with_a_secret_must_be_root_only() {
    refused(
        "ci-node",
        |p| {
            write(
                &p.join("overlays/base/node-templates/etc/app/token.j2"),
                "token = {{ node.secrets.app_token }}\n",
            )
        },
        &[
            "overlays/base/node-templates/etc/app/token.j2: uses node.secrets",
            "mode 0644",
            "[permissions] \"/etc/app/token\" = { mode = \"0600\" }",
        ],
    );
}

#[test]
fn without_an_overlay_the_recipe_lacks_is_refused() {
    let dir = scratch("bad-without");
    let project = project(dir.path());
    let out = dir.path().join("out");
    let r = run_ironbake(
        &project,
        &out,
        &dir.path().join("cache"),
        &["build", "ci-node", "--without", "proxmox-kernel"],
    );
    assert!(!r.ok);
    assert!(
        r.stderr.contains(
            "--without proxmox-kernel: the recipe ci-node has no overlay \"proxmox-kernel\" (its overlays: base, telemetry)"
        ),
        "{}",
        r.stderr
    );
    assert!(!out.exists(), "out/ was created");
}

#[test]
fn a_mismatched_artifact_names_both_digests() {
    refused(
        "ci-node",
        |p| {
            fs::write(p.join("tool"), "abd").unwrap();
            append(
                &p.join("overlays/base/overlay.toml"),
                &format!(
                    "\n[[artifacts]]\nname = \"tool\"\nurl = \"file://{}/tool\"\nsha256 = \"{ABC}\"\ndest = \"/usr/local/bin/tool\"\n",
                    p.display()
                ),
            );
        },
        &[
            "sha256 mismatch",
            &format!("expected {ABC}"),
            "actual   a52d159f262b",
            "overlays/base/overlay.toml",
        ],
    );
}

#[test]
fn a_checksum_file_without_the_artifact_is_an_error() {
    refused(
        "ci-node",
        |p| {
            fs::write(p.join("tool"), "abc").unwrap();
            fs::write(p.join("sums"), format!("{ABC}  other-file\n")).unwrap();
            append(
                &p.join("overlays/base/overlay.toml"),
                &format!(
                    "\n[[artifacts]]\nname = \"tool\"\nurl = \"file://{0}/tool\"\nsha256-url = \"file://{0}/sums\"\ndest = \"/usr/local/bin/tool\"\n",
                    p.display()
                ),
            );
        },
        &["has no sha256 line for \"tool\""],
    );
}

#[test]
fn an_unreachable_apt_source_is_named_with_a_way_past_it() {
    refused(
        "ci-node",
        |p| {
            fs::create_dir_all(p.join("overlays/extra/keys")).unwrap();
            fs::write(
                p.join("overlays/extra/keys/extra.asc"),
                "not checked before the source answers",
            )
            .unwrap();
            fs::write(p.join("overlays/extra/overlay.toml"), "packages = [\"hello\"]\n[[apt-sources]]\nname = \"extra\"\nuri = \"http://127.0.0.1:9/debian\"\nsuite = \"bookworm\"\ncomponents = [\"main\"]\nkey = \"keys/extra.asc\"\n").unwrap();
            replace(
                &p.join("recipes/ci-node.toml"),
                "overlays = [\"base\",",
                "overlays = [\"base\", \"extra\",",
            );
        },
        &[
            "apt source \"http://127.0.0.1:9/debian\"",
            "cannot be reached",
            "ironbake build ci-node --without extra",
        ],
    );
}

#[test]
fn an_unreachable_recipe_mirror_is_named() {
    refused(
        "ci-node",
        |p| {
            replace(
                &p.join("recipes/ci-node.toml"),
                "variant = \"minbase\"\n",
                "variant = \"minbase\"\nmirror = \"file:///nonexistent/mirror\"\n",
            )
        },
        &[
            "apt source \"file:///nonexistent/mirror\"",
            "cannot be reached",
            "local mirror",
        ],
    );
}

#[test]
fn an_mmdebstrap_failure_quotes_its_last_lines() {
    if !require(&["mmdebstrap", "mksquashfs"]) {
        return;
    }
    let err = refused(
        "ci-node",
        |p| {
            replace(
                &p.join("recipes/ci-node.toml"),
                "\"iproute2\"]",
                "\"iproute2\", \"ironbake-no-such-package\"]",
            )
        },
        &[
            "mmdebstrap failed",
            "its last lines:",
            "ironbake-no-such-package",
            "building the package layer with mmdebstrap",
        ],
    );
    eprintln!("{err}");
}

/// The "out/ unchanged" check of these tests sees what a path-and-length listing would miss:
/// a file rewritten with other bytes of the same length, and `current` moved to another
/// version.
#[test]
fn the_unchanged_check_sees_a_same_length_rewrite_and_a_moved_current() {
    let dir = scratch("snapshot");
    let out = dir.path().join("out");
    for v in ["1-a", "1-b"] {
        fs::create_dir_all(out.join("r").join(v)).unwrap();
        fs::write(out.join("r").join(v).join("manifest.json"), "{\"v\":1}").unwrap();
    }
    std::os::unix::fs::symlink("1-a", out.join("r/current")).unwrap();
    let before = snapshot(&out);
    fs::write(out.join("r/1-a/manifest.json"), "{\"v\":2}").unwrap();
    assert_ne!(snapshot(&out), before, "a same-length rewrite is seen");
    fs::write(out.join("r/1-a/manifest.json"), "{\"v\":1}").unwrap();
    assert_eq!(snapshot(&out), before);
    fs::remove_file(out.join("r/current")).unwrap();
    std::os::unix::fs::symlink("1-b", out.join("r/current")).unwrap();
    assert_ne!(snapshot(&out), before, "a moved current is seen");
}
