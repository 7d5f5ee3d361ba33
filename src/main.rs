//! The `pulseboard` binary: parses the command line and runs one command. Errors end here, as
//! one line on standard error and a non-zero exit status.

use anyhow::Context;
use clap::error::ErrorKind;
use clap::Parser;
use pulseboard::config::{Cli, Command};
use pulseboard::{simulate, startup::Application, store::Store, telemetry, users};
use std::process::ExitCode;

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(error) => return usage_error(error),
    };
    telemetry::init(cli.log_format);
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("error: cannot start the async runtime: {error}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli.command)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("error: {}", one_line(&error));
            ExitCode::FAILURE
        }
    }
}

async fn run(command: Command) -> anyhow::Result<()> {
    match command {
        Command::Serve(args) => Application::build(*args).await?.run_until_stopped().await,
        Command::Simulate(args) => Ok(simulate::run(args).await?),
        Command::Users(args) => users::run(args).await,
        Command::Migrate(args) => {
            let store = Store::connect(&args.database_url)
                .await
                .context("DATABASE_URL")?;
            store.migrate().await.context("DATABASE_URL")?;
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
