//! Reading recipes from a project folder (the part of the recipe module that does IO).

use std::path::Path;

use anyhow::{Context, Result};

use super::{Recipe, parse};

/// Reads `recipes/NAME.toml` under `project` and parses it; returns the recipe and its text.
pub fn load(project: &Path, name: &str) -> Result<(Recipe, String)> {
    if !netboot::layout::valid_name(name) {
        anyhow::bail!("{name:?} is not a recipe name (lowercase letters, digits, '-', '_')");
    }
    let rel = format!("recipes/{name}.toml");
    let path = project.join(&rel);
    let text = match std::fs::read_to_string(&path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let known = list(project).unwrap_or_default();
            anyhow::bail!(
                "no recipe {name:?}: {rel} does not exist in {} (recipes here: {})",
                project.display(),
                if known.is_empty() {
                    "none".to_string()
                } else {
                    known.join(", ")
                }
            );
        }
        Err(e) => return Err(e).with_context(|| format!("reading {rel}")),
    };
    let recipe = parse(&rel, &text)?;
    Ok((recipe, text))
}

/// The recipe names under `project/recipes`, sorted.
pub fn list(project: &Path) -> Result<Vec<String>> {
    let dir = project.join("recipes");
    let mut names = Vec::new();
    for entry in std::fs::read_dir(&dir).with_context(|| format!("reading {}", dir.display()))? {
        let path = entry?.path();
        if path.extension().is_some_and(|e| e == "toml")
            && let Some(stem) = path.file_stem().and_then(|s| s.to_str())
        {
            names.push(stem.to_string());
        }
    }
    names.sort();
    Ok(names)
}
