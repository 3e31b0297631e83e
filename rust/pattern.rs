//! Key templates such as `usage:{day:date}:{account}:{metric}`: compiling them, splitting
//! Redis keys into typed segments, and formatting segments back into keys.

use crate::calendar::Date;
use crate::error::{CoreError, CoreResult};
use crate::repr::str_repr;

/// Separator between the segments of a key and of a template.
pub const SEPARATOR: u8 = b':';

/// Longest key that parses. A row's key columns come from its key, and a Postgres B-tree
/// index entry holds at most 2704 bytes, so a key much longer than this could never be
/// upserted: it would fail the whole batch ("index row size exceeds maximum"). Counter keys
/// are short by design; 2048 bytes leaves room for the index entry's own overhead.
pub const MAX_KEY_BYTES: usize = 2048;

/// Most named segments a template may have: a Postgres table holds at most 1600 columns, and
/// each row carries the value after the segments.
pub const MAX_NAMED_SEGMENTS: usize = 1599;

/// The type of a named segment, which decides its Postgres column type.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// Any non-empty UTF-8 text without NUL; a Postgres `text` column.
    Text,
    /// A calendar date spelled `YYYY-MM-DD`; a Postgres `date` column.
    Date,
}

impl Kind {
    /// The name used for the type inside a template, as in `{day:date}`.
    pub fn name(self) -> &'static str {
        match self {
            Kind::Text => "text",
            Kind::Date => "date",
        }
    }
}

/// One value of a named segment, borrowing its text from the key it was read from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Segment<'k> {
    /// The value of a text segment.
    Text(&'k str),
    /// The value of a date segment.
    Date(Date),
}

#[derive(Debug)]
enum Part {
    Literal(String),
    Named(usize),
}

/// A compiled key template.
#[derive(Debug)]
pub struct Template {
    source: String,
    parts: Vec<Part>,
    names: Vec<String>,
    kinds: Vec<Kind>,
    scan_match: String,
}

impl Template {
    /// Compiles `source`, raising [`CoreError::Template`] with the reason when it is not a
    /// `:`-separated list of literals and `{name}` / `{name:type}` segments with at least one
    /// named segment, no empty segment and no name used twice.
    pub fn compile(source: &str) -> CoreResult<Self> {
        let fail = |reason: String| CoreError::Template(format!("key template {reason}"));
        let shown = str_repr(source);
        if source.is_empty() {
            return Err(fail("is empty".to_owned()));
        }

        let mut parts = Vec::new();
        let mut names: Vec<String> = Vec::new();
        let mut kinds = Vec::new();
        for piece in split_template(source).map_err(|reason| fail(format!("{shown} {reason}")))? {
            match piece {
                Piece::Literal(text) => {
                    if text.is_empty() {
                        return Err(fail(format!("{shown} has an empty segment")));
                    }
                    if text.contains('\0') {
                        return Err(fail(format!("{shown} contains a NUL character")));
                    }
                    parts.push(Part::Literal(text.to_owned()));
                }
                Piece::Named { name, kind } => {
                    if name.is_empty() {
                        return Err(fail(format!("{shown} has a segment with an empty name")));
                    }
                    if !is_identifier(name) {
                        return Err(fail(format!(
                            "{shown} has a segment name that is not an identifier: {}",
                            str_repr(name)
                        )));
                    }
                    let kind = parse_kind(kind).ok_or_else(|| {
                        fail(format!(
                            "{shown} gives segment {name} the unknown type {}; \
                             expected text or date",
                            str_repr(kind)
                        ))
                    })?;
                    if names.iter().any(|known| known == name) {
                        return Err(fail(format!("{shown} names segment {name} twice")));
                    }
                    parts.push(Part::Named(names.len()));
                    names.push(name.to_owned());
                    kinds.push(kind);
                }
            }
        }
        if names.is_empty() {
            return Err(fail(format!("{shown} has no named segment")));
        }
        if names.len() > MAX_NAMED_SEGMENTS {
            return Err(fail(format!(
                "{shown} has {} named segments; at most {MAX_NAMED_SEGMENTS} fit in a table",
                names.len()
            )));
        }

        let scan_match = scan_match(&parts);
        Ok(Template {
            source: source.to_owned(),
            parts,
            names,
            kinds,
            scan_match,
        })
    }

    /// The template text as given.
    pub fn source(&self) -> &str {
        &self.source
    }

    /// Names of the named segments, in order.
    pub fn names(&self) -> &[String] {
        &self.names
    }

    /// Types of the named segments, in order.
    pub fn kinds(&self) -> &[Kind] {
        &self.kinds
    }

    /// A `SCAN MATCH` glob covering every key of the template: the literal prefix before the
    /// first named segment, glob characters escaped, followed by `*`.
    pub fn scan_match(&self) -> &str {
        &self.scan_match
    }

    /// Splits `key` into its named segments, appended to `out` after clearing it.
    ///
    /// Returns false, leaving `out` in an unspecified state, when the key is malformed: longer
    /// than [`MAX_KEY_BYTES`], a different number of segments, a
    /// literal that differs, an empty segment, a segment that is not UTF-8 or holds a NUL
    /// byte, or a date that is not a real `YYYY-MM-DD` date.
    pub fn parse<'k>(&self, key: &'k [u8], out: &mut Vec<Segment<'k>>) -> bool {
        out.clear();
        if key.len() > MAX_KEY_BYTES {
            return false;
        }
        let mut pieces = key.split(|&byte| byte == SEPARATOR);
        for part in &self.parts {
            let Some(piece) = pieces.next() else {
                return false;
            };
            match part {
                Part::Literal(literal) => {
                    if piece != literal.as_bytes() {
                        return false;
                    }
                }
                Part::Named(index) => match parse_segment(piece, self.kinds[*index]) {
                    Some(segment) => out.push(segment),
                    None => return false,
                },
            }
        }
        pieces.next().is_none()
    }

    /// Raises [`CoreError::Argument`] unless `count` is the number of named segments.
    pub fn check_arity(&self, count: usize) -> CoreResult<()> {
        if count == self.names.len() {
            return Ok(());
        }
        Err(CoreError::argument(format!(
            "key template {} has {} named segments, got {count} values",
            str_repr(&self.source),
            self.names.len(),
        )))
    }

    /// Formats segments into the key that [`Template::parse`] reads back as the same values.
    ///
    /// Raises [`CoreError::Argument`] on a wrong number of segments, a segment of the wrong
    /// type, text that is empty or holds `:` or NUL, or a key longer than [`MAX_KEY_BYTES`].
    pub fn format(&self, segments: &[Segment<'_>]) -> CoreResult<Vec<u8>> {
        self.check_arity(segments.len())?;
        let mut key = Vec::with_capacity(self.source.len() + 16);
        for (position, part) in self.parts.iter().enumerate() {
            if position > 0 {
                key.push(SEPARATOR);
            }
            match part {
                Part::Literal(literal) => key.extend_from_slice(literal.as_bytes()),
                Part::Named(index) => {
                    let name = &self.names[*index];
                    match (self.kinds[*index], segments[*index]) {
                        (Kind::Text, Segment::Text(text)) => {
                            check_text_segment(name, text)?;
                            key.extend_from_slice(text.as_bytes());
                        }
                        (Kind::Date, Segment::Date(date)) => date.write_iso(&mut key),
                        (kind, _) => {
                            return Err(CoreError::argument(format!(
                                "segment {name} must be a {} value",
                                kind.name()
                            )));
                        }
                    }
                }
            }
        }
        if key.len() > MAX_KEY_BYTES {
            return Err(CoreError::argument(format!(
                "key would be {} bytes; keys are at most {MAX_KEY_BYTES}",
                key.len()
            )));
        }
        Ok(key)
    }
}

/// Reads one named segment of a key; `None` when it is malformed.
fn parse_segment(piece: &[u8], kind: Kind) -> Option<Segment<'_>> {
    if piece.is_empty() || piece.contains(&0) {
        return None;
    }
    match kind {
        Kind::Text => std::str::from_utf8(piece).ok().map(Segment::Text),
        Kind::Date => Date::parse(piece).map(Segment::Date),
    }
}

fn check_text_segment(name: &str, text: &str) -> CoreResult<()> {
    let problem = if text.is_empty() {
        "must not be empty"
    } else if text.as_bytes().contains(&SEPARATOR) {
        "must not contain ':'"
    } else if text.contains('\0') {
        "must not contain a NUL character"
    } else {
        return Ok(());
    };
    Err(CoreError::argument(format!(
        "segment {name} {problem}, got {}",
        str_repr(text)
    )))
}

enum Piece<'t> {
    Literal(&'t str),
    Named { name: &'t str, kind: &'t str },
}

/// Splits a template at the `:` that lie outside braces.
fn split_template(source: &str) -> Result<Vec<Piece<'_>>, String> {
    let mut pieces = Vec::new();
    let mut rest = source;
    loop {
        let (piece, tail) = if let Some(inner) = rest.strip_prefix('{') {
            let close = inner.find('}').ok_or("has an unclosed '{'")?;
            let body = &inner[..close];
            if body.contains('{') {
                return Err("has a '{' inside braces".to_owned());
            }
            let (name, kind) = body.split_once(':').unwrap_or((body, "text"));
            let after = &inner[close + 1..];
            if !after.is_empty() && !after.starts_with(':') {
                return Err("has text after '}' within a segment".to_owned());
            }
            (Piece::Named { name, kind }, after)
        } else {
            let end = rest.find(':').unwrap_or(rest.len());
            let literal = &rest[..end];
            if literal.contains(['{', '}']) {
                return Err(format!(
                    "mixes braces and text in segment {}",
                    str_repr(literal)
                ));
            }
            (Piece::Literal(literal), &rest[end..])
        };
        pieces.push(piece);
        match tail.strip_prefix(':') {
            Some(next) => rest = next,
            None => return Ok(pieces),
        }
    }
}

fn parse_kind(kind: &str) -> Option<Kind> {
    match kind {
        "text" => Some(Kind::Text),
        "date" => Some(Kind::Date),
        _ => None,
    }
}

fn is_identifier(name: &str) -> bool {
    let mut chars = name.chars();
    let first_ok = chars
        .next()
        .is_some_and(|ch| ch.is_ascii_alphabetic() || ch == '_');
    first_ok && chars.all(|ch| ch.is_ascii_alphanumeric() || ch == '_')
}

fn scan_match(parts: &[Part]) -> String {
    let mut glob = String::new();
    for part in parts {
        let Part::Literal(literal) = part else {
            break;
        };
        for ch in literal.chars() {
            if matches!(ch, '*' | '?' | '[' | ']' | '\\') {
                glob.push('\\');
            }
            glob.push(ch);
        }
        glob.push(char::from(SEPARATOR));
    }
    glob.push('*');
    glob
}

#[cfg(test)]
mod tests {
    use super::*;

    fn compile(source: &str) -> Template {
        Template::compile(source).unwrap()
    }

    fn template_error(source: &str) -> String {
        Template::compile(source).unwrap_err().to_string()
    }

    fn parsed<'k>(template: &Template, key: &'k [u8]) -> Option<Vec<Segment<'k>>> {
        let mut out = Vec::new();
        template.parse(key, &mut out).then_some(out)
    }

    fn date(year: u16, month: u8, day: u8) -> Segment<'static> {
        Segment::Date(Date::new(year, month, day).unwrap())
    }

    #[test]
    fn compiles_names_kinds_and_scan_match() {
        let quota = compile("quota:{account}:{metric}");
        assert_eq!(quota.names(), ["account", "metric"]);
        assert_eq!(quota.kinds(), [Kind::Text, Kind::Text]);
        assert_eq!(quota.scan_match(), "quota:*");
        assert_eq!(quota.source(), "quota:{account}:{metric}");

        let usage = compile("usage:{day:date}:{account}:{metric:text}");
        assert_eq!(usage.names(), ["day", "account", "metric"]);
        assert_eq!(usage.kinds(), [Kind::Date, Kind::Text, Kind::Text]);
        assert_eq!(usage.scan_match(), "usage:*");

        assert_eq!(compile("{a}:tail").scan_match(), "*");
        assert_eq!(compile("app:v1:{a}:x:{b}").scan_match(), "app:v1:*");
        assert_eq!(compile("we*rd:{a}").scan_match(), "we\\*rd:*");
    }

    #[test]
    fn rejects_bad_templates_with_the_reason() {
        assert_eq!(template_error(""), "key template is empty");
        assert_eq!(
            template_error("quota"),
            "key template 'quota' has no named segment"
        );
        assert_eq!(
            template_error("quota:{a:int}"),
            "key template 'quota:{a:int}' gives segment a the unknown type 'int'; \
             expected text or date"
        );
        assert_eq!(
            template_error("quota:{}"),
            "key template 'quota:{}' has a segment with an empty name"
        );
        assert_eq!(
            template_error("quota:{:date}"),
            "key template 'quota:{:date}' has a segment with an empty name"
        );
        assert_eq!(
            template_error("q:{a}:{a}"),
            "key template 'q:{a}:{a}' names segment a twice"
        );
        assert_eq!(
            template_error("q::{a}"),
            "key template 'q::{a}' has an empty segment"
        );
        assert_eq!(
            template_error("q:{a}:"),
            "key template 'q:{a}:' has an empty segment"
        );
        assert_eq!(
            template_error("q:{a"),
            "key template 'q:{a' has an unclosed '{'"
        );
        assert_eq!(
            template_error("q:{a}x"),
            "key template 'q:{a}x' has text after '}' within a segment"
        );
        assert_eq!(
            template_error("q:x{a}"),
            "key template 'q:x{a}' mixes braces and text in segment 'x{a}'"
        );
        assert_eq!(
            template_error("q:{a-b}"),
            "key template 'q:{a-b}' has a segment name that is not an identifier: 'a-b'"
        );
    }

    #[test]
    fn parses_well_formed_keys() {
        let quota = compile("quota:{account}:{metric}");
        assert_eq!(
            parsed(&quota, b"quota:a1:uploads"),
            Some(vec![Segment::Text("a1"), Segment::Text("uploads")])
        );
        assert_eq!(
            parsed(&quota, "quota:caf\u{e9}:x".as_bytes()),
            Some(vec![Segment::Text("caf\u{e9}"), Segment::Text("x")])
        );

        let usage = compile("usage:{day:date}:{account}:{metric}");
        assert_eq!(
            parsed(&usage, b"usage:2024-02-29:a:b"),
            Some(vec![
                date(2024, 2, 29),
                Segment::Text("a"),
                Segment::Text("b")
            ])
        );
    }

    #[test]
    fn rejects_malformed_keys() {
        let quota = compile("quota:{account}:{metric}");
        for key in [
            &b"quota:acct"[..],
            b"quota:a:b:c",
            b"quota::b",
            b"quota:a:",
            b"quota:",
            b"quota",
            b"",
            b"quotas:a:b",
            b"Quota:a:b",
            b"quota:a\x00:b",
            b"quota:a:\xff",
            b"quota:\xc3:b",
        ] {
            assert_eq!(parsed(&quota, key), None, "{key:?}");
        }

        let usage = compile("usage:{day:date}:{account}:{metric}");
        for key in [
            &b"usage:2026-02-30:a:b"[..],
            b"usage:2025-02-29:a:b",
            b"usage:0000-01-01:a:b",
            b"usage:2026-1-01:a:b",
            b"usage:20260101:a:b",
            b"usage:2026-01-01T00:a:b",
        ] {
            assert_eq!(parsed(&usage, key), None, "{key:?}");
        }
    }

    #[test]
    fn refuses_keys_too_long_to_index() {
        let quota = compile("quota:{account}:{metric}");
        let longest = format!("quota:{}:m", "a".repeat(MAX_KEY_BYTES - 8));
        assert_eq!(longest.len(), MAX_KEY_BYTES);
        assert!(parsed(&quota, longest.as_bytes()).is_some());
        let longer = format!("quota:{}:m", "a".repeat(MAX_KEY_BYTES - 7));
        assert_eq!(parsed(&quota, longer.as_bytes()), None);

        let account = "a".repeat(MAX_KEY_BYTES);
        assert_eq!(
            quota
                .format(&[Segment::Text(&account), Segment::Text("m")])
                .unwrap_err()
                .to_string(),
            "key would be 2056 bytes; keys are at most 2048"
        );
    }

    #[test]
    fn checks_literals_after_named_segments() {
        let template = compile("app:{a}:v1:{b}");
        assert!(parsed(&template, b"app:x:v1:y").is_some());
        assert!(parsed(&template, b"app:x:v2:y").is_none());
    }

    #[test]
    fn formats_the_inverse_of_parse() {
        let usage = compile("usage:{day:date}:{account}:{metric}");
        let segments = [
            date(2026, 3, 5),
            Segment::Text("a1"),
            Segment::Text("uploads"),
        ];
        let key = usage.format(&segments).unwrap();
        assert_eq!(key, b"usage:2026-03-05:a1:uploads");
        assert_eq!(parsed(&usage, &key), Some(segments.to_vec()));
    }

    #[test]
    fn refuses_segments_that_could_not_be_read_back() {
        let quota = compile("quota:{account}:{metric}");
        let error = |segments: &[Segment<'_>]| quota.format(segments).unwrap_err().to_string();
        assert_eq!(
            error(&[Segment::Text("a")]),
            "key template 'quota:{account}:{metric}' has 2 named segments, got 1 values"
        );
        assert_eq!(
            error(&[Segment::Text("a:b"), Segment::Text("m")]),
            "segment account must not contain ':', got 'a:b'"
        );
        assert_eq!(
            error(&[Segment::Text("a"), Segment::Text("")]),
            "segment metric must not be empty, got ''"
        );
        assert_eq!(
            error(&[Segment::Text("a\0"), Segment::Text("m")]),
            "segment account must not contain a NUL character, got 'a\\x00'"
        );
        assert_eq!(
            error(&[date(2026, 1, 1), Segment::Text("m")]),
            "segment account must be a text value"
        );
    }
}
