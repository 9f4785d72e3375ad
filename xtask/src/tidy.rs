//! The house rules as tests (rust-analyzer's tidy): every invariant ARCHITECTURE.md states is
//! held by a test, most of them here, and [`the_architecture_invariants_are_held_by_tests`]
//! checks that the list there and the tests agree. Run with the unit tests (tier a).

use std::collections::BTreeSet;
use std::path::PathBuf;

use ironbake::exec::Tool;

/// The repository (tests run in `xtask/`, inside it).
fn root() -> PathBuf {
    ironbake::project::discover_here(None).expect("the tidy tests run inside the repository")
}

/// Every `.rs` file under `dir` (relative to the repository), sorted, with its text.
fn rust_files(dir: &str) -> Vec<(String, String)> {
    let root = root();
    let mut out: Vec<(String, String)> = walkdir::WalkDir::new(root.join(dir))
        .sort_by_file_name()
        .into_iter()
        .filter_map(|e| e.ok())
        .filter(|e| e.file_type().is_file() && e.path().extension().is_some_and(|x| x == "rs"))
        .map(|e| {
            let rel = e.path().strip_prefix(&root).unwrap().display().to_string();
            (rel, std::fs::read_to_string(e.path()).unwrap())
        })
        .collect();
    out.sort();
    out
}

/// The code of a file without its tests (everything from the first `#[cfg(test)]` line on)
/// and without comment lines.
fn code(text: &str) -> String {
    text.lines()
        .take_while(|l| l.trim() != "#[cfg(test)]")
        .filter(|l| !l.trim_start().starts_with("//"))
        .map(|l| format!("{l}\n"))
        .collect()
}

/// A tool the tidy tests need: present, or the test fails under `CI=true` and is skipped
/// (saying so) elsewhere.
fn have(tool: &str, package: &str) -> bool {
    if ironbake::exec::have_tool(tool) {
        return true;
    }
    let msg = format!("{tool} is missing (apt-get install {package}; `cargo xtask setup`)");
    assert!(
        std::env::var("CI").as_deref() != Ok("true"),
        "CI=true and {msg}"
    );
    eprintln!("SKIPPED: {msg}");
    false
}

/// Invariant: in the product and in the chores, only `ironbake/src/exec.rs` starts
/// processes (it logs the exact command line and quotes the tool's last lines on failure).
#[test]
fn only_exec_starts_processes() {
    let needles = [
        concat!("Command", "::new("),
        concat!("process", "::Command"),
        concat!(".spawn", "()"),
        concat!("fork", "("),
        concat!("exec", "vp("),
    ];
    let mut found = Vec::new();
    for (path, text) in rust_files("ironbake/src")
        .into_iter()
        .chain(rust_files("xtask/src"))
    {
        if path == "ironbake/src/exec.rs" {
            continue;
        }
        for n in needles {
            if code(&text).contains(n) {
                found.push(format!("{path}: {n}"));
            }
        }
    }
    assert!(
        found.is_empty(),
        "processes started outside ironbake/src/exec.rs (use exec::Tool): {found:#?}"
    );
}

/// The modules whose code must do no IO: parsing, planning, layouts, digests, rendering.
const PURE: &[&str] = &[
    "ironbake/src/build/digest.rs",
    "ironbake/src/build/templates.rs",
    "ironbake/src/checked.rs",
    "ironbake/src/date.rs",
    "ironbake/src/disk/layout.rs",
    "ironbake/src/disk/uki.rs",
    "ironbake/src/overlay/mod.rs",
    "ironbake/src/plan/mod.rs",
    "ironbake/src/plan/units.rs",
    "ironbake/src/plan/users.rs",
    "ironbake/src/recipe/mod.rs",
    "netboot/src/boot.rs",
    "netboot/src/diag.rs",
    "netboot/src/inventory/mod.rs",
    "netboot/src/mesh.rs",
    "netboot/src/template.rs",
];

/// Invariant: parsing, the plan, layouts and rendering do no IO; thin `load` functions in
/// other files read what they need and call them.
#[test]
fn pure_modules_touch_no_filesystem() {
    let io = [
        "std::fs",
        "fs::",
        "File::",
        "OpenOptions",
        "read_dir",
        ".exists()",
        ".is_file()",
        ".is_dir()",
        "metadata(",
        "canonicalize(",
        "read_link(",
        "walkdir",
        "tempfile",
        "std::env",
        "stdin()",
        "TcpStream",
        "TcpListener",
        "UdpSocket",
        "std::process",
        "SystemTime::now",
        "Instant::now",
    ];
    let root = root();
    let mut found = Vec::new();
    for path in PURE {
        let text = std::fs::read_to_string(root.join(path))
            .unwrap_or_else(|e| panic!("{path}: {e} (a pure module moved? update PURE)"));
        for n in io {
            if code(&text).contains(n) {
                found.push(format!("{path}: {n}"));
            }
        }
    }
    assert!(found.is_empty(), "IO in a pure module: {found:#?}");
}

/// The boot server's modules the product may use: the published layout and everything the
/// boot server renders that a disk carries too (inventory, templates, node settings,
/// secrets, the settings archive's cpio), its parse errors, and `serve`'s flags.
const NETBOOT_FOR_IRONBAKE: &[&str] = &[
    "cli",
    "cpio",
    "date",
    "diag",
    "inventory",
    "layout",
    "mesh",
    "nodes",
    "oci",
    "publish",
    "secrets",
    "template",
];

/// Invariant: `netboot` never depends on the product crate (it runs alone on a Raspberry Pi),
/// and the product uses only the boot server's modules it names.
#[test]
fn netboot_stands_alone() {
    let root = root();
    let manifest: toml::Table =
        toml::from_str(&std::fs::read_to_string(root.join("netboot/Cargo.toml")).unwrap()).unwrap();
    for section in ["dependencies", "dev-dependencies", "build-dependencies"] {
        if let Some(deps) = manifest.get(section).and_then(|d| d.as_table()) {
            for bad in ["ironbake", "xtask", "qemu-tests"] {
                assert!(!deps.contains_key(bad), "netboot [{section}] names {bad}");
            }
        }
    }
    for (path, text) in rust_files("netboot") {
        assert!(
            !text.contains("ironbake::"),
            "{path} uses the product crate"
        );
    }
    let mut used = BTreeSet::new();
    for (_, text) in rust_files("ironbake/src") {
        for (i, _) in text.match_indices("netboot::") {
            let rest = &text[i + "netboot::".len()..];
            let module: String = rest
                .chars()
                .take_while(|c| c.is_ascii_lowercase() || *c == '_')
                .collect();
            if !module.is_empty() {
                used.insert(module);
            }
        }
    }
    let allowed: BTreeSet<String> = NETBOOT_FOR_IRONBAKE.iter().map(|s| s.to_string()).collect();
    let extra: Vec<_> = used.difference(&allowed).collect();
    assert!(
        extra.is_empty(),
        "ironbake uses netboot modules not in NETBOOT_FOR_IRONBAKE (and ARCHITECTURE.md): \
         {extra:?}"
    );
}

/// The shell scripts the project ships: the first stage, the base's hooks, and every script
/// an overlay puts into an image; with the shell each is for.
fn shell_scripts() -> Vec<(PathBuf, &'static str)> {
    let root = root();
    let mut out = vec![
        (root.join("ironbake/src/initramfs/init.sh"), "sh"),
        (root.join("ironbake/src/initramfs/install.sh"), "sh"),
        (root.join("ironbake/src/initramfs/udhcpc.script"), "sh"),
        (root.join("ironbake/src/base/hooks/essential.sh"), "sh"),
        (root.join("ironbake/src/base/hooks/customize.sh"), "sh"),
    ];
    for e in walkdir::WalkDir::new(root.join("overlays"))
        .sort_by_file_name()
        .into_iter()
        .filter_map(|e| e.ok())
        .filter(|e| e.file_type().is_file())
    {
        let head = std::fs::read(e.path()).unwrap();
        let first = head.split(|b| *b == b'\n').next().unwrap_or(&[]);
        let shell = match first {
            b"#!/bin/sh" => "sh",
            b"#!/bin/bash" | b"#!/usr/bin/env bash" => "bash",
            _ if first.starts_with(b"#!") && first.ends_with(b"sh") => {
                panic!(
                    "{}: a shebang the tidy test does not know",
                    e.path().display()
                )
            }
            _ => continue,
        };
        out.push((e.path().to_owned(), shell));
    }
    out
}

/// Invariant: every shell script the project ships passes `shellcheck` (Debian's) for its
/// shell and its shell's syntax check.
#[test]
fn shipped_shell_scripts_pass_shellcheck() {
    let scripts = shell_scripts();
    assert!(scripts.len() >= 10, "found only {} scripts", scripts.len());
    if !have("shellcheck", "shellcheck") {
        return;
    }
    let mut failed = Vec::new();
    for (path, shell) in &scripts {
        let checks = [
            Tool::new("shellcheck").args(["-s", shell]).arg(path),
            Tool::new(shell).arg("-n").arg(path),
        ];
        for t in checks {
            if let Err(e) = t.run(None) {
                failed.push(format!("{e:#}"));
            }
        }
    }
    assert!(failed.is_empty(), "{}", failed.join("\n"));
}

/// Invariant: the README's command table lists every command (each leaf of `cargo xtask`,
/// which has all of `ironbake`'s, and each benchmark).
#[test]
fn every_command_is_in_the_readme() {
    use clap::CommandFactory;
    let readme = std::fs::read_to_string(root().join("README.md")).unwrap();
    let rows: Vec<&str> = readme.lines().filter(|l| l.starts_with("| `")).collect();
    let listed = |words: &str| {
        rows.iter().any(|r| {
            r.starts_with(&format!("| `cargo xtask {words}"))
                || r.starts_with(&format!("| `ironbake {words}"))
        })
    };
    let mut missing = Vec::new();
    let mut stack = vec![(String::new(), crate::Xtask::command())];
    while let Some((prefix, cmd)) = stack.pop() {
        let subs: Vec<_> = cmd.get_subcommands().cloned().collect();
        if subs.is_empty() && !prefix.is_empty() {
            if !listed(&prefix) {
                missing.push(prefix.clone());
            }
            for arg in cmd.get_arguments().filter(|a| a.is_positional()) {
                for v in arg.get_possible_values() {
                    let words = format!("{prefix} {}", v.get_name());
                    if !listed(&words) {
                        missing.push(words);
                    }
                }
            }
        }
        for s in subs {
            let words = format!("{prefix} {}", s.get_name()).trim().to_string();
            stack.push((words, s));
        }
    }
    assert!(
        missing.is_empty(),
        "README.md's command table lacks: {missing:?}"
    );
    assert!(
        readme.contains("cargo install --path ironbake"),
        "the README says how to install the ironbake command"
    );
}

/// Invariant: the code is formatted as `cargo fmt` leaves it.
#[test]
fn the_code_is_formatted() {
    if !have("rustfmt", "rustfmt (rustup component add rustfmt)") {
        return;
    }
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    Tool::new(&cargo)
        .args(["fmt", "--all", "--check"])
        .current_dir(root())
        .run(None)
        .unwrap_or_else(|e| panic!("not formatted (run `cargo xtask fmt`): {e:#}"));
}

/// Invariant: every Rust file starts with a `//!` line that says what it is for.
#[test]
fn every_rust_file_says_what_it_is_for() {
    let mut bare = Vec::new();
    for dir in ["ironbake", "netboot", "qemu-tests", "xtask"] {
        for (path, text) in rust_files(dir) {
            if path.contains("/target/") || path.starts_with("netboot/fuzz/target") {
                continue;
            }
            if !text.starts_with("//!") {
                bare.push(path);
            }
        }
    }
    assert!(bare.is_empty(), "files without a //! line first: {bare:#?}");
}

/// Functions longer than this many lines are refused.
const LONGEST_FN: usize = 120;
/// Files longer than this many lines must say why at their top ("Over 600 lines: ...").
const LONGEST_FILE: usize = 600;

/// `(name, first line, lines)` of every function and method in `text`.
fn functions(text: &str) -> Vec<(String, usize, usize)> {
    use syn::visit::Visit;
    struct V(Vec<(String, usize, usize)>);
    impl V {
        fn add(&mut self, name: String, span: proc_macro2::Span) {
            let (a, b) = (span.start().line, span.end().line);
            self.0.push((name, a, b - a + 1));
        }
    }
    impl<'a> Visit<'a> for V {
        fn visit_item_fn(&mut self, f: &'a syn::ItemFn) {
            use syn::spanned::Spanned;
            self.add(f.sig.ident.to_string(), f.span());
            syn::visit::visit_item_fn(self, f);
        }
        fn visit_impl_item_fn(&mut self, f: &'a syn::ImplItemFn) {
            use syn::spanned::Spanned;
            self.add(f.sig.ident.to_string(), f.span());
            syn::visit::visit_impl_item_fn(self, f);
        }
    }
    let file = syn::parse_file(text).expect("parses");
    let mut v = V(Vec::new());
    v.visit_file(&file);
    v.0
}

/// Invariant: the product's files stay readable: no function over [`LONGEST_FN`] lines, no
/// file over [`LONGEST_FILE`] lines without a reason written at its top. Prints the counts.
#[test]
fn no_long_functions_or_files() {
    let mut long = Vec::new();
    let (mut over_80, mut files_over) = (0, 0);
    for (path, text) in rust_files("ironbake/src") {
        let lines = text.lines().count();
        if lines > LONGEST_FILE {
            files_over += 1;
            let head: String = text.lines().take_while(|l| l.starts_with("//!")).collect();
            if !head.contains("Over 600 lines") {
                long.push(format!("{path}: {lines} lines, and no reason at its top"));
            }
        }
        for (name, at, n) in functions(&text) {
            if n > 80 {
                over_80 += 1;
                eprintln!("{path}:{at} {name}: {n} lines");
            }
            if n > LONGEST_FN {
                long.push(format!("{path}:{at} {name}: {n} lines"));
            }
        }
    }
    eprintln!(
        "ironbake/src: {files_over} files over {LONGEST_FILE} lines, {over_80} functions over 80 lines"
    );
    assert!(long.is_empty(), "{long:#?}");
}

/// Invariant (data): the project's `inventory.toml` describes the homelab's mesh exactly as
/// its connection table does (README.md), and it is consistent (checked when it is read).
#[test]
fn the_inventory_is_the_homelabs_connection_table() {
    let inv = netboot::inventory::load(&root()).expect("inventory.toml");
    let links = netboot::mesh::links(&inv).unwrap();
    let mut rows: Vec<String> = links
        .iter()
        .flat_map(|(node, ls)| {
            ls.iter().map(move |l| {
                format!(
                    "{node} {} {} -> {} {} {}",
                    l.interface, l.address, l.peer, l.peer_interface, l.peer_address
                )
            })
        })
        .collect();
    rows.sort();
    assert_eq!(
        rows,
        [
            "machine0 enp1s0 192.168.1.1/30 -> machine1 enp1s0 192.168.1.2/30",
            "machine0 enp1s0d1 192.168.2.1/30 -> machine2 enp1s0 192.168.2.2/30",
            "machine1 enp1s0 192.168.1.2/30 -> machine0 enp1s0 192.168.1.1/30",
            "machine1 enp1s0d1 192.168.3.1/30 -> machine2 enp1s0d1 192.168.3.2/30",
            "machine2 enp1s0 192.168.2.2/30 -> machine0 enp1s0d1 192.168.2.1/30",
            "machine2 enp1s0d1 192.168.3.2/30 -> machine1 enp1s0d1 192.168.3.1/30",
        ]
    );
    // Every link has a subnet manager on one of its ends, for InfiniBand mode.
    for (node, ls) in &links {
        for l in ls {
            let theirs = links[&l.peer]
                .iter()
                .find(|p| p.interface == l.peer_interface)
                .unwrap();
            assert!(
                l.opensm.is_some() ^ theirs.opensm.is_some(),
                "{node} {}: one end runs opensm",
                l.interface
            );
        }
    }
    assert_eq!(inv.nodes["k3s0"].recipe, "k3s-node");
    assert_eq!(inv.server.as_ref().unwrap().name, "raspi");
}

/// Invariant (about the invariants): each bullet of ARCHITECTURE.md's "Invariants" section
/// names the test that holds it, as `(held by PATH::NAME)`, and that test exists.
#[test]
fn the_architecture_invariants_are_held_by_tests() {
    let root = root();
    let arch = std::fs::read_to_string(root.join("ARCHITECTURE.md")).unwrap();
    let start = arch
        .find("\n## Invariants\n")
        .expect("an Invariants section");
    let section = &arch[start + 1..];
    let section = &section[..section[3..].find("\n## ").map_or(section.len(), |i| i + 3)];
    let bullets: Vec<String> = section
        .split("\n- ")
        .skip(1)
        .map(|b| {
            let b = b.split("\n\n").next().unwrap();
            b.split_whitespace().collect::<Vec<_>>().join(" ")
        })
        .collect();
    assert!(bullets.len() >= 6, "{} invariants", bullets.len());
    let mut unheld = Vec::new();
    for b in &bullets {
        let Some(i) = b.find("(held by `") else {
            unheld.push(format!("no `(held by ...)`: {b}"));
            continue;
        };
        let cited = &b[i + "(held by `".len()..];
        for test in cited[..cited.find(')').unwrap_or(cited.len())].split(", ") {
            let test = test.trim_matches('`');
            let (file, name) = test.rsplit_once("::").expect("PATH::NAME");
            let text = std::fs::read_to_string(root.join(file)).unwrap_or_default();
            if !text.contains(&format!("fn {name}(")) {
                unheld.push(format!("{test} is not a test in {file}"));
            }
        }
    }
    assert!(unheld.is_empty(), "{unheld:#?}");
}
