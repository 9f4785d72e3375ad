//! Every template rendered before the long steps, so a template error costs seconds: the
//! build-time ones with the recipe's variables, the node templates against every inventory
//! node that boots the recipe (with a stand-in for each secret), and the rule that a template
//! reading `node.secrets` has a mode only root can read.

use std::collections::BTreeMap;

use anyhow::{Context, Result, bail};
use serde::Serialize;

use crate::checked::VarName;
use crate::overlay::{Overlay, TemplateSource};
use crate::plan::{BuildContext, ImageInfo};
use crate::recipe::Recipe;
use netboot::{inventory, template};

/// Renders and checks every template of `overlays` for `recipe_name`@`version`; returns how
/// many node template renderings were checked against the inventory.
pub fn check(
    recipe: &Recipe,
    recipe_name: &str,
    version: &str,
    overlays: &[Overlay],
    inv: &inventory::Inventory,
) -> Result<usize> {
    let image = ImageInfo {
        recipe: recipe_name.into(),
        version: version.into(),
    };
    let ctx = BuildContext {
        vars: recipe.variables.clone(),
        ironbake: image.clone(),
    };
    let mut node_templates = BTreeMap::new();
    for ov in overlays {
        for t in &ov.templates {
            template::render(t, &ctx)?;
        }
        for t in &ov.node_templates {
            template::check_syntax(t)?;
            refuse_readable_secrets(t, &ov.name)?;
            node_templates.insert(t.dest.clone(), t.clone());
        }
    }
    check_node_templates(&node_templates, inv, &recipe.variables, &image)
}

/// A node template that reads `node.secrets` must not be readable by every user of the node.
fn refuse_readable_secrets(t: &TemplateSource, overlay: &str) -> Result<()> {
    if netboot::secrets::uses_secrets(&t.text) && t.mode & 0o077 != 0 {
        bail!(
            "{}: uses node.secrets but its file would be mode {:04o} in every node's settings; \
             give it a mode only root can read: [permissions] \"{}\" = {{ mode = \"0600\" }} in \
             overlays/{overlay}/overlay.toml",
            t.file,
            t.mode,
            t.dest,
        );
    }
    Ok(())
}

/// What a node template sees: the recipe's variables, `ironbake`, and `node`.
#[derive(Serialize)]
struct NodeContext<'a> {
    #[serde(flatten)]
    vars: &'a BTreeMap<VarName, toml::Value>,
    ironbake: &'a ImageInfo,
    node: BTreeMap<String, toml::Value>,
}

/// The nodes a recipe's node templates are rendered for: the inventory's nodes of the
/// recipe, or one stand-in when unknown machines boot it.
fn nodes_of(inv: &inventory::Inventory, recipe: &str) -> Vec<(String, inventory::Node)> {
    let mut nodes: Vec<(String, inventory::Node)> = inv
        .nodes
        .iter()
        .filter(|(_, node)| node.recipe == recipe)
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    if nodes.is_empty() && inv.defaults.recipe.as_deref() == Some(recipe) {
        // Unknown machines boot this recipe: they have a name and a MAC but no variables.
        nodes.push((
            "unknown-node".into(),
            inventory::Node {
                mac: "00:00:00:00:00:00".into(),
                recipe: recipe.into(),
                version: None,
                wol: None,
                bmc: None,
                install: None,
                data: None,
                kernel_args: None,
                vars: BTreeMap::new(),
            },
        ));
    }
    nodes
}

/// Renders each node template for each node of the recipe, so a missing node variable fails
/// the build, not the boot. Secrets stay with the boot server: each one a template names is
/// a stand-in here, so everything else in the template is checked.
fn check_node_templates(
    templates: &BTreeMap<String, TemplateSource>,
    inv: &inventory::Inventory,
    vars: &BTreeMap<VarName, toml::Value>,
    image: &ImageInfo,
) -> Result<usize> {
    let mut stand_ins = toml::Table::new();
    for t in templates.values() {
        for s in netboot::secrets::referenced(&t.text) {
            stand_ins.insert(s.clone(), toml::Value::String(format!("<secret {s}>")));
        }
    }
    let mut n = 0;
    for (name, node) in nodes_of(inv, &image.recipe) {
        let mut node_ctx = inventory::node_context(&name, &node);
        node_ctx.insert("secrets".into(), toml::Value::Table(stand_ins.clone()));
        let ctx = NodeContext {
            vars,
            ironbake: image,
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
