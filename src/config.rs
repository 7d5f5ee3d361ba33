//! Command line and environment, parsed once at start into typed values.
//!
//! Every option is a flag with an environment fallback; flags win. Values are validated while
//! parsing, so a bad one stops the program with one line naming the option. Nothing else in the
//! crate reads the environment.
//!
//! Secrets (the signing key, passwords, the metrics token, the database and broker addresses,
//! which may carry a password, and where the TLS key lives) are kept as [`SecretString`] or
//! [`SecretPath`]: their `Debug` says `[REDACTED]`, so printing the configuration or an error
//! that holds it shows none of them. The value is read with `expose_secret()` where it is used.
//!
//! The options, their variables and defaults are listed in `docs/api.md` (Command line,
//! Configuration).

use chrono_tz::Tz;
use clap::builder::{PathBufValueParser, TypedValueParser};
use clap::{Args, Parser, Subcommand, ValueEnum};
use secrecy::{ExposeSecret, SecretString};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::str::FromStr;

#[derive(Debug, Parser)]
#[command(
    name = "pulseboard",
    version,
    about = "Live metrics dashboard: RabbitMQ events aggregated exactly once, pushed to dashboards"
)]
pub struct Cli {
    /// Log line format.
    #[arg(long, env = "PULSEBOARD_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text, global = true)]
    pub log_format: LogFormat,

    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the service: HTTP, SSE, WebSocket and metrics; consumes RabbitMQ.
    Serve(Box<ServeArgs>),
    /// Publish realistic events to RabbitMQ with publisher confirms.
    Simulate(SimulateArgs),
    /// Manage the users who may sign in.
    Users(UsersArgs),
    /// Kiosk links: revocable, dashboard-only links for wall screens.
    Tokens(TokensArgs),
    /// Apply database migrations and exit.
    Migrate(DatabaseArgs),
}

#[derive(Debug, Args)]
pub struct TokensArgs {
    #[command(flatten)]
    pub database: DatabaseArgs,

    #[command(subcommand)]
    pub(crate) action: TokensAction,
}

#[derive(Debug, Subcommand)]
pub(crate) enum TokensAction {
    /// Create a kiosk link and print its URL once (only a digest of its key is kept).
    Issue {
        #[arg(value_parser = parse_link_name)]
        name: String,
        /// How long the link lives: 90m, 12h, 30d (at most 366d).
        #[arg(long, default_value = "30d", value_parser = crate::auth::kiosk::parse_ttl)]
        ttl: i64,
        /// The address wall screens reach the service at (scheme, host, port; a path prefix if
        /// a proxy serves it under one): the printed URL starts with it. Unset: the service's
        /// own address, from PULSEBOARD_BIND and whether PULSEBOARD_TLS_CERT is set.
        #[arg(long, env = "PULSEBOARD_PUBLIC_URL", value_parser = parse_public_url)]
        public_url: Option<String>,
        /// The service's listen address, for the URL when --public-url is unset.
        #[arg(long, env = "PULSEBOARD_BIND", default_value = "127.0.0.1:8080")]
        bind: SocketAddr,
        /// The service's TLS certificate: when set, the URL derived from --bind is https://.
        #[arg(long, env = "PULSEBOARD_TLS_CERT")]
        tls_cert: Option<PathBuf>,
    },
    /// List kiosk links: name, created, expires, last used.
    List,
    /// Revoke a kiosk link: its screens' streams close within seconds on every instance.
    Revoke {
        #[arg(value_parser = parse_link_name)]
        name: String,
    },
}

#[derive(Debug, Args)]
pub struct UsersArgs {
    #[command(flatten)]
    pub database: DatabaseArgs,

    #[command(subcommand)]
    pub(crate) action: UsersAction,
}

#[derive(Debug, Subcommand)]
pub(crate) enum UsersAction {
    /// Create a user; without --password-stdin a generated password is printed once.
    Add {
        #[arg(value_parser = parse_username)]
        name: String,
        /// admin (views dashboards) or operator (also uses the console).
        #[arg(long)]
        role: crate::auth::Role,
        /// Read the password from standard input instead of generating one.
        #[arg(long)]
        password_stdin: bool,
    },
    /// List users and their roles.
    List,
    /// Remove a user and end their sessions.
    Remove {
        #[arg(value_parser = parse_username)]
        name: String,
    },
    /// Set a new password (generated unless --password-stdin) and end the user's sessions.
    Passwd {
        #[arg(value_parser = parse_username)]
        name: String,
        #[arg(long)]
        password_stdin: bool,
    },
}

/// The RabbitMQ queue type of the queues that hold events (`PULSEBOARD_QUEUE_TYPE`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, ValueEnum)]
pub enum QueueType {
    /// One node holds the queue: the default, for a single broker.
    #[default]
    Classic,
    /// Replicated over a cluster's nodes (Raft); survives the loss of a minority of them.
    Quorum,
}

impl std::fmt::Display for QueueType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            QueueType::Classic => "classic",
            QueueType::Quorum => "quorum",
        })
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Clone, Args)]
pub struct DatabaseArgs {
    /// sqlite://… (embedded, the default) or postgres://… (required for several instances).
    #[arg(
        long = "database-url",
        env = "DATABASE_URL",
        default_value = "sqlite://data/pulseboard.db?mode=rwc",
        value_parser = parse_database_url,
        hide_env_values = true
    )]
    pub database_url: DatabaseUrl,
}

#[derive(Debug, Clone, Args)]
pub(crate) struct BrokerArgs {
    /// RabbitMQ address; a comma-separated list of a cluster's nodes is tried in turn.
    #[arg(
        long = "amqp-url",
        env = "AMQP_URL",
        default_value = "amqp://guest:guest@127.0.0.1:5672/%2f",
        value_parser = parse_amqp_url,
        hide_env_values = true
    )]
    pub amqp_url: SecretString,

    /// Type of `<prefix>.events` and `<prefix>.dead`: `classic`, or `quorum` on a RabbitMQ
    /// cluster. An existing queue keeps its type: switching is refused at start.
    #[arg(long, env = "PULSEBOARD_QUEUE_TYPE", value_enum, default_value_t = QueueType::Classic)]
    pub queue_type: QueueType,

    /// Topic exchange the producers publish to.
    #[arg(long, env = "PULSEBOARD_EXCHANGE", default_value = "events", value_parser = parse_amqp_name)]
    pub exchange: String,

    /// Prefix of every queue and exchange the service itself declares.
    #[arg(long, env = "PULSEBOARD_QUEUE_PREFIX", default_value = "pulseboard", value_parser = parse_amqp_name)]
    pub queue_prefix: String,
}

#[derive(Debug, Clone, Args)]
pub struct ServeArgs {
    /// Also generate demo traffic; without a reachable RabbitMQ it flows through an in-process queue.
    #[arg(long)]
    pub demo: bool,

    /// HTTP listen address.
    #[arg(long, env = "PULSEBOARD_BIND", default_value = "127.0.0.1:8080")]
    pub bind: SocketAddr,

    #[command(flatten)]
    pub database: DatabaseArgs,

    #[command(flatten)]
    pub(crate) broker: BrokerArgs,

    /// This instance's name [default: host name + port].
    #[arg(long, env = "PULSEBOARD_NODE_ID", value_parser = parse_node_id)]
    pub node_id: Option<String>,

    /// Coalescing tick: at most one snapshot per tick, only when something changed.
    #[arg(long, env = "PULSEBOARD_SNAPSHOT_INTERVAL_MS", default_value_t = 250,
          value_parser = clap::value_parser!(u64).range(10..=60_000))]
    pub snapshot_interval_ms: u64,

    /// SSE heartbeat and WebSocket ping interval.
    #[arg(long, env = "PULSEBOARD_HEARTBEAT_SECS", default_value_t = 15,
          value_parser = clap::value_parser!(u64).range(1..=3_600))]
    pub heartbeat_secs: u64,

    /// A user is active if any event of theirs occurred within this window.
    #[arg(long, env = "PULSEBOARD_ACTIVE_WINDOW_SECS", default_value_t = 300,
          value_parser = clap::value_parser!(u64).range(1..=86_400))]
    pub active_window_secs: u64,

    #[command(flatten)]
    pub(crate) money: MoneyArgs,

    /// IANA time zone that defines "today".
    #[arg(long, env = "PULSEBOARD_TIMEZONE", default_value = "UTC", value_parser = parse_timezone)]
    pub timezone: Tz,

    /// Key for sessions and access tokens [default: generated once, kept in the database].
    #[arg(long, env = "PULSEBOARD_SECRET", hide_env_values = true, value_parser = parse_secret)]
    pub secret: Option<SecretString>,

    /// Lifetime of the access tokens `POST /api/auth/token` issues; a stream or console opened
    /// with one ends when it expires.
    #[arg(long, env = "PULSEBOARD_TOKEN_TTL_SECS", default_value_t = 900,
          value_parser = clap::value_parser!(u32).range(1..=86_400))]
    pub token_ttl_secs: u32,

    /// How far the time in a message between instances may be from this instance's clock
    /// before it is refused as stale (a replay); covers clock skew between the hosts.
    #[arg(long, env = "PULSEBOARD_FANOUT_WINDOW_SECS", default_value_t = 30,
          value_parser = clap::value_parser!(u64).range(1..=600))]
    pub fanout_window_secs: u64,

    /// Password of the operator `admin` created when no user exists.
    #[arg(long, env = "PULSEBOARD_ADMIN_PASSWORD", hide_env_values = true,
          value_parser = secret_value)]
    pub admin_password: Option<SecretString>,

    /// Comma list of origins allowed to open the console WebSocket [default: own origin].
    #[arg(long, env = "PULSEBOARD_ALLOWED_ORIGINS", value_delimiter = ',',
          value_parser = parse_origin)]
    pub allowed_origins: Vec<String>,

    /// PEM certificate chain; with --tls-key the service speaks HTTPS only.
    #[arg(long, env = "PULSEBOARD_TLS_CERT", requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,

    /// PEM private key; with --tls-cert the service speaks HTTPS only.
    #[arg(long, env = "PULSEBOARD_TLS_KEY", requires = "tls_cert", hide_env_values = true,
          value_parser = PathBufValueParser::new().map(SecretPath))]
    pub(crate) tls_key: Option<SecretPath>,

    /// When set, /metrics requires `Authorization: Bearer <token>`.
    #[arg(long, env = "PULSEBOARD_METRICS_TOKEN", hide_env_values = true,
          value_parser = secret_value)]
    pub metrics_token: Option<SecretString>,

    /// Concurrent SSE, long-poll and console connections one user may hold on this instance;
    /// 0 means no limit. Beyond it a new one is answered 429.
    #[arg(long, env = "PULSEBOARD_MAX_STREAMS_PER_USER", default_value_t = 0)]
    pub max_streams_per_user: u32,

    /// Believe X-Forwarded-Proto, -Host and -For (set only behind a proxy that overwrites or
    /// appends them): origin checks and sign-in throttling then use what the proxy says.
    #[arg(long, env = "PULSEBOARD_TRUST_PROXY", default_value_t = false,
          value_parser = clap::builder::BoolishValueParser::new(),
          num_args = 0..=1, default_missing_value = "true")]
    pub trust_proxy: bool,

    /// On SIGTERM, how long /readyz answers 503 while everything is still served, so that a
    /// load balancer takes the instance out of rotation before it stops accepting.
    #[arg(long, env = "PULSEBOARD_SHUTDOWN_DRAIN_MS", default_value_t = 2_000,
          value_parser = clap::value_parser!(u64).range(0..=5_000))]
    pub shutdown_drain_ms: u64,

    /// How long the console's audit log keeps a row (pruned every minute by the leader).
    /// 90 days by default, which is what the contract promises; shorten it only where a
    /// policy demands it.
    #[arg(long, env = "PULSEBOARD_AUDIT_RETENTION_SECS", default_value_t = 7_776_000,
          value_parser = clap::value_parser!(u32).range(1..=315_360_000))]
    pub audit_retention_secs: u32,

    /// The exactly-once window: how long an order's id is remembered, and how far in the past
    /// an event may have occurred (one window: an order too old to be recognised is too old to
    /// be accepted). 24 hours, as the contract promises; shorter only for tests and
    /// benchmarks that must see ids expire.
    #[arg(long, env = "PULSEBOARD_DEDUPE_WINDOW_SECS", default_value_t = 86_400,
          value_parser = clap::value_parser!(u32).range(10..=86_400))]
    pub dedupe_window_secs: u32,

    /// Demo traffic rate in events per second (with --demo).
    #[arg(long, default_value_t = 40, value_parser = clap::value_parser!(u32).range(1..=100_000))]
    pub demo_rate: u32,
}

#[derive(Debug, Clone, Args)]
pub(crate) struct MoneyArgs {
    /// The one revenue currency (ISO 4217 code).
    #[arg(long, env = "PULSEBOARD_CURRENCY", default_value = "USD", value_parser = parse_currency)]
    pub currency: String,
}

#[derive(Debug, Clone, Args)]
pub struct SimulateArgs {
    /// Events per second.
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
    pub rate: u32,

    /// Seconds to run [default: until interrupted].
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..))]
    pub duration: Option<u64>,

    /// Number of distinct simulated users.
    #[arg(long, default_value_t = 1_000, value_parser = clap::value_parser!(u32).range(1..))]
    pub users: u32,

    #[command(flatten)]
    pub(crate) broker: BrokerArgs,

    #[command(flatten)]
    pub(crate) money: MoneyArgs,
}

/// A validated database address; the scheme picks the backend.
#[derive(Debug, Clone)]
pub struct DatabaseUrl {
    /// Secret: a PostgreSQL address may carry a password.
    pub url: SecretString,
    pub backend: Backend,
}

/// A path kept out of `Debug` output: where the TLS private key lives is not for the logs
/// either. [`secrecy::SecretBox`] needs a type it can zero, which a path is not, so this is the
/// same idea for a path: redacted `Debug`, the value through [`ExposeSecret`].
#[derive(Clone)]
pub(crate) struct SecretPath(PathBuf);

impl std::fmt::Debug for SecretPath {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SecretPath([REDACTED])")
    }
}

impl ExposeSecret<Path> for SecretPath {
    fn expose_secret(&self) -> &Path {
        &self.0
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

impl FromStr for DatabaseUrl {
    type Err = String;

    fn from_str(url: &str) -> Result<Self, Self::Err> {
        parse_database_url(url)
    }
}

fn parse_database_url(url: &str) -> Result<DatabaseUrl, String> {
    let backend = if url.starts_with("sqlite:") {
        Backend::Sqlite
    } else if url.starts_with("postgres://") || url.starts_with("postgresql://") {
        Backend::Postgres
    } else {
        return Err("expected sqlite://PATH or postgres://…".into());
    };
    Ok(DatabaseUrl {
        url: url.into(),
        backend,
    })
}

/// One AMQP URL, or a comma-separated list of a cluster's nodes: each must parse.
fn parse_amqp_url(urls: &str) -> Result<SecretString, String> {
    for (index, url) in urls.split(',').map(str::trim).enumerate() {
        if url.is_empty() {
            return Err(format!("node {} of the list is empty", index + 1));
        }
        // The URL may carry a password: the error names the node by its place in the list.
        lapin::uri::AMQPUri::from_str(url)
            .map_err(|e| format!("node {} is not an AMQP URL: {e}", index + 1))?;
    }
    Ok(urls.into())
}

fn parse_amqp_name(name: &str) -> Result<String, String> {
    let valid = !name.is_empty()
        && name.len() <= 200
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_.:".contains(c));
    if valid {
        Ok(name.to_owned())
    } else {
        Err("use 1 to 200 characters of letters, digits, '-', '_', '.', ':'".into())
    }
}

fn parse_node_id(name: &str) -> Result<String, String> {
    let valid = !name.is_empty() && name.len() <= 64 && !name.chars().any(char::is_control);
    if valid {
        Ok(name.to_owned())
    } else {
        Err("use 1 to 64 printable characters".into())
    }
}

fn parse_link_name(name: &str) -> Result<String, String> {
    crate::auth::kiosk::validate_name(name).map(|()| name.to_owned())
}

/// The start of a kiosk link's URL when `PULSEBOARD_PUBLIC_URL` is unset: the service's own
/// address, `https://` when it speaks TLS; a wildcard listen address (`0.0.0.0`, `::`) stands
/// for this host's loopback, the one address known to reach it.
pub(crate) fn service_url(bind: SocketAddr, tls: bool) -> String {
    let scheme = if tls { "https" } else { "http" };
    let port = bind.port();
    match bind.ip() {
        std::net::IpAddr::V4(ip) if ip.is_unspecified() => format!("{scheme}://127.0.0.1:{port}"),
        std::net::IpAddr::V6(ip) if ip.is_unspecified() => format!("{scheme}://[::1]:{port}"),
        _ => format!("{scheme}://{bind}"),
    }
}

/// `http://` or `https://`, a host, no query or fragment; kept without a trailing `/`.
fn parse_public_url(url: &str) -> Result<String, String> {
    let rest = url
        .strip_prefix("https://")
        .or_else(|| url.strip_prefix("http://"))
        .ok_or("expected http://HOST[:PORT][/PATH] or https://…")?;
    let host = rest.split('/').next().unwrap_or_default();
    if host.is_empty() || url.contains(['?', '#', ' ']) || host.contains('@') {
        return Err("expected http://HOST[:PORT][/PATH] or https://… (no query, no user)".into());
    }
    Ok(url.trim_end_matches('/').to_owned())
}

/// One origin of a comma list, as a browser sends it in `Origin`: `http://` or `https://` and a
/// host with an optional port, nothing after it. Spaces around it (`a, b`) and a trailing `/`
/// are dropped, so that the list reads as people write it and still matches.
fn parse_origin(origin: &str) -> Result<String, String> {
    let origin = origin.trim().trim_end_matches('/');
    // Schemes are case-insensitive, as the comparison with `Origin` is.
    let (scheme, host) = origin.split_once("://").unwrap_or_default();
    let host = if ["http", "https"]
        .iter()
        .any(|s| s.eq_ignore_ascii_case(scheme))
    {
        host
    } else {
        ""
    };
    if host.is_empty() || host.contains(['/', '?', '#', '@', ' ']) {
        return Err(format!(
            "{origin:?} is not an origin: expected http://HOST[:PORT] or https://HOST[:PORT]"
        ));
    }
    Ok(origin.to_owned())
}

fn parse_username(name: &str) -> Result<String, String> {
    crate::auth::validate_username(name).map(|()| name.to_owned())
}

/// Never echoes the value: a bad secret is still a secret (and `main` leaves the value out of
/// the error line of every option whose environment value is hidden).
fn parse_secret(secret: &str) -> Result<SecretString, String> {
    if secret.chars().count() >= 16 {
        Ok(secret.into())
    } else {
        Err("use at least 16 characters".into())
    }
}

/// Any text, kept as a secret.
fn secret_value(secret: &str) -> Result<SecretString, String> {
    Ok(secret.into())
}

fn parse_currency(code: &str) -> Result<String, String> {
    if code.len() == 3 && code.chars().all(|c| c.is_ascii_uppercase()) {
        Ok(code.to_owned())
    } else {
        Err("expected an ISO 4217 code such as USD".into())
    }
}

fn parse_timezone(name: &str) -> Result<Tz, String> {
    name.parse::<Tz>()
        .map_err(|_| "not an IANA time zone (such as Europe/Berlin)".to_string())
}

/// A refused command line as one line: clap's message without the usage hints, naming the
/// environment variable too when the bad value came from there (the user set
/// `PULSEBOARD_BIND`, not `--bind`), and without the value of an option whose environment
/// value is hidden (a bad secret is still a secret). `args` are the arguments after the
/// program's name; `is_set` says whether an environment variable is set.
pub fn usage_line(
    error: &clap::Error,
    args: &[std::ffi::OsString],
    is_set: impl Fn(&std::ffi::OsStr) -> bool,
) -> String {
    use clap::error::{ContextKind, ContextValue};
    use clap::CommandFactory;

    let mut line = error
        .to_string()
        .lines()
        .map(str::trim)
        .take_while(|line| !line.starts_with("Usage:") && !line.starts_with("For more information"))
        .filter(|line| !line.is_empty())
        .collect::<Vec<_>>()
        .join(" ");
    let Some(ContextValue::String(shown)) = error.get(ContextKind::InvalidArg) else {
        return line;
    };
    let mut command = Cli::command();
    // Built as for parsing: an argument displays itself only once its value count is settled.
    command.build();
    let Some(arg) = find_arg(&command, shown) else {
        return line;
    };
    if arg.is_hide_env_values_set() {
        if let Some(ContextValue::String(value)) = error.get(ContextKind::InvalidValue) {
            line = line.replacen(&format!(" '{value}'"), "", 1);
        }
    }
    if let Some(variable) = arg.get_env() {
        let on_command_line = arg.get_long().is_some_and(|long| {
            let flag = format!("--{long}");
            args.iter()
                .take_while(|a| a.as_os_str() != "--")
                .filter_map(|a| a.to_str())
                .any(|a| a == flag || a.starts_with(&format!("{flag}=")))
        });
        if !on_command_line && is_set(variable) {
            let quoted = format!("'{shown}'");
            let named = format!("{quoted} (env {})", variable.to_string_lossy());
            line = line.replacen(&quoted, &named, 1);
        }
    }
    line
}

/// The option clap shows as `shown` (such as `--bind <BIND>`), in any subcommand.
fn find_arg<'a>(command: &'a clap::Command, shown: &str) -> Option<&'a clap::Arg> {
    command
        .get_arguments()
        .find(|arg| arg.to_string() == shown)
        .or_else(|| {
            command
                .get_subcommands()
                .find_map(|sub| find_arg(sub, shown))
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Result<Cli, clap::Error> {
        Cli::try_parse_from(std::iter::once("pulseboard").chain(args.iter().copied()))
    }

    #[test]
    fn a_kiosk_link_s_default_address_is_the_service_s_own() {
        let url = |bind: &str, tls| super::service_url(bind.parse().expect("address"), tls);
        assert_eq!(url("127.0.0.1:8080", false), "http://127.0.0.1:8080");
        assert_eq!(url("10.0.0.5:8443", true), "https://10.0.0.5:8443");
        assert_eq!(url("0.0.0.0:9000", true), "https://127.0.0.1:9000");
        assert_eq!(url("[::]:9000", false), "http://[::1]:9000");
        assert_eq!(url("[fd00::1]:80", false), "http://[fd00::1]:80");
    }

    #[test]
    fn serve_has_the_spec_defaults() {
        let cli = parse(&["serve"]).expect("parses");
        let Command::Serve(serve) = cli.command else {
            panic!("not serve")
        };
        assert_eq!(serve.snapshot_interval_ms, 250);
        assert_eq!(serve.heartbeat_secs, 15);
        assert_eq!(serve.active_window_secs, 300);
        assert_eq!(serve.money.currency, "USD");
        assert_eq!(serve.timezone, Tz::UTC);
        assert_eq!(serve.broker.queue_prefix, "pulseboard");
        assert_eq!(serve.max_streams_per_user, 0);
        assert_eq!(serve.token_ttl_secs, 900);
        assert!(!serve.trust_proxy);
        assert_eq!(serve.audit_retention_secs, 90 * 24 * 3_600, "90 days");
        assert_eq!(serve.dedupe_window_secs, 24 * 3_600, "24 hours");
    }

    #[test]
    fn allowed_origins_read_as_written_and_only_origins_are_allowed() {
        let origins = |list: &str| match parse(&["serve", "--allowed-origins", list]) {
            Ok(Cli {
                command: Command::Serve(serve),
                ..
            }) => Ok(serve.allowed_origins),
            Ok(_) => panic!("not serve"),
            Err(error) => Err(error.to_string()),
        };
        assert_eq!(
            origins("https://a.example, https://b.example:8443/, HTTPS://C.example")
                .expect("parses"),
            [
                "https://a.example",
                "https://b.example:8443",
                "HTTPS://C.example"
            ]
        );
        for wrong in [
            "a.example",
            "https://a.example/dash",
            "https://",
            "https://a.example,",
            "ftp://a.example",
        ] {
            let error = origins(wrong).expect_err(wrong);
            assert!(error.contains("is not an origin"), "{wrong}: {error}");
        }
    }

    #[test]
    fn trust_proxy_is_a_flag_or_a_boolean_value() {
        let serve = |args: &[&str]| match parse(args).expect("parses").command {
            Command::Serve(serve) => serve,
            _ => panic!("not serve"),
        };
        assert!(serve(&["serve", "--trust-proxy"]).trust_proxy);
        assert!(serve(&["serve", "--trust-proxy=true"]).trust_proxy);
        assert!(!serve(&["serve", "--trust-proxy=false"]).trust_proxy);
        assert_eq!(
            serve(&["serve", "--max-streams-per-user", "3"]).max_streams_per_user,
            3
        );
        assert!(parse(&["serve", "--trust-proxy=maybe"]).is_err());
    }

    #[test]
    fn bad_values_name_the_option() {
        for (args, option) in [
            (vec!["serve", "--bind", "nowhere"], "--bind"),
            (
                vec!["serve", "--database-url", "mysql://x"],
                "--database-url",
            ),
            (vec!["serve", "--amqp-url", "http://x"], "--amqp-url"),
            (vec!["serve", "--timezone", "Mars/Base"], "--timezone"),
            (vec!["serve", "--currency", "usd"], "--currency"),
            (
                vec!["serve", "--snapshot-interval-ms", "0"],
                "--snapshot-interval-ms",
            ),
            (vec!["serve", "--token-ttl-secs", "0"], "--token-ttl-secs"),
            (
                vec!["serve", "--audit-retention-secs", "0"],
                "--audit-retention-secs",
            ),
            (
                vec!["serve", "--token-ttl-secs", "86401"],
                "--token-ttl-secs",
            ),
        ] {
            let error = parse(&args).expect_err("refused").to_string();
            let first_line = error.lines().next().unwrap_or_default();
            assert!(first_line.contains(option), "{args:?}: {first_line}");
        }
    }

    /// Every secret set, some by flag and some by environment (`Cli::try_parse_from` reads the
    /// process environment, so the variables are unique to this test): none shows in `{:?}`.
    #[test]
    fn debug_shows_no_secret() {
        let from_env = [
            ("PULSEBOARD_ADMIN_PASSWORD", "env-admin-password-6f1c"),
            ("PULSEBOARD_METRICS_TOKEN", "env-metrics-token-93ab"),
            (
                "AMQP_URL",
                "amqp://rabbit:env-amqp-password-27d4@broker:5672/%2f",
            ),
        ];
        for (name, value) in from_env {
            std::env::set_var(name, value);
        }
        let parsed = parse(&[
            "serve",
            "--secret",
            "flag-signing-secret-0e5b",
            "--database-url",
            "postgres://pulse:flag-db-password-c3d0@db/pulseboard",
            "--tls-cert",
            "/etc/pulseboard/cert.pem",
            "--tls-key",
            "/etc/pulseboard/flag-key-path-71e2.pem",
        ]);
        for (name, _) in from_env {
            std::env::remove_var(name);
        }
        let cli = parsed.expect("parses");
        let Command::Serve(serve) = &cli.command else {
            panic!("not serve")
        };
        // Each secret did arrive (or the test would prove nothing) ...
        assert_eq!(
            serve.secret.as_ref().map(|s| s.expose_secret()),
            Some("flag-signing-secret-0e5b")
        );
        assert_eq!(
            serve.admin_password.as_ref().map(|s| s.expose_secret()),
            Some("env-admin-password-6f1c")
        );
        assert_eq!(
            serve.metrics_token.as_ref().map(|s| s.expose_secret()),
            Some("env-metrics-token-93ab")
        );
        assert!(serve
            .broker
            .amqp_url
            .expose_secret()
            .contains("env-amqp-password-27d4"));
        assert!(serve
            .database
            .database_url
            .url
            .expose_secret()
            .contains("flag-db-password"));
        assert_eq!(
            serve.tls_key.as_ref().map(|p| p.expose_secret()),
            Some(Path::new("/etc/pulseboard/flag-key-path-71e2.pem"))
        );
        // ... and none of them is in the debug form, which still shows the rest.
        let shown = format!("{cli:?}");
        for secret in [
            "flag-signing-secret",
            "env-admin-password",
            "env-metrics-token",
            "env-amqp-password",
            "flag-db-password",
            "flag-key-path",
        ] {
            assert!(!shown.contains(secret), "{secret} in {shown}");
        }
        assert!(
            shown.contains("cert.pem") && shown.contains("Postgres"),
            "{shown}"
        );
    }

    fn usage(args: &[&str], set: &[&str]) -> String {
        let error = parse(args).expect_err("refused");
        let args = args.iter().map(Into::into).collect::<Vec<_>>();
        usage_line(&error, &args, |name| set.iter().any(|s| name == *s))
    }

    #[test]
    fn a_value_from_the_environment_names_its_variable() {
        // clap cannot tell where a value came from: the variable is named when it is set and
        // the flag is not on the command line (flags win).
        assert_eq!(
            usage(&["serve", "--bind", "nowhere"], &["PULSEBOARD_BIND"]),
            "error: invalid value 'nowhere' for '--bind <BIND>': invalid socket address syntax"
        );
        assert_eq!(
            usage(&["serve", "--bind=nowhere"], &[]),
            "error: invalid value 'nowhere' for '--bind <BIND>': invalid socket address syntax"
        );
        // As if PULSEBOARD_BIND=nowhere: the same error, the variable set, no flag.
        let error = parse(&["serve", "--bind", "nowhere"]).expect_err("refused");
        assert_eq!(
            usage_line(&error, &["serve".into()], |name| name == "PULSEBOARD_BIND"),
            "error: invalid value 'nowhere' for '--bind <BIND>' (env PULSEBOARD_BIND): \
             invalid socket address syntax"
        );
    }

    #[test]
    fn a_refused_secret_is_not_repeated() {
        let line = usage(&["serve", "--secret", "too-short"], &[]);
        assert_eq!(
            line,
            "error: invalid value for '--secret <SECRET>': use at least 16 characters"
        );
        let line = usage(
            &["simulate", "--rate", "1", "--amqp-url", "http://u:pw@x"],
            &[],
        );
        assert!(
            !line.contains("pw@x") && line.contains("--amqp-url"),
            "{line}"
        );
    }

    #[test]
    fn database_backend_follows_the_scheme() {
        assert_eq!(
            parse_database_url("postgres://localhost/x").map(|u| u.backend),
            Ok(Backend::Postgres)
        );
        assert_eq!(
            parse_database_url("sqlite::memory:").map(|u| u.backend),
            Ok(Backend::Sqlite)
        );
    }
}
