//! The `tokens` command: kiosk links (docs/security.md, Kiosk links), straight in the database.
//! `issue` prints the link's URL once on standard output; only the digest of its key is stored
//! and nothing logs it. `revoke` deletes the link: every instance ends its screens' streams at
//! its next read of the credential epochs (every second), without a message from here.

use crate::auth::{random_token, session_key};
use crate::clock::{now_ms, rfc3339};
use crate::config::{service_url, TokensAction, TokensArgs};
use crate::store::Store;
use anyhow::{bail, Context};

pub async fn run(args: TokensArgs) -> anyhow::Result<()> {
    let store = Store::open_migrated(&args.database.database_url)
        .await
        .context("DATABASE_URL")?;
    let result = perform(&store, args.action).await;
    store.close().await;
    result
}

async fn perform(store: &Store, action: TokensAction) -> anyhow::Result<()> {
    match action {
        TokensAction::Issue {
            name,
            ttl,
            public_url,
            bind,
            tls_cert,
        } => {
            let (base, derived) = match public_url {
                Some(url) => (url, false),
                None => (service_url(bind, tls_cert.is_some()), true),
            };
            let key = random_token();
            let now = now_ms();
            if !store
                .issue_kiosk_link(&name, &session_key(&key), now, now + ttl)
                .await?
            {
                bail!("kiosk link {name} already exists (revoke it first: pulseboard tokens revoke {name})");
            }
            let from = if derived {
                " (the service's own address, from PULSEBOARD_BIND and TLS: behind a proxy or \
                 a load balancer, set PULSEBOARD_PUBLIC_URL to the address screens reach)"
            } else {
                ""
            };
            println!(
                "kiosk link {name}, expires {}; its URL{from} (shown once):\n{base}/kiosk?key={key}",
                rfc3339(now + ttl)
            );
        }
        TokensAction::List => {
            println!("name\tcreated\texpires\tlast used");
            for link in store.kiosk_links().await? {
                let expired = if link.expires_at <= now_ms() {
                    " (expired)"
                } else {
                    ""
                };
                println!(
                    "{}\t{}\t{}{expired}\t{}",
                    link.name,
                    rfc3339(link.created_at),
                    rfc3339(link.expires_at),
                    link.last_used_at
                        .map_or_else(|| "never".to_owned(), rfc3339)
                );
            }
        }
        TokensAction::Revoke { name } => {
            let Some(sessions) = store.revoke_kiosk_link(&name).await? else {
                bail!("no kiosk link {name}");
            };
            println!(
                "revoked {name} ({} screen session{} ended)",
                sessions.len(),
                if sessions.len() == 1 { "" } else { "s" }
            );
        }
    }
    Ok(())
}
