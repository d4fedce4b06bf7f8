//! Reading newline-terminated lines with a length limit, so that a peer cannot make the
//! reader buffer without bound. An oversized line is skipped up to its newline and
//! reported, and the stream stays usable for the next line.

use tokio::io::{AsyncBufRead, AsyncBufReadExt};

/// Longest control line (request or reply), newline excluded.
pub const MAX_CONTROL_LINE: usize = 64 * 1024;

/// Longest hello or dial header line, newline excluded.
pub const MAX_HEADER_LINE: usize = 512;

/// What reading one line gave.
#[derive(Debug, PartialEq, Eq)]
pub enum Line {
    /// A complete line, without its trailing `\n` (and `\r`).
    Data(Vec<u8>),
    /// A line longer than the limit; its bytes were discarded up to and including the
    /// newline. `len` counts what was discarded.
    TooLong { len: usize },
    /// The peer closed the stream at a line boundary.
    Eof,
}

/// Reads one line of at most `max` bytes. Bytes after the last newline at end of stream
/// count as a final line.
pub async fn read_line_limited<R: AsyncBufRead + Unpin>(
    reader: &mut R,
    max: usize,
) -> std::io::Result<Line> {
    let mut out = Vec::new();
    let mut discarded: Option<usize> = None;
    loop {
        let buf = reader.fill_buf().await?;
        if buf.is_empty() {
            return Ok(match discarded {
                Some(len) => Line::TooLong { len },
                None if out.is_empty() => Line::Eof,
                None => Line::Data(trim_cr(out)),
            });
        }
        let (chunk, found_newline) = match buf.iter().position(|&b| b == b'\n') {
            Some(i) => (&buf[..i], true),
            None => (buf, false),
        };
        let chunk_len = chunk.len();
        match discarded.as_mut() {
            Some(len) => *len += chunk_len,
            None if out.len() + chunk_len > max => {
                discarded = Some(out.len() + chunk_len);
                out = Vec::new();
            }
            None => out.extend_from_slice(chunk),
        }
        reader.consume(chunk_len + usize::from(found_newline));
        if found_newline {
            return Ok(match discarded {
                Some(len) => Line::TooLong { len },
                None => Line::Data(trim_cr(out)),
            });
        }
    }
}

fn trim_cr(mut line: Vec<u8>) -> Vec<u8> {
    if line.last() == Some(&b'\r') {
        line.pop();
    }
    line
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::BufReader;

    #[tokio::test]
    async fn test_lines_are_split_and_limited() {
        let input = b"short\r\nthis line is far too long\nnext\nlast".to_vec();
        // A tiny buffer makes lines span several fill_buf calls.
        let mut r = BufReader::with_capacity(4, &input[..]);
        assert_eq!(
            read_line_limited(&mut r, 10).await.unwrap(),
            Line::Data(b"short".to_vec())
        );
        assert_eq!(
            read_line_limited(&mut r, 10).await.unwrap(),
            Line::TooLong { len: 25 }
        );
        assert_eq!(
            read_line_limited(&mut r, 10).await.unwrap(),
            Line::Data(b"next".to_vec())
        );
        assert_eq!(
            read_line_limited(&mut r, 10).await.unwrap(),
            Line::Data(b"last".to_vec())
        );
        assert_eq!(read_line_limited(&mut r, 10).await.unwrap(), Line::Eof);
    }

    #[tokio::test]
    async fn test_line_of_exactly_the_limit_is_accepted() {
        let input = b"0123456789\n".to_vec();
        let mut r = BufReader::new(&input[..]);
        assert_eq!(
            read_line_limited(&mut r, 10).await.unwrap(),
            Line::Data(b"0123456789".to_vec())
        );
    }
}
