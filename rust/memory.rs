//! What a counter sync last wrote for each key, and the encoding of `MGET` pages into COPY
//! rows against that memory, so that only values that changed reach Postgres.

use std::collections::HashSet;
use std::sync::Arc;

use foldhash::fast::RandomState;
use indexmap::IndexMap;

use crate::copy::CopyWriter;
use crate::integer::parse_counter;
use crate::pattern::{Segment, Template};
use crate::remembered::{KeyRef, Remembered};
use crate::repr::{bytes_repr, key_text};

/// Examples kept per page: enough to show an operator what kind of data is bad without
/// letting one bad page flood the log line that carries them.
pub const MAX_EXAMPLES: usize = 5;

/// What happened to the keys of one page.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PageCounts {
    /// Rows written.
    pub rows: u64,
    /// Values that are not Redis integers; their rows were skipped.
    pub invalid: u64,
    /// Keys that do not match the template; skipped.
    pub malformed: u64,
    /// Values that were `None` (the key vanished before `MGET`); written as 0.
    pub missing: u64,
    /// Keys already met earlier in the run; skipped.
    pub duplicates: u64,
    /// Values equal to what was last written for the key; skipped.
    pub unchanged: u64,
}

/// COPY tuples for one page, with its counts and a few examples of bad input.
#[derive(Debug, Default)]
pub struct Page {
    /// The tuples, without COPY header or trailer.
    pub copy: CopyWriter,
    /// What happened to the page's keys.
    pub counts: PageCounts,
    /// At most [`MAX_EXAMPLES`] one-line descriptions of bad keys and values.
    pub examples: Vec<String>,
}

impl Page {
    fn note(&mut self, describe: impl FnOnce() -> String) {
        if self.examples.len() < MAX_EXAMPLES {
            self.examples.push(describe());
        }
    }
}

/// Where a key met for the first time in the current run keeps its state.
enum Claim<'m> {
    Remembered { value: i64, key: KeyRef },
    Fresh(&'m mut Option<i64>),
}

/// Remembered values per raw key, plus the keys seen and the writes pending in the current run.
///
/// Remembered keys carry the number of the run that last saw them, so starting a run costs
/// nothing per key. Keys met for the first time wait in `fresh` until the run commits; it
/// keeps them in the order met, so the arena lays keys out in SCAN order and later walks,
/// which SCAN returns in the same order while the keyspace is stable, read it front to back.
#[derive(Debug)]
pub struct Memory {
    template: Arc<Template>,
    fields: i16,
    remembered: Remembered,
    pending: Vec<(KeyRef, i64)>,
    fresh: IndexMap<Box<[u8]>, Option<i64>, RandomState>,
    malformed: HashSet<Box<[u8]>, RandomState>,
    run: u32,
}

impl Memory {
    /// An empty memory for keys of `template`.
    pub fn new(template: Arc<Template>) -> Self {
        let fields = i16::try_from(template.names().len() + 1)
            .expect("templates have at most MAX_NAMED_SEGMENTS named segments");
        Memory {
            template,
            fields,
            remembered: Remembered::default(),
            pending: Vec::new(),
            fresh: IndexMap::default(),
            malformed: HashSet::default(),
            run: 1,
        }
    }

    /// Number of remembered keys.
    pub fn len(&self) -> usize {
        self.remembered.len()
    }

    /// Starts a run: forgets which keys were seen and drops the writes not committed.
    pub fn begin_run(&mut self) {
        self.fresh.clear();
        self.malformed.clear();
        self.pending.clear();
        self.advance_run();
    }

    /// Encodes one `SCAN` page and its `MGET` reply into rows for the keys whose value changed.
    pub fn encode_page(&mut self, pairs: &[(&[u8], Option<&[u8]>)]) -> Page {
        let template = Arc::clone(&self.template);
        let mut page = Page::default();
        let mut segments = Vec::with_capacity(template.names().len());
        for &(key, value) in pairs {
            if !template.parse(key, &mut segments) {
                // Bad keys are deduplicated too, so that the count says how many keys are
                // bad rather than how often SCAN returned them.
                if !self.malformed.insert(key.into()) {
                    page.counts.duplicates += 1;
                    continue;
                }
                page.counts.malformed += 1;
                page.note(|| format!("malformed key {}", bytes_repr(key)));
                continue;
            }

            // A key counts as seen even when its value turns out invalid, so that the absent
            // pass of a complete walk never zeroes a row only because its value was bad.
            let Some(claim) = self.claim(key) else {
                page.counts.duplicates += 1;
                continue;
            };

            if value.is_none() {
                page.counts.missing += 1;
            }
            let Some(parsed) = parse_counter(value) else {
                page.counts.invalid += 1;
                let shown = bytes_repr(value.unwrap_or_default());
                page.note(|| format!("invalid value {shown} for key {}", key_text(key)));
                continue;
            };
            match claim {
                Claim::Remembered { value, .. } if value == parsed => {
                    page.counts.unchanged += 1;
                    continue;
                }
                Claim::Remembered { key, .. } => self.pending.push((key, parsed)),
                Claim::Fresh(pending) => *pending = Some(parsed),
            }
            write_row(&mut page.copy, self.fields, &segments, parsed);
            page.counts.rows += 1;
        }
        page
    }

    /// After a complete walk, writes 0 for every remembered key with a non-zero value that
    /// the run did not see: the key was reset or expired. The keys count as seen afterwards,
    /// so a second call writes nothing.
    pub fn encode_absent(&mut self) -> Page {
        let mut page = Page::default();
        let mut segments = Vec::with_capacity(self.template.names().len());
        let run = self.run;
        for (key, entry) in self.remembered.iter_mut() {
            if entry.seen_run == run || entry.value == 0 {
                continue;
            }
            entry.seen_run = run;
            self.pending.push((entry.key_ref(), 0));
            if self.template.parse(key, &mut segments) {
                write_row(&mut page.copy, self.fields, &segments, 0);
                page.counts.rows += 1;
            } else {
                // Remembered keys were parsed or formatted by this template, so this branch
                // only guards against a broken invariant without panicking.
                page.counts.malformed += 1;
            }
        }
        page
    }

    /// Makes the run's pending writes the remembered values and ends the run.
    pub fn commit_run(&mut self) {
        for (key, value) in std::mem::take(&mut self.pending) {
            self.remembered.set_value(key, value);
        }

        self.malformed.clear();
        let fresh = std::mem::take(&mut self.fresh);
        let (count, bytes) = fresh
            .iter()
            .filter(|(_, pending)| pending.is_some())
            .fold((0, 0), |(count, bytes), (key, _)| {
                (count + 1, bytes + key.len())
            });
        self.remembered.reserve(count, bytes);
        for (key, pending) in fresh {
            if let Some(value) = pending {
                self.remembered.insert_new(&key, value);
            }
        }
        self.advance_run();
    }

    /// Drops every remembered value and the state of the current run.
    pub fn forget(&mut self) {
        self.remembered = Remembered::default();
        self.pending = Vec::new();
        self.fresh = IndexMap::default();
        self.malformed = HashSet::default();
        self.advance_run();
    }

    /// Remembers `value` as last written for `key`, replacing what was remembered. What the
    /// current run did with the key (seen it, a pending write) is kept.
    pub fn seed(&mut self, key: &[u8], value: i64) {
        if let Some(entry) = self.remembered.get_mut(key) {
            entry.value = value;
            return;
        }
        let fresh = self.fresh.swap_remove(key);
        let run = self.run;
        let entry = self.remembered.insert_new(key, value);
        if let Some(pending) = fresh {
            entry.seen_run = run;
            let key = entry.key_ref();
            if let Some(pending) = pending {
                self.pending.push((key, pending));
            }
        }
    }

    /// The value remembered for `key`, if any.
    #[cfg(test)]
    pub fn remembered(&mut self, key: &[u8]) -> Option<i64> {
        self.remembered.get_mut(key).map(|entry| entry.value)
    }

    /// Marks `key` as seen in this run and returns where its state lives, or `None` when the
    /// run has seen it already.
    fn claim(&mut self, key: &[u8]) -> Option<Claim<'_>> {
        if let Some(entry) = self.remembered.get_mut(key) {
            if entry.seen_run == self.run {
                return None;
            }
            entry.seen_run = self.run;
            return Some(Claim::Remembered {
                value: entry.value,
                key: entry.key_ref(),
            });
        }
        if self.fresh.contains_key(key) {
            return None;
        }
        Some(Claim::Fresh(self.fresh.entry(key.into()).or_insert(None)))
    }

    fn advance_run(&mut self) {
        self.run = self.run.wrapping_add(1);
        if self.run == 0 {
            // After 2^32 runs the numbers wrap; clear every mark so none looks current.
            for entry in self.remembered.entries_mut() {
                entry.seen_run = 0;
            }
            self.run = 1;
        }
    }
}

fn write_row(copy: &mut CopyWriter, fields: i16, segments: &[Segment<'_>], value: i64) {
    copy.begin_tuple(fields);
    for segment in segments {
        match segment {
            Segment::Text(text) => copy.text(text.as_bytes()),
            Segment::Date(date) => copy.date(date.pg_days()),
        }
    }
    copy.bigint(value);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn memory() -> Memory {
        Memory::new(Arc::new(
            Template::compile("quota:{account}:{metric}").unwrap(),
        ))
    }

    fn row(account: &str, metric: &str, value: i64) -> Vec<u8> {
        let mut copy = CopyWriter::default();
        write_row(
            &mut copy,
            3,
            &[Segment::Text(account), Segment::Text(metric)],
            value,
        );
        copy.as_bytes().to_vec()
    }

    fn counts(page: &Page) -> [u64; 6] {
        let c = page.counts;
        [
            c.rows,
            c.invalid,
            c.malformed,
            c.missing,
            c.duplicates,
            c.unchanged,
        ]
    }

    #[test]
    fn encodes_rows_with_segments_and_value() {
        let mut copy = CopyWriter::default();
        write_row(&mut copy, 3, &[Segment::Text("a1"), Segment::Text("up")], 5);
        let mut expected = vec![0, 3, 0, 0, 0, 2, b'a', b'1', 0, 0, 0, 2, b'u', b'p'];
        expected.extend_from_slice(&[0, 0, 0, 8, 0, 0, 0, 0, 0, 0, 0, 5]);
        assert_eq!(copy.as_bytes(), expected);

        let template = Template::compile("usage:{day:date}:{account}").unwrap();
        let mut memory = Memory::new(Arc::new(template));
        let page = memory.encode_page(&[(b"usage:2000-01-02:a", Some(b"-1"))]);
        let mut expected = vec![0, 3, 0, 0, 0, 4, 0, 0, 0, 1, 0, 0, 0, 1, b'a', 0, 0, 0, 8];
        expected.extend_from_slice(&[0xff; 8]);
        assert_eq!(page.copy.as_bytes(), expected);
    }

    #[test]
    fn counts_each_kind_of_key_and_value() {
        let mut memory = memory();
        let page = memory.encode_page(&[
            (b"quota:a:up", Some(b"3")),
            (b"quota:b:up", None),
            (b"quota:c:up", Some(b"")),
            (b"quota:d:up", Some(b"12x")),
            (b"quota:acct", Some(b"1")),
            (b"quota:a:up", Some(b"4")),
        ]);
        assert_eq!(counts(&page), [3, 1, 1, 1, 1, 0]);
        assert_eq!(
            page.copy.as_bytes(),
            [row("a", "up", 3), row("b", "up", 0), row("c", "up", 0)].concat()
        );
        assert_eq!(
            page.examples,
            [
                "invalid value b'12x' for key quota:d:up",
                "malformed key b'quota:acct'"
            ]
        );
    }

    #[test]
    fn keeps_at_most_five_examples() {
        let mut memory = memory();
        let keys: Vec<Vec<u8>> = (0..8).map(|i| format!("bad{i}").into_bytes()).collect();
        let pairs: Vec<_> = keys
            .iter()
            .map(|k| (k.as_slice(), Some(&b"1"[..])))
            .collect();
        let page = memory.encode_page(&pairs);
        assert_eq!(page.counts.malformed, 8);
        assert_eq!(page.examples.len(), MAX_EXAMPLES);
    }

    #[test]
    fn skips_values_equal_to_the_remembered_ones() {
        let mut memory = memory();
        memory.begin_run();
        memory.encode_page(&[(b"quota:a:up", Some(b"3")), (b"quota:b:up", Some(b"0"))]);
        memory.commit_run();
        assert_eq!(memory.len(), 2);

        memory.begin_run();
        let page = memory.encode_page(&[(b"quota:a:up", Some(b"3")), (b"quota:b:up", None)]);
        assert_eq!(counts(&page), [0, 0, 0, 1, 0, 2]);
        let page = memory.encode_page(&[(b"quota:a:up", Some(b"4"))]);
        assert_eq!(counts(&page), [0, 0, 0, 0, 1, 0]);
    }

    #[test]
    fn writes_changed_values_and_remembers_them_only_on_commit() {
        let mut memory = memory();
        memory.seed(b"quota:a:up", 3);
        memory.begin_run();
        let page = memory.encode_page(&[(b"quota:a:up", Some(b"5"))]);
        assert_eq!(page.copy.as_bytes(), row("a", "up", 5));
        assert_eq!(memory.remembered(b"quota:a:up"), Some(3));

        // A run that is abandoned and restarted writes the change again.
        memory.begin_run();
        let page = memory.encode_page(&[(b"quota:a:up", Some(b"5"))]);
        assert_eq!(page.counts.rows, 1);
        memory.commit_run();
        assert_eq!(memory.remembered(b"quota:a:up"), Some(5));
    }

    #[test]
    fn invalid_values_keep_the_memory_and_count_as_seen() {
        let mut memory = memory();
        memory.seed(b"quota:a:up", 7);
        memory.begin_run();
        let page = memory.encode_page(&[(b"quota:a:up", Some(b"-0")), (b"quota:n:up", Some(b"x"))]);
        assert_eq!(counts(&page), [0, 2, 0, 0, 0, 0]);
        assert_eq!(memory.encode_absent().counts.rows, 0);
        memory.commit_run();
        assert_eq!(memory.remembered(b"quota:a:up"), Some(7));
        assert_eq!(memory.remembered(b"quota:n:up"), None);
        assert_eq!(memory.len(), 1);
    }

    #[test]
    fn absent_pass_zeroes_unseen_non_zero_keys_once() {
        let mut memory = memory();
        memory.seed(b"quota:gone:up", 9);
        memory.seed(b"quota:zero:up", 0);
        memory.seed(b"quota:kept:up", 2);
        memory.begin_run();
        memory.encode_page(&[(b"quota:kept:up", Some(b"2"))]);

        let absent = memory.encode_absent();
        assert_eq!(counts(&absent), [1, 0, 0, 0, 0, 0]);
        assert_eq!(absent.copy.as_bytes(), row("gone", "up", 0));
        assert_eq!(memory.encode_absent().counts.rows, 0);

        memory.commit_run();
        assert_eq!(memory.remembered(b"quota:gone:up"), Some(0));

        // In the next run only the key still remembered as non-zero is zeroed.
        memory.begin_run();
        assert_eq!(memory.encode_absent().copy.as_bytes(), row("kept", "up", 0));
    }

    #[test]
    fn duplicates_are_per_run() {
        let mut memory = memory();
        memory.begin_run();
        let page = memory.encode_page(&[(b"quota:a:up", Some(b"1")), (b"quota:a:up", Some(b"1"))]);
        assert_eq!(counts(&page), [1, 0, 0, 0, 1, 0]);
        memory.begin_run();
        let page = memory.encode_page(&[(b"quota:a:up", Some(b"1"))]);
        assert_eq!(counts(&page), [1, 0, 0, 0, 0, 0]);
    }

    #[test]
    fn bad_keys_returned_twice_count_once() {
        let mut memory = memory();
        memory.begin_run();
        let page = memory.encode_page(&[(b"quota:a", Some(b"1")), (b"quota:a", Some(b"1"))]);
        assert_eq!(counts(&page), [0, 0, 1, 0, 1, 0]);
        memory.begin_run();
        let page = memory.encode_page(&[(b"quota:a", Some(b"1"))]);
        assert_eq!(counts(&page), [0, 0, 1, 0, 0, 0]);
    }

    #[test]
    fn forget_drops_everything() {
        let mut memory = memory();
        memory.seed(b"quota:a:up", 1);
        memory.begin_run();
        memory.encode_page(&[(b"quota:b:up", Some(b"2"))]);
        memory.forget();
        assert_eq!(memory.len(), 0);
        memory.commit_run();
        assert_eq!(memory.len(), 0);
        let page = memory.encode_page(&[(b"quota:b:up", Some(b"2"))]);
        assert_eq!(page.counts.rows, 1);
    }

    #[test]
    fn seeding_during_a_run_keeps_what_the_run_did() {
        let mut memory = memory();
        memory.begin_run();
        memory.encode_page(&[(b"quota:a:up", Some(b"5")), (b"quota:b:up", Some(b"x"))]);
        memory.seed(b"quota:a:up", 1);
        memory.seed(b"quota:b:up", 2);
        assert_eq!(memory.encode_absent().counts.rows, 0);
        memory.commit_run();
        assert_eq!(memory.remembered(b"quota:a:up"), Some(5));
        assert_eq!(memory.remembered(b"quota:b:up"), Some(2));
    }

    #[test]
    fn survives_run_number_wrap() {
        let mut memory = memory();
        memory.seed(b"quota:a:up", 1);
        memory.run = u32::MAX;
        memory.encode_page(&[(b"quota:a:up", Some(b"1"))]);
        memory.begin_run();
        assert_eq!(memory.run, 1);
        let page = memory.encode_page(&[(b"quota:a:up", Some(b"1"))]);
        assert_eq!(counts(&page), [0, 0, 0, 0, 0, 1]);
    }
}
