//! The FIFO of requests the upstream still owes a response, matched against the responses as they arrive.
//!
//! PostgreSQL answers requests strictly in order (PG docs 55.2.3), so a queue is enough, with one rule on top:
//! after an error in the extended protocol the server skips every message until the next Sync, and those
//! skipped requests get no response at all. Response shaping of rewritten statements hangs off this matching.

use std::collections::VecDeque;

/// A client message that the server answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Request {
    Query,
    FunctionCall,
    Parse,
    Bind,
    Describe,
    Execute,
    Close,
    Sync,
    /// Not a request: where the client's CopyDone/CopyFail sits in the stream. The server ignores Sync while
    /// in copy-in mode, so the Syncs between an Execute that starts COPY FROM STDIN and this marker get no
    /// response.
    CopyEnd,
}

impl Request {
    /// The request a frontend tag starts, if the server replies to it. Flush, Terminate and COPY data do not.
    pub fn from_tag(tag: u8) -> Option<Request> {
        Some(match tag {
            b'Q' => Request::Query,
            b'F' => Request::FunctionCall,
            b'P' => Request::Parse,
            b'B' => Request::Bind,
            b'D' => Request::Describe,
            b'E' => Request::Execute,
            b'C' => Request::Close,
            b'S' => Request::Sync,
            b'c' | b'f' => Request::CopyEnd,
            _ => return None,
        })
    }

    /// Whether this message is part of the extended protocol, where an error skips to the next Sync.
    fn is_extended(self) -> bool {
        !matches!(
            self,
            Request::Query | Request::FunctionCall | Request::Sync | Request::CopyEnd
        )
    }
}

/// What a backend message meant for the queue.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Matched {
    /// Part of the response to the request at the front (rows, notices, copy data), or asynchronous.
    Partial,
    /// The last message of the front request's response.
    Done(Request),
    /// The front request failed; `skipped` later requests will get no response (error-until-Sync).
    Failed { request: Request, skipped: usize },
    /// A message no pending request explains: a bug in the matching, or the server ended the session.
    Unexpected,
}

/// The FIFO; each request carries a payload `T` (how to answer it) that the matching never looks at.
#[derive(Debug)]
pub struct Pending<T = ()> {
    queue: VecDeque<(Request, T)>,
    /// An extended-protocol error happened and no Sync has been sent since: the server ignores requests.
    skipping: bool,
    /// The server is in copy-in mode and the client's CopyDone/CopyFail has not been pushed yet.
    copy_in: bool,
}

impl<T> Default for Pending<T> {
    fn default() -> Self {
        Pending {
            queue: VecDeque::new(),
            skipping: false,
            copy_in: false,
        }
    }
}

impl<T> Pending<T> {
    /// Queues a request; returns false if the server will ignore it (so no reply will come).
    pub fn push(&mut self, request: Request, payload: T) -> bool {
        if self.copy_in {
            match request {
                Request::Sync => return false,
                Request::CopyEnd => {
                    self.copy_in = false;
                    return false;
                }
                _ => {}
            }
        }
        if self.skipping {
            if request == Request::Sync {
                self.skipping = false;
            } else {
                return false;
            }
        }
        self.queue.push_back((request, payload));
        true
    }

    /// The request the next reply belongs to, with its payload.
    pub fn front_mut(&mut self) -> Option<(Request, &mut T)> {
        while matches!(self.queue.front(), Some((Request::CopyEnd, _))) {
            self.queue.pop_front();
        }
        self.queue.front_mut().map(|(r, p)| (*r, p))
    }

    /// Whether any queued payload satisfies `f`.
    pub fn any(&self, f: impl Fn(&T) -> bool) -> bool {
        self.queue.iter().any(|(_, p)| f(p))
    }

    /// Nothing is owed: the session sits between requests.
    pub fn is_idle(&self) -> bool {
        !self.skipping && !self.copy_in && self.queue.iter().all(|(r, _)| *r == Request::CopyEnd)
    }

    /// Requests still owed a response.
    pub fn len(&self) -> usize {
        self.queue
            .iter()
            .filter(|(r, _)| *r != Request::CopyEnd)
            .count()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// CopyInResponse: the Syncs the client sent before its CopyDone/CopyFail are ignored by the server.
    fn enter_copy_in(&mut self) {
        let mut i = 1;
        while i < self.queue.len() {
            match self.queue[i].0 {
                Request::Sync => {
                    self.queue.remove(i);
                }
                Request::CopyEnd => {
                    self.queue.remove(i);
                    return;
                }
                _ => i += 1,
            }
        }
        self.copy_in = true;
    }

    /// Matches one backend message tag against the front of the queue.
    pub fn on_backend(&mut self, tag: u8) -> Matched {
        // NoticeResponse, NotificationResponse and ParameterStatus may arrive at any time.
        if matches!(tag, b'N' | b'A' | b'S') {
            return Matched::Partial;
        }
        // A CopyDone/CopyFail sent after the copy had already ended (the server drops it).
        while matches!(self.queue.front(), Some((Request::CopyEnd, _))) {
            self.queue.pop_front();
        }
        let Some(&(front, _)) = self.queue.front() else {
            return Matched::Unexpected;
        };
        if tag == b'G' {
            self.enter_copy_in();
        }
        if tag == b'E' {
            // An error ends copy-in mode; later copy messages are dropped by the server.
            self.copy_in = false;
            if !front.is_extended() {
                // Simple query, function call, or a failed commit at Sync: ReadyForQuery still follows.
                return Matched::Partial;
            }
            self.queue.pop_front();
            let skipped = self
                .queue
                .iter()
                .position(|(r, _)| *r == Request::Sync)
                .unwrap_or(self.queue.len());
            let skipped_requests = self
                .queue
                .iter()
                .take(skipped)
                .filter(|(r, _)| *r != Request::CopyEnd)
                .count();
            self.queue.drain(..skipped);
            self.skipping = !self.queue.iter().any(|(r, _)| *r == Request::Sync);
            return Matched::Failed {
                request: front,
                skipped: skipped_requests,
            };
        }
        let done = match (front, tag) {
            (Request::Query | Request::FunctionCall | Request::Sync, b'Z') => true,
            (Request::Query | Request::FunctionCall, _) => false,
            (Request::Parse, b'1') | (Request::Bind, b'2') | (Request::Close, b'3') => true,
            (Request::Describe, b't') => false,
            (Request::Describe, b'T' | b'n') => true,
            (Request::Execute, b'D' | b'd' | b'c' | b'G' | b'H' | b'W') => false,
            (Request::Execute, b'C' | b'I' | b's') => true,
            _ => return Matched::Unexpected,
        };
        if done {
            self.queue.pop_front();
            if tag == b'Z' {
                self.copy_in = false;
            }
            Matched::Done(front)
        } else {
            Matched::Partial
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use Request::*;

    fn pending(requests: &[Request]) -> Pending {
        let mut p = Pending::default();
        requests.iter().for_each(|&r| {
            p.push(r, ());
        });
        p
    }

    #[test]
    fn simple_query_ends_at_ready_for_query() {
        let mut p = pending(&[Query]);
        for tag in *b"TDDCNE" {
            assert_eq!(p.on_backend(tag), Matched::Partial);
        }
        assert_eq!(p.on_backend(b'Z'), Matched::Done(Query));
        assert!(p.is_idle());
    }

    #[test]
    fn pipelined_extended_requests_match_in_order() {
        let mut p = pending(&[Parse, Bind, Describe, Execute, Sync, Bind, Execute, Sync]);
        let replies = [
            (b'1', Matched::Done(Parse)),
            (b'2', Matched::Done(Bind)),
            (b'T', Matched::Done(Describe)),
            (b'D', Matched::Partial),
            (b'C', Matched::Done(Execute)),
            (b'Z', Matched::Done(Sync)),
            (b'2', Matched::Done(Bind)),
            (b's', Matched::Done(Execute)),
            (b'Z', Matched::Done(Sync)),
        ];
        for (tag, want) in replies {
            assert_eq!(p.on_backend(tag), want, "tag {}", tag as char);
        }
        assert!(p.is_idle());
    }

    #[test]
    fn error_skips_to_next_sync() {
        let mut p = pending(&[Parse, Bind, Execute, Sync, Parse, Sync]);
        assert_eq!(
            p.on_backend(b'E'),
            Matched::Failed {
                request: Parse,
                skipped: 2
            }
        );
        assert_eq!(p.on_backend(b'Z'), Matched::Done(Sync));
        assert_eq!(p.on_backend(b'1'), Matched::Done(Parse));
        assert_eq!(p.on_backend(b'Z'), Matched::Done(Sync));
    }

    #[test]
    fn requests_after_an_error_are_skipped_until_sync_arrives() {
        let mut p = pending(&[Parse, Bind]);
        assert_eq!(
            p.on_backend(b'E'),
            Matched::Failed {
                request: Parse,
                skipped: 1
            }
        );
        assert!(!p.is_idle());
        p.push(Execute, ()); // sent after the error: the server ignores it
        p.push(Sync, ());
        assert_eq!(p.len(), 1);
        assert_eq!(p.on_backend(b'Z'), Matched::Done(Sync));
        assert!(p.is_idle());
    }

    #[test]
    fn statement_describe_and_copy_in_execute() {
        let mut p = pending(&[Describe, Execute, CopyEnd, Sync]);
        assert_eq!(p.on_backend(b't'), Matched::Partial);
        assert_eq!(p.on_backend(b'n'), Matched::Done(Describe));
        assert_eq!(p.on_backend(b'G'), Matched::Partial);
        assert_eq!(p.on_backend(b'C'), Matched::Done(Execute));
        assert_eq!(p.on_backend(b'Z'), Matched::Done(Sync));
    }

    #[test]
    fn syncs_sent_during_copy_in_get_no_reply() {
        // tokio-postgres: Bind, Execute, Sync, then CopyData…, CopyDone, Sync. The first Sync arrives while the
        // server is in copy-in mode and is ignored.
        let mut p = pending(&[Bind, Execute, Sync, CopyEnd, Sync]);
        assert_eq!(p.on_backend(b'2'), Matched::Done(Bind));
        assert_eq!(p.on_backend(b'G'), Matched::Partial);
        assert_eq!(p.on_backend(b'C'), Matched::Done(Execute));
        assert_eq!(p.on_backend(b'Z'), Matched::Done(Sync));
        assert!(p.is_idle());
    }

    #[test]
    fn copy_in_before_the_client_finished_sending() {
        let mut p = pending(&[Bind, Execute, Sync]);
        p.on_backend(b'2');
        assert_eq!(p.on_backend(b'G'), Matched::Partial);
        p.push(Sync, ()); // Flush/Sync while copying: ignored by the server
        p.push(CopyEnd, ());
        p.push(Sync, ());
        assert_eq!(p.on_backend(b'C'), Matched::Done(Execute));
        assert_eq!(p.on_backend(b'Z'), Matched::Done(Sync));
        assert!(p.is_idle());
    }

    #[test]
    fn error_during_copy_in_skips_to_the_sync_after_it() {
        let mut p = pending(&[Bind, Execute, Sync]);
        p.on_backend(b'2');
        p.on_backend(b'G');
        assert_eq!(
            p.on_backend(b'E'),
            Matched::Failed {
                request: Execute,
                skipped: 0
            }
        );
        p.push(CopyEnd, ()); // dropped by the server after the error
        p.push(Sync, ());
        assert_eq!(p.on_backend(b'Z'), Matched::Done(Sync));
        assert!(p.is_idle());
    }

    #[test]
    fn simple_query_copy_in() {
        let mut p = pending(&[Query, CopyEnd]);
        assert_eq!(p.on_backend(b'G'), Matched::Partial);
        assert_eq!(p.on_backend(b'C'), Matched::Partial);
        assert_eq!(p.on_backend(b'Z'), Matched::Done(Query));
        assert!(p.is_idle());
        // A CopyDone the server drops (the copy had already failed) leaves no debt.
        let mut p = pending(&[Query]);
        p.on_backend(b'G');
        p.on_backend(b'E');
        assert_eq!(p.on_backend(b'Z'), Matched::Done(Query));
        p.push(CopyEnd, ());
        assert!(p.is_idle());
        p.push(Query, ());
        assert_eq!(p.on_backend(b'Z'), Matched::Done(Query));
    }

    #[test]
    fn error_at_sync_is_part_of_sync() {
        let mut p = pending(&[Sync]);
        assert_eq!(p.on_backend(b'E'), Matched::Partial);
        assert_eq!(p.on_backend(b'Z'), Matched::Done(Sync));
    }

    #[test]
    fn unexplained_messages_are_reported() {
        let mut p = pending(&[Bind]);
        assert_eq!(p.on_backend(b'1'), Matched::Unexpected);
        assert_eq!(
            Pending::<()>::default().on_backend(b'E'),
            Matched::Unexpected
        );
        assert_eq!(Pending::<()>::default().on_backend(b'A'), Matched::Partial);
    }
}
