//! The broker side of a run: the queue prefix and exchange of one test or benchmark run, and
//! their deletion when the run ends, so that runs in parallel never meet and nothing is left
//! behind; publisher confirms awaited in a window.

use anyhow::Context;
use futures_util::stream::{FuturesUnordered, StreamExt};
use futures_util::FutureExt;
use lapin::publisher_confirm::{Confirmation, PublisherConfirm};
use pulseboard::rabbitmq::{connect, Topology};
use std::sync::Arc;
use std::time::Duration;

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
