//! Audit events from the `audit:events` stream: checking their fields and encoding the good
//! ones as `audit_log` COPY tuples; the others become dead letters with their raw fields.

use std::borrow::Cow;
use std::net::IpAddr;

use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine;
use serde_json::Value;

use crate::copy::{CopyWriter, MAX_FIELD_BYTES};
use crate::repr::{bytes_repr, str_repr};
use crate::timestamp::{parse_event_time, TimestampError};

/// Columns of an `audit_log` tuple: stream_id, actor_id, action, target_type, target_id, ip,
/// occurred_at, metadata.
const AUDIT_COLUMNS: i16 = 8;

/// Fractional-second digits kept of an `occurred_at`: Postgres stores microseconds. Clients
/// in Go (`RFC3339Nano`) and Java (`Instant.toString`) write nine digits.
const KEPT_FRACTION_DIGITS: usize = 6;

/// Reason given for an entry that `XAUTOCLAIM` or `XRANGE` reports without fields.
pub const DELETED_REASON: &str = "entry was deleted from the stream";

/// One stream entry: its id and its fields, or `None` when it was deleted.
#[derive(Debug)]
pub struct Entry<'a> {
    /// The stream entry id, such as `1700000000000-0`.
    pub id: &'a [u8],
    /// Field names and values in stream order, or `None` for a deleted entry.
    pub fields: Option<Vec<(&'a [u8], &'a [u8])>>,
}

/// A malformed entry, to be stored in `audit_dead_letters`.
#[derive(Debug, PartialEq, Eq)]
pub struct DeadLetter {
    /// The stream entry id.
    pub id: Vec<u8>,
    /// The raw fields as JSON object text that `jsonb` always accepts.
    pub fields_json: String,
    /// Why the entry was refused: a lowercase fact naming the field.
    pub reason: String,
}

/// COPY tuples for the good entries of a batch, and dead letters for the others.
#[derive(Debug, Default)]
pub struct Batch {
    /// `audit_log` tuples, without COPY header or trailer.
    pub copy: CopyWriter,
    /// Tuples in `copy`.
    pub rows: u64,
    /// Entries refused, in batch order.
    pub dead: Vec<DeadLetter>,
}

/// An entry whose fields passed every check.
struct Event<'a> {
    stream_id: &'a str,
    actor_id: &'a str,
    action: &'a str,
    target_type: &'a str,
    target_id: &'a str,
    ip: Option<IpAddr>,
    occurred_at: i64,
    metadata: Option<&'a str>,
}

/// Checks and encodes a batch; one bad entry never fails the others.
pub fn encode_entries(entries: &[Entry<'_>]) -> Batch {
    let mut batch = Batch::default();
    for entry in entries {
        let Some(fields) = &entry.fields else {
            batch.dead.push(DeadLetter {
                id: entry.id.to_vec(),
                fields_json: "{}".to_owned(),
                reason: DELETED_REASON.to_owned(),
            });
            continue;
        };
        match check_event(entry.id, fields) {
            Ok(event) => {
                write_event(&mut batch.copy, &event);
                batch.rows += 1;
            }
            Err(reason) => batch.dead.push(DeadLetter {
                id: entry.id.to_vec(),
                fields_json: raw_fields_json(fields),
                reason,
            }),
        }
    }
    batch
}

fn check_event<'a>(id: &'a [u8], fields: &[(&'a [u8], &'a [u8])]) -> Result<Event<'a>, String> {
    let stream_id = match std::str::from_utf8(id) {
        Ok(text) if !text.is_empty() && !text.contains('\0') && text.len() <= MAX_FIELD_BYTES => {
            text
        }
        _ => return Err(format!("stream id is not valid text: {}", bytes_repr(id))),
    };
    let required = |name: &str| match text_field(fields, name)? {
        None => Err(format!("missing field {name}")),
        Some("") => Err(format!("field {name} is empty")),
        Some(text) => Ok(text),
    };
    let optional = |name: &str| -> Result<Option<&str>, String> {
        Ok(text_field(fields, name)?.filter(|text| !text.is_empty()))
    };
    let actor_id = required("actor_id")?;
    let action = required("action")?;
    let target_type = required("target_type")?;
    let target_id = required("target_id")?;
    let occurred_at = required("occurred_at")?;
    let occurred_at = parse_event_time(&cut_fraction(occurred_at)).map_err(|err| match err {
        TimestampError::Unrecognised => format!(
            "occurred_at is neither ISO 8601 with an offset nor epoch milliseconds: {}",
            str_repr(occurred_at)
        ),
        TimestampError::OutOfRange => {
            format!(
                "occurred_at is outside the years 0001 to 9999: {}",
                str_repr(occurred_at)
            )
        }
    })?;
    let ip = match optional("ip")? {
        None => None,
        Some(text) => Some(
            text.parse::<IpAddr>()
                .map_err(|_| format!("ip is not an IP address: {}", str_repr(text)))?,
        ),
    };
    let metadata = optional("metadata")?;
    if let Some(text) = metadata {
        check_metadata(text)?;
    }
    Ok(Event {
        stream_id,
        actor_id,
        action,
        target_type,
        target_id,
        ip,
        occurred_at,
        metadata,
    })
}

/// `text` with a fractional second of more than six digits cut to six. Cut, not rounded, so
/// that an event never moves into the next second (or day) than the one its client wrote.
fn cut_fraction(text: &str) -> Cow<'_, str> {
    let Some(dot) = text.find('.') else {
        return Cow::Borrowed(text);
    };
    let fraction = &text[dot + 1..];
    let digits = fraction.bytes().take_while(u8::is_ascii_digit).count();
    if digits <= KEPT_FRACTION_DIGITS {
        return Cow::Borrowed(text);
    }
    let kept = dot + 1 + KEPT_FRACTION_DIGITS;
    Cow::Owned(format!("{}{}", &text[..kept], &fraction[digits..]))
}

/// The field's text, `None` when it is absent, or the reason it cannot be stored.
fn text_field<'a>(fields: &[(&'a [u8], &'a [u8])], name: &str) -> Result<Option<&'a str>, String> {
    let Some(&(_, value)) = fields.iter().find(|(field, _)| *field == name.as_bytes()) else {
        return Ok(None);
    };
    let text =
        std::str::from_utf8(value).map_err(|_| format!("field {name} is not valid UTF-8"))?;
    if text.contains('\0') {
        return Err(format!("field {name} contains a NUL byte"));
    }
    if text.len() > MAX_FIELD_BYTES {
        return Err(format!("field {name} is longer than 1 GiB"));
    }
    Ok(Some(text))
}

fn check_metadata(text: &str) -> Result<(), String> {
    let value: Value = serde_json::from_str(text)
        .map_err(|_| format!("metadata is not valid JSON: {}", str_repr(text)))?;
    if !value.is_object() {
        return Err("metadata is not a JSON object".to_owned());
    }
    if holds_nul(&value) {
        return Err("metadata contains \\u0000, which jsonb cannot store".to_owned());
    }
    Ok(())
}

/// Whether any string or object key inside `value` holds U+0000.
fn holds_nul(value: &Value) -> bool {
    match value {
        Value::String(text) => text.contains('\0'),
        Value::Array(items) => items.iter().any(holds_nul),
        Value::Object(map) => map
            .iter()
            .any(|(key, item)| key.contains('\0') || holds_nul(item)),
        Value::Null | Value::Bool(_) | Value::Number(_) => false,
    }
}

fn write_event(copy: &mut CopyWriter, event: &Event<'_>) {
    copy.begin_tuple(AUDIT_COLUMNS);
    for text in [
        event.stream_id,
        event.actor_id,
        event.action,
        event.target_type,
        event.target_id,
    ] {
        copy.text(text.as_bytes());
    }
    match event.ip {
        Some(address) => copy.inet(address),
        None => copy.null(),
    }
    copy.timestamptz(event.occurred_at);
    match event.metadata {
        Some(json) => copy.jsonb(json.as_bytes()),
        None => copy.null(),
    }
}

/// The fields as a JSON object in stream order. Names and values that are not UTF-8 or hold
/// NUL (which `jsonb` rejects) are kept as base64: a value as `{"base64": "..."}`, a name as
/// the string `"base64:..."`, since object keys must be strings.
pub fn raw_fields_json(fields: &[(&[u8], &[u8])]) -> String {
    let mut json = String::from("{");
    for (position, (name, value)) in fields.iter().enumerate() {
        if position > 0 {
            json.push(',');
        }
        match storable_text(name) {
            Some(text) => json.push_str(&json_string(text)),
            None => json.push_str(&json_string(&format!("base64:{}", BASE64.encode(name)))),
        }
        json.push(':');
        match storable_text(value) {
            Some(text) => json.push_str(&json_string(text)),
            None => {
                json.push_str("{\"base64\":");
                json.push_str(&json_string(&BASE64.encode(value)));
                json.push('}');
            }
        }
    }
    json.push('}');
    json
}

fn storable_text(bytes: &[u8]) -> Option<&str> {
    std::str::from_utf8(bytes)
        .ok()
        .filter(|text| !text.contains('\0'))
}

fn json_string(text: &str) -> String {
    Value::String(text.to_owned()).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    type Fields = Vec<(&'static [u8], &'static [u8])>;

    fn good() -> Fields {
        vec![
            (b"actor_id", b"u1"),
            (b"action", b"upload.create"),
            (b"target_type", b"upload"),
            (b"target_id", b"up9"),
            (b"ip", b"10.0.0.1"),
            (b"occurred_at", b"2000-01-01T00:00:01Z"),
            (b"metadata", b"{\"size\": 3}"),
        ]
    }

    fn with(name: &'static [u8], value: &'static [u8]) -> Fields {
        let mut fields: Fields = good().into_iter().filter(|(n, _)| *n != name).collect();
        fields.push((name, value));
        fields
    }

    fn without(name: &'static [u8]) -> Fields {
        good().into_iter().filter(|(n, _)| *n != name).collect()
    }

    fn reason(fields: Fields) -> String {
        let batch = encode_entries(&[Entry {
            id: b"1-0",
            fields: Some(fields),
        }]);
        assert_eq!(batch.rows, 0);
        assert!(batch.copy.as_bytes().is_empty());
        batch.dead.into_iter().next().unwrap().reason
    }

    #[test]
    fn encodes_a_good_entry_in_column_order() {
        let batch = encode_entries(&[Entry {
            id: b"1-0",
            fields: Some(good()),
        }]);
        assert_eq!(batch.rows, 1);
        assert!(batch.dead.is_empty());

        let mut expected = CopyWriter::default();
        expected.begin_tuple(8);
        for text in ["1-0", "u1", "upload.create", "upload", "up9"] {
            expected.text(text.as_bytes());
        }
        expected.inet("10.0.0.1".parse().unwrap());
        expected.timestamptz(1_000_000);
        expected.jsonb(b"{\"size\": 3}");
        assert_eq!(batch.copy.as_bytes(), expected.as_bytes());
    }

    #[test]
    fn writes_null_for_absent_or_empty_optional_fields() {
        let mut fields = without(b"ip");
        fields.retain(|(n, _)| *n != b"metadata");
        fields.push((b"metadata", b""));
        fields.push((b"unknown", b"\xff"));
        let batch = encode_entries(&[Entry {
            id: b"2-0",
            fields: Some(fields),
        }]);
        assert_eq!(batch.rows, 1);
        let bytes = batch.copy.as_bytes();
        let null = [0xff; 4];
        let tail = &bytes[bytes.len() - 20..];
        assert_eq!(&tail[..4], null);
        assert_eq!(&tail[4..8], [0, 0, 0, 8]);
        assert_eq!(&bytes[bytes.len() - 4..], null);
    }

    #[test]
    fn names_the_missing_or_unreadable_field() {
        assert_eq!(reason(without(b"action")), "missing field action");
        assert_eq!(reason(with(b"actor_id", b"")), "field actor_id is empty");
        assert_eq!(
            reason(with(b"actor_id", b"\xffu")),
            "field actor_id is not valid UTF-8"
        );
        assert_eq!(
            reason(with(b"target_id", b"a\0b")),
            "field target_id contains a NUL byte"
        );
        assert_eq!(
            reason(with(b"ip", b"1.2.3.4\0")),
            "field ip contains a NUL byte"
        );
    }

    #[test]
    fn explains_bad_times_addresses_and_metadata() {
        assert_eq!(
            reason(with(b"occurred_at", b"2026-13-01")),
            "occurred_at is neither ISO 8601 with an offset nor epoch milliseconds: '2026-13-01'"
        );
        assert_eq!(
            reason(with(b"occurred_at", b"2026-03-05T10:00:00")),
            "occurred_at is neither ISO 8601 with an offset nor epoch milliseconds: \
             '2026-03-05T10:00:00'"
        );
        assert_eq!(
            reason(with(b"occurred_at", b"99999999999999999")),
            "occurred_at is outside the years 0001 to 9999: '99999999999999999'"
        );
        assert_eq!(
            reason(with(b"ip", b"999.1.1.1")),
            "ip is not an IP address: '999.1.1.1'"
        );
        assert_eq!(
            reason(with(b"ip", b"fe80::1%eth0")),
            "ip is not an IP address: 'fe80::1%eth0'"
        );
        assert_eq!(
            reason(with(b"metadata", b"[1]")),
            "metadata is not a JSON object"
        );
        assert_eq!(
            reason(with(b"metadata", b"{bad")),
            "metadata is not valid JSON: '{bad'"
        );
        assert_eq!(
            reason(with(b"metadata", b"{\"a\": [\"x\\u0000\"]}")),
            "metadata contains \\u0000, which jsonb cannot store"
        );
    }

    #[test]
    fn cuts_fractions_beyond_microseconds() {
        assert_eq!(
            cut_fraction("2026-01-01T00:00:00.123456789Z"),
            "2026-01-01T00:00:00.123456Z"
        );
        assert_eq!(
            cut_fraction("2026-01-01T00:00:00.9999999+01:00"),
            "2026-01-01T00:00:00.999999+01:00"
        );
        assert_eq!(
            cut_fraction("2026-01-01T00:00:00.5Z"),
            "2026-01-01T00:00:00.5Z"
        );
        assert_eq!(cut_fraction("1700000000000"), "1700000000000");
        assert_eq!(
            reason(with(b"occurred_at", b"2026-01-01T00:00:00.1234567890")),
            "occurred_at is neither ISO 8601 with an offset nor epoch milliseconds: \
             '2026-01-01T00:00:00.1234567890'"
        );
    }

    #[test]
    fn accepts_epoch_milliseconds_and_ipv6() {
        let mut fields = with(b"occurred_at", b"946684800001");
        fields.retain(|(n, _)| *n != b"ip");
        fields.push((b"ip", b"2001:db8::1"));
        let batch = encode_entries(&[Entry {
            id: b"3-0",
            fields: Some(fields),
        }]);
        assert_eq!(batch.rows, 1);
        let mut inet = CopyWriter::default();
        inet.inet("2001:db8::1".parse().unwrap());
        inet.timestamptz(1_000);
        let bytes = batch.copy.as_bytes();
        assert!(bytes
            .windows(inet.as_bytes().len())
            .any(|w| w == inet.as_bytes()));
    }

    #[test]
    fn dead_letters_carry_raw_fields_that_jsonb_accepts() {
        let fields: Fields = vec![
            (b"action", b"x\0y"),
            (b"\xffname", b"\xfe"),
            (b"ok", b"\"q\""),
        ];
        let batch = encode_entries(&[
            Entry {
                id: b"4-0",
                fields: Some(fields),
            },
            Entry {
                id: b"5-0",
                fields: None,
            },
        ]);
        assert_eq!(
            batch.dead,
            [
                DeadLetter {
                    id: b"4-0".to_vec(),
                    fields_json: "{\"action\":{\"base64\":\"eAB5\"},\"base64:/25hbWU=\":\
                                  {\"base64\":\"/g==\"},\"ok\":\"\\\"q\\\"\"}"
                        .to_owned(),
                    reason: "missing field actor_id".to_owned(),
                },
                DeadLetter {
                    id: b"5-0".to_vec(),
                    fields_json: "{}".to_owned(),
                    reason: DELETED_REASON.to_owned(),
                },
            ]
        );
    }

    #[test]
    fn one_bad_entry_does_not_fail_the_batch() {
        let batch = encode_entries(&[
            Entry {
                id: b"1-0",
                fields: Some(good()),
            },
            Entry {
                id: b"2-0",
                fields: Some(without(b"action")),
            },
            Entry {
                id: b"3-0",
                fields: Some(good()),
            },
        ]);
        assert_eq!(batch.rows, 2);
        assert_eq!(batch.dead.len(), 1);
        assert_eq!(batch.dead[0].id, b"2-0");
    }

    #[test]
    fn refuses_stream_ids_that_are_not_text() {
        let batch = encode_entries(&[Entry {
            id: b"\xff-0",
            fields: Some(good()),
        }]);
        assert_eq!(
            batch.dead[0].reason,
            "stream id is not valid text: b'\\xff-0'"
        );
    }
}
