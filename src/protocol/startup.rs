//! The untyped packets a connection opens with: StartupMessage, SSLRequest, GSSENCRequest, CancelRequest
//! (PG docs 55.2.1 and 55.7). They have a length and a 32-bit code instead of a tag byte.

use bytes::{Buf, Bytes, BytesMut};

pub const SSL_REQUEST: u32 = 80_877_103;
pub const GSSENC_REQUEST: u32 = 80_877_104;
pub const CANCEL_REQUEST: u32 = 80_877_102;
/// PostgreSQL's `MAX_STARTUP_PACKET_LENGTH`.
pub const MAX_STARTUP_LEN: usize = 10_000;
/// First byte of a TLS ClientHello: a client using PG 17's `sslnegotiation=direct`.
pub const TLS_HANDSHAKE_BYTE: u8 = 0x16;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StartupPacket {
    SslRequest,
    GssEncRequest,
    Cancel(CancelRequest),
    Startup(StartupMessage),
}

/// A cancel key; protocol 3.2 (PG 18) allows secrets of up to 256 bytes, 3.0 uses 4.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct CancelKey {
    pub pid: i32,
    pub secret: Bytes,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CancelRequest {
    pub key: CancelKey,
    /// The packet as received, forwarded unchanged.
    pub raw: Bytes,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StartupMessage {
    pub major: u16,
    pub minor: u16,
    pub params: Vec<(String, String)>,
    /// The packet as received: relayed byte for byte, so parameters pgshift does not know still reach Postgres.
    pub raw: Bytes,
}

impl StartupMessage {
    pub fn param(&self, name: &str) -> Option<&str> {
        self.params
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StartupError {
    #[error("invalid length of startup packet: {0}")]
    BadLength(usize),
    #[error("startup packet is malformed: {0}")]
    Malformed(&'static str),
    #[error("unsupported frontend protocol {0}.{1}")]
    UnsupportedProtocol(u16, u16),
}

/// Cuts one startup-phase packet off the front of `buf`, or returns `None` if more bytes are needed.
pub fn split_startup(buf: &mut BytesMut) -> Result<Option<StartupPacket>, StartupError> {
    if buf.len() < 8 {
        return Ok(None);
    }
    let len = u32::from_be_bytes([buf[0], buf[1], buf[2], buf[3]]) as usize;
    if !(8..=MAX_STARTUP_LEN).contains(&len) {
        return Err(StartupError::BadLength(len));
    }
    if buf.len() < len {
        return Ok(None);
    }
    let raw = buf.split_to(len).freeze();
    let code = u32::from_be_bytes([raw[4], raw[5], raw[6], raw[7]]);
    let packet = match code {
        SSL_REQUEST | GSSENC_REQUEST if len != 8 => {
            return Err(StartupError::Malformed("request has a body"))
        }
        SSL_REQUEST => StartupPacket::SslRequest,
        GSSENC_REQUEST => StartupPacket::GssEncRequest,
        CANCEL_REQUEST => {
            if !(12..=8 + 4 + 256).contains(&len) {
                return Err(StartupError::Malformed("cancel request has a bad length"));
            }
            let mut body = raw.slice(8..);
            let pid = body.get_i32();
            StartupPacket::Cancel(CancelRequest {
                key: CancelKey { pid, secret: body },
                raw,
            })
        }
        _ => {
            let (major, minor) = ((code >> 16) as u16, (code & 0xffff) as u16);
            if major != 3 {
                return Err(StartupError::UnsupportedProtocol(major, minor));
            }
            let params = parse_params(&raw[8..])?;
            StartupPacket::Startup(StartupMessage {
                major,
                minor,
                params,
                raw,
            })
        }
    };
    Ok(Some(packet))
}

/// `name\0value\0 … \0`. Names and values are shown in logs only, so invalid UTF-8 is replaced, not rejected.
fn parse_params(mut body: &[u8]) -> Result<Vec<(String, String)>, StartupError> {
    let mut params = Vec::new();
    loop {
        let name = take_cstr(&mut body)?;
        if name.is_empty() {
            break;
        }
        let value = take_cstr(&mut body)?;
        params.push((
            String::from_utf8_lossy(name).into_owned(),
            String::from_utf8_lossy(value).into_owned(),
        ));
    }
    if !body.is_empty() {
        return Err(StartupError::Malformed("bytes after the parameter list"));
    }
    Ok(params)
}

fn take_cstr<'a>(body: &mut &'a [u8]) -> Result<&'a [u8], StartupError> {
    let nul = body
        .iter()
        .position(|&b| b == 0)
        .ok_or(StartupError::Malformed(
            "parameter list is not NUL-terminated",
        ))?;
    let s = &body[..nul];
    *body = &body[nul + 1..];
    Ok(s)
}

/// Encodes a StartupMessage (protocol 3.0) for our own connections.
pub fn encode_startup(params: &[(&str, &str)]) -> BytesMut {
    let mut buf = BytesMut::new();
    buf.extend_from_slice(&[0; 4]);
    buf.extend_from_slice(&196_608u32.to_be_bytes());
    for (k, v) in params {
        buf.extend_from_slice(k.as_bytes());
        buf.extend_from_slice(&[0]);
        buf.extend_from_slice(v.as_bytes());
        buf.extend_from_slice(&[0]);
    }
    buf.extend_from_slice(&[0]);
    let len = buf.len() as u32;
    buf[..4].copy_from_slice(&len.to_be_bytes());
    buf
}

pub fn encode_ssl_request() -> [u8; 8] {
    let mut out = [0u8; 8];
    out[..4].copy_from_slice(&8u32.to_be_bytes());
    out[4..].copy_from_slice(&SSL_REQUEST.to_be_bytes());
    out
}

/// The CancelRequest packet for `key`, as a client would send it (protocol 3.2 secrets may be longer than 4).
pub fn encode_cancel_request(key: &CancelKey) -> Bytes {
    let mut out = BytesMut::with_capacity(12 + key.secret.len());
    out.extend_from_slice(&(12 + key.secret.len() as u32).to_be_bytes());
    out.extend_from_slice(&CANCEL_REQUEST.to_be_bytes());
    out.extend_from_slice(&key.pid.to_be_bytes());
    out.extend_from_slice(&key.secret);
    out.freeze()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_encoded_cancel_request_reads_back_as_itself() {
        let key = CancelKey {
            pid: 4242,
            secret: Bytes::from_static(&[1, 2, 3, 4, 5, 6, 7, 8]),
        };
        let raw = encode_cancel_request(&key);
        let mut buf = BytesMut::from(&raw[..]);
        assert_eq!(
            split_startup(&mut buf).unwrap(),
            Some(StartupPacket::Cancel(CancelRequest { key, raw }))
        );
    }

    #[test]
    fn parses_startup_message() {
        let mut buf = encode_startup(&[("user", "alice"), ("database", "app")]);
        buf.extend_from_slice(b"Q"); // the next message stays in the buffer
        let Some(StartupPacket::Startup(msg)) = split_startup(&mut buf).unwrap() else {
            panic!("expected a startup message")
        };
        assert_eq!((msg.major, msg.minor), (3, 0));
        assert_eq!(msg.param("user"), Some("alice"));
        assert_eq!(msg.param("database"), Some("app"));
        assert_eq!(&buf[..], b"Q");
    }

    #[test]
    fn waits_for_the_whole_packet() {
        let full = encode_startup(&[("user", "bob")]);
        let mut buf = BytesMut::from(&full[..full.len() - 1]);
        assert_eq!(split_startup(&mut buf).unwrap(), None);
    }

    #[test]
    fn parses_ssl_and_cancel_requests() {
        let mut buf = BytesMut::from(&encode_ssl_request()[..]);
        assert_eq!(
            split_startup(&mut buf).unwrap(),
            Some(StartupPacket::SslRequest)
        );
        let mut cancel = BytesMut::new();
        cancel.extend_from_slice(&16u32.to_be_bytes());
        cancel.extend_from_slice(&CANCEL_REQUEST.to_be_bytes());
        cancel.extend_from_slice(&42i32.to_be_bytes());
        cancel.extend_from_slice(&[1, 2, 3, 4]);
        let Some(StartupPacket::Cancel(req)) = split_startup(&mut cancel).unwrap() else {
            panic!("expected a cancel request")
        };
        assert_eq!(req.key.pid, 42);
        assert_eq!(&req.key.secret[..], &[1, 2, 3, 4]);
        assert_eq!(req.raw.len(), 16);
    }

    #[test]
    fn rejects_bad_packets() {
        let mut buf = BytesMut::from(&[0u8, 0, 0, 4, 0, 3, 0, 0][..]);
        assert_eq!(split_startup(&mut buf), Err(StartupError::BadLength(4)));
        let mut buf = BytesMut::from(&[0u8, 0, 0x40, 0, 0, 3, 0, 0][..]);
        assert_eq!(
            split_startup(&mut buf),
            Err(StartupError::BadLength(0x4000))
        );
        let mut buf = BytesMut::from(&[0u8, 0, 0, 9, 0, 2, 0, 0, 0][..]);
        assert_eq!(
            split_startup(&mut buf),
            Err(StartupError::UnsupportedProtocol(2, 0))
        );
        let mut buf = BytesMut::from(&[0u8, 0, 0, 10, 0, 3, 0, 0, b'u', b'x'][..]);
        assert!(matches!(
            split_startup(&mut buf),
            Err(StartupError::Malformed(_))
        ));
    }
}
