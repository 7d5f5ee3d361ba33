//! The JSON error shape for the answers actix-http writes by itself.
//!
//! A request its HTTP/1 parser refuses (400 malformed, 431 head too large, 408 head too slow)
//! never reaches the application: the dispatcher answers it with an empty body and closes the
//! connection, and offers no hook to change that answer. [`JsonParserErrors`] sits between the
//! connection (plain or TLS) and the dispatcher, recognises exactly those answers in what the
//! dispatcher writes, and gives them the body of every other error (docs/api.md, Errors).
//! Everything else passes through untouched; the check costs two short comparisons per write.

use super::{error_body, ApiError, SECURITY_HEADERS};
use std::io;
use std::pin::Pin;
use std::task::{ready, Context, Poll};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// A connection whose parser errors are answered in JSON.
pub struct JsonParserErrors<IO> {
    inner: IO,
    state: State,
}

enum State {
    /// Answers are watched for the parser's own.
    Watching,
    /// One of the parser's own answers is going out in its JSON form.
    Rewriting(Box<Rewrite>),
    /// The connection switched protocols (a WebSocket): what follows is not HTTP, and may
    /// carry anything a client sends (a ping's payload comes back in the pong), so it passes
    /// untouched.
    Upgraded,
}

/// The JSON form of one of the parser's answers, and how much of it the socket took.
struct Rewrite {
    json: Vec<u8>,
    sent: usize,
}

/// How a write starts when it answers a protocol switch.
const SWITCHING_PROTOCOLS: &[u8] = b"HTTP/1.1 101 ";

impl<IO> JsonParserErrors<IO> {
    pub fn new(inner: IO) -> Self {
        JsonParserErrors {
            inner,
            state: State::Watching,
        }
    }
}

impl<IO: AsyncWrite + Unpin> JsonParserErrors<IO> {
    /// Sends what is left of a rewritten answer, if any.
    fn poll_send_rewritten(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        if let State::Rewriting(rewrite) = &mut self.state {
            while rewrite.sent < rewrite.json.len() {
                let written = ready!(
                    Pin::new(&mut self.inner).poll_write(cx, &rewrite.json[rewrite.sent..])
                )?;
                if written == 0 {
                    return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
                }
                rewrite.sent += written;
            }
        }
        Poll::Ready(Ok(()))
    }
}

impl<IO: AsyncRead + Unpin> AsyncRead for JsonParserErrors<IO> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<IO: AsyncWrite + Unpin> AsyncWrite for JsonParserErrors<IO> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = &mut *self;
        match this.state {
            State::Upgraded => return Pin::new(&mut this.inner).poll_write(cx, buf),
            State::Watching if buf.starts_with(SWITCHING_PROTOCOLS) => {
                this.state = State::Upgraded;
                return Pin::new(&mut this.inner).poll_write(cx, buf);
            }
            State::Watching => match own_answer(buf) {
                None => return Pin::new(&mut this.inner).poll_write(cx, buf),
                // What comes before it goes first, partial writes counted as usual.
                Some(answer) if answer.start > 0 => {
                    return Pin::new(&mut this.inner).poll_write(cx, &buf[..answer.start])
                }
                Some(answer) => {
                    this.state = State::Rewriting(Box::new(Rewrite {
                        json: answer.json(),
                        sent: 0,
                    }))
                }
            },
            State::Rewriting(_) => {}
        }
        // The dispatcher presents the same answer again until told it is written, and it is
        // told so only once all of its JSON form is out.
        ready!(this.poll_send_rewritten(cx))?;
        this.state = State::Watching;
        Poll::Ready(Ok(buf.len()))
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        ready!(self.poll_send_rewritten(cx))?;
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        ready!(self.poll_send_rewritten(cx))?;
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// The longest answer head actix-http writes by itself (the 431's is 118 bytes). Every answer
/// of the application is longer: it carries the security headers.
const LONGEST_OWN_HEAD: usize = 160;

/// The parser's own answer that ends a write: where it starts, and what it says.
struct OwnAnswer<'a> {
    start: usize,
    status_line: &'a str,
    error: ApiError,
    date: Option<&'a str>,
}

/// The answer that ends `written`, when it is one the parser wrote by itself; `None` for
/// anything else.
///
/// Such an answer is always the last a connection gets, so it ends what the dispatcher writes.
/// Only an answer of exactly actix-http's own form is taken: its status, `content-length: 0`,
/// at most `connection: close`, and `date`. No answer of the application has that form, and
/// no body it sends ends with one: JSON and events escape line breaks, and a page or an asset
/// is written whole (or as gzip's output), so a write ends where its body does. After a
/// protocol switch nothing is looked at (`State::Upgraded`).
fn own_answer(written: &[u8]) -> Option<OwnAnswer<'_>> {
    const END: &[u8] = b"\r\n\r\n";
    if !written.ends_with(END) {
        return None;
    }
    let window = written.len().saturating_sub(LONGEST_OWN_HEAD);
    let start = window + find_last(&written[window..], b"HTTP/1.")?;
    let head = std::str::from_utf8(&written[start..written.len() - END.len()]).ok()?;
    let mut lines = head.split("\r\n");
    let status_line = lines.next()?;
    let error = own_error(status_line)?;
    let (mut empty, mut date) = (false, None);
    for line in lines {
        match line.split_once(": ")? {
            ("content-length", "0") => empty = true,
            ("connection", "close") => {}
            ("date", value) => date = Some(value),
            _ => return None,
        }
    }
    empty.then_some(OwnAnswer {
        start,
        status_line,
        error,
        date,
    })
}

impl OwnAnswer<'_> {
    /// The answer with the JSON error as its body and every security header.
    fn json(&self) -> Vec<u8> {
        let body = error_body(self.error.code(), &self.error.to_string()).to_string();
        let mut json = format!(
            "{}\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\
             connection: close\r\n",
            self.status_line,
            body.len()
        );
        for (name, value) in SECURITY_HEADERS {
            json.push_str(&format!("{}: {value}\r\n", name.to_ascii_lowercase()));
        }
        if let Some(date) = self.date {
            json.push_str(&format!("date: {date}\r\n"));
        }
        json.push_str("\r\n");
        json.push_str(&body);
        json.into_bytes()
    }
}

/// `written` as the client receives it: its last answer in JSON when it is the parser's own.
#[cfg(test)]
fn with_json_body(written: &[u8]) -> Option<Vec<u8>> {
    let answer = own_answer(written)?;
    let mut received = written[..answer.start].to_vec();
    received.extend_from_slice(&answer.json());
    Some(received)
}

/// The error an answer's status line stands for, when actix-http's parser writes it.
fn own_error(status_line: &str) -> Option<ApiError> {
    let status = status_line
        .strip_prefix("HTTP/1.1 ")
        .or_else(|| status_line.strip_prefix("HTTP/1.0 "))?;
    match status {
        "400 Bad Request" => Some(ApiError::MalformedRequest),
        "408 Request Timeout" => Some(ApiError::HeadTimeout),
        "431 Request Header Fields Too Large" => Some(ApiError::HeadTooLarge),
        _ => None,
    }
}

fn find_last(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack
        .windows(needle.len())
        .rposition(|window| window == needle)
}

#[cfg(test)]
mod tests {
    use super::*;
    use actix_web::ResponseError;
    use proptest::prelude::*;

    const DATE: &str = "date: Wed, 02 Dec 2026 07:35:53 GMT";

    fn own(status: &str, connection_close: bool) -> String {
        let close = if connection_close {
            "connection: close\r\n"
        } else {
            ""
        };
        format!("HTTP/1.1 {status}\r\ncontent-length: 0\r\n{close}{DATE}\r\n\r\n")
    }

    /// The head and the parsed body of a rewritten answer.
    fn split(rewritten: &[u8]) -> (String, serde_json::Value) {
        let text = String::from_utf8(rewritten.to_vec()).expect("utf-8");
        let (head, body) = text.split_once("\r\n\r\n").expect("a head");
        let length: usize = head
            .lines()
            .find_map(|line| line.strip_prefix("content-length: "))
            .expect("a length")
            .parse()
            .expect("a number");
        assert_eq!(length, body.len(), "{text}");
        (head.to_owned(), serde_json::from_str(body).expect("JSON"))
    }

    #[test]
    fn each_answer_of_the_parser_gets_its_json_error() {
        for (status, code) in [
            ("400 Bad Request", "bad_request"),
            ("408 Request Timeout", "request_timeout"),
            ("431 Request Header Fields Too Large", "headers_too_large"),
        ] {
            for close in [true, false] {
                let rewritten = with_json_body(own(status, close).as_bytes()).expect(status);
                let (head, body) = split(&rewritten);
                assert!(
                    head.starts_with(&format!("HTTP/1.1 {status}\r\n")),
                    "{head}"
                );
                for line in [
                    "content-type: application/json",
                    "connection: close",
                    "x-content-type-options: nosniff",
                    "x-frame-options: DENY",
                    "referrer-policy: same-origin",
                    DATE,
                ] {
                    assert!(head.lines().any(|l| l == line), "{line} in {head}");
                }
                assert_eq!(body["error"]["code"], code);
                let error = own_error(&format!("HTTP/1.1 {status}")).expect(status);
                assert!(status.starts_with(error.status_code().as_str()), "{status}");
                assert!(body["error"]["message"]
                    .as_str()
                    .is_some_and(|m| !m.is_empty()));
            }
        }
    }

    #[test]
    fn an_answer_after_a_pipelined_one_keeps_the_one_before() {
        let before = "HTTP/1.1 200 OK\r\ncontent-length: 2\r\nx-request-id: 1\r\n\r\n{}";
        let written = format!("{before}{}", own("400 Bad Request", false));
        let rewritten = with_json_body(written.as_bytes()).expect("rewritten");
        assert!(rewritten.starts_with(before.as_bytes()));
        let (_, body) = split(&rewritten[before.len()..]);
        assert_eq!(body["error"]["code"], "bad_request");
    }

    #[test]
    fn the_applications_answers_pass_untouched() {
        for written in [
            // An empty 400 of the application carries its own headers.
            "HTTP/1.1 400 Bad Request\r\ncontent-length: 0\r\nx-frame-options: DENY\r\n\
             date: Wed, 02 Dec 2026 07:35:53 GMT\r\n\r\n"
                .to_owned(),
            // A body, even an empty-looking one.
            "HTTP/1.1 400 Bad Request\r\ncontent-length: 5\r\ndate: x\r\n\r\n".to_owned(),
            "HTTP/1.1 404 Not Found\r\ncontent-length: 0\r\ndate: x\r\n\r\n".to_owned(),
            "HTTP/1.1 303 See Other\r\ncontent-length: 0\r\nlocation: /\r\n\r\n".to_owned(),
            format!("{}x", own("400 Bad Request", true)),
            ": heartbeat\n\n".to_owned(),
            "1a\r\nevent: snapshot\r\n".to_owned(),
        ] {
            assert_eq!(with_json_body(written.as_bytes()), None, "{written:?}");
        }
    }

    /// A socket that takes at most `per_write` bytes a call, and is not ready every other call.
    struct Trickle {
        taken: Vec<u8>,
        per_write: usize,
        ready: bool,
    }

    impl AsyncWrite for Trickle {
        fn poll_write(
            mut self: Pin<&mut Self>,
            cx: &mut Context<'_>,
            buf: &[u8],
        ) -> Poll<io::Result<usize>> {
            self.ready = !self.ready;
            if !self.ready {
                cx.waker().wake_by_ref();
                return Poll::Pending;
            }
            let taken = buf.len().min(self.per_write);
            self.taken.extend_from_slice(&buf[..taken]);
            Poll::Ready(Ok(taken))
        }

        fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
            Poll::Ready(Ok(()))
        }

        fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
            Poll::Ready(Ok(()))
        }
    }

    /// What a socket taking `per_write` bytes at a time received when each of `writes` was
    /// written as actix-http's dispatcher writes: the rest again after a partial write or a
    /// `Pending`, and no flush or shutdown once all of it is reported written.
    fn received(per_write: usize, writes: &[&[u8]]) -> Vec<u8> {
        let mut connection = JsonParserErrors::new(Trickle {
            taken: Vec::new(),
            per_write,
            ready: false,
        });
        let waker = futures_util::task::noop_waker();
        let mut cx = Context::from_waker(&waker);
        for buffer in writes {
            let mut written = 0;
            for _ in 0..1_000_000 {
                if written == buffer.len() {
                    break;
                }
                match Pin::new(&mut connection).poll_write(&mut cx, &buffer[written..]) {
                    Poll::Ready(Ok(0)) => panic!("wrote nothing"),
                    Poll::Ready(Ok(n)) => written += n,
                    Poll::Ready(Err(error)) => panic!("{error}"),
                    Poll::Pending => {}
                }
            }
            assert_eq!(written, buffer.len(), "the write never ended");
        }
        connection.inner.taken
    }

    #[test]
    fn after_a_protocol_switch_nothing_is_rewritten() {
        let switch = b"HTTP/1.1 101 Switching Protocols\r\nupgrade: websocket\r\n\r\n";
        // A pong whose payload, echoed from the client, has the parser's form.
        let pong = [&[0x8a, 0x2d][..], own("400 Bad Request", false).as_bytes()].concat();
        assert!(
            with_json_body(&pong).is_some(),
            "the payload has the parser's form"
        );
        let writes: [&[u8]; 2] = [switch, &pong];
        assert_eq!(received(1000, &writes), [&switch[..], &pong].concat());
    }

    proptest! {
        /// However little the socket takes at a time, it receives every byte written before
        /// the parser's answer, then that answer's whole JSON form, and nothing else.
        #[test]
        fn a_slow_socket_receives_everything_before_and_the_whole_json_answer(
            per_write in 1..300usize,
            before in proptest::collection::vec(b'a'..=b'z', 0..5_000),
        ) {
            let written = [&before[..], own("431 Request Header Fields Too Large", true).as_bytes()].concat();
            let expected = with_json_body(&written).expect("rewritten");
            prop_assert_eq!(received(per_write, &[&written]), expected);
            // And what is not the parser's passes as it is.
            prop_assert_eq!(received(per_write, &[&before]), before.clone());
        }
    }

    /// Header lines an answer may carry: the parser's own, and some only the application's.
    const HEADER_LINES: [&str; 6] = [
        "content-length: 0",
        "connection: close",
        DATE,
        "content-length: 12",
        "connection: keep-alive",
        "x-frame-options: DENY",
    ];
    const STATUS_LINES: [&str; 5] = [
        "HTTP/1.1 400 Bad Request",
        "HTTP/1.0 408 Request Timeout",
        "HTTP/1.1 431 Request Header Fields Too Large",
        "HTTP/1.1 404 Not Found",
        "HTTP/1.1 200 OK",
    ];

    proptest! {
        /// An answer is rewritten exactly when it has the parser's own form (its status,
        /// `content-length: 0`, nothing but `connection: close` and `date` beside it); the
        /// bytes before it are kept, and the result is one well-framed JSON error.
        #[test]
        fn only_the_parsers_own_answers_are_rewritten(
            before in proptest::collection::vec(any::<u8>(), 0..200),
            status in 0..STATUS_LINES.len(),
            headers in proptest::collection::vec(0..HEADER_LINES.len(), 0..4),
        ) {
            let status_line = STATUS_LINES[status];
            let head: String = std::iter::once(status_line)
                .chain(headers.iter().map(|&n| HEADER_LINES[n]))
                .map(|line| format!("{line}\r\n"))
                .collect();
            let mut written = before.clone();
            written.extend_from_slice(format!("{head}\r\n").as_bytes());

            let own_form = status < 3
                && headers.contains(&0)
                && headers.iter().all(|&n| n < 3);
            match with_json_body(&written) {
                Some(rewritten) => {
                    prop_assert!(own_form, "{head:?}");
                    prop_assert_eq!(&rewritten[..before.len()], &before[..]);
                    let (answer_head, body) = split(&rewritten[before.len()..]);
                    prop_assert!(answer_head.starts_with(status_line));
                    prop_assert!(body["error"]["code"].is_string());
                }
                None => prop_assert!(!own_form, "{head:?} after {before:?}"),
            }
        }
    }
}
