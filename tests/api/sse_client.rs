//! A minimal Server-Sent Events client over a real HTTP connection, for tests.

use crate::helpers::Service;
use bytes::Bytes;
use futures_util::stream::{BoxStream, StreamExt};
use std::time::{Duration, Instant};

#[derive(Debug, Clone)]
pub struct SseEvent {
    pub id: Option<String>,
    /// `snapshot`, `announcement`, … or `comment` for a `:` line, `retry` for a `retry:` line.
    pub event: String,
    pub data: String,
    pub received_at: Instant,
}

impl SseEvent {
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.data).unwrap_or_else(|e| panic!("{e}: {}", self.data))
    }
}

pub struct SseClient {
    body: BoxStream<'static, reqwest::Result<Bytes>>,
    buffer: String,
    pub headers: reqwest::header::HeaderMap,
}

impl SseClient {
    /// Opens `path` as the service's operator (with `Last-Event-ID` when given) and checks it
    /// is an event stream.
    pub async fn connect(service: &Service, path: &str, last_event_id: Option<&str>) -> SseClient {
        let mut request = service.client().get(service.url(path));
        if let Some(id) = last_event_id {
            request = request.header("Last-Event-ID", id);
        }
        let response = request.send().await.expect("connect to the stream");
        assert_eq!(response.status(), 200, "stream status");
        SseClient {
            headers: response.headers().clone(),
            body: response.bytes_stream().boxed(),
            buffer: String::new(),
        }
    }

    /// Opens a stream from a prepared request (any address, any credentials); the error as
    /// text when it cannot, for clients that retry (a reconnecting client behind a proxy).
    pub async fn open(request: reqwest::RequestBuilder) -> Result<SseClient, String> {
        let response = request.send().await.map_err(|e| e.to_string())?;
        if response.status() != 200 {
            return Err(format!("stream status {}", response.status()));
        }
        Ok(SseClient {
            headers: response.headers().clone(),
            body: response.bytes_stream().boxed(),
            buffer: String::new(),
        })
    }

    /// The next block (event or comment), or `None` when the stream ends or `timeout` passes.
    pub async fn next(&mut self, timeout: Duration) -> Option<SseEvent> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            if let Some(at) = self.buffer.find("\n\n") {
                let block: String = self.buffer.drain(..at + 2).collect();
                return Some(parse(&block));
            }
            let chunk = tokio::time::timeout_at(deadline, self.body.next())
                .await
                .ok()??;
            let chunk = chunk.ok()?;
            self.buffer.push_str(&String::from_utf8_lossy(&chunk));
        }
    }

    /// Reads a stream's opening up to its snapshot: (messages of the announcements replayed,
    /// in order, and the snapshot); panics if it does not come within 5 s.
    pub async fn opening(&mut self) -> (Vec<String>, serde_json::Value) {
        let mut messages = Vec::new();
        loop {
            let block = self
                .next(Duration::from_secs(5))
                .await
                .expect("the stream's opening within 5 s");
            match block.event.as_str() {
                "announcement" => messages.push(
                    block.json()["message"]
                        .as_str()
                        .unwrap_or_default()
                        .to_owned(),
                ),
                "snapshot" => return (messages, block.json()),
                _ => {}
            }
        }
    }

    /// The next block of kind `event`, skipping others; panics after `timeout`.
    pub async fn next_of(&mut self, event: &str, timeout: Duration) -> SseEvent {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.next(left).await {
                Some(block) if block.event == event => return block,
                Some(_) => continue,
                None => panic!("no {event} event within {timeout:?}"),
            }
        }
    }
}

fn parse(block: &str) -> SseEvent {
    let mut event = SseEvent {
        id: None,
        event: "message".into(),
        data: String::new(),
        received_at: Instant::now(),
    };
    for line in block.lines() {
        if let Some(comment) = line.strip_prefix(':') {
            event.event = "comment".into();
            event.data = comment.trim().into();
        } else if let Some(retry) = line.strip_prefix("retry: ") {
            event.event = "retry".into();
            event.data = retry.into();
        } else if let Some(id) = line.strip_prefix("id: ") {
            event.id = Some(id.into());
        } else if let Some(name) = line.strip_prefix("event: ") {
            event.event = name.into();
        } else if let Some(data) = line.strip_prefix("data: ") {
            event.data.push_str(data);
        }
    }
    event
}
