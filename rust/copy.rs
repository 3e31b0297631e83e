//! Postgres binary `COPY` encoding: the stream header and trailer, and one writer for tuples.

use std::net::IpAddr;

/// Start of every binary COPY stream: the 11-byte signature, 32-bit flags (no OIDs) and a
/// 32-bit header-extension length of 0.
pub const COPY_HEADER: [u8; 19] = *b"PGCOPY\n\xff\r\n\0\0\0\0\0\0\0\0\0";

/// End of every binary COPY stream: a field count of -1.
pub const COPY_TRAILER: [u8; 2] = [0xff, 0xff];

/// Longest field a caller may hand to [`CopyWriter`]: Postgres caps a `text` or `jsonb` value
/// at 1 GiB, so anything longer could not be stored whatever its encoding.
pub const MAX_FIELD_BYTES: usize = 1 << 30;

/// `inet` address family codes of Postgres's wire format (`PGSQL_AF_INET` and
/// `PGSQL_AF_INET6`), which are not the operating system's `AF_INET` values.
const PG_AF_INET: u8 = 2;
const PG_AF_INET6: u8 = 3;

/// Appends binary COPY tuples to a buffer; the caller adds header and trailer around them.
#[derive(Debug, Default)]
pub struct CopyWriter {
    buf: Vec<u8>,
}

impl CopyWriter {
    /// Starts a tuple of `fields` fields; exactly that many field writes must follow.
    pub fn begin_tuple(&mut self, fields: i16) {
        self.buf.extend_from_slice(&fields.to_be_bytes());
    }

    /// Writes a SQL NULL.
    pub fn null(&mut self) {
        self.buf.extend_from_slice(&(-1i32).to_be_bytes());
    }

    /// Writes a `text` field from UTF-8 bytes of at most [`MAX_FIELD_BYTES`].
    pub fn text(&mut self, utf8: &[u8]) {
        self.length(utf8.len());
        self.buf.extend_from_slice(utf8);
    }

    /// Writes a `date` field: days since 2000-01-01.
    pub fn date(&mut self, pg_days: i32) {
        self.length(4);
        self.buf.extend_from_slice(&pg_days.to_be_bytes());
    }

    /// Writes a `bigint` field.
    pub fn bigint(&mut self, value: i64) {
        self.length(8);
        self.buf.extend_from_slice(&value.to_be_bytes());
    }

    /// Writes a `timestamptz` field: microseconds since 2000-01-01T00:00:00Z.
    pub fn timestamptz(&mut self, pg_micros: i64) {
        self.bigint(pg_micros);
    }

    /// Writes an `inet` field holding one host address (no netmask).
    pub fn inet(&mut self, address: IpAddr) {
        let (family, octets): (u8, &[u8]) = match &address {
            IpAddr::V4(v4) => (PG_AF_INET, &v4.octets()),
            IpAddr::V6(v6) => (PG_AF_INET6, &v6.octets()),
        };
        let address_len = u8::try_from(octets.len()).expect("an IP address has 4 or 16 bytes");
        self.length(4 + octets.len());
        self.buf
            .extend_from_slice(&[family, address_len * 8, 0, address_len]);
        self.buf.extend_from_slice(octets);
    }

    /// Writes a `jsonb` field from JSON text of at most [`MAX_FIELD_BYTES`].
    pub fn jsonb(&mut self, json: &[u8]) {
        // Format version 1 is the only one Postgres's jsonb_recv accepts.
        self.length(1 + json.len());
        self.buf.push(1);
        self.buf.extend_from_slice(json);
    }

    /// The tuples written so far.
    pub fn as_bytes(&self) -> &[u8] {
        &self.buf
    }

    fn length(&mut self, len: usize) {
        let len = i32::try_from(len).expect("callers keep fields within MAX_FIELD_BYTES");
        self.buf.extend_from_slice(&len.to_be_bytes());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_and_trailer_match_the_postgres_format() {
        assert_eq!(&COPY_HEADER[..11], b"PGCOPY\n\xff\r\n\0");
        assert_eq!(&COPY_HEADER[11..], [0; 8]);
        assert_eq!(COPY_TRAILER, [0xff, 0xff]);
    }

    #[test]
    fn encodes_scalar_fields_big_endian_with_lengths() {
        let mut copy = CopyWriter::default();
        copy.begin_tuple(4);
        copy.text(b"ab");
        copy.date(-1);
        copy.bigint(258);
        copy.null();
        assert_eq!(
            copy.as_bytes(),
            [
                &[0, 4][..],
                &[0, 0, 0, 2, b'a', b'b'],
                &[0, 0, 0, 4, 0xff, 0xff, 0xff, 0xff],
                &[0, 0, 0, 8, 0, 0, 0, 0, 0, 0, 1, 2],
                &[0xff, 0xff, 0xff, 0xff],
            ]
            .concat()
        );
    }

    #[test]
    fn encodes_inet_and_jsonb() {
        let mut copy = CopyWriter::default();
        copy.inet("10.1.2.3".parse().unwrap());
        copy.inet("::1".parse().unwrap());
        copy.jsonb(b"{}");
        let mut expected = vec![0, 0, 0, 8, 2, 32, 0, 4, 10, 1, 2, 3];
        expected.extend_from_slice(&[0, 0, 0, 20, 3, 128, 0, 16]);
        expected.extend_from_slice(&[0; 15]);
        expected.push(1);
        expected.extend_from_slice(&[0, 0, 0, 3, 1, b'{', b'}']);
        assert_eq!(copy.as_bytes(), expected);
    }
}
