//! Short, single-line renderings of keys and values for the examples and reasons the workers
//! log, spelled the way Python's `repr` spells bytes and strings.

use std::fmt::Write;

/// Longest rendering, in characters; longer values are cut and marked with `...` so that a
/// log line holding a few examples stays readable on one screen line.
pub const MAX_REPR_CHARS: usize = 60;

/// Renders bytes as Python's `repr(bytes)` would, cut to [`MAX_REPR_CHARS`].
pub fn bytes_repr(value: &[u8]) -> String {
    let quote = pick_quote(value.contains(&b'\''), value.contains(&b'"'));
    let pieces = value.iter().map(|&byte| escape_byte(byte, quote));
    assemble("b", quote, pieces)
}

/// Renders text as Python's `repr(str)` would, cut to [`MAX_REPR_CHARS`]. Control
/// characters are escaped; other characters are shown as they are.
pub fn str_repr(value: &str) -> String {
    let quote = pick_quote(value.contains('\''), value.contains('"'));
    let pieces = value.chars().map(|ch| escape_char(ch, quote));
    assemble("", quote, pieces)
}

/// Renders a key that is valid UTF-8 as plain text when it holds no control character
/// (cut to [`MAX_REPR_CHARS`]), and as [`bytes_repr`] otherwise.
pub fn key_text(key: &[u8]) -> String {
    match std::str::from_utf8(key) {
        Ok(text) if !text.chars().any(char::is_control) => {
            if text.chars().count() <= MAX_REPR_CHARS {
                text.to_owned()
            } else {
                let kept: String = text.chars().take(MAX_REPR_CHARS - 3).collect();
                kept + "..."
            }
        }
        _ => bytes_repr(key),
    }
}

/// Python's rule: single quotes unless the value holds a single quote and no double quote.
fn pick_quote(has_single: bool, has_double: bool) -> char {
    if has_single && !has_double {
        '"'
    } else {
        '\''
    }
}

fn escape_byte(byte: u8, quote: char) -> String {
    match byte {
        b'\\' => "\\\\".to_owned(),
        b'\t' => "\\t".to_owned(),
        b'\n' => "\\n".to_owned(),
        b'\r' => "\\r".to_owned(),
        _ if char::from(byte) == quote => format!("\\{quote}"),
        0x20..=0x7e => char::from(byte).to_string(),
        _ => format!("\\x{byte:02x}"),
    }
}

fn escape_char(ch: char, quote: char) -> String {
    match ch {
        '\\' => "\\\\".to_owned(),
        '\t' => "\\t".to_owned(),
        '\n' => "\\n".to_owned(),
        '\r' => "\\r".to_owned(),
        _ if ch == quote => format!("\\{quote}"),
        _ if ch.is_control() => {
            let mut escaped = String::new();
            let code = u32::from(ch);
            if code <= 0xff {
                write!(escaped, "\\x{code:02x}").expect("writing to a String cannot fail");
            } else {
                write!(escaped, "\\u{code:04x}").expect("writing to a String cannot fail");
            }
            escaped
        }
        _ => ch.to_string(),
    }
}

/// Joins prefix, quotes and as many escaped pieces as fit in [`MAX_REPR_CHARS`], adding `...`
/// after the closing quote when some were left out.
fn assemble(prefix: &str, quote: char, pieces: impl Iterator<Item = String>) -> String {
    let mut out = String::from(prefix);
    out.push(quote);
    let mut used = out.chars().count() + 1;
    let mut pieces = pieces.peekable();
    while let Some(piece) = pieces.peek() {
        let width = piece.chars().count();
        if used + width > MAX_REPR_CHARS {
            break;
        }
        used += width;
        out.push_str(piece);
        pieces.next();
    }
    out.push(quote);
    if pieces.peek().is_some() {
        out.push_str("...");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_bytes_like_python() {
        assert_eq!(bytes_repr(b"quota:acct"), "b'quota:acct'");
        assert_eq!(bytes_repr(b"a\x00\xff\n\\"), "b'a\\x00\\xff\\n\\\\'");
        assert_eq!(bytes_repr(b"it's"), "b\"it's\"");
        assert_eq!(bytes_repr(b"'\""), "b'\\'\"'");
        assert_eq!(bytes_repr(b""), "b''");
    }

    #[test]
    fn renders_text_like_python() {
        assert_eq!(str_repr("2026-13-01"), "'2026-13-01'");
        assert_eq!(str_repr("caf\u{e9}\u{7}"), "'caf\u{e9}\\x07'");
        assert_eq!(str_repr("a'b"), "\"a'b\"");
    }

    #[test]
    fn cuts_long_values_and_marks_the_cut() {
        let long = bytes_repr(&[b'x'; 100]);
        assert_eq!(long, format!("b'{}'...", "x".repeat(57)));
        assert_eq!(long.chars().count(), MAX_REPR_CHARS + 3);

        let exact = str_repr(&"y".repeat(58));
        assert_eq!(exact, format!("'{}'", "y".repeat(58)));
        assert_eq!(
            str_repr(&"y".repeat(59)),
            format!("'{}'...", "y".repeat(58))
        );
    }

    #[test]
    fn shows_printable_keys_as_text() {
        assert_eq!(key_text(b"quota:a1:uploads"), "quota:a1:uploads");
        assert_eq!(key_text(b"quota:a\n:b"), "b'quota:a\\n:b'");
        assert_eq!(key_text(&[b'k'; 70]), format!("{}...", "k".repeat(57)));
    }
}
