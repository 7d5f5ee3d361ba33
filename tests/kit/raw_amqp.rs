//! A hostile producer: publishes messages no well-behaved AMQP client can build (invalid UTF-8
//! in a short string, header tables nested as deep as a frame allows), byte by byte over a
//! socket of its own, with publisher confirms. Only what a publisher needs of AMQP 0-9-1:
//! handshake (PLAIN), one channel in confirm mode, `basic.publish`; and `basic.get`, to take
//! messages of any size off a queue keeping only their headers and the start of their body
//! (a client that builds every body whole, and in a debug build parses it byte by byte, would
//! make a test of large bodies slow and large itself).

use anyhow::{bail, ensure, Context};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const FRAME_METHOD: u8 = 1;
const FRAME_HEADER: u8 = 2;
const FRAME_BODY: u8 = 3;
const FRAME_HEARTBEAT: u8 = 8;
const FRAME_END: u8 = 0xCE;
/// Bytes a frame adds around its payload: type, channel, size, end marker.
pub const FRAME_OVERHEAD: usize = 8;
/// Bytes a content header's payload takes before its properties: class, weight, body size,
/// property flags.
pub const HEADER_FIXED: usize = 14;

/// The properties of a message, as raw bytes: the property flags and the property list.
#[derive(Debug, Clone)]
pub struct RawProperties {
    pub flags: u16,
    pub list: Vec<u8>,
}

impl RawProperties {
    /// Persistent, nothing else.
    pub fn persistent() -> RawProperties {
        RawProperties {
            flags: 1 << 12,
            list: vec![2],
        }
    }

    /// `headers` (a field table, encoded), persistent.
    pub fn with_headers(table: Vec<u8>) -> RawProperties {
        let mut list = table;
        list.push(2);
        RawProperties {
            flags: (1 << 13) | (1 << 12),
            list,
        }
    }

    /// `content_type` of raw bytes.
    pub fn content_type(bytes: &[u8]) -> RawProperties {
        RawProperties {
            flags: 1 << 15,
            list: short_string(bytes),
        }
    }

    /// `message_id` of raw bytes.
    pub fn message_id(bytes: &[u8]) -> RawProperties {
        RawProperties {
            flags: 1 << 7,
            list: short_string(bytes),
        }
    }
}

pub fn short_string(bytes: &[u8]) -> Vec<u8> {
    let mut out = vec![u8::try_from(bytes.len()).expect("a short string is at most 255 bytes")];
    out.extend_from_slice(bytes);
    out
}

fn long_string(bytes: &[u8]) -> Vec<u8> {
    let mut out = u32::try_from(bytes.len())
        .expect("size")
        .to_be_bytes()
        .to_vec();
    out.extend_from_slice(bytes);
    out
}

/// A field table of `entries` (each already encoded: key, type, value).
pub fn table(entries: &[u8]) -> Vec<u8> {
    long_string(entries)
}

/// A header table nested `depth` levels deep: `{"": {"": … {} …}}`, 6 bytes a level.
pub fn nested_tables(depth: usize) -> Vec<u8> {
    let mut inner = table(&[]);
    for _ in 0..depth {
        let mut entry = short_string(b"");
        entry.push(b'F');
        entry.extend_from_slice(&inner);
        inner = table(&entry);
    }
    inner
}

/// A header table with one entry holding arrays nested `depth` levels deep: `{"": [[…[]…]]}`,
/// 5 bytes a level.
pub fn nested_arrays(depth: usize) -> Vec<u8> {
    let mut value = vec![b'A', 0, 0, 0, 0];
    for _ in 0..depth {
        let mut outer = vec![b'A'];
        outer.extend_from_slice(&u32::try_from(value.len()).expect("size").to_be_bytes());
        outer.extend_from_slice(&value);
        value = outer;
    }
    let mut entry = short_string(b"");
    entry.extend_from_slice(&value);
    table(&entry)
}

/// A header table of one entry `pad` holding a long string of `bytes` bytes: large, not deep.
pub fn wide_table(bytes: usize) -> Vec<u8> {
    let mut entry = short_string(b"pad");
    entry.push(b'S');
    entry.extend_from_slice(&long_string(&vec![b'x'; bytes]));
    table(&entry)
}

/// The deepest nesting whose content header still fits a frame of `frame_max` bytes, for a
/// nesting that takes `bytes_per_level` a level around an innermost value of `innermost` bytes
/// (the headers flag and the persistent delivery mode included).
pub fn deepest_fitting(frame_max: usize, bytes_per_level: usize, innermost: usize) -> usize {
    (frame_max - FRAME_OVERHEAD - HEADER_FIXED - 1 - innermost) / bytes_per_level
}

/// One connection and channel of a hostile producer.
pub struct RawPublisher {
    stream: TcpStream,
    /// What the broker allows a frame to be: the handshake's `frame_max`.
    pub frame_max: u32,
    published: u64,
    /// The channel of the last frame read.
    last_channel: u16,
}

impl RawPublisher {
    /// Connects as guest/guest to `127.0.0.1:5672`, vhost `/`, and opens channel 1 in
    /// confirm mode.
    pub async fn connect() -> anyhow::Result<RawPublisher> {
        let mut stream = TcpStream::connect("127.0.0.1:5672")
            .await
            .context("RabbitMQ must be reachable at 127.0.0.1:5672 (run scripts/test.sh)")?;
        stream.write_all(b"AMQP\x00\x00\x09\x01").await?;
        let mut publisher = RawPublisher {
            stream,
            frame_max: 0,
            published: 0,
            last_channel: 0,
        };
        publisher.expect_method(0, (10, 10)).await?;
        let mut start_ok = method(10, 11);
        start_ok.extend_from_slice(&table(&[]));
        start_ok.extend_from_slice(&short_string(b"PLAIN"));
        start_ok.extend_from_slice(&long_string(b"\x00guest\x00guest"));
        start_ok.extend_from_slice(&short_string(b"en_US"));
        publisher.send(FRAME_METHOD, 0, &start_ok).await?;
        let tune = publisher.expect_method(0, (10, 30)).await?;
        ensure!(tune.len() >= 12, "short connection.tune");
        publisher.frame_max = u32::from_be_bytes([tune[6], tune[7], tune[8], tune[9]]);
        let mut tune_ok = method(10, 31);
        tune_ok.extend_from_slice(&tune[4..10]);
        tune_ok.extend_from_slice(&0u16.to_be_bytes());
        publisher.send(FRAME_METHOD, 0, &tune_ok).await?;
        let mut open = method(10, 40);
        open.extend_from_slice(&short_string(b"/"));
        open.extend_from_slice(&short_string(b""));
        open.push(0);
        publisher.send(FRAME_METHOD, 0, &open).await?;
        publisher.expect_method(0, (10, 41)).await?;
        let mut channel_open = method(20, 10);
        channel_open.extend_from_slice(&short_string(b""));
        publisher.send(FRAME_METHOD, 1, &channel_open).await?;
        publisher.expect_method(1, (20, 11)).await?;
        let mut select = method(85, 10);
        select.push(0);
        publisher.send(FRAME_METHOD, 1, &select).await?;
        publisher.expect_method(1, (85, 11)).await?;
        Ok(publisher)
    }

    /// Publishes one message and waits for the broker's confirm.
    pub async fn publish(
        &mut self,
        exchange: &str,
        routing_key: &[u8],
        properties: &RawProperties,
        body: &[u8],
    ) -> anyhow::Result<()> {
        let mut publish = method(60, 40);
        publish.extend_from_slice(&0u16.to_be_bytes());
        publish.extend_from_slice(&short_string(exchange.as_bytes()));
        publish.extend_from_slice(&short_string(routing_key));
        publish.push(0);
        self.send(FRAME_METHOD, 1, &publish).await?;
        let mut header = Vec::with_capacity(HEADER_FIXED + properties.list.len());
        header.extend_from_slice(&60u16.to_be_bytes());
        header.extend_from_slice(&0u16.to_be_bytes());
        header.extend_from_slice(&(body.len() as u64).to_be_bytes());
        header.extend_from_slice(&properties.flags.to_be_bytes());
        header.extend_from_slice(&properties.list);
        ensure!(
            header.len() + FRAME_OVERHEAD <= self.frame_max as usize,
            "a content header of {} bytes does not fit the broker's frame_max {}",
            header.len(),
            self.frame_max
        );
        self.send(FRAME_HEADER, 1, &header).await?;
        let chunk = self.frame_max as usize - FRAME_OVERHEAD;
        for part in body.chunks(chunk) {
            self.send(FRAME_BODY, 1, part).await?;
        }
        self.published += 1;
        let ack = self.expect_method(1, (60, 80)).await?;
        ensure!(ack.len() >= 12, "short basic.ack");
        let tag = u64::from_be_bytes(ack[4..12].try_into()?);
        ensure!(
            tag == self.published,
            "confirm for {tag}, not {}",
            self.published
        );
        Ok(())
    }

    /// Takes the message at the head of `queue` (`basic.get`, no acknowledgement: it leaves
    /// the queue), keeping the first `keep` bytes of its body; `None` when the queue is empty.
    pub async fn take(&mut self, queue: &str, keep: usize) -> anyhow::Result<Option<RawMessage>> {
        let mut get = method(60, 70);
        get.extend_from_slice(&0u16.to_be_bytes());
        get.extend_from_slice(&short_string(queue.as_bytes()));
        get.push(1);
        self.send(FRAME_METHOD, 1, &get).await?;
        let (id, _) = self.next_method(1).await?;
        match id {
            (60, 72) => return Ok(None),
            (60, 71) => {}
            other => bail!("expected basic.get-ok or get-empty, got {other:?}"),
        }
        let (kind, header) = self.next_frame().await?;
        ensure!(
            kind == FRAME_HEADER && header.len() >= HEADER_FIXED,
            "not a content header"
        );
        let size = u64::from_be_bytes(header[4..12].try_into()?) as usize;
        let flags = u16::from_be_bytes([header[12], header[13]]);
        let headers = header_table(flags, &header[HEADER_FIXED..])?;
        let mut message = RawMessage {
            headers,
            size,
            start: Vec::with_capacity(keep.min(size)),
        };
        let mut received = 0;
        while received < size {
            let (kind, part) = self.next_frame().await?;
            ensure!(kind == FRAME_BODY, "not a body frame");
            received += part.len();
            let room = keep.saturating_sub(message.start.len());
            message
                .start
                .extend_from_slice(&part[..room.min(part.len())]);
        }
        Ok(Some(message))
    }

    async fn send(&mut self, kind: u8, channel: u16, payload: &[u8]) -> anyhow::Result<()> {
        let mut frame = Vec::with_capacity(payload.len() + FRAME_OVERHEAD);
        frame.push(kind);
        frame.extend_from_slice(&channel.to_be_bytes());
        frame.extend_from_slice(&u32::try_from(payload.len())?.to_be_bytes());
        frame.extend_from_slice(payload);
        frame.push(FRAME_END);
        self.stream.write_all(&frame).await?;
        Ok(())
    }

    /// Reads frames until a method frame, skipping heartbeats; it must be `expected` on
    /// `channel` (a `close` from the broker is an error naming its reason).
    async fn expect_method(
        &mut self,
        channel: u16,
        expected: (u16, u16),
    ) -> anyhow::Result<Vec<u8>> {
        let (id, payload) = self.next_method(channel).await?;
        ensure!(
            id == expected,
            "expected {expected:?} on {channel}, got {id:?}"
        );
        Ok(payload)
    }

    /// The next method frame, which must be on `channel`: its (class, method) and payload.
    async fn next_method(&mut self, channel: u16) -> anyhow::Result<((u16, u16), Vec<u8>)> {
        let (kind, payload) = self.next_frame().await?;
        ensure!(
            kind == FRAME_METHOD && payload.len() >= 4,
            "not a method frame"
        );
        let id = (
            u16::from_be_bytes([payload[0], payload[1]]),
            u16::from_be_bytes([payload[2], payload[3]]),
        );
        if id == (10, 50) || id == (20, 40) {
            let text = payload
                .get(7..)
                .map(String::from_utf8_lossy)
                .unwrap_or_default();
            bail!("the broker closed: {text}");
        }
        ensure!(
            self.last_channel == channel,
            "{id:?} on channel {}, not {channel}",
            self.last_channel
        );
        Ok((id, payload))
    }

    /// The next frame but heartbeats: its type and payload.
    async fn next_frame(&mut self) -> anyhow::Result<(u8, Vec<u8>)> {
        loop {
            let mut head = [0u8; 7];
            self.stream
                .read_exact(&mut head)
                .await
                .context("the broker closed the socket")?;
            let size = u32::from_be_bytes([head[3], head[4], head[5], head[6]]) as usize;
            let mut payload = vec![0u8; size + 1];
            self.stream.read_exact(&mut payload).await?;
            ensure!(
                payload.pop() == Some(FRAME_END),
                "frame without its end marker"
            );
            if head[0] != FRAME_HEARTBEAT {
                self.last_channel = u16::from_be_bytes([head[1], head[2]]);
                return Ok((head[0], payload));
            }
        }
    }
}

/// A message taken by [`RawPublisher::take`].
#[derive(Debug, Clone)]
pub struct RawMessage {
    /// Its header table's entries whose values are long strings, as text.
    pub headers: Vec<(String, String)>,
    /// The size of its body, bytes.
    pub size: usize,
    /// The start of its body.
    pub start: Vec<u8>,
}

impl RawMessage {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(key, _)| key == name)
            .map(|(_, value)| value.as_str())
    }
}

/// The long-string entries of the header table in a content header's property list of
/// `flags` (content type and encoding, if present, come before it).
fn header_table(flags: u16, list: &[u8]) -> anyhow::Result<Vec<(String, String)>> {
    let mut at = 0;
    for bit in [15, 14] {
        if flags & (1 << bit) != 0 {
            at += 1 + usize::from(*list.get(at).context("short properties")?);
        }
    }
    if flags & (1 << 13) == 0 {
        return Ok(Vec::new());
    }
    let size = u32::from_be_bytes(list.get(at..at + 4).context("short table")?.try_into()?);
    let table = list
        .get(at + 4..at + 4 + size as usize)
        .context("short table")?;
    let mut entries = Vec::new();
    let mut at = 0;
    while at < table.len() {
        let key_size = usize::from(table[at]);
        let key = String::from_utf8_lossy(table.get(at + 1..at + 1 + key_size).context("key")?);
        at += 1 + key_size;
        let kind = *table.get(at).context("value type")?;
        let value_size = value_size(kind, table.get(at + 1..).context("value")?)?;
        if kind == b'S' {
            let text = table.get(at + 5..at + 1 + value_size).context("value")?;
            entries.push((key.into_owned(), String::from_utf8_lossy(text).into_owned()));
        }
        at += 1 + value_size;
    }
    Ok(entries)
}

/// Bytes a field value of type `kind` takes, at the start of `rest`.
fn value_size(kind: u8, rest: &[u8]) -> anyhow::Result<usize> {
    let long = || -> anyhow::Result<usize> {
        Ok(4 + u32::from_be_bytes(rest.get(..4).context("short value")?.try_into()?) as usize)
    };
    Ok(match kind {
        b't' | b'b' | b'B' => 1,
        b's' | b'u' => 2,
        b'I' | b'i' | b'f' => 4,
        b'l' | b'L' | b'd' | b'T' => 8,
        b'D' => 5,
        b'V' => 0,
        b'S' | b'A' | b'F' | b'x' => long()?,
        other => bail!("unknown field type {other}"),
    })
}

fn method(class: u16, id: u16) -> Vec<u8> {
    let mut payload = class.to_be_bytes().to_vec();
    payload.extend_from_slice(&id.to_be_bytes());
    payload
}
