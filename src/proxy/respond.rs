//! What the client sees of each server message, given the request it answers: forwarded as is, dropped
//! (pgshift's own injected requests), or replaced (reshaped replies of rewritten statements, pgshift's error
//! for a refused one). Pure: the pumps feed it one message at a time.

use super::pending::Request;
use crate::protocol::messages::{self, encode};
use crate::rewrite::shape::{command_tag, Origin, Shape};
use bytes::{Bytes, BytesMut};
use std::sync::Arc;
use tokio::sync::oneshot;

/// Rows of a catalog lookup, as text, or the server's error.
pub type CatalogRows = Result<Vec<Vec<Option<String>>>, String>;

/// How to answer one pending request.
#[derive(Debug, Default)]
pub enum Respond {
    #[default]
    Forward,
    /// A simple Query whose statements were rewritten: one shape per statement, `next` is the one replying now.
    Statements { shapes: Arc<[Shape]>, next: usize },
    /// Describe or Execute of a rewritten prepared statement or portal.
    Single(Shape),
    /// A request pgshift injected (re-Parse on a route change): the client never sees its replies, except an
    /// error, which stands in for the error its own next message would have got.
    Swallow,
    /// pgshift's catalog lookup: rows are collected and handed back at ReadyForQuery.
    Catalog {
        rows: Vec<Vec<Option<String>>>,
        error: Option<String>,
        done: Option<oneshot::Sender<CatalogRows>>,
    },
    /// A refused statement was sent as one that fails at once; its error is replaced by pgshift's.
    ReplaceError(Bytes),
}

impl Respond {
    /// Whether replies must be looked at (the pumps then read those messages whole).
    pub fn is_special(&self) -> bool {
        !matches!(self, Respond::Forward)
    }
}

#[derive(Debug, PartialEq, Eq)]
pub enum Output {
    Forward,
    Drop,
    Replace(Bytes),
}

fn frame(write: impl FnOnce(&mut BytesMut)) -> Output {
    let mut buf = BytesMut::new();
    write(&mut buf);
    Output::Replace(buf.freeze())
}

fn retag(shape: &Shape, frame_bytes: &[u8]) -> Output {
    let Shape::Dml { tag, .. } = shape else {
        return Output::Forward;
    };
    let new_tag = messages::command_tag(frame_bytes)
        .ok()
        .and_then(|t| command_tag(*tag, t));
    match new_tag {
        Some(t) => frame(|b| encode::command_complete(b, &t)),
        None => Output::Forward,
    }
}

/// A rewritten write runs as a SELECT; where Postgres names the statement kind in an error, name the client's.
fn reword_error(shape: &Shape, frame_bytes: &[u8]) -> Output {
    let Shape::Dml { tag, .. } = shape else {
        return Output::Forward;
    };
    let verb = match tag {
        crate::rewrite::DmlTag::Insert => "INSERT",
        crate::rewrite::DmlTag::Update => "UPDATE",
        crate::rewrite::DmlTag::Delete => "DELETE",
    };
    match messages::replace_error_message(
        frame_bytes,
        "cannot execute SELECT in a read-only transaction",
        &format!("cannot execute {verb} in a read-only transaction"),
    ) {
        Some(frame) => Output::Replace(Bytes::from(frame)),
        None => Output::Forward,
    }
}

/// A routed read's RowDescription, describing its fields as the old columns they stand for.
fn describe_as_old(shape: &Shape, frame_bytes: &[u8]) -> Output {
    let (fields, remap): (&[Option<Origin>], &[(Origin, Origin)]) = match shape {
        Shape::Read { fields, remap } => (fields, remap),
        Shape::Dml {
            origins: Some(fields),
            ..
        } => (fields, &[]),
        _ => return Output::Forward,
    };
    match messages::patch_row_description(frame_bytes, fields, remap) {
        Some(frame) => Output::Replace(Bytes::from(frame)),
        None => Output::Forward,
    }
}

/// Decides the fate of one server message `tag` answering `request`, before the FIFO advances.
pub fn shape(respond: &mut Respond, request: Request, tag: u8, frame_bytes: &[u8]) -> Output {
    // Notices, notifications and parameter changes belong to the session, not to a request.
    if matches!(tag, b'N' | b'A' | b'S') {
        return Output::Forward;
    }
    match respond {
        Respond::Forward => Output::Forward,
        Respond::Swallow => match tag {
            b'E' => Output::Forward,
            _ => Output::Drop,
        },
        Respond::Catalog { rows, error, done } => {
            match tag {
                b'D' => match messages::data_row_text(frame_bytes) {
                    Ok(row) => rows.push(row),
                    Err(e) => *error = Some(e.to_string()),
                },
                b'E' => {
                    let message =
                        messages::error_fields(frame_bytes).map(|(c, m)| format!("{m} ({c})"));
                    *error = Some(message.unwrap_or_else(|e| e.to_string()));
                }
                b'Z' => {
                    if let Some(done) = done.take() {
                        let result = match error.take() {
                            Some(e) => Err(e),
                            None => Ok(std::mem::take(rows)),
                        };
                        let _ = done.send(result);
                    }
                }
                _ => {}
            }
            Output::Drop
        }
        Respond::ReplaceError(error) => match tag {
            b'E' => Output::Replace(error.clone()),
            _ => Output::Forward,
        },
        Respond::Statements { shapes, next } => {
            let shape = shapes.get(*next).unwrap_or(&Shape::Same);
            match tag {
                b'T' | b'D' if !shape.keeps_rows() => Output::Drop,
                b'T' => describe_as_old(shape, frame_bytes),
                b'C' => {
                    let out = retag(shape, frame_bytes);
                    *next += 1;
                    out
                }
                b'I' => {
                    *next += 1;
                    Output::Forward
                }
                b'E' => reword_error(shape, frame_bytes),
                _ => Output::Forward,
            }
        }
        Respond::Single(shape) => match (request, tag) {
            (Request::Describe, b'T') if !shape.keeps_rows() => frame(encode::no_data),
            (Request::Describe, b'T') => describe_as_old(shape, frame_bytes),
            (Request::Execute, b'D') if !shape.keeps_rows() => Output::Drop,
            (Request::Execute, b'C') => retag(shape, frame_bytes),
            (Request::Execute, b'E') => reword_error(shape, frame_bytes),
            _ => Output::Forward,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rewrite::shape::DmlTag;

    fn cc(tag: &str) -> Bytes {
        let mut b = BytesMut::new();
        encode::command_complete(&mut b, tag);
        b.freeze()
    }

    const INSERT_NO_RETURNING: Shape = Shape::Dml {
        tag: DmlTag::Insert,
        returning: false,
        origins: None,
    };

    #[test]
    fn simple_query_statements_are_reshaped_in_order() {
        let mut r = Respond::Statements {
            shapes: Arc::from(vec![INSERT_NO_RETURNING, Shape::Same]),
            next: 0,
        };
        let q = Request::Query;
        assert_eq!(shape(&mut r, q, b'T', b"T\0\0\0\x06\0\0"), Output::Drop);
        assert_eq!(shape(&mut r, q, b'D', b"D\0\0\0\x06\0\0"), Output::Drop);
        assert_eq!(
            shape(&mut r, q, b'C', &cc("SELECT 2")),
            Output::Replace(cc("INSERT 0 2"))
        );
        assert_eq!(shape(&mut r, q, b'T', b"T..."), Output::Forward);
        assert_eq!(shape(&mut r, q, b'C', &cc("SELECT 5")), Output::Forward);
        assert_eq!(shape(&mut r, q, b'Z', b"Z\0\0\0\x05I"), Output::Forward);
    }

    #[test]
    fn describe_and_execute_of_a_rewritten_statement() {
        let mut r = Respond::Single(INSERT_NO_RETURNING);
        assert_eq!(
            shape(&mut r, Request::Describe, b't', b"t"),
            Output::Forward
        );
        let mut nodata = BytesMut::new();
        encode::no_data(&mut nodata);
        assert_eq!(
            shape(&mut r, Request::Describe, b'T', b"T"),
            Output::Replace(nodata.freeze())
        );
        assert_eq!(shape(&mut r, Request::Execute, b'D', b"D"), Output::Drop);
        let update = Shape::Dml {
            tag: DmlTag::Update,
            returning: true,
            origins: None,
        };
        let mut r = Respond::Single(update);
        assert_eq!(shape(&mut r, Request::Execute, b'D', b"D"), Output::Forward);
        assert_eq!(
            shape(&mut r, Request::Execute, b'C', &cc("SELECT 1")),
            Output::Replace(cc("UPDATE 1"))
        );
    }

    #[test]
    fn catalog_rows_are_collected_and_handed_back() {
        let (tx, rx) = oneshot::channel();
        let mut r = Respond::Catalog {
            rows: vec![],
            error: None,
            done: Some(tx),
        };
        let row = [b'D', 0, 0, 0, 11, 0, 1, 0, 0, 0, 1, b'x'];
        assert_eq!(shape(&mut r, Request::Query, b'T', b"T"), Output::Drop);
        assert_eq!(shape(&mut r, Request::Query, b'D', &row), Output::Drop);
        assert_eq!(shape(&mut r, Request::Query, b'N', b"N"), Output::Forward);
        assert_eq!(shape(&mut r, Request::Query, b'Z', b"Z"), Output::Drop);
        assert_eq!(
            rx.blocking_recv().unwrap().unwrap(),
            vec![vec![Some("x".to_owned())]]
        );
    }

    #[test]
    fn refused_statement_error_is_replaced_and_swallowed_errors_surface() {
        let mine = Bytes::from_static(b"E-mine");
        let mut r = Respond::ReplaceError(mine.clone());
        assert_eq!(
            shape(&mut r, Request::Parse, b'E', b"E-server"),
            Output::Replace(mine)
        );
        let mut s = Respond::Swallow;
        assert_eq!(shape(&mut s, Request::Parse, b'1', b"1"), Output::Drop);
        assert_eq!(shape(&mut s, Request::Parse, b'E', b"E"), Output::Forward);
    }
}
