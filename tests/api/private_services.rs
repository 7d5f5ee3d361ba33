//! Private servers for outage tests: a RabbitMQ node and a PostgreSQL cluster of the test's own,
//! which it may stop and start at will without disturbing the shared servers (127.0.0.1:5672,
//! 127.0.0.1:5432) that every other test runs against in parallel.
//!
//! Both run on this machine from the Debian packages, as their packages' users (`rabbitmq`,
//! `postgres`): the test process must run as root (as `scripts/test.sh` and CI do) or as that
//! user. Each server lives in a temporary folder owned by that user, listens on 127.0.0.1 on free
//! ports, and is stopped (synchronously, best effort) and removed when dropped.

use pulseboard::rabbitmq::connect;
use std::fs;
use std::os::unix::fs::MetadataExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Output, Stdio};
use std::time::{Duration, Instant};

const RABBIT_HOME: &str = "/var/lib/rabbitmq";
const RABBIT_SERVER: &str = "/usr/lib/rabbitmq/bin/rabbitmq-server";
/// The Debian wrapper: switches to the `rabbitmq` user (whose home holds the Erlang cookie)
/// when run as root.
const RABBITMQCTL: &str = "/usr/sbin/rabbitmqctl";
const START_TIMEOUT: Duration = Duration::from_secs(60);
const COMMAND_TIMEOUT: Duration = Duration::from_secs(60);

/// A free TCP port on 127.0.0.1.
pub fn free_port() -> u16 {
    free_ports::<1>()[0]
}

/// Free TCP ports on 127.0.0.1, distinct from each other (all bound at once, then released).
pub fn free_ports<const N: usize>() -> [u16; N] {
    let listeners: Vec<_> = (0..N)
        .map(|_| std::net::TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0"))
        .collect();
    std::array::from_fn(|i| listeners[i].local_addr().expect("local address").port())
}

fn effective_uid() -> u32 {
    fs::metadata("/proc/self").expect("/proc/self").uid()
}

fn uid_of(user: &str) -> Option<u32> {
    let output = std::process::Command::new("id")
        .args(["-u", user])
        .output()
        .ok()?;
    String::from_utf8_lossy(&output.stdout).trim().parse().ok()
}

/// `program args…` as `user`: directly when we are that user, through `runuser` when root.
fn as_user(user: &str, program: &str) -> tokio::process::Command {
    let uid = effective_uid();
    let target =
        uid_of(user).unwrap_or_else(|| panic!("no `{user}` user: is the package installed?"));
    if uid == target {
        tokio::process::Command::new(program)
    } else {
        assert_eq!(
            uid, 0,
            "private servers run as `{user}`: run the tests as root or as `{user}`"
        );
        let mut command = tokio::process::Command::new("runuser");
        command.args(["-u", user, "--", program]);
        command
    }
}

/// A temporary folder owned by `user`, removed when dropped.
fn folder_for(user: &str, prefix: &str) -> tempfile::TempDir {
    let folder = tempfile::Builder::new()
        .prefix(prefix)
        .tempdir()
        .expect("temporary folder");
    chown(user, folder.path());
    folder
}

fn chown(user: &str, path: &Path) {
    if effective_uid() != 0 {
        return;
    }
    let status = std::process::Command::new("chown")
        .args(["-R", &format!("{user}:"), &path.display().to_string()])
        .status()
        .expect("chown");
    assert!(status.success(), "chown {user} {}", path.display());
}

/// Runs a command to completion within [`COMMAND_TIMEOUT`]; panics with its output on failure.
async fn run(mut command: tokio::process::Command, what: &str) -> Output {
    command
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    let output = tokio::time::timeout(COMMAND_TIMEOUT, command.output())
        .await
        .unwrap_or_else(|_| panic!("{what}: no answer within {COMMAND_TIMEOUT:?}"))
        .unwrap_or_else(|error| panic!("{what}: {error}"));
    assert!(
        output.status.success(),
        "{what} failed ({}):\n{}\n{}",
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    output
}

/// Synchronous best-effort command for `Drop` (the runtime may be gone), bounded by `timeout(1)`.
fn run_blocking(program: &str, args: &[&str], seconds: u32, dir: Option<&Path>) -> bool {
    let mut command = std::process::Command::new("timeout");
    command
        .arg(seconds.to_string())
        .arg(program)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    if let Some(dir) = dir {
        command.current_dir(dir);
    }
    command.status().is_ok_and(|status| status.success())
}

fn tail(path: &Path) -> String {
    let text = fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(40)..].join("\n")
}

/// A RabbitMQ node of the test's own (`pbtest-<id>@localhost`), with an empty plugin list, its
/// own configuration (the shared `/etc/rabbitmq/rabbitmq.conf` would make it listen on 5672),
/// database, logs and ports. It shares the Erlang cookie of the `rabbitmq` user, so the stock
/// `rabbitmqctl -n <node>` controls it.
pub struct PrivateRabbit {
    node: String,
    port: u16,
    folder: tempfile::TempDir,
    /// `runuser … rabbitmq-server`, leading its own process group (the Erlang VM included).
    server: Option<Child>,
}

impl PrivateRabbit {
    /// Starts the node and waits until AMQP answers on its port.
    pub async fn start() -> PrivateRabbit {
        PrivateRabbit::start_with("").await
    }

    /// [`PrivateRabbit::start`], with `config` (`rabbitmq.conf` lines) after the node's own.
    pub async fn start_with(config: &str) -> PrivateRabbit {
        let mut failures = Vec::new();
        // A free port may be taken by someone else between our probe and the node's bind.
        for _ in 0..3 {
            match PrivateRabbit::try_start(config).await {
                Ok(rabbit) => return rabbit,
                Err(failure) => failures.push(failure),
            }
        }
        panic!(
            "the private RabbitMQ node did not start:\n{}",
            failures.join("\n----\n")
        );
    }

    async fn try_start(config: &str) -> Result<PrivateRabbit, String> {
        let id = crate::helpers::short_id();
        let node = format!("pbtest-{id}@localhost");
        let [port, dist_port] = free_ports::<2>();
        let folder = folder_for("rabbitmq", "pb-rabbit-");
        let dir = folder.path().to_path_buf();
        let file = |name: &str| dir.join(name).display().to_string();
        fs::write(
            file("rabbitmq.conf"),
            format!("listeners.tcp.local = 127.0.0.1:{port}\n{config}"),
        )
        .expect("rabbitmq.conf");
        fs::write(file("enabled_plugins"), "[].\n").expect("enabled_plugins");
        // Replaces /etc/rabbitmq/rabbitmq-env.conf (which names the shared node).
        fs::write(file("rabbitmq-env.conf"), "").expect("rabbitmq-env.conf");
        chown("rabbitmq", &dir);
        let output = fs::File::create(file("server.out")).expect("server.out");

        let mut command = std::process::Command::new(if effective_uid() == 0 {
            "runuser"
        } else {
            "env"
        });
        if effective_uid() == 0 {
            command.args(["-u", "rabbitmq", "--", "env"]);
        }
        command
            .arg(format!("HOME={RABBIT_HOME}"))
            .arg(format!("RABBITMQ_NODENAME={node}"))
            .arg("RABBITMQ_NODE_IP_ADDRESS=127.0.0.1")
            .arg(format!("RABBITMQ_NODE_PORT={port}"))
            .arg(format!("RABBITMQ_DIST_PORT={dist_port}"))
            .arg(format!("RABBITMQ_CONFIG_FILE={}", file("rabbitmq.conf")))
            .arg(format!(
                "RABBITMQ_ADVANCED_CONFIG_FILE={}",
                file("advanced.config")
            ))
            .arg(format!(
                "RABBITMQ_CONF_ENV_FILE={}",
                file("rabbitmq-env.conf")
            ))
            .arg(format!(
                "RABBITMQ_ENABLED_PLUGINS_FILE={}",
                file("enabled_plugins")
            ))
            .arg(format!("RABBITMQ_MNESIA_BASE={}", file("mnesia")))
            .arg(format!("RABBITMQ_LOG_BASE={}", file("log")))
            .arg(format!("RABBITMQ_PID_FILE={}", file("node.pid")))
            .arg("RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS=-kernel inet_dist_use_interface {127,0,0,1}")
            .arg("ERL_EPMD_ADDRESS=127.0.0.1")
            .arg(RABBIT_SERVER)
            .current_dir(&dir)
            .stdin(Stdio::null())
            .stdout(output.try_clone().expect("server.out"))
            .stderr(output)
            // Its own process group: no terminal signal reaches it, and Drop can end it whole.
            .process_group(0);
        let server = command
            .spawn()
            .map_err(|error| format!("spawn {RABBIT_SERVER}: {error}"))?;
        let mut rabbit = PrivateRabbit {
            node,
            port,
            folder,
            server: Some(server),
        };

        let started = Instant::now();
        loop {
            if let Ok(connection) = connect(&rabbit.amqp_url(), "pulseboard test probe").await {
                let _ = connection.close(200, "probe").await;
                return Ok(rabbit);
            }
            let exited = rabbit
                .server
                .as_mut()
                .and_then(|server| server.try_wait().ok().flatten());
            if exited.is_some() || started.elapsed() > START_TIMEOUT {
                return Err(format!(
                    "node {} (AMQP port {port}, distribution port {dist_port}) {}:\n{}\n{}",
                    rabbit.node,
                    match exited {
                        Some(status) => format!("exited with {status}"),
                        None => format!("did not answer AMQP within {START_TIMEOUT:?}"),
                    },
                    tail(&rabbit.folder.path().join("server.out")),
                    tail(
                        &rabbit
                            .folder
                            .path()
                            .join("log")
                            .join(format!("{}.log", rabbit.node))
                    ),
                ));
                // Returning drops `rabbit`, which stops whatever did start.
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }

    pub fn amqp_url(&self) -> String {
        format!("amqp://guest:guest@127.0.0.1:{}/%2f", self.port)
    }

    /// The Erlang node name (`pbtest-<id>@localhost`), for `join_cluster`.
    pub fn node(&self) -> &str {
        &self.node
    }

    /// `rabbitmqctl -n <node> <args…>`; panics with its output when it fails.
    pub async fn ctl(&self, args: &[&str]) -> String {
        let mut command = tokio::process::Command::new(RABBITMQCTL);
        command.args(["-n", &self.node]).args(args);
        let output = run(command, &format!("rabbitmqctl -n {} {args:?}", self.node)).await;
        String::from_utf8_lossy(&output.stdout).into_owned()
    }

    /// `rabbitmqctl -n <node> stop_app`: the Erlang node stays up, RabbitMQ itself stops (every
    /// connection is closed; durable queues and persistent messages are kept on disk).
    pub async fn stop_app(&self) {
        self.rabbitmqctl("stop_app").await;
    }

    /// `rabbitmqctl -n <node> start_app`: RabbitMQ starts again on the same node.
    pub async fn start_app(&self) {
        self.rabbitmqctl("start_app").await;
    }

    async fn rabbitmqctl(&self, action: &str) -> Output {
        let mut command = tokio::process::Command::new(RABBITMQCTL);
        command.args(["-n", &self.node, action]);
        run(command, &format!("rabbitmqctl -n {} {action}", self.node)).await
    }

    fn log_dir(&self) -> PathBuf {
        self.folder.path().join("log")
    }

    /// The node's own log, for failure messages.
    pub fn log_tail(&self) -> String {
        tail(&self.log_dir().join(format!("{}.log", self.node)))
    }
}

impl Drop for PrivateRabbit {
    fn drop(&mut self) {
        let stopped = run_blocking(RABBITMQCTL, &["-n", &self.node, "stop"], 60, None);
        if let Some(mut server) = self.server.take() {
            let deadline = Instant::now() + Duration::from_secs(if stopped { 15 } else { 0 });
            while Instant::now() < deadline {
                if let Ok(Some(_)) = server.try_wait() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(100));
            }
            // Still running: end the whole process group (runuser and the Erlang VM).
            let group = format!("-{}", server.id());
            run_blocking("kill", &["-KILL", "--", &group], 10, None);
            let _ = server.wait();
        }
        // The folder is removed by `TempDir`'s own drop.
    }
}

/// A throwaway PostgreSQL cluster (`initdb --auth=trust -U postgres`), listening on 127.0.0.1 on
/// a free port with its socket in its own folder.
pub struct PrivatePostgres {
    port: u16,
    folder: tempfile::TempDir,
    bin: PathBuf,
    /// Server settings (`-c name=value`) besides the address and socket folder.
    settings: Vec<String>,
}

impl PrivatePostgres {
    /// `initdb`, then `pg_ctl … -w start`.
    pub async fn start() -> PrivatePostgres {
        PrivatePostgres::start_with(&[]).await
    }

    /// [`PrivatePostgres::start`] with these server settings (`name=value`), e.g. a tiny
    /// `max_connections`.
    pub async fn start_with(settings: &[&str]) -> PrivatePostgres {
        let bin = postgres_bin();
        let folder = folder_for("postgres", "pb-postgres-");
        let mut initdb = as_user("postgres", &bin.join("initdb").display().to_string());
        initdb
            .arg("-D")
            .arg(folder.path().join("data"))
            .args(["--auth=trust", "-U", "postgres", "-E", "UTF8", "--no-sync"])
            .current_dir(folder.path());
        run(initdb, "initdb").await;
        let mut postgres = PrivatePostgres {
            port: 0,
            folder,
            bin,
            settings: settings.iter().map(|s| format!(" -c {s}")).collect(),
        };
        let mut failures = Vec::new();
        // A free port may be taken by someone else between our probe and the server's bind.
        for _ in 0..3 {
            postgres.port = free_ports::<1>()[0];
            match postgres.try_start().await {
                Ok(()) => return postgres,
                Err(failure) => failures.push(failure),
            }
        }
        panic!(
            "the private PostgreSQL cluster did not start:\n{}",
            failures.join("\n----\n")
        );
    }

    fn pg_ctl(&self) -> tokio::process::Command {
        let mut command = as_user("postgres", &self.bin.join("pg_ctl").display().to_string());
        command
            .arg("-D")
            .arg(self.data_dir())
            .current_dir(self.folder.path());
        command
    }

    fn data_dir(&self) -> PathBuf {
        self.folder.path().join("data")
    }

    fn log_file(&self) -> PathBuf {
        self.folder.path().join("server.log")
    }

    async fn try_start(&self) -> Result<(), String> {
        let mut command = self.pg_ctl();
        command
            .arg("-l")
            .arg(self.log_file())
            .arg("-o")
            .arg(format!(
                "-p {} -c listen_addresses=127.0.0.1 -k {}{}",
                self.port,
                self.folder.path().display(),
                self.settings.concat()
            ))
            .args(["-w", "-t", "60", "start"])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        let output = tokio::time::timeout(COMMAND_TIMEOUT, command.output())
            .await
            .map_err(|_| format!("pg_ctl start: no answer within {COMMAND_TIMEOUT:?}"))?
            .map_err(|error| format!("pg_ctl start: {error}"))?;
        if output.status.success() {
            Ok(())
        } else {
            Err(format!(
                "pg_ctl start on port {} failed ({}):\n{}{}\n{}",
                self.port,
                output.status,
                String::from_utf8_lossy(&output.stdout),
                String::from_utf8_lossy(&output.stderr),
                tail(&self.log_file())
            ))
        }
    }

    pub fn url(&self, database: &str) -> String {
        format!("postgres://postgres@127.0.0.1:{}/{database}", self.port)
    }

    pub async fn create_database(&self, name: &str) {
        use sqlx::Connection;
        let mut connection = sqlx::PgConnection::connect(&self.url("postgres"))
            .await
            .expect("connect to the private PostgreSQL");
        sqlx::Executor::execute(&mut connection, format!("CREATE DATABASE {name}").as_str())
            .await
            .expect("CREATE DATABASE");
        let _ = connection.close().await;
    }

    /// `pg_ctl -m fast -w stop`: disconnects every client and shuts down cleanly.
    pub async fn stop(&self) {
        let mut command = self.pg_ctl();
        command.args(["-m", "fast", "-w", "-t", "60", "stop"]);
        run(command, "pg_ctl stop").await;
    }

    /// Starts the cluster again (after [`PrivatePostgres::stop`]) on the same port.
    pub async fn start_again(&self) {
        if let Err(failure) = self.try_start().await {
            panic!("{failure}");
        }
    }

    /// The server's log, for failure messages.
    pub fn log_tail(&self) -> String {
        tail(&self.log_file())
    }

    /// SIGSTOP to the server and every backend: connections stay open and nothing answers,
    /// like a database host that hangs.
    pub fn freeze(&self) {
        self.signal_all("-STOP");
    }

    /// SIGCONT after [`PrivatePostgres::freeze`].
    pub fn thaw(&self) {
        self.signal_all("-CONT");
    }

    fn signal_all(&self, signal: &str) {
        let Ok(pid_file) = std::fs::read_to_string(self.data_dir().join("postmaster.pid")) else {
            return;
        };
        let Some(postmaster) = pid_file.lines().next().map(str::trim) else {
            return;
        };
        let children = std::process::Command::new("pgrep")
            .args(["-P", postmaster])
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
            .unwrap_or_default();
        let mut pids: Vec<&str> = children.split_whitespace().collect();
        pids.push(postmaster);
        let _ = std::process::Command::new("kill")
            .arg(signal)
            .args(&pids)
            .status();
    }
}

impl Drop for PrivatePostgres {
    fn drop(&mut self) {
        // A frozen server would not stop.
        self.thaw();
        let pg_ctl = self.bin.join("pg_ctl").display().to_string();
        let data = self.data_dir().display().to_string();
        let stop = [pg_ctl.as_str(), "-D", &data, "-m", "fast", "-w", "stop"];
        if effective_uid() == 0 {
            let mut args = vec!["-u", "postgres", "--"];
            args.extend(stop);
            run_blocking("runuser", &args, 60, Some(self.folder.path()));
        } else {
            run_blocking(stop[0], &stop[1..], 60, Some(self.folder.path()));
        }
        // The folder is removed by `TempDir`'s own drop.
    }
}

/// `/usr/lib/postgresql/<newest>/bin`, which holds `initdb` and `pg_ctl`.
fn postgres_bin() -> PathBuf {
    let mut versions: Vec<(u32, PathBuf)> = fs::read_dir("/usr/lib/postgresql")
        .expect("PostgreSQL server binaries under /usr/lib/postgresql (run scripts/test.sh)")
        .filter_map(|entry| {
            let entry = entry.ok()?;
            let version = entry.file_name().to_str()?.parse().ok()?;
            let bin = entry.path().join("bin");
            bin.join("pg_ctl").exists().then_some((version, bin))
        })
        .collect();
    versions.sort();
    versions
        .pop()
        .expect("initdb and pg_ctl under /usr/lib/postgresql/<version>/bin")
        .1
}
