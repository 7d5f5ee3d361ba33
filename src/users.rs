//! The `users` command: add, list, remove users and set passwords, straight in the database.
//!
//! Generated passwords are printed once on standard output and never logged.

use crate::auth::{password, Role};
use crate::clock::{now_ms, rfc3339};
use crate::config::{UsersAction, UsersArgs};
use crate::store::Store;
use anyhow::{bail, Context};
use std::io::Read;

pub async fn run(args: UsersArgs) -> anyhow::Result<()> {
    let store = Store::open_migrated(&args.database.database_url)
        .await
        .context("DATABASE_URL")?;
    let result = perform(&store, args.action).await;
    store.close().await;
    result
}

async fn perform(store: &Store, action: UsersAction) -> anyhow::Result<()> {
    match action {
        UsersAction::Add {
            name,
            role,
            password_stdin,
        } => {
            let (password, generated) = choose_password(password_stdin)?;
            if !store
                .create_user(&name, &hash(password.clone()).await?, role, now_ms())
                .await?
            {
                bail!("user {name} already exists");
            }
            report_password(
                &format!("created {} {name}", role.as_str()),
                &password,
                generated,
            );
        }
        UsersAction::List => {
            for user in store.users().await? {
                println!(
                    "{}\t{}\t{}",
                    user.username,
                    user.role.as_str(),
                    rfc3339(user.created_at)
                );
            }
        }
        UsersAction::Remove { name } => {
            if !store.remove_user(&name).await? {
                bail!("no user {name}");
            }
            println!("removed {name}");
        }
        UsersAction::Passwd {
            name,
            password_stdin,
        } => {
            let (password, generated) = choose_password(password_stdin)?;
            if !store
                .set_password(&name, &hash(password.clone()).await?)
                .await?
            {
                bail!("no user {name}");
            }
            report_password(&format!("new password for {name}"), &password, generated);
        }
    }
    Ok(())
}

/// Creates the first user when there is none: operator `admin`, with
/// `PULSEBOARD_ADMIN_PASSWORD` or a generated password logged once.
pub(crate) async fn bootstrap_admin(store: &Store, configured: Option<&str>) -> anyhow::Result<()> {
    if store.user_count().await? > 0 {
        return Ok(());
    }
    let password = match configured {
        Some(password) => {
            password::validate(password)
                .map_err(|e| anyhow::anyhow!("PULSEBOARD_ADMIN_PASSWORD: {e}"))?;
            password.to_owned()
        }
        None => password::generate(),
    };
    // Another instance may create it at the same moment; only the one that did reports it.
    let created = store
        .create_user(
            "admin",
            &hash(password.clone()).await?,
            Role::Operator,
            now_ms(),
        )
        .await?;
    if created && configured.is_none() {
        tracing::warn!(
            "no user existed: created operator `admin` with the generated password {password} \
             (shown this once; change it with `pulseboard users passwd admin`)"
        );
    } else if created {
        tracing::info!("no user existed: created operator `admin` from PULSEBOARD_ADMIN_PASSWORD");
    }
    Ok(())
}

fn choose_password(from_stdin: bool) -> anyhow::Result<(String, bool)> {
    if !from_stdin {
        return Ok((password::generate(), true));
    }
    let mut input = String::new();
    std::io::stdin()
        .read_to_string(&mut input)
        .context("--password-stdin: cannot read standard input")?;
    let password = input.trim_end_matches(['\r', '\n']).to_owned();
    password::validate(&password).map_err(|e| anyhow::anyhow!("--password-stdin: {e}"))?;
    Ok((password, false))
}

async fn hash(password: String) -> anyhow::Result<String> {
    Ok(tokio::task::spawn_blocking(move || password::hash(&password)).await??)
}

fn report_password(what: &str, password: &str, generated: bool) {
    if generated {
        println!("{what}; password (shown once): {password}");
    } else {
        println!("{what}");
    }
}
