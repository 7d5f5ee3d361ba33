//! The load: `order.placed` events of 1 minor unit each, published at a steady rate for the
//! load's duration with pipelined publisher confirms (`kit::broker::Confirms`), from a thread
//! and runtime of its own so that the client tasks cannot delay its pacing. Each order's publish
//! instant is stored in `Shared` just before its publish, indexed by its number: revenue today
//! then names the orders a snapshot includes. It knows nothing of the clients.

use super::case::Shared;
use crate::kit::broker::Confirms;
use anyhow::{ensure, Context};
use lapin::options::ConfirmSelectOptions;
use pulseboard::rabbitmq::{connect, publish_event};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// The orders' currency, the service's too.
pub(super) const CURRENCY: &str = "USD";
/// The publisher thread's name, to tell its CPU from the clients' (`CLIENT_THREADS`).
const PUBLISHER_THREAD: &str = "bench-publisher";

/// What the publisher did.
#[derive(Clone, Copy, Default)]
pub(super) struct Published {
    pub(super) sent: u64,
    pub(super) confirmed: u64,
    pub(super) seconds: f64,
    /// Furthest behind schedule it ever was (ms): starved of CPU if large.
    pub(super) max_behind_ms: f64,
}

/// Publishes on a thread of its own, so 10 000 client tasks cannot delay its pacing.
/// `rate` orders a second for `load`, at most `unconfirmed` of them awaiting their confirm.
pub(super) fn start_publisher(
    amqp_url: &str,
    exchange: &str,
    rate: u64,
    load: Duration,
    unconfirmed: usize,
    shared: Arc<Shared>,
) -> std::thread::JoinHandle<anyhow::Result<Published>> {
    let (url, exchange) = (amqp_url.to_owned(), exchange.to_owned());
    std::thread::Builder::new()
        .name(PUBLISHER_THREAD.into())
        .spawn(move || {
            tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .context("the publisher's runtime")?
                .block_on(publish(&url, &exchange, rate, load, unconfirmed, &shared))
        })
        .expect("a publisher thread")
}

async fn publish(
    url: &str,
    exchange: &str,
    rate: u64,
    load: Duration,
    max_unconfirmed: usize,
    shared: &Shared,
) -> anyhow::Result<Published> {
    let connection = connect(url, "pulseboard live bench publisher").await?;
    let channel = connection.create_channel().await?;
    channel
        .confirm_select(ConfirmSelectOptions::default())
        .await?;
    let run = uuid::Uuid::new_v4().simple().to_string();
    let run = &run[..8];
    let capacity = shared.published_at.len() as u64 - 1;
    let mut confirms = Confirms::new(max_unconfirmed);
    let mut pacing = tokio::time::interval(Duration::from_millis(10));
    pacing.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    let started = Instant::now();
    shared
        .load_start_us
        .store(shared.now_us(), Ordering::Release);
    shared.load_started.store(true, Ordering::Release);
    let mut sent = 0u64;
    let mut max_behind_ms: f64 = 0.0;
    loop {
        pacing.tick().await;
        let elapsed = started.elapsed();
        if elapsed >= load {
            break;
        }
        let due = ((elapsed.as_secs_f64() * rate as f64) as u64).min(capacity);
        max_behind_ms = max_behind_ms.max((due - sent.min(due)) as f64 * 1_000.0 / rate as f64);
        while sent < due {
            sent += 1;
            let body = order(run, sent);
            // Stored before the publish: once the order can reach the service, its time is here.
            shared.published_at[sent as usize].store(shared.now_us(), Ordering::Release);
            let confirm =
                publish_event(&channel, exchange, "order.placed", body.as_bytes()).await?;
            confirms.push(confirm).await?;
        }
        confirms.settle_ready()?;
    }
    let seconds = started.elapsed().as_secs_f64();
    confirms.finish().await?;
    let _ = connection.close(200, "published").await;
    let refused = confirms.refused;
    ensure!(refused == 0, "RabbitMQ refused {refused} published orders");
    Ok(Published {
        sent,
        confirmed: confirms.confirmed,
        seconds,
        max_behind_ms,
    })
}

/// Order `k`: 1 minor unit, so revenue today counts orders.
fn order(run: &str, k: u64) -> String {
    let now = pulseboard::clock::rfc3339(pulseboard::clock::now_ms());
    format!(
        r#"{{"id":"live-{run}-{k}","type":"order.placed","occurred_at":"{now}","user_id":"u-{}","data":{{"order_id":"o-{run}-{k}","amount_minor":1,"currency":"{CURRENCY}"}}}}"#,
        k % 1_000
    )
}
