//! Wiring: builds the application state from the configuration, starts the tasks (ingest,
//! fan-out, demo traffic) and the HTTP server (actix-web's `HttpServer`), and stops them in
//! order on shutdown.
//!
//! Start-up takes the port first and listens last: between the two (the database, migrations,
//! the broker check) a connection is refused, not parked in a backlog nobody reads, so that a
//! proxy sends it to another instance at once during a rolling restart.
//!
//! Shutdown order (docs/operations.md, Shutdown), on SIGTERM or Ctrl-C:
//! 1. `/readyz` answers 503 at once, while everything is still served for the drain period
//!    (`PULSEBOARD_SHUTDOWN_DRAIN_MS`), so that a load balancer takes the instance out of
//!    rotation before it stops accepting (a second signal cuts the drain short);
//! 2. the listener stops accepting;
//! 3. SSE streams and waiting long-polls end, console sessions get a 1001 "going away" close
//!    frame: clients reconnect (to another instance) and resume by `Last-Event-ID`;
//! 4. requests in flight finish while ingest commits and acknowledges its batch in flight and
//!    releases the lease, and the fan-out link closes; then the database pool.

use crate::aggregate::AggregateSettings;
use crate::app::{AppState, LiveSettings};
use crate::config::ServeArgs;
use crate::core::outbox::{FanoutSender, Outgoing};
use crate::core::{Core, CoreParts};
use crate::fanout::{self, FanoutSettings};
use crate::ingest::{IngestContext, IngestSettings, LeaderInputs};
use crate::live::worker_feed::WorkerFeed;
use crate::live::Hub;
use crate::metrics::Metrics;
use crate::rabbitmq::{self, RawMessage, Topology};
use crate::simulate::TrafficGenerator;
use crate::store::Store;
use crate::{clock, http};
use actix_web::http::KeepAlive;
use actix_web::{middleware, web, App, HttpServer};
use anyhow::Context;
use secrecy::ExposeSecret;
use std::net::{SocketAddr, TcpListener};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

pub struct Application {
    server: actix_web::dev::Server,
    tasks: Vec<JoinHandle<()>>,
    shutdown: CancellationToken,
    store: Store,
    hub: Hub,
    /// Cancelled at the first signal: `/readyz` answers 503 from then on.
    draining: CancellationToken,
    /// How long the instance keeps serving, out of rotation, before it stops accepting.
    drain: Duration,
}

/// Bounds the start-up check of the broker's queues; a slower broker is left to ingest's retries.
const QUEUE_CHECK_TIMEOUT: Duration = Duration::from_secs(3);

/// The tasks started so far, and the token that stops them.
struct Tasks {
    handles: Vec<JoinHandle<()>>,
    shutdown: CancellationToken,
}

impl Application {
    /// Binds, opens the database, starts ingest and fan-out, then the HTTP server. Every error
    /// names the option to fix (`PULSEBOARD_BIND`, `DATABASE_URL`, …).
    pub async fn build(args: ServeArgs) -> anyhow::Result<Application> {
        let port = BoundPort::take(args.bind)?;
        let address = port.address;
        let node = args
            .node_id
            .clone()
            .unwrap_or_else(|| format!("{}:{}", host_name(), address.port()));
        let store = open_store(&args).await?;
        let (auth, tls, seal) = security(&args, &store).await?;
        let hub = Hub::new(store.last_announcement_id().await.context("DATABASE_URL")?);
        let (fanout, fanout_receiver) = FanoutSender::channel();
        let (refresh, refresh_receiver) = mpsc::channel(1);
        let metrics = Arc::new(Metrics::new(&node)?);
        crate::console::export_metrics(&metrics);
        let core = Arc::new(
            Core::new(CoreParts {
                node,
                store,
                hub,
                metrics,
                fanout,
                refresh,
            })
            .await
            .context("DATABASE_URL")?,
        );
        let mut tasks = Tasks {
            handles: Vec::new(),
            shutdown: CancellationToken::new(),
        };
        tasks.handles.push(tokio::spawn(
            core.credentials.clone().run(tasks.shutdown.clone()),
        ));
        let topology = Topology::new(&args.broker.exchange, &args.broker.queue_prefix)
            .with_queue_type(args.broker.queue_type);
        let local_demo = if args.demo {
            start_demo(&args, &topology, &mut tasks).await
        } else {
            None
        };
        if !args.demo {
            check_queue_type(&args, &topology).await?;
        }
        let alone = local_demo.is_some();
        let inputs = LeaderInputs {
            local: local_demo,
            refresh: refresh_receiver,
        };
        start_ingest(&args, &core, &topology, inputs, &mut tasks);
        let live = LiveSettings::new(
            Duration::from_millis(args.snapshot_interval_ms),
            Duration::from_secs(args.heartbeat_secs),
        );
        let draining = CancellationToken::new();
        let state = app_state(&args, &core, &topology, auth, live, draining.clone());
        if alone {
            // No broker: this instance is alone, nothing to fan out to.
            drop(fanout_receiver);
        } else {
            start_fanout(&args, &core, topology, fanout_receiver, seal, &mut tasks);
        }
        let server = serve(port.listen()?, state, tls, live)?;
        announce_address(&args, &core.node, address, tls_scheme(&args));
        Ok(Application {
            server,
            tasks: tasks.handles,
            shutdown: tasks.shutdown,
            store: core.store.clone(),
            hub: core.hub.clone(),
            draining,
            drain: Duration::from_millis(args.shutdown_drain_ms),
        })
    }

    /// Serves until SIGTERM or Ctrl-C, then shuts down in the order of the module header.
    pub async fn run_until_stopped(self) -> anyhow::Result<()> {
        let handle = self.server.handle();
        let server = tokio::spawn(self.server);
        wait_for_signal().await;
        let started = tokio::time::Instant::now();
        self.draining.cancel();
        tracing::info!(
            drain_ms = self.drain.as_millis() as u64,
            "shutting down: draining"
        );
        tokio::select! {
            _ = tokio::time::sleep(self.drain) => {}
            _ = wait_for_signal() => tracing::info!("second signal: drain cut short"),
        }
        // The stop closes the listeners at once (the command is sent now): a client that
        // reconnects from here is refused, so a proxy moves it to another instance at once,
        // instead of leaving it in the listen backlog of a paused listener until this exits.
        let stopped = handle.stop(true);
        // End the live streams before the graceful stop, or it would wait for them to time out.
        self.hub.close();
        self.shutdown.cancel();
        let tasks = async {
            for task in self.tasks {
                let _ = task.await;
            }
        };
        let stop = async {
            tokio::join!(stopped, tasks);
            let _ = server.await;
            self.store.close().await;
        };
        if tokio::time::timeout_at(started + STOP_LIMIT, stop)
            .await
            .is_err()
        {
            // Nothing is lost: what was not acknowledged is redelivered to the next leader,
            // and a batch that committed without its ack is recognised as duplicates.
            tracing::warn!(
                limit_ms = STOP_LIMIT.as_millis() as u64,
                "stop limit reached: exiting without waiting for the rest"
            );
        }
        tracing::info!(took_ms = started.elapsed().as_millis() as u64, "stopped");
        Ok(())
    }
}

/// Refuses to start when `<prefix>.events` or `<prefix>.dead` exists with another type than
/// `PULSEBOARD_QUEUE_TYPE` (or a quorum queue without the delivery limit): RabbitMQ cannot
/// change a queue's type or arguments, so retrying would never
/// succeed. A broker that does not answer now is left to ingest, which retries.
async fn check_queue_type(args: &ServeArgs, topology: &Topology) -> anyhow::Result<()> {
    let check = rabbitmq::check_topology(args.broker.amqp_url.expose_secret(), topology);
    match tokio::time::timeout(QUEUE_CHECK_TIMEOUT, check).await {
        Ok(Err(
            error @ (rabbitmq::BrokerError::QueueType { .. }
            | rabbitmq::BrokerError::DeliveryLimit { .. }),
        )) => Err(anyhow::Error::new(error).context("PULSEBOARD_QUEUE_TYPE")),
        Ok(Err(error)) => {
            tracing::warn!(%error, "RabbitMQ not ready at start; ingest keeps trying");
            Ok(())
        }
        Err(_) => {
            tracing::warn!("RabbitMQ did not answer at start; ingest keeps trying");
            Ok(())
        }
        Ok(Ok(())) => Ok(()),
    }
}

/// How many connections the kernel queues before the server accepts them: what `std`'s
/// `TcpListener::bind` gives, which the live tests' reconnection waves were measured with.
const LISTEN_BACKLOG: i32 = 128;

/// `PULSEBOARD_BIND` bound but not yet listening. Bound, so a port in use fails at once and a
/// port-0 bind knows its number for the node name; not listening, so a connection made while
/// the instance starts is refused (a reset, at once) instead of waiting in the listen backlog
/// until the server answers, which could be seconds: a proxy's connection then goes to
/// another instance (nginx's `proxy_next_upstream error`), not into a wait it cannot time out.
struct BoundPort {
    socket: socket2::Socket,
    address: SocketAddr,
}

impl BoundPort {
    fn take(bind: SocketAddr) -> anyhow::Result<BoundPort> {
        let cannot = || format!("PULSEBOARD_BIND {bind}: cannot listen");
        let socket = socket2::Socket::new(
            socket2::Domain::for_address(bind),
            socket2::Type::STREAM,
            Some(socket2::Protocol::TCP),
        )
        .with_context(cannot)?;
        // As `std` does: a restarted instance may take the port while the old one's
        // connections are still in TIME_WAIT.
        socket.set_reuse_address(true).with_context(cannot)?;
        socket.bind(&bind.into()).with_context(cannot)?;
        let address = socket
            .local_addr()
            .ok()
            .and_then(|address| address.as_socket())
            .context("PULSEBOARD_BIND: no local address")?;
        Ok(BoundPort { socket, address })
    }

    /// Starts accepting connections: the last step before the server runs.
    fn listen(self) -> anyhow::Result<TcpListener> {
        self.socket
            .listen(LISTEN_BACKLOG)
            .with_context(|| format!("PULSEBOARD_BIND {}: cannot listen", self.address))?;
        Ok(self.socket.into())
    }
}

async fn open_store(args: &ServeArgs) -> anyhow::Result<Store> {
    let store = Store::connect(&args.database.database_url)
        .await
        .context("DATABASE_URL")?
        .with_audit_retention(Duration::from_secs(args.audit_retention_secs.into()))
        .with_dedupe_window(Duration::from_secs(args.dedupe_window_secs.into()));
    store.migrate().await.context("DATABASE_URL")?;
    Ok(store)
}

/// The signing secret (configured, or generated once and kept in the database) and the seal
/// key of the messages between instances derived from it, the first administrator, and TLS.
async fn security(
    args: &ServeArgs,
    store: &Store,
) -> anyhow::Result<(
    crate::auth::AuthState,
    Option<rustls::ServerConfig>,
    fanout::seal::SealKey,
)> {
    let secret = match &args.secret {
        Some(secret) => secret.expose_secret().to_owned(),
        None => store
            .setting_or_insert("secret", crate::auth::random_token)
            .await
            .context("DATABASE_URL")?,
    };
    crate::users::bootstrap_admin(
        store,
        args.admin_password
            .as_ref()
            .map(ExposeSecret::expose_secret),
    )
    .await?;
    let tls = match (&args.tls_cert, &args.tls_key) {
        (Some(cert), Some(key)) => Some(tls_config(cert, key.expose_secret())?),
        _ => None,
    };
    let auth = crate::auth::AuthState::new(
        secret.as_bytes(),
        args.token_ttl_secs,
        tls.is_some(),
        args.allowed_origins.clone(),
    );
    let seal = fanout::seal::SealKey::derive(secret.as_bytes());
    Ok((auth, tls, seal))
}

fn start_ingest(
    args: &ServeArgs,
    core: &Arc<Core>,
    topology: &Topology,
    inputs: LeaderInputs,
    tasks: &mut Tasks,
) {
    let snapshot_interval = Duration::from_millis(args.snapshot_interval_ms);
    let context = Arc::new(IngestContext {
        core: core.clone(),
        settings: IngestSettings {
            amqp_url: args.broker.amqp_url.clone(),
            topology: topology.clone(),
            currency: args.money.currency.clone(),
            aggregate: AggregateSettings {
                active_window_ms: args.active_window_secs as i64 * 1000,
                timezone: args.timezone,
            },
            snapshot_interval,
            // Several batches of credit: the broker keeps delivering while one commits.
            prefetch: 10_000,
            max_batch: 2_000,
            batch_linger: batch_linger(snapshot_interval),
            dedupe_window_ms: i64::from(args.dedupe_window_secs) * 1_000,
            demo: args.demo,
            local_demo: inputs.local.is_some(),
        },
    });
    tasks.handles.push(tokio::spawn(crate::ingest::run(
        context,
        inputs,
        tasks.shutdown.clone(),
    )));
}

/// How long a batch gathers before it commits, unless full or cut by a tick first
/// (`ingest::term`): four fifths of the interval, so that under a steady stream the batch that
/// began after a tick commits before the next one, and that tick's snapshot waits only for the
/// last fifth's commit; at most a second, so that with ticks far apart a message still waits at
/// most that long for its acknowledgement.
fn batch_linger(snapshot_interval: Duration) -> Duration {
    (snapshot_interval * 4 / 5).min(Duration::from_secs(1))
}

fn start_fanout(
    args: &ServeArgs,
    core: &Arc<Core>,
    topology: Topology,
    outgoing: mpsc::Receiver<Outgoing>,
    seal: fanout::seal::SealKey,
    tasks: &mut Tasks,
) {
    let settings = FanoutSettings {
        amqp_url: args.broker.amqp_url.clone(),
        topology,
        seal,
        window: Duration::from_secs(args.fanout_window_secs),
    };
    tasks.handles.push(tokio::spawn(fanout::run(
        core.clone(),
        settings,
        outgoing,
        tasks.shutdown.clone(),
    )));
}

fn app_state(
    args: &ServeArgs,
    core: &Arc<Core>,
    topology: &Topology,
    auth: crate::auth::AuthState,
    live: LiveSettings,
    draining: CancellationToken,
) -> web::Data<AppState> {
    web::Data::new(AppState {
        core: core.clone(),
        auth,
        metrics_token: args.metrics_token.clone(),
        live,
        refresh_limit: crate::live::limit::RefreshLimiter::default(),
        trust_proxy: args.trust_proxy,
        streams: crate::live::limit::StreamLimiter::new(args.max_streams_per_user),
        broker: crate::app::BrokerSettings {
            amqp_url: args.broker.amqp_url.clone(),
            topology: topology.clone(),
        },
        draining,
        timezone: args.timezone,
    })
}

/// How long a connection's first request head may take: actix-http answers its own plain 408
/// after it (the request *body* has its own deadline, `http::read_body_in_time`).
const REQUEST_HEAD_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a closing connection waits for the client to close its side.
const CLIENT_DISCONNECT_TIMEOUT: Duration = Duration::from_secs(1);
/// Seconds requests in flight get to finish once the server stops.
const SHUTDOWN_TIMEOUT_SECS: u64 = 5;

/// The HTTP server on `listener`, plain or over TLS (HTTP/1.1 by ALPN: actix-web's `http2`
/// feature is off), with every middleware, already running. Signals are `run_until_stopped`'s.
///
/// actix-web's `HttpServer`, with actix-server's defaults for what is not set here: one worker
/// per available core, 25 600 connections per worker, TLS handshakes within 3 s. The listener
/// listens from [`BoundPort::listen`] on (`LISTEN_BACKLOG`).
fn serve(
    listener: TcpListener,
    state: web::Data<AppState>,
    tls: Option<rustls::ServerConfig>,
    live: LiveSettings,
) -> anyhow::Result<actix_web::dev::Server> {
    let address = listener
        .local_addr()
        .context("PULSEBOARD_BIND: no local address")?;
    abort_stalled_readers(&listener, live.stall_timeout);
    let server = HttpServer::new(move || {
        App::new()
            .app_data(state.clone())
            // Made here, so once per HTTP worker, on that worker's thread.
            .app_data(WorkerFeed::new(state.core.hub.clone()))
            // Innermost: HEAD sees the handler's own body, before any compression; bodies
            // are read in time before any handler, and a 408 still gets the headers below.
            .wrap(middleware::from_fn(http::head_without_stream))
            .wrap(middleware::from_fn(http::read_body_in_time))
            // Before any body is read: no content coding (nothing is inflated), bounded URIs.
            .wrap(middleware::from_fn(http::screen_request_head))
            .wrap(http::security_headers())
            // Compresses pages, assets and JSON, never an event stream: the two layers
            // around it keep it off those and send no `Content-Encoding` for them.
            .wrap(middleware::from_fn(http::mark_uncompressed))
            .wrap(middleware::Compress::default())
            .wrap(middleware::from_fn(http::unmark_uncompressed))
            // Outside compression, whose output is a stream too.
            .wrap(middleware::from_fn(http::close_delimit_for_http10))
            .wrap(middleware::from_fn(http::observe_request))
            .configure(http::configure)
    })
    .disable_signals()
    .shutdown_timeout(SHUTDOWN_TIMEOUT_SECS)
    .keep_alive(KeepAlive::default())
    .client_request_timeout(REQUEST_HEAD_TIMEOUT)
    .client_disconnect_timeout(CLIENT_DISCONNECT_TIMEOUT)
    // Events are small and must leave at once; Nagle would hold one back behind an ACK.
    .tcp_nodelay(true);
    let server = match tls {
        None => server.listen(listener),
        Some(config) => server.listen_rustls_0_23(listener, config),
    }
    .with_context(|| format!("PULSEBOARD_BIND {address}: cannot serve"))?;
    Ok(server.run())
}

fn tls_scheme(args: &ServeArgs) -> &'static str {
    if args.tls_cert.is_some() && args.tls_key.is_some() {
        "https"
    } else {
        "http"
    }
}

/// The line test harnesses and operators look for, and the demo's how-to.
fn announce_address(args: &ServeArgs, node: &str, address: SocketAddr, scheme: &str) {
    tracing::info!(%node, "listening on {scheme}://{address}");
    if args.demo {
        tracing::info!(
            "demo: open {scheme}://{address}/ in a browser and sign in as `admin` with \
             PULSEBOARD_ADMIN_PASSWORD (or, on a first start without it, the password logged above)"
        );
    }
}

/// Starts the demo generator. Returns the in-process queue when RabbitMQ is unreachable.
async fn start_demo(
    args: &ServeArgs,
    topology: &Topology,
    tasks: &mut Tasks,
) -> Option<mpsc::Receiver<RawMessage>> {
    let shutdown = &tasks.shutdown;
    let rate = args.demo_rate;
    let generator = TrafficGenerator::new(200, &args.money.currency, rand::random());
    match rabbitmq::connect(args.broker.amqp_url.expose_secret(), "pulseboard demo").await {
        Ok(connection) => {
            tracing::info!(rate, "demo traffic goes through RabbitMQ");
            let channel = match connection.create_channel().await {
                Ok(channel) if topology.declare(&channel).await.is_ok() => channel,
                _ => return None,
            };
            let exchange = topology.exchange.clone();
            tasks.handles.push(tokio::spawn(demo_loop(
                rate,
                generator,
                shutdown.clone(),
                move |event| {
                    let channel = channel.clone();
                    let exchange = exchange.clone();
                    async move {
                        let _ = rabbitmq::publish_unconfirmed(
                            &channel,
                            &exchange,
                            event.routing_key,
                            &event.body,
                        )
                        .await;
                    }
                },
            )));
            None
        }
        Err(error) => {
            tracing::warn!(%error, rate, "RabbitMQ unreachable: demo traffic goes through an in-process queue");
            let (sender, receiver) = mpsc::channel(10_000);
            tasks.handles.push(tokio::spawn(demo_loop(
                rate,
                generator,
                shutdown.clone(),
                move |event| {
                    let message = RawMessage {
                        body: event.body,
                        routing_key: event.routing_key.to_owned(),
                        headers: None,
                        arrived_at: clock::now_ms(),
                        tag: 0,
                    };
                    // A full queue means ingest is far behind; dropping demo traffic is fine.
                    let _ = sender.try_send(message);
                    std::future::ready(())
                },
            )));
            Some(receiver)
        }
    }
}

async fn demo_loop<F, Fut>(
    rate: u32,
    mut generator: TrafficGenerator,
    shutdown: CancellationToken,
    mut emit: F,
) where
    F: FnMut(crate::simulate::Generated) -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    let mut tick = tokio::time::interval(Duration::from_millis(100));
    let started = tokio::time::Instant::now();
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tick.tick() => {}
        }
        let due = started.elapsed().as_secs_f64() * f64::from(rate);
        while (generator.tally.sent as f64) < due {
            emit(generator.next_event(clock::now_ms())).await;
        }
    }
}

/// From SIGTERM to exit, at most: within the 10 s that orchestrators usually grant, drain
/// (at most 5 s) included.
const STOP_LIMIT: Duration = Duration::from_secs(9);

/// Kernel send buffer per connection (Linux doubles it): what a stalled reader can pin in kernel
/// memory, instead of the megabytes autotuning would grow to.
const SEND_BUFFER_BYTES: usize = 64 * 1024;

/// A client that stops reading leaves our data unacknowledged in a zero window; with
/// `TCP_USER_TIMEOUT` the kernel aborts such a connection after `timeout` (Linux applies it to
/// zero-window probes), which ends its stream and frees everything it held. Set on the listening
/// socket, which every accepted connection inherits it from (with the send buffer): nothing
/// to do, and nothing to keep, per connection.
fn abort_stalled_readers(listener: &TcpListener, timeout: Duration) {
    let socket = socket2::SockRef::from(listener);
    if let Err(error) = socket
        .set_tcp_user_timeout(Some(timeout))
        .and_then(|()| socket.set_send_buffer_size(SEND_BUFFER_BYTES))
    {
        tracing::warn!(%error, "could not bound the connections' send buffers and stall time");
    }
}

/// HTTPS from PEM files: the certificate chain and its private key.
fn tls_config(
    cert: &std::path::Path,
    key: &std::path::Path,
) -> anyhow::Result<rustls::ServerConfig> {
    let open = |path: &std::path::Path, option: &str| {
        std::fs::File::open(path)
            .map(std::io::BufReader::new)
            .with_context(|| format!("{option} {}: cannot read", path.display()))
    };
    let chain = rustls_pemfile::certs(&mut open(cert, "PULSEBOARD_TLS_CERT")?)
        .collect::<Result<Vec<_>, _>>()
        .with_context(|| format!("PULSEBOARD_TLS_CERT {}: not PEM", cert.display()))?;
    if chain.is_empty() {
        anyhow::bail!(
            "PULSEBOARD_TLS_CERT {}: no certificate in it",
            cert.display()
        );
    }
    let private_key = rustls_pemfile::private_key(&mut open(key, "PULSEBOARD_TLS_KEY")?)
        .with_context(|| format!("PULSEBOARD_TLS_KEY {}: not PEM", key.display()))?
        .with_context(|| format!("PULSEBOARD_TLS_KEY {}: no private key in it", key.display()))?;
    let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
    rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .context("TLS: protocol versions")?
        .with_no_client_auth()
        .with_single_cert(chain, private_key)
        .context("PULSEBOARD_TLS_CERT/PULSEBOARD_TLS_KEY: the key does not fit the certificate")
}

async fn wait_for_signal() {
    let interrupt = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut terminate =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(signal) => signal,
                Err(_) => {
                    let _ = interrupt.await;
                    return;
                }
            };
        tokio::select! {
            _ = interrupt => {}
            _ = terminate.recv() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = interrupt.await;
}

fn host_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|name| name.trim().to_owned())
        .filter(|name| !name.is_empty())
        .or_else(|| std::env::var("HOSTNAME").ok())
        .unwrap_or_else(|| "localhost".into())
}

#[cfg(test)]
mod tests {
    use super::batch_linger;
    use std::time::Duration;

    #[test]
    fn a_batch_lingers_four_fifths_of_a_tick_and_at_most_a_second() {
        let ms = Duration::from_millis;
        assert_eq!(batch_linger(ms(250)), ms(200));
        assert_eq!(batch_linger(ms(10)), ms(8));
        assert_eq!(batch_linger(ms(60_000)), ms(1_000));
    }
}
