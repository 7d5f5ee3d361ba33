//! The HTTP server: actix-http serving an application on a listener, plain or TLS, with the
//! settings actix-web's `HttpServer` uses.
//!
//! Assembled here rather than by `HttpServer` for one reason: `HttpServer` hands the connection
//! straight to actix-http, and each connection must first be wrapped in
//! [`JsonParserErrors`] so that the parser's own answers get the JSON error shape.

use super::parser_errors::JsonParserErrors;
use actix_http::body::MessageBody;
use actix_http::error::DispatchError;
use actix_http::{HttpService, KeepAlive, Protocol};
use actix_server::{GracefulShutdownSignal, Server, ServerBuilder};
use actix_service::{
    fn_service, map_config, IntoServiceFactory, ServiceFactory, ServiceFactoryExt,
};
use actix_tls::accept::rustls_0_23::{Acceptor, TlsStream};
use actix_tls::accept::TlsError;
use actix_web::dev::{AppConfig, ServiceRequest, ServiceResponse};
use actix_web::rt::net::TcpStream;
use actix_web::App;
use std::io;
use std::net::{SocketAddr, TcpListener};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite};

/// How long a connection's first request head may take (408 after it); `HttpServer`'s default.
const REQUEST_HEAD_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a closing connection waits for the client to close its side; `HttpServer`'s default.
const CLIENT_DISCONNECT_TIMEOUT: Duration = Duration::from_secs(1);
/// Seconds requests in flight get to finish once the server stops.
const SHUTDOWN_TIMEOUT_SECS: u64 = 5;

/// The inside of an actix-web `App`, as `App` needs it to be served.
pub trait Endpoint<B>:
    ServiceFactory<
        ServiceRequest,
        Config = (),
        Response = ServiceResponse<B>,
        Error = actix_web::Error,
        InitError = (),
    > + 'static
{
}

impl<T, B> Endpoint<B> for T where
    T: ServiceFactory<
            ServiceRequest,
            Config = (),
            Response = ServiceResponse<B>,
            Error = actix_web::Error,
            InitError = (),
        > + 'static
{
}

/// What a connection is, once accepted, for actix-http: the stream, HTTP/1, the peer.
type Accepted<IO> = (JsonParserErrors<IO>, Protocol, Option<SocketAddr>);

/// Serves `app` (made once per worker, on its thread) on `listener`, over TLS when `tls` is
/// given, and returns the running server. Signals are left to the caller.
pub fn serve<F, T, B>(
    listener: TcpListener,
    tls: Option<rustls::ServerConfig>,
    app: F,
) -> io::Result<Server>
where
    F: Fn() -> App<T> + Send + Clone + 'static,
    T: Endpoint<B>,
    B: MessageBody + 'static,
{
    let builder = ServerBuilder::default()
        .disable_signals()
        .shutdown_timeout(SHUTDOWN_TIMEOUT_SECS);
    let connections = Connections {
        shutdown: builder.graceful_shutdown_signal(),
        address: listener.local_addr()?,
        secure: tls.is_some(),
    };
    let builder = match tls {
        None => builder.listen("pulseboard-http", listener, move || {
            fn_service(accept_plain).and_then(connections.http(&app))
        })?,
        Some(config) => {
            let acceptor = tls_acceptor(config);
            builder.listen("pulseboard-https", listener, move || {
                acceptor
                    .clone()
                    .map_err(TlsError::into_service_error)
                    .and_then(fn_service(accept_tls))
                    .and_then(connections.http(&app).map_err(TlsError::Service))
            })?
        }
    };
    Ok(builder.run())
}

/// What every connection's HTTP service is made with.
#[derive(Clone)]
struct Connections {
    shutdown: GracefulShutdownSignal,
    address: SocketAddr,
    secure: bool,
}

impl Connections {
    /// actix-http serving a new instance of `app` on accepted connections.
    fn http<IO, T, B>(
        &self,
        app: &impl Fn() -> App<T>,
    ) -> impl ServiceFactory<
        Accepted<IO>,
        Config = (),
        Response = (),
        Error = DispatchError,
        InitError = (),
    >
    where
        IO: AsyncRead + AsyncWrite + Unpin + 'static,
        T: Endpoint<B>,
        B: MessageBody + 'static,
    {
        let app = app().into_factory().map_err(|error| error.error_response());
        let shutdown = self.shutdown.clone();
        let (secure, address) = (self.secure, self.address);
        HttpService::build()
            // Keep-alive connections close when the server stops, not at their next request.
            .graceful_shutdown_signal(move || {
                let shutdown = shutdown.clone();
                async move { shutdown.notified().await }
            })
            .keep_alive(KeepAlive::default())
            .client_request_timeout(REQUEST_HEAD_TIMEOUT)
            .client_disconnect_timeout(CLIENT_DISCONNECT_TIMEOUT)
            .local_addr(address)
            .finish(map_config(app, move |()| {
                // The constructor `HttpServer` itself uses; ConnectionInfo falls back on it
                // for the scheme and host. It is hidden and exempt from semver: should a
                // release drop it, the build fails here, and `AppConfig::default()` will do
                // while nothing reads ConnectionInfo.
                AppConfig::__priv_test_new(secure, address.to_string(), address)
            }))
    }
}

async fn accept_plain(io: TcpStream) -> Result<Accepted<TcpStream>, DispatchError> {
    no_delay(&io);
    let peer = io.peer_addr().ok();
    Ok((JsonParserErrors::new(io), Protocol::Http1, peer))
}

async fn accept_tls(
    io: TlsStream<TcpStream>,
) -> Result<Accepted<TlsStream<TcpStream>>, TlsError<io::Error, DispatchError>> {
    let tcp = io.get_ref().0;
    no_delay(tcp);
    let peer = tcp.peer_addr().ok();
    Ok((JsonParserErrors::new(io), Protocol::Http1, peer))
}

/// Events are small and must leave at once; Nagle would hold one back behind an ACK.
fn no_delay(io: &TcpStream) {
    if let Err(error) = io.set_nodelay(true) {
        tracing::debug!(%error, "TCP_NODELAY not set");
    }
}

/// The TLS acceptor, offering HTTP/1.1 by ALPN (HTTP/2 is not served).
fn tls_acceptor(mut config: rustls::ServerConfig) -> Acceptor {
    let mut protocols = vec![b"http/1.1".to_vec()];
    protocols.append(&mut config.alpn_protocols);
    config.alpn_protocols = protocols;
    Acceptor::new(config)
}
