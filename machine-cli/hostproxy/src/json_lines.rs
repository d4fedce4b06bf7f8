//! Splitting a chunked byte stream into newline-delimited JSON values, as the Engine
//! API's `/events` stream sends them. A value may span chunks and a chunk may hold many
//! values. Lines that do not parse, and lines over the length limit, are skipped with a
//! rate-limited warning: the stream comes from the guest, which must not be able to stop
//! the publisher or flood its log.

use serde::de::DeserializeOwned;
use tracing::warn;

/// Longest line kept, newline excluded; Docker's events are a few hundred bytes.
pub const MAX_LINE: usize = 1024 * 1024;

/// Warnings about skipped lines: the first few, then one in this many.
const WARN_FIRST: u64 = 10;
const WARN_EVERY: u64 = 1000;

/// A decoder of newline-delimited JSON values of type `T`.
pub struct JsonLines<T> {
    buf: Vec<u8>,
    /// Bytes of an over-long line are being discarded up to its newline.
    discarding: bool,
    max_line: usize,
    skipped: u64,
    /// The skip count at which the next warning after the first few is logged.
    next_warning: u64,
    _value: std::marker::PhantomData<fn() -> T>,
}

impl<T: DeserializeOwned> JsonLines<T> {
    pub fn new() -> JsonLines<T> {
        JsonLines::with_max_line(MAX_LINE)
    }

    pub fn with_max_line(max_line: usize) -> JsonLines<T> {
        JsonLines {
            buf: Vec::new(),
            discarding: false,
            max_line,
            skipped: 0,
            next_warning: WARN_EVERY,
            _value: std::marker::PhantomData,
        }
    }

    /// How many lines were skipped so far (garbage or too long).
    pub fn skipped(&self) -> u64 {
        self.skipped
    }

    /// Adds a chunk of the stream.
    pub fn push(&mut self, chunk: &[u8]) {
        let mut chunk = chunk;
        if self.discarding {
            match chunk.iter().position(|&b| b == b'\n') {
                Some(i) => {
                    self.discarding = false;
                    chunk = &chunk[i + 1..];
                }
                None => return,
            }
        }
        self.buf.extend_from_slice(chunk);
        // Only the bytes after the last newline can be a partial line; bound those.
        let partial = match self.buf.iter().rposition(|&b| b == b'\n') {
            Some(i) => self.buf.len() - i - 1,
            None => self.buf.len(),
        };
        if partial > self.max_line {
            self.buf.truncate(self.buf.len() - partial);
            self.discarding = true;
            let max_line = self.max_line;
            self.skip(format_args!("line longer than {max_line} bytes"));
        }
    }

    /// The next complete value, if one is buffered. Blank lines and lines that are not a
    /// `T` are skipped.
    pub fn next_value(&mut self) -> Option<T> {
        while let Some(i) = self.buf.iter().position(|&b| b == b'\n') {
            let line: Vec<u8> = self.buf.drain(..=i).collect();
            let line = line.trim_ascii();
            if line.is_empty() {
                continue;
            }
            match serde_json::from_slice::<T>(line) {
                Ok(value) => return Some(value),
                Err(err) => {
                    let excerpt: String = String::from_utf8_lossy(line).chars().take(80).collect();
                    self.skip(format_args!("{err}: {excerpt:?}"));
                }
            }
        }
        None
    }

    /// The value of a final line without a newline, at the end of the stream.
    pub fn finish(&mut self) -> Option<T> {
        if self.discarding || self.buf.trim_ascii().is_empty() {
            self.buf.clear();
            return None;
        }
        self.buf.push(b'\n');
        self.next_value()
    }

    fn skip(&mut self, why: std::fmt::Arguments<'_>) {
        self.skipped += 1;
        let warn_now = self.skipped <= WARN_FIRST || self.skipped == self.next_warning;
        if self.skipped == self.next_warning {
            self.next_warning += WARN_EVERY;
        }
        if warn_now {
            warn!(
                skipped = self.skipped,
                "skipping a line of the engine's event stream: {why}"
            );
        }
    }
}

impl<T: DeserializeOwned> Default for JsonLines<T> {
    fn default() -> Self {
        JsonLines::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, serde::Deserialize, PartialEq)]
    struct Value {
        a: u32,
    }

    fn drain(d: &mut JsonLines<Value>) -> Vec<u32> {
        std::iter::from_fn(|| d.next_value()).map(|v| v.a).collect()
    }

    #[test]
    fn test_value_split_across_chunks_parses() {
        let mut d = JsonLines::<Value>::new();
        d.push(b"{\"a\":1}\n{\"a\"");
        assert_eq!(drain(&mut d), vec![1]);
        d.push(b":");
        assert_eq!(drain(&mut d), Vec::<u32>::new());
        d.push(b"2}\n{\"a\":3}\r\n\n{\"a\":4}");
        assert_eq!(drain(&mut d), vec![2, 3]);
        assert_eq!(d.finish().map(|v| v.a), Some(4));
        assert_eq!(d.skipped(), 0);
    }

    #[test]
    fn test_every_split_point_gives_the_same_values() {
        let stream = b"{\"a\":1}\n{\"a\":22}\n\n{\"a\":333}\n";
        for split in 0..stream.len() {
            let mut d = JsonLines::<Value>::new();
            d.push(&stream[..split]);
            let mut got = drain(&mut d);
            d.push(&stream[split..]);
            got.extend(drain(&mut d));
            assert_eq!(got, vec![1, 22, 333], "split at {split}");
        }
    }

    #[test]
    fn test_garbage_lines_are_skipped() {
        let mut d = JsonLines::<Value>::new();
        d.push(b"not json\n{\"a\":1}\n[1,2]\n\xff\xfe\n{\"b\":2}\n{\"a\":5,\"extra\":true}\n");
        assert_eq!(drain(&mut d), vec![1, 5]);
        assert_eq!(d.skipped(), 4);
    }

    #[test]
    fn test_over_long_line_is_discarded_up_to_its_newline() {
        let mut d = JsonLines::<Value>::with_max_line(16);
        d.push(b"{\"a\":1}\n{\"a\":\"");
        d.push(&[b'x'; 40]);
        d.push(&[b'x'; 40]);
        assert_eq!(drain(&mut d), vec![1]);
        d.push(b"xx\"}\n{\"a\":2}\n");
        assert_eq!(drain(&mut d), vec![2]);
        assert_eq!(d.skipped(), 1);
        assert!(d.buf.len() <= 16);
    }
}
