//! The live benchmark's baseline: the service's own snapshots, fanned out by the least a server
//! can do, so that pulseboard's fan-out is compared with a floor measured on the same machine,
//! with the same clients and the same ingest load, in the same run.
//!
//! It runs as a process of its own (this benchmark's binary again, told so by the environment),
//! because its sockets and the clients' together would exceed one process's open-file limit.
//! One upstream SSE connection reads the service's stream; every snapshot event it brings is
//! framed as one HTTP chunk and written to every client by `writers` threads (one per core, as
//! the service has one HTTP worker per core), each looping over its own clients with one
//! blocking `write` per client: no task per connection, no per-client queue, no per-client
//! encoding; a writer is woken once per snapshot. What remains is what any server pays per
//! client and per snapshot: the system call and the kernel's TCP work, which on loopback
//! includes the receiving side. The hop through the upstream connection makes each snapshot a
//! little later here than at the service, never earlier, so the baseline is not flattered.
//!
//! Beside the fan-out, the process consumes every event the service consumes, from a queue of
//! its own bound to the same exchange, without acknowledgements, decodes each with the
//! service's decoder and sums the orders, storing nothing: the least ingest a server can do.
//! So the process's CPU is that of a bare server (a no-ack consumer and one write per client
//! per tick), which is what pulseboard's deliveries per CPU-second are compared with
//! (docs/benchmarks.md, "Live delivery"). Its snapshots' figures still come from the service,
//! whose stream tells the clients which orders each includes.

use super::clients::find;
use super::load::CURRENCY;
use anyhow::{bail, Context};
use futures_util::StreamExt;
use pulseboard::aggregate::EventKind;
use pulseboard::for_benchmarks::{decode, DecodeContext};
use pulseboard::rabbitmq::{bind_private_queue_for, consume_without_acks};
use std::io::{self, BufRead, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::sync::Arc;
use std::time::Duration;

/// Set (to the service's address) in the environment of the process that is the baseline.
const SERVICE_ENV: &str = "BENCH_BARE_SERVICE";
/// The HTTP request for the service's stream, in the same environment.
const REQUEST_ENV: &str = "BENCH_BARE_REQUEST";
/// Writer threads, one per core, in the same environment.
const WRITERS_ENV: &str = "BENCH_BARE_WRITERS";
/// The broker and the exchange the events are published to, in the same environment.
const AMQP_ENV: &str = "BENCH_BARE_AMQP";
const EXCHANGE_ENV: &str = "BENCH_BARE_EXCHANGE";
/// How long the baseline may take to say where it listens.
const START_LIMIT: Duration = Duration::from_secs(10);
/// A client that cannot take a snapshot for this long is dropped (it counts as lost).
const WRITE_TIMEOUT: Duration = Duration::from_secs(1);
const HEADERS: &[u8] = b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\n\
    cache-control: no-cache\r\ntransfer-encoding: chunked\r\n\r\n";

/// The baseline process, seen from the benchmark.
pub(super) struct BareFanout {
    address: SocketAddr,
    child: Child,
}

impl BareFanout {
    /// Starts the baseline process on the service's stream (`request` is the HTTP request for
    /// it), consuming the events published to `exchange` too; it listens for clients on an
    /// ephemeral port of 127.0.0.1 once its consumer is bound. It ends when this value is
    /// dropped, or when the benchmark's process ends (its standard input closes).
    pub(super) fn start(
        service: SocketAddr,
        request: &[u8],
        writers: usize,
        amqp_url: &str,
        exchange: &str,
    ) -> anyhow::Result<Self> {
        let mut child = Command::new(std::env::current_exe()?)
            .env(SERVICE_ENV, service.to_string())
            .env(REQUEST_ENV, String::from_utf8_lossy(request).as_ref())
            .env(WRITERS_ENV, writers.to_string())
            .env(AMQP_ENV, amqp_url)
            .env(EXCHANGE_ENV, exchange)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .context("starting the baseline process")?;
        let (sender, receiver) = mpsc::channel();
        if let Some(stdout) = child.stdout.take() {
            std::thread::spawn(move || {
                let mut line = String::new();
                let _ = io::BufReader::new(stdout).read_line(&mut line);
                let _ = sender.send(line);
            });
        }
        let line = receiver.recv_timeout(START_LIMIT).unwrap_or_default();
        match line.trim().parse() {
            Ok(address) => Ok(BareFanout { address, child }),
            Err(_) => {
                stop(&mut child);
                bail!("the baseline process did not say where it listens: {line:?}")
            }
        }
    }

    pub(super) fn address(&self) -> SocketAddr {
        self.address
    }

    pub(super) fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for BareFanout {
    fn drop(&mut self) {
        stop(&mut self.child);
    }
}

fn stop(child: &mut Child) {
    let _ = child.kill();
    let _ = child.wait();
}

/// When this process is the baseline (its environment says so), serves until the service's
/// stream ends, then exits; otherwise returns at once.
pub(super) fn serve_if_asked() {
    let Ok(service) = std::env::var(SERVICE_ENV) else {
        return;
    };
    // The benchmark holds our standard input: when it ends, however it ends, so do we.
    std::thread::spawn(|| {
        let _ = io::copy(&mut io::stdin(), &mut io::sink());
        std::process::exit(0);
    });
    let outcome = serve(&service);
    if let Err(error) = &outcome {
        eprintln!("bare fan-out: {error:#}");
    }
    std::process::exit(i32::from(outcome.is_err()));
}

/// What a writer thread is given.
enum ToWriter {
    /// A new client, answered with the headers already: it gets the last snapshot, then all.
    Join(TcpStream),
    /// A snapshot event as one HTTP chunk, for every client.
    Snapshot(Arc<[u8]>),
}

fn serve(service: &str) -> anyhow::Result<()> {
    let service: SocketAddr = service.parse().context(SERVICE_ENV)?;
    let request = std::env::var(REQUEST_ENV).context(REQUEST_ENV)?;
    let writers: usize = std::env::var(WRITERS_ENV)
        .context(WRITERS_ENV)?
        .parse()
        .context(WRITERS_ENV)?;
    let amqp_url = std::env::var(AMQP_ENV).context(AMQP_ENV)?;
    let exchange = std::env::var(EXCHANGE_ENV).context(EXCHANGE_ENV)?;
    let (bound, consuming) = mpsc::channel();
    std::thread::spawn(move || {
        if let Err(error) = consume_events(&amqp_url, &exchange, &bound) {
            eprintln!("bare fan-out: consuming the events: {error:#}");
            std::process::exit(1);
        }
    });
    consuming
        .recv_timeout(START_LIMIT)
        .context("the event consumer did not start")?;
    let listener = TcpListener::bind("127.0.0.1:0")?;
    let address = listener.local_addr()?;
    let mut upstream = TcpStream::connect(service).context("connecting to the service")?;
    upstream.write_all(request.as_bytes())?;
    let senders: Vec<mpsc::Sender<ToWriter>> = (0..writers.max(1))
        .map(|_| {
            let (sender, receiver) = mpsc::channel();
            std::thread::spawn(move || write_loop(receiver));
            sender
        })
        .collect();
    let joining = senders.clone();
    std::thread::spawn(move || accept_loop(&listener, &joining));
    println!("{address}");
    relay(upstream, &senders).context("the service's stream")
}

/// The bare server's ingest, on a thread of its own: a server-named queue bound to `exchange`
/// for every routing key, consumed without acknowledgements; each event decoded and its order
/// amount added up, nothing stored. Says on `bound` when the queue is bound (before any of the
/// load is published), then consumes until the process ends.
fn consume_events(amqp_url: &str, exchange: &str, bound: &mpsc::Sender<()>) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async {
        let connection = lapin::Connection::connect(amqp_url, Default::default()).await?;
        let channel = connection.create_channel().await?;
        let queue = bind_private_queue_for(&channel, exchange, "#").await?;
        let mut deliveries = consume_without_acks(&channel, &queue).await?;
        let _ = bound.send(());
        let mut revenue: i64 = 0;
        while let Some(delivery) = deliveries.next().await {
            let delivery = delivery?;
            let context = DecodeContext::new(CURRENCY, pulseboard::clock::now_ms());
            if let Ok(event) = decode(&delivery.data, context) {
                revenue += match event.kind {
                    EventKind::OrderPlaced { amount_minor } => amount_minor,
                    EventKind::OrderRefunded { amount_minor } => -amount_minor,
                    _ => 0,
                };
            }
        }
        // Kept, so that the sum is not optimised away.
        std::hint::black_box(revenue);
        anyhow::Ok(())
    })
}

/// One writer's clients: each snapshot to each of them, one `write` each, in the order they
/// joined; a client that fails is dropped.
fn write_loop(work: mpsc::Receiver<ToWriter>) {
    let mut clients: Vec<TcpStream> = Vec::new();
    let mut last: Option<Arc<[u8]>> = None;
    for item in work {
        match item {
            ToWriter::Join(mut client) => {
                let opened = last
                    .as_ref()
                    .map_or(Ok(()), |chunk| client.write_all(chunk));
                if opened.is_ok() {
                    clients.push(client);
                }
            }
            ToWriter::Snapshot(chunk) => {
                clients.retain_mut(|client| client.write_all(&chunk).is_ok());
                last = Some(chunk);
            }
        }
    }
}

/// Reads each client's request, answers with the headers and hands it to a writer in turn.
fn accept_loop(listener: &TcpListener, writers: &[mpsc::Sender<ToWriter>]) {
    for next in 0.. {
        let client = match listener.accept() {
            Ok((client, _)) => client,
            Err(error) => {
                eprintln!("bare fan-out: accept: {error}");
                continue;
            }
        };
        match open(&client) {
            Ok(()) => {
                // A writer only ends with the process.
                let _ = writers[next % writers.len()].send(ToWriter::Join(client));
            }
            Err(error) => eprintln!("bare fan-out: a client failed to open: {error}"),
        }
    }
}

fn open(mut client: &TcpStream) -> io::Result<()> {
    client.set_nodelay(true)?;
    client.set_read_timeout(Some(WRITE_TIMEOUT))?;
    client.set_write_timeout(Some(WRITE_TIMEOUT))?;
    let mut request = Vec::new();
    let mut buffer = [0; 1_024];
    while find(&request, b"\r\n\r\n").is_none() {
        match client.read(&mut buffer)? {
            0 => return Err(io::ErrorKind::UnexpectedEof.into()),
            n => request.extend_from_slice(&buffer[..n]),
        }
    }
    client.write_all(HEADERS)
}

/// Reads the service's chunked SSE response and passes every snapshot event on, re-framed as
/// one chunk each; other events (`retry:`, heartbeats, announcements) are not passed on.
fn relay(mut upstream: TcpStream, writers: &[mpsc::Sender<ToWriter>]) -> anyhow::Result<()> {
    let mut decoder = Dechunker::default();
    let mut events = Vec::new();
    let mut buffer = vec![0; 65_536];
    loop {
        let read = upstream.read(&mut buffer)?;
        if read == 0 {
            bail!("the service closed its stream");
        }
        let ended = decoder.feed(&buffer[..read], &mut events)?;
        while let Some(end) = find(&events, b"\n\n") {
            let event = &events[..end + 2];
            if find(event, b"event: snapshot").is_some() {
                let chunk: Arc<[u8]> = chunked(event).into();
                for writer in writers {
                    // A writer only ends with the process.
                    let _ = writer.send(ToWriter::Snapshot(chunk.clone()));
                }
            }
            events.drain(..end + 2);
        }
        if ended {
            bail!("the service ended its stream");
        }
    }
}

/// HTTP/1.1 chunked transfer decoding, fed as bytes arrive.
#[derive(Default)]
struct Dechunker {
    headers_done: bool,
    pending: Vec<u8>,
}

impl Dechunker {
    /// Appends the body bytes that `input` completes to `body`; true once the last chunk came.
    fn feed(&mut self, input: &[u8], body: &mut Vec<u8>) -> anyhow::Result<bool> {
        self.pending.extend_from_slice(input);
        if !self.headers_done {
            let Some(end) = find(&self.pending, b"\r\n\r\n") else {
                return Ok(false);
            };
            if !self.pending.starts_with(b"HTTP/1.1 200") {
                bail!("the service did not answer 200");
            }
            self.pending.drain(..end + 4);
            self.headers_done = true;
        }
        while let Some(line) = find(&self.pending, b"\r\n") {
            // `size[;extension]`
            let size = std::str::from_utf8(&self.pending[..line])
                .ok()
                .and_then(|text| text.split(';').next())
                .and_then(|hex| usize::from_str_radix(hex.trim(), 16).ok())
                .context("a bad chunk size")?;
            if size == 0 {
                return Ok(true);
            }
            let end = line
                .checked_add(2 + size)
                .context("a chunk size out of range")?;
            if self.pending.len() < end + 2 {
                break;
            }
            if &self.pending[end..end + 2] != b"\r\n" {
                bail!("a chunk not ended by CRLF");
            }
            body.extend_from_slice(&self.pending[line + 2..end]);
            self.pending.drain(..end + 2);
        }
        Ok(false)
    }
}

fn chunked(data: &[u8]) -> Vec<u8> {
    let mut chunk = format!("{:x}\r\n", data.len()).into_bytes();
    chunk.extend_from_slice(data);
    chunk.extend_from_slice(b"\r\n");
    chunk
}
