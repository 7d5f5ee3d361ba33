//! The deployment files, checked without a container engine: Debian's `docker-compose config`
//! accepts `docker-compose.yml`, whose nginx mounts the very file the proxy tests run; the
//! Dockerfile's shape; and `docs/deployment.md`'s configuration reference against the
//! binary's own option list (clap's `Command`).

use crate::proxy::PROXY_CONFIG;
use serde_yaml::Value as Yaml;
use std::collections::BTreeSet;
use std::path::Path;

const ROOT: &str = env!("CARGO_MANIFEST_DIR");

fn read(file: &str) -> String {
    std::fs::read_to_string(Path::new(ROOT).join(file)).unwrap_or_else(|e| panic!("{file}: {e}"))
}

/// `docker-compose config` with `env_file`; (success, stdout, stderr).
fn compose_config(env_file: &Path) -> (bool, String, String) {
    let output = std::process::Command::new("docker-compose")
        .current_dir(ROOT)
        .args(["-f", "docker-compose.yml", "--env-file"])
        .arg(env_file)
        .arg("config")
        .output()
        .expect("docker-compose (apt-get install docker-compose; scripts/test.sh does)");
    (
        output.status.success(),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

/// `.env.example` with every empty value filled in, as a user would.
fn filled_env() -> tempfile::NamedTempFile {
    let filled: String = read(".env.example")
        .lines()
        .map(|line| match line.strip_suffix('=') {
            Some(name) if !line.starts_with('#') && !name.starts_with("TELEGRAM") => {
                format!("{name}=filled0123456789abcdef\n")
            }
            _ => format!("{line}\n"),
        })
        .collect();
    let file = tempfile::NamedTempFile::new().expect("temporary file");
    std::fs::write(file.path(), filled).expect("write env");
    file
}

fn strings(value: &Yaml) -> Vec<String> {
    value
        .as_sequence()
        .map(|items| {
            items
                .iter()
                .filter_map(|i| i.as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default()
}

#[test]
fn docker_compose_config_accepts_the_stack_and_nginx_mounts_the_tested_proxy_file() {
    let env = filled_env();
    let (ok, stdout, stderr) = compose_config(env.path());
    assert!(ok, "docker-compose config refused the file:\n{stderr}");
    let config: Yaml = serde_yaml::from_str(&stdout).expect("config is YAML");
    let services = &config["services"];
    for name in [
        "nginx",
        "rabbitmq",
        "postgres",
        "web-1",
        "web-2",
        "prometheus",
        "alertmanager",
        "grafana",
    ] {
        assert!(services[name].is_mapping(), "service {name}");
    }

    // nginx mounts the proxy configuration the proxy tests run.
    let tested = Path::new(PROXY_CONFIG).canonicalize().expect("proxy file");
    let mounted = strings(&services["nginx"]["volumes"])
        .into_iter()
        .find(|v| v.contains(":/etc/nginx/conf.d/default.conf"))
        .expect("nginx mounts conf.d/default.conf");
    let source = mounted.split(':').next().expect("source");
    assert_eq!(
        Path::new(source).canonicalize().ok(),
        Some(tested),
        "{mounted}"
    );

    // One port for users, on every interface: nginx's. Everything else stays on loopback.
    // (`config` writes a port without a host address in the long form.)
    for (name, service) in services.as_mapping().expect("services") {
        let name = name.as_str().unwrap_or_default();
        let ports = service["ports"].as_sequence().cloned().unwrap_or_default();
        for port in &ports {
            let public = match port.as_str() {
                Some(short) => !short.starts_with("127.0.0.1:"),
                None => port["host_ip"].as_str() != Some("127.0.0.1"),
            };
            assert_eq!(public, name == "nginx", "{name} publishes {port:?}");
        }
        if name == "nginx" {
            assert_eq!(ports.len(), 1, "nginx publishes one port");
            assert_eq!(ports[0]["target"].as_u64(), Some(80));
        }
    }

    for web in ["web-1", "web-2"] {
        let service = &services[web];
        assert!(
            service["ports"].is_null(),
            "{web} is reached through nginx only"
        );
        for dependency in ["postgres", "rabbitmq"] {
            assert_eq!(
                service["depends_on"][dependency]["condition"].as_str(),
                Some("service_healthy"),
                "{web} waits for {dependency}"
            );
        }
        let env = &service["environment"];
        assert_eq!(env["PULSEBOARD_TRUST_PROXY"].as_str(), Some("true"));
        assert!(env["DATABASE_URL"]
            .as_str()
            .is_some_and(|u| u.starts_with("postgres://") && u.contains("filled")));
        assert!(env["PULSEBOARD_SECRET"]
            .as_str()
            .is_some_and(|s| s.contains("filled")));
        assert_eq!(
            services["nginx"]["depends_on"][web]["condition"].as_str(),
            Some("service_healthy")
        );
    }
    for name in ["nginx", "rabbitmq", "postgres"] {
        assert!(
            services[name]["healthcheck"]["test"].is_sequence(),
            "{name} health check"
        );
    }
    for volume in ["postgres-data", "rabbitmq-data"] {
        assert!(config["volumes"][volume].is_mapping() || !config["volumes"][volume].is_null());
    }
}

#[test]
fn the_stack_will_not_start_without_its_secrets() {
    // The committed example leaves the passwords empty: compose refuses and names one.
    let (ok, _, stderr) = compose_config(&Path::new(ROOT).join(".env.example"));
    assert!(!ok, "compose accepted empty passwords");
    assert!(stderr.contains("in .env"), "{stderr}");
    assert!(read(".gitignore")
        .lines()
        .any(|l| l.trim().trim_start_matches('/') == ".env"));
}

#[test]
fn the_dockerfile_caches_dependencies_runs_unprivileged_and_checks_health() {
    let dockerfile = read("Dockerfile");
    let lines: Vec<&str> = dockerfile.lines().map(str::trim).collect();
    let position = |prefix: &str| {
        lines
            .iter()
            .position(|l| l.starts_with(prefix))
            .unwrap_or_else(|| panic!("Dockerfile: no {prefix}"))
    };
    // The manifests and a dependency build come before the source.
    assert!(position("COPY Cargo.toml Cargo.lock") < position("COPY src"));
    assert!(position("&& cargo build --release --locked") < position("COPY src"));
    // uPlot from npm, the build, the runtime; the build embeds what the first installs.
    assert_eq!(lines.iter().filter(|l| l.starts_with("FROM ")).count(), 3);
    assert!(position("RUN npm ci") < position("COPY --from=npm /src/node_modules"));
    assert!(position("COPY --from=npm /src/node_modules") < position("&& cargo build --release"));
    assert!(lines
        .iter()
        .any(|l| l.starts_with("FROM debian:bookworm-slim")));
    assert!(position("USER pulseboard") > position("FROM debian:bookworm-slim"));
    let healthcheck = &dockerfile[dockerfile.find("HEALTHCHECK").expect("HEALTHCHECK")..];
    assert!(healthcheck.lines().take(2).any(|l| l.contains("/healthz")));
}

/// Every environment variable the binary reads through clap, in every command.
fn variables_of(command: &clap::Command, found: &mut BTreeSet<String>) {
    for arg in command.get_arguments() {
        if let Some(name) = arg.get_env() {
            found.insert(name.to_string_lossy().into_owned());
        }
    }
    for sub in command.get_subcommands() {
        variables_of(sub, found);
    }
}

/// The first column of the configuration reference table in `docs/deployment.md`.
fn documented_variables() -> BTreeSet<String> {
    let doc = read("docs/deployment.md");
    let section = doc
        .split("\n## ")
        .find(|s| s.starts_with("Configuration reference"))
        .expect("docs/deployment.md has a `## Configuration reference` section");
    section
        .lines()
        .filter_map(|line| line.strip_prefix("| `"))
        .filter_map(|rest| rest.split('`').next())
        .map(str::to_owned)
        .collect()
}

#[test]
fn the_configuration_reference_lists_exactly_what_the_binary_accepts() {
    use clap::CommandFactory;
    let mut accepted = BTreeSet::new();
    variables_of(&pulseboard::config::Cli::command(), &mut accepted);
    // Read by the logging filter, not by clap.
    accepted.insert("RUST_LOG".to_owned());
    let documented = documented_variables();
    let undocumented: Vec<_> = accepted.difference(&documented).collect();
    let unknown: Vec<_> = documented.difference(&accepted).collect();
    assert!(
        undocumented.is_empty(),
        "not in docs/deployment.md: {undocumented:?}"
    );
    assert!(
        unknown.is_empty(),
        "documented but not accepted: {unknown:?}"
    );
    // docs/api.md's configuration section names every one too.
    let api = read("docs/api.md");
    for name in &accepted {
        assert!(
            api.contains(&format!("`{name}`")),
            "docs/api.md lacks {name}"
        );
    }
}

/// The permissions of `rabbitmq/permissions.sh` for `exchange` and `prefix`, as the shell
/// computes them: [service configure, write, read, producer configure, write, read].
fn permissions(exchange: &str, prefix: &str) -> Vec<String> {
    let output = std::process::Command::new("sh")
        .current_dir(ROOT)
        .env("PULSEBOARD_EXCHANGE", exchange)
        .env("PULSEBOARD_QUEUE_PREFIX", prefix)
        .args([
            "-c",
            ". rabbitmq/permissions.sh; printf '%s\\n' \"$service_configure\" \"$service_write\" \
             \"$service_read\" \"$producer_configure\" \"$producer_write\" \"$producer_read\"",
        ])
        .output()
        .expect("sh");
    assert!(output.status.success(), "{output:?}");
    String::from_utf8_lossy(&output.stdout)
        .lines()
        .map(str::to_owned)
        .collect()
}

#[test]
fn the_compose_broker_gives_producers_the_events_exchange_only() {
    let env = filled_env();
    let (ok, stdout, stderr) = compose_config(env.path());
    assert!(ok, "docker-compose config refused the file:\n{stderr}");
    let config: Yaml = serde_yaml::from_str(&stdout).expect("config is YAML");
    let rabbitmq = &config["services"]["rabbitmq"];
    assert_eq!(
        strings(&rabbitmq["entrypoint"]),
        ["/bin/sh", "/etc/rabbitmq/pulseboard/entrypoint.sh"]
    );
    let mounted = strings(&rabbitmq["volumes"])
        .into_iter()
        .chain(
            rabbitmq["volumes"]
                .as_sequence()
                .into_iter()
                .flatten()
                .filter_map(|v| {
                    Some(format!(
                        "{}:{}",
                        v["source"].as_str()?,
                        v["target"].as_str()?
                    ))
                }),
        )
        .find(|v| v.contains(":/etc/rabbitmq/pulseboard"))
        .expect("rabbitmq mounts rabbitmq/");
    let source = mounted.split(':').next().expect("source");
    assert_eq!(
        Path::new(source).canonicalize().ok(),
        Path::new(ROOT).join("rabbitmq").canonicalize().ok(),
        "{mounted}"
    );
    let env = &rabbitmq["environment"];
    for name in ["RABBITMQ_PASSWORD", "RABBITMQ_PRODUCER_PASSWORD"] {
        assert!(
            env[name].as_str().is_some_and(|p| p.contains("filled")),
            "{name} comes from .env"
        );
    }
    let health = strings(&rabbitmq["healthcheck"]["test"]).join(" ");
    assert!(health.contains("/tmp/pulseboard-users-ready"), "{health}");
    // The instances use the default exchange and prefix, which the permissions are made for.
    for web in ["web-1", "web-2"] {
        let env = &config["services"][web]["environment"];
        assert!(env["PULSEBOARD_EXCHANGE"].is_null() && env["PULSEBOARD_QUEUE_PREFIX"].is_null());
        assert!(env["AMQP_URL"]
            .as_str()
            .is_some_and(|u| u.starts_with("amqp://pulseboard:")));
    }
    let entrypoint = read("rabbitmq/entrypoint.sh");
    for line in [
        ". \"$(dirname \"$0\")/permissions.sh\"",
        "rabbitmqctl set_permissions -p / pulseboard \"$service_configure\" \"$service_write\" \"$service_read\"",
        "rabbitmqctl set_permissions -p / producer \"$producer_configure\" \"$producer_write\" \"$producer_read\"",
        "touch \"$ready\"",
    ] {
        assert!(entrypoint.lines().any(|l| l.trim() == line), "entrypoint.sh: {line}");
    }
    assert_eq!(
        permissions("events", "pulseboard"),
        [
            r"^(events|pulseboard\..*|amq\.gen-.*)$",
            r"^(events|pulseboard\..*|amq\.gen-.*|amq\.default)$",
            r"^(events|pulseboard\..*|amq\.gen-.*)$",
            "^$",
            "^events$",
            "^$",
        ]
    );
}

/// On a broker of the test's own with exactly the users of `rabbitmq/permissions.sh`: the
/// service runs on its user (ingest, fan-out), a producer's event is applied, and the producer
/// may neither publish to `<prefix>.live` nor declare anything.
#[tokio::test]
async fn with_the_documented_permissions_the_service_runs_and_producers_cannot_reach_the_live_exchange(
) {
    use crate::helpers::{event, Backend, Names, Service, ServiceConfig, TestDatabase};
    use lapin::options::{BasicPublishOptions, ConfirmSelectOptions, ExchangeDeclareOptions};
    use std::time::Duration;
    let rabbit = crate::private_services::PrivateRabbit::start().await;
    let names = Names::new();
    let granted = permissions(&names.exchange, &names.prefix);
    let port = rabbit
        .amqp_url()
        .rsplit(':')
        .next()
        .and_then(|p| p.split('/').next())
        .expect("port")
        .to_owned();
    for (user, perms) in [("svc", &granted[0..3]), ("producer", &granted[3..6])] {
        rabbit
            .ctl(&["add_user", user, "password-of-the-test"])
            .await;
        let mut args = vec!["set_permissions", "-p", "/", user];
        args.extend(perms.iter().map(String::as_str));
        rabbit.ctl(&args).await;
    }
    let url = |user: &str| format!("amqp://{user}:password-of-the-test@127.0.0.1:{port}/%2f");

    let database = TestDatabase::new(Backend::Sqlite).await;
    let mut config = ServiceConfig::new(&database, &names, "perm-1");
    config.amqp_url = url("svc");
    let service = Service::start(&config).await;
    service.wait_until_ingesting(Duration::from_secs(30)).await;

    let (_producer, channel) = crate::helpers::open_channel(&url("producer"), "producer")
        .await
        .expect("the producer connects");
    channel
        .confirm_select(ConfirmSelectOptions::default())
        .await
        .expect("confirms");
    let body = event("perm-1", "order.placed", 0, "u-1", Some(777));
    let confirm = channel
        .basic_publish(
            &names.exchange,
            "order.placed",
            BasicPublishOptions::default(),
            &body,
            Default::default(),
        )
        .await
        .expect("publish to the events exchange")
        .await
        .expect("confirm");
    assert!(confirm.is_ack());
    service
        .wait_for_snapshot(Duration::from_secs(15), |s| {
            s["revenue"]["today_minor"] == 777
        })
        .await;

    // `<prefix>.live`: refused, and the broker closes the producer's channel.
    let live = names.topology().live_exchange;
    let refused = async {
        channel
            .basic_publish(
                &live,
                "",
                BasicPublishOptions::default(),
                b"{}",
                Default::default(),
            )
            .await?
            .await
    }
    .await;
    assert!(
        refused
            .as_ref()
            .is_err_and(|e| e.to_string().contains("ACCESS_REFUSED")),
        "{refused:?}"
    );
    let (_producer, channel) = crate::helpers::open_channel(&url("producer"), "producer")
        .await
        .expect("the producer connects");
    let declared = channel
        .exchange_declare(
            &format!("{}.mine", names.prefix),
            lapin::ExchangeKind::Fanout,
            ExchangeDeclareOptions::default(),
            Default::default(),
        )
        .await;
    assert!(
        declared
            .as_ref()
            .is_err_and(|e| e.to_string().contains("ACCESS_REFUSED")),
        "{declared:?}"
    );
    // The service's own link over `<prefix>.live` works on its user.
    let (status, body) = service.get_json("/readyz").await;
    assert_eq!(status, 200, "{body}");
    let log = service.log_text();
    assert!(
        log.contains("snapshot fan-out connected") && !log.contains("fan-out link down"),
        "{log}"
    );
}
