//! The broker side of a run: the queue prefix and exchange of one test or benchmark run, and
//! their deletion when the run ends, so that runs in parallel never meet and nothing is left
//! behind; publisher confirms awaited in a window; a publisher that keeps a steady rate.

use anyhow::Context;
use futures_util::stream::{FuturesUnordered, StreamExt};
use futures_util::FutureExt;
use lapin::publisher_confirm::{Confirmation, PublisherConfirm};
use pulseboard::rabbitmq::{connect, publish_event, Topology};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// The shared broker every test talks to.
pub const AMQP_URL: &str = "amqp://guest:guest@127.0.0.1:5672/%2f";

/// How long the deletion may take, so that a broker that stopped answering cannot hang a run.
const CLEANUP_LIMIT: Duration = Duration::from_secs(10);

/// `AMQP_URL` from the environment (the benchmarks'), or the shared broker.
pub fn amqp_url_from_env() -> String {
    std::env::var("AMQP_URL").unwrap_or_else(|_| AMQP_URL.into())
}

pub fn short_id() -> String {
    uuid::Uuid::new_v4().simple().to_string()[..12].to_owned()
}

/// Queue prefix and exchange of one run. When the last copy is dropped, at the end of the run
/// whether it passed or not, the service's queues and exchanges of that prefix are deleted, and
/// any other the run declared beside them ([`Names::on`]).
#[derive(Debug, Clone)]
pub struct Names {
    pub prefix: String,
    pub exchange: String,
    _cleanup: Arc<TopologyCleanup>,
}

impl Names {
    /// `test-<id>` on the shared broker.
    pub fn new() -> Names {
        Names::on(AMQP_URL, &format!("test-{}", short_id()), &[], &[])
    }

    /// `prefix`, exchange `<prefix>.ev`, on the broker at `amqp_url`; `queues` and `exchanges`
    /// are declared by the run beside the service's topology and deleted with it.
    pub fn on(amqp_url: &str, prefix: &str, queues: &[&str], exchanges: &[&str]) -> Names {
        let exchange = format!("{prefix}.ev");
        let owned = |names: &[&str]| names.iter().map(|name| name.to_string()).collect();
        Names {
            _cleanup: Arc::new(TopologyCleanup {
                amqp_url: amqp_url.to_owned(),
                topology: Topology::new(&exchange, prefix),
                queues: owned(queues),
                exchanges: owned(exchanges),
            }),
            exchange,
            prefix: prefix.to_owned(),
        }
    }

    /// The service's topology under these names.
    pub fn topology(&self) -> Topology {
        Topology::new(&self.exchange, &self.prefix)
    }
}

#[derive(Debug)]
struct TopologyCleanup {
    amqp_url: String,
    topology: Topology,
    queues: Vec<String>,
    exchanges: Vec<String>,
}

impl Drop for TopologyCleanup {
    fn drop(&mut self) {
        // Drop is synchronous and may run on the run's runtime, which cannot `block_on` a second
        // future: the deletion gets a thread and a runtime of its own, and this waits for it.
        let deleted = std::thread::scope(|scope| {
            scope
                .spawn(|| {
                    let runtime = tokio::runtime::Builder::new_current_thread()
                        .enable_all()
                        .build()
                        .map_err(|e| e.to_string())?;
                    runtime.block_on(async {
                        tokio::time::timeout(CLEANUP_LIMIT, self.delete())
                            .await
                            .unwrap_or_else(|_| Err(format!("no answer within {CLEANUP_LIMIT:?}")))
                    })
                })
                .join()
        });
        if let Ok(Err(error)) = deleted {
            eprintln!(
                "could not delete the queues and exchanges of {}: {error}",
                self.topology.exchange
            );
        }
    }
}

impl TopologyCleanup {
    /// Deletes everything, on a connection of its own (the run's may be gone); the first
    /// error is returned after trying the rest.
    async fn delete(&self) -> Result<(), String> {
        use lapin::options::{ExchangeDeleteOptions, QueueDeleteOptions};
        let (connection, channel) = open_channel(&self.amqp_url, "pulseboard kit cleanup").await?;
        let mut deleted = self
            .topology
            .delete(&channel)
            .await
            .map_err(|e| e.to_string());
        for queue in &self.queues {
            let gone = channel
                .queue_delete(queue, QueueDeleteOptions::default())
                .await
                .map(|_| ())
                .map_err(|e| format!("queue {queue}: {e}"));
            deleted = deleted.and(gone);
        }
        for exchange in &self.exchanges {
            let gone = channel
                .exchange_delete(exchange, ExchangeDeleteOptions::default())
                .await
                .map_err(|e| format!("exchange {exchange}: {e}"));
            deleted = deleted.and(gone);
        }
        let _ = connection.close(200, "cleaned up").await;
        deleted
    }
}

/// A connection to the broker at `url` and a channel on it; errors as text, for callers that
/// retry or report them instead of failing at once.
pub async fn open_channel(
    url: &str,
    name: &str,
) -> Result<(lapin::Connection, lapin::Channel), String> {
    let connection = connect(url, name).await.map_err(|e| e.to_string())?;
    let channel = connection
        .create_channel()
        .await
        .map_err(|e| e.to_string())?;
    Ok((connection, channel))
}

/// Publisher confirms awaited as they come, at most `window` outstanding: the broker takes
/// publishes as fast as it confirms them, and a refusal or a lost channel is reported.
pub struct Confirms {
    pending: FuturesUnordered<PublisherConfirm>,
    window: usize,
    /// Acknowledged by the broker so far.
    pub confirmed: u64,
    /// Refused (nack) so far.
    pub refused: u64,
}

impl Confirms {
    pub fn new(window: usize) -> Confirms {
        Confirms {
            pending: FuturesUnordered::new(),
            window: window.max(1),
            confirmed: 0,
            refused: 0,
        }
    }

    /// Adds one publish's confirm, then waits for the oldest while `window` are outstanding.
    pub async fn push(&mut self, confirm: PublisherConfirm) -> anyhow::Result<()> {
        self.pending.push(confirm);
        while self.pending.len() >= self.window {
            let next = self.pending.next().await;
            self.settle(next)?;
        }
        Ok(())
    }

    /// Counts the confirms that have already come, without waiting.
    pub fn settle_ready(&mut self) -> anyhow::Result<()> {
        while let Some(Some(result)) = self.pending.next().now_or_never() {
            self.settle(Some(result))?;
        }
        Ok(())
    }

    /// Waits for every outstanding confirm.
    pub async fn finish(&mut self) -> anyhow::Result<()> {
        while let Some(result) = self.pending.next().await {
            self.settle(Some(result))?;
        }
        Ok(())
    }

    fn settle(&mut self, result: Option<Result<Confirmation, lapin::Error>>) -> anyhow::Result<()> {
        match result {
            Some(Ok(Confirmation::Nack(_))) => self.refused += 1,
            Some(Ok(_)) => self.confirmed += 1,
            Some(Err(error)) => return Err(error).context("publisher confirm"),
            None => {}
        }
        Ok(())
    }
}

/// What [`publish_paced`] sent: every message, confirmed, and how long that took.
#[derive(Debug, Clone, Copy)]
pub struct Paced {
    pub sent: u64,
    pub seconds: f64,
}

impl Paced {
    pub fn rate(&self) -> f64 {
        self.sent as f64 / self.seconds.max(f64::EPSILON)
    }
}

/// Publishes `messages` (routing key, body) to `exchange` at `rate` a second in all, as
/// producers do (persistent, with publisher confirms), shared among `producers` tasks of
/// their own connection each: on a busy machine one producer may not reach the rate. Returns
/// once the broker confirmed them all; a refusal is an error.
pub async fn publish_paced(
    amqp_url: &str,
    exchange: &str,
    rate: u64,
    messages: Vec<(String, Vec<u8>)>,
    producers: usize,
) -> anyhow::Result<Paced> {
    let producers = producers.max(1);
    let share = messages.len().div_ceil(producers).max(1);
    let mut messages = messages.into_iter();
    let tasks: Vec<_> = (0..producers)
        .map(|_| {
            let part: Vec<_> = messages.by_ref().take(share).collect();
            let (amqp_url, exchange) = (amqp_url.to_owned(), exchange.to_owned());
            let rate = rate / producers as u64;
            tokio::spawn(async move { produce_paced(&amqp_url, &exchange, rate, &part).await })
        })
        .collect();
    let mut paced = Paced {
        sent: 0,
        seconds: 0.0,
    };
    for task in tasks {
        let part = task.await??;
        paced.sent += part.sent;
        paced.seconds = paced.seconds.max(part.seconds);
    }
    Ok(paced)
}

/// One producer of [`publish_paced`]: at most `MAX_UNCONFIRMED` outstanding.
async fn produce_paced(
    amqp_url: &str,
    exchange: &str,
    rate: u64,
    messages: &[(String, Vec<u8>)],
) -> anyhow::Result<Paced> {
    const MAX_UNCONFIRMED: usize = 1_000;
    let (connection, channel) = open_channel(amqp_url, "pulseboard kit paced publisher")
        .await
        .map_err(anyhow::Error::msg)?;
    channel
        .confirm_select(lapin::options::ConfirmSelectOptions::default())
        .await?;
    let mut confirms = Confirms::new(MAX_UNCONFIRMED);
    let mut pacing = tokio::time::interval(Duration::from_millis(10));
    pacing.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    let started = Instant::now();
    let mut sent = 0;
    while sent < messages.len() {
        pacing.tick().await;
        let due = (started.elapsed().as_secs_f64() * rate as f64) as usize;
        for (routing_key, body) in &messages[sent..due.min(messages.len())] {
            confirms
                .push(publish_event(&channel, exchange, routing_key, body).await?)
                .await?;
            sent += 1;
        }
        confirms.settle_ready()?;
    }
    confirms.finish().await?;
    let seconds = started.elapsed().as_secs_f64();
    let _ = connection.close(200, "published").await;
    anyhow::ensure!(
        confirms.refused == 0,
        "RabbitMQ refused {} of {sent} messages",
        confirms.refused
    );
    Ok(Paced {
        sent: sent as u64,
        seconds,
    })
}
