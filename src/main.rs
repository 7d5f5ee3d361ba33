//! The `pulseboard` binary: parses the command line and runs one command. Errors end here, as
//! one line on standard error and a non-zero exit status.

use anyhow::Context;
use clap::error::ErrorKind;
use clap::Parser;
use pulseboard::config::{Cli, Command};
use pulseboard::{simulate, startup::Application, store::Store, telemetry, tokens, users};
use std::process::ExitCode;

fn main() -> ExitCode {
    reserve_parsing_stack();
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(error) => return usage_error(error),
    };
    telemetry::init(cli.log_format);
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        // Each thread reserves the parsing stack: a bound on threads bounds the address space
        // (tokio's default allows 512 blocking threads; the service needs a few).
        .max_blocking_threads(MAX_BLOCKING_THREADS)
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("error: cannot start the async runtime: {error}");
            return ExitCode::FAILURE;
        }
    };
    // On a worker thread, not this one: the main thread's stack is whatever the shell gave it,
    // and the command's futures may hold deliveries (see `reserve_parsing_stack`).
    let finished = runtime.block_on(async { tokio::spawn(run(cli.command)).await });
    match finished.unwrap_or_else(|panic| Err(anyhow::anyhow!("the command panicked: {panic}"))) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("error: {}", one_line(&error));
            ExitCode::FAILURE
        }
    }
}

/// Threads for blocking work (password hashing, file reads), at most.
const MAX_BLOCKING_THREADS: usize = 64;

/// Gives every thread the process starts from now on (the RabbitMQ client's frame parser,
/// the async runtime's workers, the database's) a stack that the deepest header table a broker
/// can deliver cannot overflow (docs/security.md, AMQP frames). Done first, while this is the
/// only thread: the standard library reads `RUST_MIN_STACK` once, at the first spawn. A larger
/// value set by the operator is kept.
fn reserve_parsing_stack() {
    let needed = pulseboard::rabbitmq::parsing_stack_bytes();
    let configured = std::env::var("RUST_MIN_STACK")
        .ok()
        .and_then(|value| value.parse::<usize>().ok());
    if configured.is_none_or(|bytes| bytes < needed) {
        std::env::set_var("RUST_MIN_STACK", needed.to_string());
    }
}

async fn run(command: Command) -> anyhow::Result<()> {
    match command {
        Command::Serve(args) => Application::build(*args).await?.run_until_stopped().await,
        Command::Simulate(args) => Ok(simulate::run(args).await?),
        Command::Users(args) => users::run(args).await,
        Command::Tokens(args) => tokens::run(args).await,
        Command::Migrate(args) => {
            let store = Store::open_migrated(&args.database_url)
                .await
                .context("DATABASE_URL")?;
            store.close().await;
            eprintln!("migrations applied");
            Ok(())
        }
    }
}

/// The error and its causes joined on one line. Our errors quote their cause in their own
/// message, and so do some of the libraries', so a cause already quoted is not repeated.
fn one_line(error: &anyhow::Error) -> String {
    let mut line = String::new();
    for cause in error.chain() {
        let text = cause.to_string();
        if line.contains(&text) {
            continue;
        }
        if !line.is_empty() {
            line.push_str(": ");
        }
        line.push_str(&text);
    }
    line
}

/// Help and version print as usual; any other parse error becomes one line (see
/// [`pulseboard::config::usage_line`]).
fn usage_error(error: clap::Error) -> ExitCode {
    if matches!(
        error.kind(),
        ErrorKind::DisplayHelp
            | ErrorKind::DisplayVersion
            | ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand
    ) {
        error.exit();
    }
    let args = std::env::args_os().skip(1).collect::<Vec<_>>();
    let line =
        pulseboard::config::usage_line(&error, &args, |name| std::env::var_os(name).is_some());
    eprintln!("{line}");
    ExitCode::from(2)
}

#[cfg(test)]
mod tests {
    use super::one_line;

    #[derive(Debug, thiserror::Error)]
    #[error("cannot open the database: {0}")]
    struct Quoting(#[source] std::io::Error);

    #[test]
    fn a_cause_already_quoted_is_not_repeated() {
        let cause = std::io::Error::other("unable to open database file");
        let error = anyhow::Error::new(Quoting(cause)).context("DATABASE_URL");
        assert_eq!(
            one_line(&error),
            "DATABASE_URL: cannot open the database: unable to open database file"
        );
    }

    #[test]
    fn a_cause_not_quoted_is_kept() {
        let error = anyhow::anyhow!("connection refused").context("AMQP_URL");
        assert_eq!(one_line(&error), "AMQP_URL: connection refused");
    }
}
