//! Strict template rendering: one minijinja environment, undefined names are errors, trailing
//! newlines kept, no auto-escaping (these are config files, not HTML).

use minijinja::{Environment, UndefinedBehavior};
use serde::Serialize;

/// A template as loaded from an overlay (or from a published version's `node-templates/`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TemplateSource {
    /// The template file as a user would name it (`overlays/base/templates/etc/motd.j2`).
    pub file: String,
    /// The image path it renders to (`/etc/motd`).
    pub dest: String,
    /// The template text.
    pub text: String,
    /// Mode bits for the rendered file.
    pub mode: u32,
}

/// A new environment with ironbake's settings.
pub fn environment() -> Environment<'static> {
    let mut env = Environment::new();
    env.set_undefined_behavior(UndefinedBehavior::Strict);
    env.set_syntax(
        minijinja::syntax::SyntaxConfig::builder()
            .keep_trailing_newline(true)
            .build()
            .expect("default delimiters are valid"),
    );
    env.set_auto_escape_callback(|_| minijinja::AutoEscape::None);
    // `{{ fail("why") }}` stops a rendering with a message: templates check their variables.
    env.add_function("fail", |why: String| -> Result<String, minijinja::Error> {
        Err(minijinja::Error::new(
            minijinja::ErrorKind::InvalidOperation,
            why,
        ))
    });
    env
}

/// A template failure, located in its file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TemplateError {
    /// The template file.
    pub file: String,
    /// The 1-based line, when minijinja knows it.
    pub line: Option<usize>,
    /// What went wrong.
    pub message: String,
    /// The names the context offered, for the hint.
    pub available: Vec<String>,
}

impl std::fmt::Display for TemplateError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.line {
            Some(l) => write!(f, "{}:{}: {}", self.file, l, self.message)?,
            None => write!(f, "{}: {}", self.file, self.message)?,
        }
        if !self.available.is_empty() {
            write!(f, "\n  names defined here: {}", self.available.join(", "))?;
        }
        Ok(())
    }
}

impl std::error::Error for TemplateError {}

/// The top-level names a serialised context offers (nested one level for objects).
fn names_of(ctx: &serde_json::Value) -> Vec<String> {
    let mut out = Vec::new();
    if let Some(map) = ctx.as_object() {
        for (k, v) in map {
            match v.as_object() {
                Some(inner) if k == "ironbake" || k == "node" => {
                    out.extend(inner.keys().map(|ik| format!("{k}.{ik}")));
                }
                _ => out.push(k.clone()),
            }
        }
    }
    out.sort();
    out
}

/// Renders one template with `ctx`. Pure: the template text is already loaded.
pub fn render<C: Serialize>(tpl: &TemplateSource, ctx: &C) -> Result<String, TemplateError> {
    let env = environment();
    let json = serde_json::to_value(ctx).unwrap_or(serde_json::Value::Null);
    let fail = |e: minijinja::Error| {
        let mut message = e.kind().to_string();
        if let Some(d) = e.detail() {
            message = format!("{message}: {d}");
        }
        let undefined = e.kind() == minijinja::ErrorKind::UndefinedError;
        TemplateError {
            file: tpl.file.clone(),
            line: e.line(),
            message,
            available: if undefined {
                names_of(&json)
            } else {
                Vec::new()
            },
        }
    };
    let compiled = env
        .template_from_named_str(&tpl.file, &tpl.text)
        .map_err(fail)?;
    compiled.render(minijinja::value::Serde(ctx)).map_err(fail)
}

/// Checks a template's syntax without rendering it.
pub fn check_syntax(tpl: &TemplateSource) -> Result<(), TemplateError> {
    let env = environment();
    env.template_from_named_str(&tpl.file, &tpl.text)
        .map(|_| ())
        .map_err(|e| TemplateError {
            file: tpl.file.clone(),
            line: e.line(),
            message: match e.detail() {
                Some(d) => format!("{}: {d}", e.kind()),
                None => e.kind().to_string(),
            },
            available: Vec::new(),
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tpl(text: &str) -> TemplateSource {
        TemplateSource {
            file: "overlays/x/templates/etc/t.j2".into(),
            dest: "/etc/t".into(),
            text: text.into(),
            mode: 0o644,
        }
    }

    #[test]
    fn renders_and_keeps_the_trailing_newline_without_escaping() {
        let ctx = serde_json::json!({ "who": "<admin>", "keys": ["a", "b"] });
        let out = render(
            &tpl("hi {{ who }}\n{% for k in keys %}{{ k }}\n{% endfor %}"),
            &ctx,
        )
        .unwrap();
        assert_eq!(out, "hi <admin>\na\nb\n");
    }

    #[test]
    fn an_undefined_name_is_an_error_with_file_and_line() {
        let ctx = serde_json::json!({ "who": "x", "ironbake": { "recipe": "r" } });
        let err = render(&tpl("line one\nhi {{ whom }}\n"), &ctx).unwrap_err();
        assert_eq!(err.line, Some(2));
        let shown = err.to_string();
        assert!(
            shown.starts_with("overlays/x/templates/etc/t.j2:2: undefined value"),
            "{shown}"
        );
        assert!(shown.contains("ironbake.recipe, who"), "{shown}");
    }

    #[test]
    fn a_template_can_refuse_a_value_with_fail() {
        let t = tpl(
            "{% if role not in [\"server\", \"agent\"] %}{{ fail(\"role must be server or agent, not \" ~ role) }}{% endif %}ok\n",
        );
        let ok = render(&t, &serde_json::json!({ "role": "agent" })).unwrap();
        assert_eq!(ok, "ok\n");
        let err = render(&t, &serde_json::json!({ "role": "master" })).unwrap_err();
        assert!(
            err.message
                .contains("role must be server or agent, not master"),
            "{}",
            err.message
        );
    }

    #[test]
    fn undefined_attributes_and_syntax_errors_are_errors() {
        let ctx = serde_json::json!({ "node": { "name": "a" } });
        assert!(render(&tpl("{{ node.mac }}"), &ctx).is_err());
        let err = check_syntax(&tpl("ok\n{% if %}\n")).unwrap_err();
        assert_eq!(err.line, Some(2));
        assert!(err.message.contains("syntax error"), "{}", err.message);
    }
}
