//! Errors pgshift itself reports to clients: SQLSTATE codes and the ErrorResponse frames that carry them.
//!
//! Every user-visible error is built here, by a named constructor, so its code and wording stay consistent.

use bytes::BytesMut;
use pgwire::messages::response::ErrorResponse;
use pgwire::messages::Message;

/// A SQLSTATE code (PostgreSQL Appendix A). A type, not a string, so codes cannot be mistyped at call sites.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SqlState(&'static str);

impl SqlState {
    pub const CONNECTION_FAILURE: SqlState = SqlState("08006");
    pub const PROTOCOL_VIOLATION: SqlState = SqlState("08P01");
    pub const FEATURE_NOT_SUPPORTED: SqlState = SqlState("0A000");
    pub const INVALID_AUTHORIZATION: SqlState = SqlState("28000");
    pub const TOO_MANY_CONNECTIONS: SqlState = SqlState("53300");
    pub const ADMIN_SHUTDOWN: SqlState = SqlState("57P01");
    pub const CANNOT_CONNECT_NOW: SqlState = SqlState("57P03");

    pub fn code(self) -> &'static str {
        self.0
    }
}

impl std::fmt::Display for SqlState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.0)
    }
}

/// Severity of an error pgshift sends. FATAL ends the session; ERROR does not.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Severity {
    Error,
    Fatal,
}

/// An error for the client: SQLSTATE, a sentence a person understands, and an optional hint.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientError {
    pub severity: Severity,
    pub code: SqlState,
    pub message: String,
    pub hint: Option<String>,
}

/// The sentence of a 0A000 refusal: which migration, and what exactly pgshift cannot rewrite.
pub fn refusal_message(refusal: &crate::rewrite::Refusal) -> String {
    format!(
        "pgshift cannot rewrite this statement for migration \"{}\": {}",
        refusal.migration, refusal.detail
    )
}

impl ClientError {
    pub fn fatal(code: SqlState, message: impl Into<String>) -> Self {
        ClientError {
            severity: Severity::Fatal,
            code,
            message: message.into(),
            hint: None,
        }
    }

    /// A statement pgshift will not run (0A000): the client's transaction fails exactly as for a statement the
    /// server rejects at parse time, and nothing was executed.
    pub fn refused(refusal: &crate::rewrite::Refusal) -> Self {
        ClientError {
            severity: Severity::Error,
            code: SqlState::FEATURE_NOT_SUPPORTED,
            message: refusal_message(refusal),
            hint: Some(format!(
                "Nothing was executed. Change the statement, or set writes = \"off\" for migration \"{}\".",
                refusal.migration
            )),
        }
    }

    pub fn with_hint(mut self, hint: impl Into<String>) -> Self {
        self.hint = Some(hint.into());
        self
    }

    /// The upstream could not be reached (refused, timed out, TLS failed).
    pub fn upstream_unavailable(upstream: &str, cause: &str) -> Self {
        Self::fatal(
            SqlState::CONNECTION_FAILURE,
            format!("pgshift could not connect to upstream PostgreSQL at {upstream}: {cause}"),
        )
    }

    /// A frame that breaks the wire protocol; the connection cannot continue.
    pub fn protocol_violation(detail: impl std::fmt::Display) -> Self {
        Self::fatal(
            SqlState::PROTOCOL_VIOLATION,
            format!("invalid frontend message: {detail}"),
        )
    }

    /// Plaintext bytes followed an SSLRequest before the TLS handshake (CVE-2021-23214 class).
    pub fn plaintext_after_ssl_request() -> Self {
        Self::fatal(
            SqlState::PROTOCOL_VIOLATION,
            "received unencrypted data after SSL request",
        )
        .with_hint("This could be either a client-software bug or evidence of an attempted man-in-the-middle attack.")
    }

    pub fn tls_required() -> Self {
        Self::fatal(
            SqlState::INVALID_AUTHORIZATION,
            "pgshift requires TLS for client connections",
        )
        .with_hint("Connect with sslmode=require (or stronger).")
    }

    pub fn unsupported_protocol(major: u16, minor: u16) -> Self {
        Self::fatal(
            SqlState::FEATURE_NOT_SUPPORTED,
            format!("unsupported frontend protocol {major}.{minor}: pgshift supports protocol 3"),
        )
    }

    /// SCRAM channel binding ties the client to pgshift's certificate, which the upstream cannot check.
    pub fn channel_binding_unsupported() -> Self {
        Self::fatal(
            SqlState::INVALID_AUTHORIZATION,
            "pgshift cannot relay SCRAM-SHA-256-PLUS channel binding: the client bound to pgshift's TLS \
             certificate, which the upstream server cannot verify",
        )
        .with_hint(
            "Connect with channel_binding=disable, or run one of the two legs (client to pgshift, \
             pgshift to upstream) without TLS.",
        )
    }

    pub fn too_many_connections(limit: usize) -> Self {
        Self::fatal(
            SqlState::TOO_MANY_CONNECTIONS,
            format!("sorry, too many clients already: pgshift's limit is {limit} connections"),
        )
    }

    /// The process's descriptor limit, not `listen.max_connections`, is what stops this session.
    pub fn out_of_descriptors(limit: u64, sessions: usize) -> Self {
        Self::fatal(
            SqlState::TOO_MANY_CONNECTIONS,
            format!(
                "sorry, too many clients already: pgshift's file-descriptor limit ({limit}) allows {sessions} sessions"
            ),
        )
        .with_hint(
            "Raise pgshift's hard RLIMIT_NOFILE (LimitNOFILE= under systemd, ulimit -Hn in a shell) or lower \
             listen.max_connections.",
        )
    }

    pub fn shutting_down() -> Self {
        Self::fatal(
            SqlState::ADMIN_SHUTDOWN,
            "terminating connection because pgshift is shutting down",
        )
    }

    /// Encodes the ErrorResponse frame ('E').
    pub fn encode(&self, buf: &mut BytesMut) {
        let severity = match self.severity {
            Severity::Error => "ERROR",
            Severity::Fatal => "FATAL",
        };
        let mut fields = vec![
            (b'S', severity.to_owned()),
            (b'V', severity.to_owned()),
            (b'C', self.code.code().to_owned()),
            (b'M', self.message.clone()),
        ];
        if let Some(hint) = &self.hint {
            fields.push((b'H', hint.clone()));
        }
        ErrorResponse::new(fields)
            .encode(buf)
            .expect("encoding an ErrorResponse into memory cannot fail");
    }

    pub fn to_bytes(&self) -> bytes::Bytes {
        let mut buf = BytesMut::new();
        self.encode(&mut buf);
        buf.freeze()
    }
}

impl std::fmt::Display for ClientError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} ({})", self.message, self.code)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encodes_error_response_fields() {
        let bytes = ClientError::shutting_down().to_bytes();
        assert_eq!(bytes[0], b'E');
        let len = u32::from_be_bytes(bytes[1..5].try_into().unwrap()) as usize;
        assert_eq!(len + 1, bytes.len());
        let body = &bytes[5..];
        assert!(body.starts_with(b"SFATAL\0VFATAL\0C57P01\0M"));
        assert!(body.ends_with(b"shutting down\0\0"));
    }

    #[test]
    fn hint_is_encoded() {
        let bytes = ClientError::plaintext_after_ssl_request().to_bytes();
        let text = String::from_utf8_lossy(&bytes);
        assert!(text.contains("C08P01\0"));
        assert!(text.contains("\0HThis could be"));
    }
}
