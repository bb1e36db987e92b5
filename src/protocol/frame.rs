//! Framing of typed protocol messages: a tag byte and a big-endian length that counts itself (PG docs 55.7).
//!
//! We frame the stream ourselves rather than through a codec so that frames are forwarded byte for byte and
//! a bad length is an error for that connection only, never a panic.

/// Tag byte plus the 4-byte length.
pub const HEADER_LEN: usize = 5;
/// PostgreSQL's own cap on a message (`PQ_LARGE_MESSAGE_LIMIT` is 1 GiB - 1).
pub const MAX_FRAME_LEN: usize = 1 << 30;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    pub tag: u8,
    /// Length as on the wire: body plus the 4 length bytes, without the tag.
    pub len: usize,
}

impl Header {
    /// Bytes the whole frame occupies, tag included.
    pub fn total(self) -> usize {
        self.len + 1
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    #[error("message of type {:?} has invalid length {len}", *tag as char)]
    BadLength { tag: u8, len: usize },
    #[error("message of type {:?} is malformed: {what}", *tag as char)]
    Malformed { tag: u8, what: &'static str },
}

/// Reads the header at the start of `buf`, if 5 bytes are there. Lengths under 4 or over 1 GiB are errors.
pub fn peek_header(buf: &[u8]) -> Result<Option<Header>, FrameError> {
    if buf.len() < HEADER_LEN {
        return Ok(None);
    }
    let tag = buf[0];
    let len = u32::from_be_bytes([buf[1], buf[2], buf[3], buf[4]]) as usize;
    if !(4..=MAX_FRAME_LEN).contains(&len) {
        return Err(FrameError::BadLength { tag, len });
    }
    Ok(Some(Header { tag, len }))
}

/// A cursor over one frame's body. Every read checks bounds, so truncated input is an error, not a panic.
pub struct Body<'a> {
    tag: u8,
    rest: &'a [u8],
}

impl<'a> Body<'a> {
    /// The body of a whole frame (tag and length stripped).
    pub fn of(frame: &'a [u8]) -> Self {
        Body {
            tag: frame.first().copied().unwrap_or(0),
            rest: frame.get(HEADER_LEN..).unwrap_or(&[]),
        }
    }

    fn malformed(&self, what: &'static str) -> FrameError {
        FrameError::Malformed {
            tag: self.tag,
            what,
        }
    }

    pub fn u8(&mut self) -> Result<u8, FrameError> {
        let (&b, rest) = self
            .rest
            .split_first()
            .ok_or_else(|| self.malformed("truncated"))?;
        self.rest = rest;
        Ok(b)
    }

    pub fn i32(&mut self) -> Result<i32, FrameError> {
        let bytes = self.bytes(4)?;
        Ok(i32::from_be_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]))
    }

    pub fn bytes(&mut self, n: usize) -> Result<&'a [u8], FrameError> {
        if self.rest.len() < n {
            return Err(self.malformed("truncated"));
        }
        let (head, rest) = self.rest.split_at(n);
        self.rest = rest;
        Ok(head)
    }

    /// A NUL-terminated string, without the NUL; never reads past the frame.
    pub fn cstr(&mut self) -> Result<&'a [u8], FrameError> {
        let nul = self
            .rest
            .iter()
            .position(|&b| b == 0)
            .ok_or_else(|| self.malformed("string is not NUL-terminated"))?;
        let s = &self.rest[..nul];
        self.rest = &self.rest[nul + 1..];
        Ok(s)
    }

    pub fn remaining(&self) -> &'a [u8] {
        self.rest
    }

    /// Trailing bytes mean we misread the message: reject rather than guess.
    pub fn finish(self) -> Result<(), FrameError> {
        if self.rest.is_empty() {
            Ok(())
        } else {
            Err(self.malformed("unexpected trailing bytes"))
        }
    }
}

/// Walks frames in a read buffer and decides how much of it can be forwarded now.
///
/// Frames that the caller inspects must be whole; any other frame that does not fit the buffer is streamed
/// (its header and what has arrived go out at once, the rest as it comes), so a 100 MB row never sits in
/// pgshift's memory.
#[derive(Debug, Default)]
pub struct Scanner {
    /// Bytes of a streamed frame still to pass through.
    streaming: usize,
}

/// What the scan saw, for the caller's bookkeeping.
pub enum Seen<'a> {
    /// A whole frame, and where it starts in the scanned buffer.
    Frame(u8, &'a [u8], usize),
    /// The start of a frame too large for the buffer; only its header is known.
    Streamed(Header),
}

/// The caller's verdict on a frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Flow {
    Continue,
    /// Forward up to and including this frame, then stop scanning (Terminate).
    Stop,
}

impl Scanner {
    /// True while a streamed frame is only partly forwarded: nothing may be injected into the stream now.
    pub fn mid_frame(&self) -> bool {
        self.streaming > 0
    }

    /// Scans `buf` and returns how many bytes from its start may be forwarded, and whether to stop.
    /// `whole(tag)` says which frames must be complete before they are seen.
    pub fn scan<E: From<FrameError>>(
        &mut self,
        buf: &[u8],
        whole: impl Fn(u8) -> bool,
        mut seen: impl FnMut(Seen<'_>) -> Result<Flow, E>,
    ) -> Result<(usize, Flow), E> {
        let mut pos = 0;
        loop {
            if self.streaming > 0 {
                let take = self.streaming.min(buf.len() - pos);
                pos += take;
                self.streaming -= take;
                if self.streaming > 0 {
                    return Ok((pos, Flow::Continue));
                }
            }
            let Some(header) = peek_header(&buf[pos..])? else {
                return Ok((pos, Flow::Continue));
            };
            let available = buf.len() - pos;
            if available >= header.total() {
                let frame = &buf[pos..pos + header.total()];
                let at = pos;
                pos += header.total();
                if seen(Seen::Frame(header.tag, frame, at))? == Flow::Stop {
                    return Ok((pos, Flow::Stop));
                }
            } else if whole(header.tag) {
                return Ok((pos, Flow::Continue));
            } else {
                if seen(Seen::Streamed(header))? == Flow::Stop {
                    return Ok((pos, Flow::Stop));
                }
                self.streaming = header.total() - available;
                return Ok((buf.len(), Flow::Continue));
            }
        }
    }
}

/// Appends a frame with `tag` and a body written by `body`, back-patching the length.
pub fn write_frame(buf: &mut bytes::BytesMut, tag: u8, body: impl FnOnce(&mut bytes::BytesMut)) {
    buf.extend_from_slice(&[tag, 0, 0, 0, 0]);
    let start = buf.len() - 4;
    body(buf);
    let len = (buf.len() - start) as u32;
    buf[start..start + 4].copy_from_slice(&len.to_be_bytes());
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(tag: u8, body: &[u8]) -> Vec<u8> {
        let mut buf = bytes::BytesMut::new();
        write_frame(&mut buf, tag, |b| b.extend_from_slice(body));
        buf.to_vec()
    }

    #[test]
    fn header_lengths_are_checked() {
        assert_eq!(peek_header(b"Z\0\0").unwrap(), None);
        assert_eq!(
            peek_header(b"Z\0\0\0\x05I").unwrap(),
            Some(Header { tag: b'Z', len: 5 })
        );
        assert_eq!(
            peek_header(b"Q\0\0\0\x03").unwrap_err(),
            FrameError::BadLength { tag: b'Q', len: 3 }
        );
        assert!(peek_header(b"Q\x40\0\0\x01").is_err());
        assert!(peek_header(b"Q\x40\0\0\0").is_ok());
    }

    #[test]
    fn body_reads_never_panic_on_truncation() {
        let f = frame(b'P', b"s\0");
        let mut body = Body::of(&f);
        assert_eq!(body.cstr().unwrap(), b"s");
        assert!(body.cstr().is_err());
        assert!(body.i32().is_err());
        assert!(Body::of(b"P").u8().is_err());
    }

    #[test]
    fn finish_rejects_trailing_bytes() {
        let f = frame(b'Z', b"IX");
        let mut body = Body::of(&f);
        assert_eq!(body.u8().unwrap(), b'I');
        assert!(body.finish().is_err());
    }

    fn scan_all(
        scanner: &mut Scanner,
        buf: &[u8],
        whole: impl Fn(u8) -> bool,
    ) -> (usize, Vec<String>) {
        let mut seen = Vec::new();
        let (n, _) = scanner
            .scan::<FrameError>(buf, whole, |s| {
                seen.push(match s {
                    Seen::Frame(tag, f, _) => format!("{}:{}", tag as char, f.len()),
                    Seen::Streamed(h) => format!("{}~{}", h.tag as char, h.total()),
                });
                Ok(Flow::Continue)
            })
            .unwrap();
        (n, seen)
    }

    #[test]
    fn scanner_waits_for_whole_inspected_frames() {
        let mut buf = frame(b'Z', b"I");
        buf.extend(frame(b'C', b"SELECT 1\0"));
        let cut = buf.len() - 3;
        let (n, seen) = scan_all(&mut Scanner::default(), &buf[..cut], |_| true);
        assert_eq!(n, 6);
        assert_eq!(seen, vec!["Z:6"]);
    }

    #[test]
    fn scanner_streams_large_uninspected_frames() {
        let mut scanner = Scanner::default();
        let big = frame(b'D', &[7u8; 100]);
        let mut buf = big[..40].to_vec();
        let (n, seen) = scan_all(&mut scanner, &buf, |t| t != b'D');
        assert_eq!((n, seen), (40, vec!["D~105".to_owned()]));
        assert!(scanner.mid_frame());
        buf = big[40..].to_vec();
        buf.extend(frame(b'Z', b"I"));
        let (n, seen) = scan_all(&mut scanner, &buf, |t| t != b'D');
        assert_eq!((n, seen), (buf.len(), vec!["Z:6".to_owned()]));
        assert!(!scanner.mid_frame());
    }

    #[test]
    fn scanner_stops_after_terminate() {
        let mut buf = frame(b'X', b"");
        buf.extend(frame(b'Q', b"SELECT 1\0"));
        let (n, flow) = Scanner::default()
            .scan::<FrameError>(
                &buf,
                |_| true,
                |s| match s {
                    Seen::Frame(b'X', _, _) => Ok(Flow::Stop),
                    _ => Ok(Flow::Continue),
                },
            )
            .unwrap();
        assert_eq!((n, flow), (5, Flow::Stop));
    }
}
