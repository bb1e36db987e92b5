//! Zero-copy readers for the few messages pgshift inspects. Everything else is forwarded unread.

use super::frame::{Body, FrameError};
use super::startup::CancelKey;
use bytes::Bytes;

/// Authentication request codes (PG docs 55.7, AuthenticationXXX).
pub mod auth {
    pub const OK: i32 = 0;
    pub const SASL: i32 = 10;
    pub const SASL_FINAL: i32 = 12;
}

/// The code of an Authentication ('R') message.
pub fn auth_code(frame: &[u8]) -> Result<i32, FrameError> {
    Body::of(frame).i32()
}

/// The mechanism names of an AuthenticationSASL message.
pub fn sasl_mechanisms(frame: &[u8]) -> Result<Vec<&[u8]>, FrameError> {
    let mut body = Body::of(frame);
    body.i32()?;
    let mut names = Vec::new();
    loop {
        let name = body.cstr()?;
        if name.is_empty() {
            break;
        }
        names.push(name);
    }
    body.finish()?;
    Ok(names)
}

/// The mechanism a client chose in its SASLInitialResponse ('p').
pub fn sasl_initial_mechanism(frame: &[u8]) -> Result<&[u8], FrameError> {
    Body::of(frame).cstr()
}

/// ReadyForQuery's transaction status: `I` idle, `T` in a transaction, `E` in a failed transaction.
pub fn ready_status(frame: &[u8]) -> Result<u8, FrameError> {
    let mut body = Body::of(frame);
    let status = body.u8()?;
    body.finish()?;
    Ok(status)
}

/// BackendKeyData ('K'): the key a client later uses to cancel.
pub fn backend_key(frame: &[u8]) -> Result<CancelKey, FrameError> {
    let mut body = Body::of(frame);
    let pid = body.i32()?;
    let secret = Bytes::copy_from_slice(body.remaining());
    if secret.is_empty() || secret.len() > 256 {
        return Err(FrameError::Malformed {
            tag: b'K',
            what: "cancel key has a bad length",
        });
    }
    Ok(CancelKey { pid, secret })
}

/// ParameterStatus ('S'): name and value.
pub fn parameter_status(frame: &[u8]) -> Result<(&[u8], &[u8]), FrameError> {
    let mut body = Body::of(frame);
    let name = body.cstr()?;
    let value = body.cstr()?;
    body.finish()?;
    Ok((name, value))
}

/// The SQLSTATE and message of an ErrorResponse or NoticeResponse, for logs and metrics.
pub fn error_fields(frame: &[u8]) -> Result<(String, String), FrameError> {
    let mut body = Body::of(frame);
    let (mut code, mut message) = (String::new(), String::new());
    loop {
        match body.u8()? {
            0 => break,
            field => {
                let value = String::from_utf8_lossy(body.cstr()?).into_owned();
                match field {
                    b'C' => code = value,
                    b'M' => message = value,
                    _ => {}
                }
            }
        }
    }
    body.finish()?;
    Ok((code, message))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::ClientError;
    use crate::protocol::frame::write_frame;
    use bytes::BytesMut;

    fn frame(tag: u8, body: &[u8]) -> BytesMut {
        let mut buf = BytesMut::new();
        write_frame(&mut buf, tag, |b| b.extend_from_slice(body));
        buf
    }

    #[test]
    fn reads_sasl_mechanisms() {
        let f = frame(b'R', b"\0\0\0\x0aSCRAM-SHA-256-PLUS\0SCRAM-SHA-256\0\0");
        assert_eq!(auth_code(&f).unwrap(), auth::SASL);
        assert_eq!(
            sasl_mechanisms(&f).unwrap(),
            vec![&b"SCRAM-SHA-256-PLUS"[..], &b"SCRAM-SHA-256"[..]]
        );
        let p = frame(b'p', b"SCRAM-SHA-256\0\0\0\0\x03abc");
        assert_eq!(sasl_initial_mechanism(&p).unwrap(), b"SCRAM-SHA-256");
    }

    #[test]
    fn reads_ready_for_query_and_keys() {
        assert_eq!(ready_status(&frame(b'Z', b"T")).unwrap(), b'T');
        assert!(ready_status(&frame(b'Z', b"")).is_err());
        let key = backend_key(&frame(b'K', &[0, 0, 0, 9, 1, 2, 3, 4])).unwrap();
        assert_eq!(key.pid, 9);
        assert_eq!(&key.secret[..], &[1, 2, 3, 4]);
        assert!(backend_key(&frame(b'K', &[0, 0, 0, 9])).is_err());
    }

    #[test]
    fn reads_error_fields() {
        let f = ClientError::shutting_down().to_bytes();
        let (code, message) = error_fields(&f).unwrap();
        assert_eq!(code, "57P01");
        assert_eq!(
            message,
            "terminating connection because pgshift is shutting down"
        );
        assert!(error_fields(&frame(b'E', b"Cx")).is_err());
    }

    #[test]
    fn reads_parameter_status() {
        let f = frame(b'S', b"client_encoding\0UTF8\0");
        assert_eq!(
            parameter_status(&f).unwrap(),
            (&b"client_encoding"[..], &b"UTF8"[..])
        );
    }
}
