// berth patch: a strict decoder of the chunked transfer coding (RFC 9112 section 7.1) for
// request bodies. The chunked_transfer crate's decoder buffered a chunk-size line without
// limit until a CR came (one fast client could grow memory until the process died), and
// accepted what a front end may read differently: a `+` or whitespace around the size, LF
// inside extensions (issue 10). Anything but the grammar is an `InvalidData` error, which
// ends the body (and, through `ShutReadOnError`, the connection).

use std::convert::TryFrom;
use std::io::{self, Read};

/// Longest chunk-size line (size, extensions) or trailer line accepted.
const MAX_LINE: usize = 4096;
/// Most trailer lines accepted.
const MAX_TRAILERS: usize = 64;
/// Hex digits of a chunk size: anything longer cannot fit in a u64.
const MAX_SIZE_DIGITS: usize = 16;

/// Decodes a chunked body from `inner`; reads return only chunk data, 0 after the last
/// chunk and its trailers.
pub(crate) struct ChunkedDecoder<R> {
    inner: R,
    /// Bytes of the current chunk still to read; `None` before a chunk-size line.
    remaining: Option<u64>,
    done: bool,
}

fn invalid(why: &str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, format!("chunked body: {why}"))
}

impl<R: Read> ChunkedDecoder<R> {
    pub(crate) fn new(inner: R) -> ChunkedDecoder<R> {
        ChunkedDecoder {
            inner,
            remaining: None,
            done: false,
        }
    }

    fn byte(&mut self) -> io::Result<u8> {
        let mut b = [0u8; 1];
        loop {
            match self.inner.read(&mut b) {
                Ok(0) => {
                    return Err(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        "chunked body: the connection ended inside it",
                    ))
                }
                Ok(_) => return Ok(b[0]),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
    }

    /// A line without its CRLF; a bare LF, a CR not before LF, a control character or a line
    /// past `MAX_LINE` is an error.
    fn line(&mut self) -> io::Result<Vec<u8>> {
        let mut line = Vec::new();
        loop {
            match self.byte()? {
                b'\r' => {
                    return match self.byte()? {
                        b'\n' => Ok(line),
                        _ => Err(invalid("CR without LF")),
                    }
                }
                b'\n' => return Err(invalid("LF without CR")),
                b'\t' => line.push(b'\t'),
                b if b < 0x20 || b == 0x7f => return Err(invalid("control character")),
                b => line.push(b),
            }
            if line.len() > MAX_LINE {
                return Err(invalid("line too long"));
            }
        }
    }

    /// Reads a chunk-size line: `1*HEXDIG *( BWS ";" ... )`, extensions ignored.
    fn chunk_size(&mut self) -> io::Result<u64> {
        let line = self.line()?;
        let digits = line.iter().take_while(|b| b.is_ascii_hexdigit()).count();
        if digits == 0 || digits > MAX_SIZE_DIGITS {
            return Err(invalid("bad chunk size"));
        }
        let rest = &line[digits..];
        let extension = rest
            .iter()
            .position(|b| *b != b' ' && *b != b'\t')
            .map_or(&[][..], |i| &rest[i..]);
        if !extension.is_empty() && extension[0] != b';' {
            return Err(invalid("bad chunk size"));
        }
        let hex = std::str::from_utf8(&line[..digits]).expect("ASCII hex digits");
        u64::from_str_radix(hex, 16).map_err(|_| invalid("bad chunk size"))
    }

    /// Reads the trailer section after the last chunk, up to its empty line.
    fn trailers(&mut self) -> io::Result<()> {
        for _ in 0..=MAX_TRAILERS {
            if self.line()?.is_empty() {
                return Ok(());
            }
        }
        Err(invalid("too many trailer lines"))
    }
}

impl<R: Read> Read for ChunkedDecoder<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.done || buf.is_empty() {
            return Ok(0);
        }
        let remaining = match self.remaining {
            Some(n) => n,
            None => {
                let size = self.chunk_size()?;
                if size == 0 {
                    self.trailers()?;
                    self.done = true;
                    return Ok(0);
                }
                size
            }
        };
        let want = buf.len().min(usize::try_from(remaining).unwrap_or(usize::MAX));
        let n = self.inner.read(&mut buf[..want])?;
        if n == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "chunked body: the connection ended inside a chunk",
            ));
        }
        let left = remaining - n as u64;
        if left == 0 {
            if !self.line()?.is_empty() {
                return Err(invalid("chunk longer than its size"));
            }
            self.remaining = None;
        } else {
            self.remaining = Some(left);
        }
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::ChunkedDecoder;
    use std::io::Read;

    fn decode(wire: &[u8]) -> std::io::Result<Vec<u8>> {
        let mut out = Vec::new();
        ChunkedDecoder::new(wire).read_to_end(&mut out)?;
        Ok(out)
    }

    #[test]
    fn decodes_the_grammar_and_nothing_past_it() {
        assert_eq!(decode(b"5\r\nhello\r\n0\r\n\r\n").unwrap(), b"hello");
        assert_eq!(
            decode(b"3;name=v\r\nabc\r\nA \t;x\r\n0123456789\r\n0\r\nT: 1\r\n\r\n").unwrap(),
            b"abc0123456789"
        );
        let mut rest = &b"1\r\nx\r\n0\r\n\r\nGET / HTTP/1.1\r\n"[..];
        let mut body = Vec::new();
        ChunkedDecoder::new(&mut rest).read_to_end(&mut body).unwrap();
        assert_eq!(body, b"x");
        assert_eq!(rest, b"GET / HTTP/1.1\r\n", "reads stop at the end of the body");
    }

    #[test]
    fn refuses_what_a_front_end_could_read_differently() {
        for wire in [
            &b"+5\r\nhello\r\n0\r\n\r\n"[..],
            b" 5\r\nhello\r\n0\r\n\r\n",
            b"5 x\r\nhello\r\n0\r\n\r\n",
            b"5\nhello\r\n0\r\n\r\n",
            b"5;a\nb\r\nhello\r\n0\r\n\r\n",
            b"5\r\nhello!\r\n0\r\n\r\n",
            b"0x5\r\nhello\r\n0\r\n\r\n",
            b"11111111111111111\r\n",
            b"5\r\nhel",
        ] {
            assert!(decode(wire).is_err(), "{:?}", String::from_utf8_lossy(wire));
        }
    }

    #[test]
    fn an_endless_size_line_is_refused_after_a_bounded_read() {
        let endless = std::iter::repeat(b'0').take(1 << 20).collect::<Vec<u8>>();
        let err = decode(&endless).unwrap_err();
        assert_eq!(err.kind(), std::io::ErrorKind::InvalidData);
    }
}
