//! The live benchmark's baseline: the service's own snapshots, fanned out by the least a server
//! can do, so that pulseboard's fan-out is compared with a floor measured on the same machine,
//! with the same clients and the same ingest load, in the same run.
//!
//! It runs as a process of its own (this benchmark's binary again, told so by the environment),
//! because its sockets and the clients' together would exceed one process's open-file limit.
//! One upstream SSE connection reads the service's stream; every snapshot event it brings is
//! written, as the one HTTP chunk it was, to every client by `writers` threads (one per core,
//! as the service has one HTTP worker per core), each looping over its share of the sockets
//! with one blocking `write` per client: no tasks, no wake-ups, no per-client queue, no
//! encoding. What remains is what any server pays per client and per snapshot: the system call
//! and the kernel's TCP work, which on loopback includes the receiving side. The hop through the
//! upstream connection makes each snapshot a little later here than at the service, never
//! earlier, so the baseline is not flattered.

use super::find;
use anyhow::Context;
use std::io::{self, BufRead, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Set (to the service's address) in the environment of the process that is the baseline.
const SERVICE_ENV: &str = "BENCH_BARE_SERVICE";
/// The HTTP request for the service's stream, in the same environment.
const REQUEST_ENV: &str = "BENCH_BARE_REQUEST";
/// Writer threads, one per core, in the same environment.
const WRITERS_ENV: &str = "BENCH_BARE_WRITERS";
/// A client that cannot take a snapshot for this long is dropped (it counts as lost).
const WRITE_TIMEOUT: Duration = Duration::from_secs(1);
const HEADERS: &[u8] = b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\n\
    cache-control: no-cache\r\ntransfer-encoding: chunked\r\n\r\n";

/// The baseline process, seen from the benchmark.
pub struct BareFanout {
    address: SocketAddr,
    child: Child,
}

struct Shared {
    /// The last snapshot chunk, written to a client when it connects.
    latest: Mutex<Option<Arc<[u8]>>>,
    /// Each writer thread's sockets.
    shards: Vec<Mutex<Vec<TcpStream>>>,
}

impl BareFanout {
    /// Starts the baseline process on the service's stream (`request` is the HTTP request for
    /// it); it listens for clients on an ephemeral port of 127.0.0.1.
    pub fn start(service: SocketAddr, request: &[u8], writers: usize) -> anyhow::Result<Self> {
        let mut child = Command::new(std::env::current_exe()?)
            .env(SERVICE_ENV, service.to_string())
            .env(REQUEST_ENV, String::from_utf8_lossy(request).as_ref())
            .env(WRITERS_ENV, writers.to_string())
            .stdout(Stdio::piped())
            .spawn()
            .context("starting the baseline process")?;
        let mut line = String::new();
        if let Some(stdout) = child.stdout.take() {
            io::BufReader::new(stdout).read_line(&mut line)?;
        }
        match line.trim().parse() {
            Ok(address) => Ok(BareFanout { address, child }),
            Err(_) => {
                let _ = child.kill();
                anyhow::bail!("the baseline process did not say where it listens: {line:?}")
            }
        }
    }

    pub fn address(&self) -> SocketAddr {
        self.address
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for BareFanout {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// When this process is the baseline (its environment says so), serves until the service's
/// stream ends, then exits; otherwise returns at once.
pub fn serve_if_asked() {
    let Ok(service) = std::env::var(SERVICE_ENV) else {
        return;
    };
    let outcome = serve(&service);
    if let Err(error) = &outcome {
        eprintln!("bare fan-out: {error:#}");
    }
    std::process::exit(i32::from(outcome.is_err()));
}

fn serve(service: &str) -> anyhow::Result<()> {
    let service: SocketAddr = service.parse().context(SERVICE_ENV)?;
    let request = std::env::var(REQUEST_ENV).context(REQUEST_ENV)?;
    let writers: usize = std::env::var(WRITERS_ENV)
        .context(WRITERS_ENV)?
        .parse()
        .context(WRITERS_ENV)?;
    let listener = TcpListener::bind("127.0.0.1:0")?;
    let address = listener.local_addr()?;
    let mut upstream = TcpStream::connect(service).context("connecting to the service")?;
    upstream.write_all(request.as_bytes())?;
    let shared = Arc::new(Shared {
        latest: Mutex::new(None),
        shards: (0..writers.max(1))
            .map(|_| Mutex::new(Vec::new()))
            .collect(),
    });
    let mut senders = Vec::new();
    for shard in 0..shared.shards.len() {
        let (sender, receiver) = mpsc::channel::<Arc<[u8]>>();
        senders.push(sender);
        let shared = shared.clone();
        std::thread::spawn(move || write_loop(&shared.shards[shard], receiver));
    }
    let accepting = shared.clone();
    std::thread::spawn(move || accept_loop(listener, &accepting));
    println!("{address}");
    relay(upstream, &shared, &senders).context("the service's stream")
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Each snapshot to every socket of the shard, one `write` each; a socket that fails is dropped.
fn write_loop(shard: &Mutex<Vec<TcpStream>>, snapshots: mpsc::Receiver<Arc<[u8]>>) {
    for chunk in snapshots {
        lock(shard).retain_mut(|client| client.write_all(&chunk).is_ok());
    }
}

/// Answers each client with the headers and the latest snapshot, then hands it to a writer.
fn accept_loop(listener: TcpListener, shared: &Shared) {
    for next in 0.. {
        let client = match listener.accept() {
            Ok((client, _)) => client,
            Err(error) => {
                eprintln!("bare fan-out: accept: {error}");
                continue;
            }
        };
        // Under the latest-snapshot lock, so that no snapshot falls between the opening one
        // and the client joining its shard.
        let latest = lock(&shared.latest);
        match open(&client, latest.as_deref()) {
            Ok(()) => lock(&shared.shards[next % shared.shards.len()]).push(client),
            Err(error) => eprintln!("bare fan-out: a client failed to open: {error}"),
        }
    }
}

fn open(mut client: &TcpStream, latest: Option<&[u8]>) -> io::Result<()> {
    client.set_nonblocking(false)?;
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
    client.write_all(HEADERS)?;
    if let Some(chunk) = latest {
        client.write_all(chunk)?;
    }
    Ok(())
}

/// Reads the service's chunked SSE response and passes every snapshot event on, re-chunked.
fn relay(
    mut upstream: TcpStream,
    shared: &Shared,
    writers: &[mpsc::Sender<Arc<[u8]>>],
) -> io::Result<()> {
    let invalid = |what: &str| io::Error::new(io::ErrorKind::InvalidData, what.to_owned());
    let (mut raw, mut body) = (Vec::new(), Vec::new());
    let mut headers_done = false;
    let mut buffer = vec![0; 65_536];
    loop {
        match upstream.read(&mut buffer)? {
            0 => return Ok(()),
            n => raw.extend_from_slice(&buffer[..n]),
        }
        if !headers_done {
            let Some(end) = find(&raw, b"\r\n\r\n") else {
                continue;
            };
            if !raw.starts_with(b"HTTP/1.1 200") {
                return Err(invalid("the service did not answer 200"));
            }
            raw.drain(..end + 4);
            headers_done = true;
        }
        // De-chunk whatever is complete.
        while let Some(line) = find(&raw, b"\r\n") {
            let size = std::str::from_utf8(&raw[..line])
                .ok()
                .and_then(|hex| usize::from_str_radix(hex.trim(), 16).ok())
                .ok_or_else(|| invalid("a bad chunk size"))?;
            if size == 0 {
                return Ok(());
            }
            if raw.len() < line + 2 + size + 2 {
                break;
            }
            body.extend_from_slice(&raw[line + 2..line + 2 + size]);
            raw.drain(..line + 2 + size + 2);
        }
        while let Some(end) = find(&body, b"\n\n") {
            let event = &body[..end + 2];
            if find(event, b"event: snapshot").is_some() {
                let chunk: Arc<[u8]> = chunked(event).into();
                *lock(&shared.latest) = Some(chunk.clone());
                for writer in writers {
                    // A writer only ends with this loop.
                    let _ = writer.send(chunk.clone());
                }
            }
            body.drain(..end + 2);
        }
    }
}

fn chunked(data: &[u8]) -> Vec<u8> {
    let mut chunk = format!("{:x}\r\n", data.len()).into_bytes();
    chunk.extend_from_slice(data);
    chunk.extend_from_slice(b"\r\n");
    chunk
}
