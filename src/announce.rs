//! Publishing an announcement, the one code path of `POST /api/announcements` and the console's
//! `announce`: stored first, then handed to this instance's hub and fanned out to the others.

use crate::aggregate::Millis;
use crate::core::outbox::FanoutSender;
use crate::live::{Announcement, Hub, Level};
use crate::store::{Store, StoreError};

/// Stores the announcement, delivers it on this instance and fans it out to the others.
pub async fn publish(
    store: &Store,
    hub: &Hub,
    fanout: &FanoutSender,
    level: Level,
    message: &str,
    author: &str,
    now: Millis,
) -> Result<Announcement, StoreError> {
    let announcement: Announcement = store
        .create_announcement(level.as_str(), message, author, now)
        .await?
        .into();
    hub.announce(announcement.clone(), store).await?;
    fanout.send_announcement(announcement.clone());
    Ok(announcement)
}
