//! Turning parse errors in the project's own files into `file:line:column: message` errors.

use std::fmt;

/// An error located in a text file of the project (a recipe, an overlay, a template).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Located {
    /// The file, as the user would type it (relative to the project root).
    pub file: String,
    /// 1-based line.
    pub line: usize,
    /// 1-based column (in characters).
    pub column: usize,
    /// What is wrong.
    pub message: String,
    /// The offending source line, for display.
    pub source_line: String,
}

impl fmt::Display for Located {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}:{}:{}: {}",
            self.file, self.line, self.column, self.message
        )?;
        if !self.source_line.is_empty() {
            let pad = " ".repeat(self.column.saturating_sub(1));
            write!(f, "\n    | {}\n    | {pad}^", self.source_line)?;
        }
        Ok(())
    }
}

impl std::error::Error for Located {}

/// The 1-based line and column of a byte offset in `text`.
pub fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let offset = offset.min(text.len());
    let before = &text[..offset];
    let line = before.matches('\n').count() + 1;
    let line_start = before.rfind('\n').map_or(0, |i| i + 1);
    let column = text[line_start..offset].chars().count() + 1;
    (line, column)
}

/// An error about `needle`, located at its first occurrence after the first occurrence of
/// `anchor` (a section header, say), else at its first occurrence anywhere.
pub fn locate_after(
    file: &str,
    text: &str,
    anchor: &str,
    needle: &str,
    message: String,
) -> Located {
    let found = text
        .find(anchor)
        .and_then(|a| text[a..].find(needle).map(|n| a + n))
        .or_else(|| text.find(needle))
        .unwrap_or(0);
    let (line, column) = line_col(text, found);
    let source_line = text.lines().nth(line - 1).unwrap_or("").to_string();
    Located {
        file: file.to_string(),
        line,
        column,
        message,
        source_line,
    }
}

/// An error about `needle`, located at its first occurrence in `text` (or at the top): for
/// checks made after parsing, when only the offending value is known.
pub fn locate(file: &str, text: &str, needle: &str, message: String) -> Located {
    let (line, column) = line_col(text, text.find(needle).unwrap_or(0));
    let source_line = text.lines().nth(line - 1).unwrap_or("").to_string();
    Located {
        file: file.to_string(),
        line,
        column,
        message,
        source_line,
    }
}

/// Locates a TOML deserialisation error in `text`. When the error is about one quoted value
/// inside a larger span (an element of an array, whose error toml reports at the array), the
/// caret goes to that value.
pub fn toml_error(file: &str, text: &str, err: &toml::de::Error) -> Located {
    let span = err.span().unwrap_or(0..0);
    let quoted = err.message().split('"').nth(1).map(|q| format!("\"{q}\""));
    let narrowed = quoted.and_then(|q| {
        let within = text.get(span.clone())?;
        (within.len() > q.len()).then(|| within.find(&q))?
    });
    let offset = span.start + narrowed.unwrap_or(0);
    let (line, column) = line_col(text, offset);
    let source_line = text.lines().nth(line - 1).unwrap_or("").to_string();
    Located {
        file: file.to_string(),
        line,
        column,
        message: err.message().trim().to_string(),
        source_line,
    }
}

/// Parses TOML text into `T`, with errors located in `file`.
pub fn parse_toml<T: serde::de::DeserializeOwned>(file: &str, text: &str) -> Result<T, Located> {
    toml::from_str(text).map_err(|e| toml_error(file, text, &e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn offsets_map_to_lines_and_columns() {
        let text = "a = 1\nbb = 2\n";
        assert_eq!(line_col(text, 0), (1, 1));
        assert_eq!(line_col(text, 6), (2, 1));
        assert_eq!(line_col(text, 9), (2, 4));
    }

    #[test]
    fn toml_errors_carry_a_position_and_a_caret() {
        #[derive(serde::Deserialize, Debug)]
        #[serde(deny_unknown_fields)]
        #[allow(dead_code)]
        struct S {
            a: u32,
        }
        let err = parse_toml::<S>("r.toml", "a = 1\nb = 2\n").unwrap_err();
        assert_eq!((err.line, err.column), (2, 1));
        assert!(err.message.contains("unknown field `b`"), "{}", err.message);
        let shown = err.to_string();
        assert!(
            shown.starts_with("r.toml:2:1: unknown field `b`"),
            "{shown}"
        );
        assert!(shown.contains("| b = 2"), "{shown}");
    }

    #[test]
    fn an_error_about_an_array_element_points_at_the_element() {
        #[derive(serde::Deserialize, Debug)]
        #[allow(dead_code)]
        struct S {
            a: Vec<Word>,
        }
        #[derive(serde::Deserialize, Debug)]
        #[serde(try_from = "String")]
        struct Word;
        impl TryFrom<String> for Word {
            type Error = String;
            fn try_from(s: String) -> Result<Word, String> {
                if s.contains(' ') {
                    Err(format!("{s:?} is two words"))
                } else {
                    Ok(Word)
                }
            }
        }
        let err = parse_toml::<S>("r.toml", "a = [\"ok\", \"not ok\"]\n").unwrap_err();
        assert_eq!((err.line, err.column), (1, 12), "{err}");
    }
}
