//! The benchmark's SSE clients: raw HTTP/1.1 on loopback, each from one of the source addresses
//! 127.0.0.2..=127.0.0.9, connected in batches (`connect_all`); each reads its stream into one
//! reusable buffer, parses every snapshot only as far as its seq (`id:`), its revenue
//! (`today_minor`) and, once per seq over all clients, its `generated_at`, and appends a
//! `Receipt` to its own list in `Shared`. Nothing else: the clients must take as little CPU as
//! they can from the service they measure, so every latency is computed afterwards
//! (`analysis`). Also the byte search the baseline (`bare`) uses to read the same stream.

use super::case::{Receipt, Shared};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::task::JoinHandle;

const CONNECT_BATCH: usize = 500;
const CONNECT_EVERY: Duration = Duration::from_millis(100);
const CONNECT_LIMIT: Duration = Duration::from_secs(120);
const CONNECT_ATTEMPTS: u32 = 5;
/// Client source addresses 127.0.0.FIRST..=127.0.0.LAST, one per client in turn.
const FIRST_SOURCE: u8 = 2;
const LAST_SOURCE: u8 = 9;

/// Opens `n` clients to `server` (`CONNECT_BATCH` every `CONNECT_EVERY`) and waits until every
/// one has its opening snapshot or has failed, or none got one for 15 s, or `CONNECT_LIMIT`
/// passed. Returns the clients' tasks and how long that took, in seconds.
pub(super) async fn connect_all(
    n: usize,
    server: SocketAddr,
    request: &Arc<[u8]>,
    shared: &Arc<Shared>,
) -> (Vec<JoinHandle<()>>, f64) {
    let connect_started = Instant::now();
    let mut clients = Vec::with_capacity(n);
    for id in 0..n {
        if id > 0 && id % CONNECT_BATCH == 0 {
            tokio::time::sleep(CONNECT_EVERY).await;
        }
        clients.push(tokio::spawn(client(
            id,
            server,
            request.clone(),
            shared.clone(),
        )));
    }
    let mut stalled = Instant::now();
    let mut last_opened = 0;
    loop {
        let opened = shared.opened.load(Ordering::Relaxed);
        let failed = shared.failed.load(Ordering::Relaxed);
        if opened + failed >= n as u64 {
            break;
        }
        if opened != last_opened {
            (last_opened, stalled) = (opened, Instant::now());
        }
        if stalled.elapsed() > Duration::from_secs(15) || connect_started.elapsed() > CONNECT_LIMIT
        {
            eprintln!("WARNING: only {opened} of {n} clients got their opening snapshot");
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    (clients, connect_started.elapsed().as_secs_f64())
}

impl Shared {
    /// Notes when snapshot `seq` was generated, parsing its `generated_at` once.
    fn note_generated(&self, seq: u64, event: &[u8]) {
        let Some(slot) = self.generated_us.get(seq as usize) else {
            return;
        };
        if slot.load(Ordering::Relaxed) == 0 {
            if let Some(parsed) = generated_at(event) {
                slot.store(
                    (parsed - self.base_wall_us).max(1) as u64,
                    Ordering::Relaxed,
                );
            }
        }
    }
}

/// `"generated_at":"…"` of a snapshot, µs since the Unix epoch.
fn generated_at(event: &[u8]) -> Option<i64> {
    let key = b"\"generated_at\":\"";
    let start = find(event, key)? + key.len();
    let length = event[start..].iter().position(|b| *b == b'"')?;
    let text = std::str::from_utf8(&event[start..start + length]).ok()?;
    Some(
        chrono::DateTime::parse_from_rfc3339(text)
            .ok()?
            .timestamp_micros(),
    )
}

/// One SSE client: raw HTTP/1.1, minimal parsing, one reusable buffer.
async fn client(id: usize, server: SocketAddr, request: Arc<[u8]>, shared: Arc<Shared>) {
    let sources = usize::from(LAST_SOURCE - FIRST_SOURCE + 1);
    let source = IpAddr::V4(Ipv4Addr::new(
        127,
        0,
        0,
        FIRST_SOURCE + (id % sources) as u8,
    ));
    let mut attempt = 0;
    let mut stream = loop {
        match open(source, server, &request).await {
            Ok(stream) => break stream,
            Err(error) if attempt + 1 >= CONNECT_ATTEMPTS => {
                shared.note_error(format!("client {id} from {source}: {error}"));
                shared.failed.fetch_add(1, Ordering::Relaxed);
                return;
            }
            Err(_) => {
                attempt += 1;
                shared.retries.fetch_add(1, Ordering::Relaxed);
                tokio::time::sleep(Duration::from_millis(200 * u64::from(attempt))).await;
            }
        }
    };
    let mut reader = StreamReader::default();
    let mut buffer = Vec::with_capacity(4_096);
    let ended = loop {
        if buffer.capacity() - buffer.len() < 1_024 {
            buffer.reserve(4_096);
        }
        match stream.read_buf(&mut buffer).await {
            Ok(0) => break "the service closed the stream".to_owned(),
            Ok(_) => {}
            Err(error) => break format!("read: {error}"),
        }
        let at = shared.now_us();
        match reader.consume(&mut buffer, at, &shared, id) {
            Ok(()) => {}
            Err(error) => break error,
        }
    };
    if !shared.stopping.load(Ordering::Acquire) {
        if reader.opened {
            shared.lost.fetch_add(1, Ordering::Relaxed);
        } else {
            shared.failed.fetch_add(1, Ordering::Relaxed);
        }
        shared.note_error(format!("client {id}: {ended}"));
    }
}

async fn open(
    source: IpAddr,
    server: SocketAddr,
    request: &[u8],
) -> std::io::Result<tokio::net::TcpStream> {
    let socket = tokio::net::TcpSocket::new_v4()?;
    socket.bind(SocketAddr::new(source, 0))?;
    let mut stream = socket.connect(server).await?;
    stream.write_all(request).await?;
    Ok(stream)
}

/// What a client remembers between reads.
#[derive(Default)]
struct StreamReader {
    headers_done: bool,
    opened: bool,
}

impl StreamReader {
    /// Handles every complete SSE event in `buffer` and keeps the incomplete rest.
    fn consume(
        &mut self,
        buffer: &mut Vec<u8>,
        at: u64,
        shared: &Shared,
        id: usize,
    ) -> Result<(), String> {
        let mut start = 0;
        if !self.headers_done {
            let Some(end) = find(buffer, b"\r\n\r\n") else {
                return Ok(());
            };
            if !buffer.starts_with(b"HTTP/1.1 200") {
                let status = String::from_utf8_lossy(&buffer[..end.min(200)]).into_owned();
                return Err(format!("answer: {status}"));
            }
            self.headers_done = true;
            start = end + 4;
        }
        // Events end with a blank line; chunk-size lines between them do not contain one.
        while let Some(length) = find(&buffer[start..], b"\n\n") {
            let event = &buffer[start..start + length];
            start += length + 2;
            if find(event, b"event: snapshot").is_none() {
                continue;
            }
            let seq = find(event, b"id: ")
                .and_then(|at| {
                    let line = &event[at + 4..];
                    let dash = line.iter().position(|b| *b == b'-')?;
                    leading_number(&line[dash + 1..])
                })
                .ok_or("a snapshot without a readable id")?;
            let revenue = find(event, b"\"today_minor\":")
                .and_then(|at| leading_number(&event[at + 14..]))
                .ok_or("a snapshot without today_minor")?;
            shared.note_generated(seq, event);
            self.on_snapshot(seq, revenue, at, shared, id);
        }
        buffer.drain(..start);
        Ok(())
    }

    fn on_snapshot(&mut self, seq: u64, revenue: u64, at: u64, shared: &Shared, id: usize) {
        if !self.opened {
            self.opened = true;
            shared.opened.fetch_add(1, Ordering::Relaxed);
        }
        if let Some(receipts) = shared.receipts.get(id) {
            receipts
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .push(Receipt { seq, revenue, at });
        }
        shared.last_seen[id].store(revenue, Ordering::Relaxed);
    }
}

pub(super) fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

fn leading_number(text: &[u8]) -> Option<u64> {
    let digits: &[u8] = {
        let text = text.trim_ascii_start();
        let end = text
            .iter()
            .position(|b| !b.is_ascii_digit())
            .unwrap_or(text.len());
        &text[..end]
    };
    std::str::from_utf8(digits).ok()?.parse().ok()
}
