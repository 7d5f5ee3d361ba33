//! Password hashing with argon2id (the `argon2` crate's defaults: 19 MiB, 2 passes).
//!
//! Hashing is deliberately slow, so callers run it on the blocking pool
//! (`tokio::task::spawn_blocking`), never on a request thread's event loop. Sign-ins go
//! through [`Verifier`], which runs a few checks at once (about one per core) and lets only a
//! few more wait: each check takes 19 MiB and a core for a while, so without a ceiling sixty
//! wrong passwords at once took 1.2 GB and starved every other request.

use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use argon2::Argon2;
use rand::Rng;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

pub(crate) const MIN_PASSWORD_CHARS: usize = 8;
const GENERATED_PASSWORD_CHARS: usize = 20;

#[derive(Debug, thiserror::Error)]
#[error("cannot hash the password: {0}")]
pub(crate) struct HashError(String);

pub(crate) fn hash(password: &str) -> Result<String, HashError> {
    let salt_bytes: [u8; 16] = rand::rng().random();
    let salt = SaltString::encode_b64(&salt_bytes).map_err(|e| HashError(e.to_string()))?;
    Argon2::default()
        .hash_password(password.as_bytes(), &salt)
        .map(|hash| hash.to_string())
        .map_err(|e| HashError(e.to_string()))
}

/// Whether `password` matches the stored PHC string; a malformed hash matches nothing.
pub(crate) fn verify(password: &str, stored: &str) -> bool {
    PasswordHash::new(stored)
        .map(|hash| {
            Argon2::default()
                .verify_password(password.as_bytes(), &hash)
                .is_ok()
        })
        .unwrap_or(false)
}

/// Checks that may wait for a running one to finish, per check that may run.
const WAITING_PER_RUNNING: usize = 3;
/// How long a check may wait for its turn before the caller is told to come back.
const LONGEST_WAIT: Duration = Duration::from_secs(2);

/// Password checks on the blocking pool, `running` at once at most, `running + waiting` in the
/// building at most; beyond, or after [`LONGEST_WAIT`] in line, [`Busy`].
pub(crate) struct Verifier {
    running: Arc<Semaphore>,
    admitted: Arc<Semaphore>,
    longest_wait: Duration,
}

/// Too many password checks at once: the caller answers "retry in a moment".
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("too many password checks at once")]
pub(crate) struct Busy;

impl Verifier {
    pub(crate) fn new(running: usize, waiting: usize, longest_wait: Duration) -> Self {
        let running = running.max(1);
        Verifier {
            running: Arc::new(Semaphore::new(running)),
            admitted: Arc::new(Semaphore::new(running + waiting)),
            longest_wait,
        }
    }

    /// One check per core at once (the cores this process may use).
    pub(crate) fn for_this_machine() -> Self {
        let cores = std::thread::available_parallelism().map_or(1, usize::from);
        Verifier::new(cores, cores * WAITING_PER_RUNNING, LONGEST_WAIT)
    }

    /// Whether `password` matches `stored`, checked on the blocking pool in turn.
    pub(crate) async fn verify(&self, password: String, stored: String) -> Result<bool, Busy> {
        self.run(move || verify(&password, &stored)).await
    }

    /// Runs `work` on the blocking pool once it has a turn. The turn is held until `work` is
    /// done, even when the caller stops waiting for it (a client that hangs up): the ceiling
    /// is on what runs, not on who still listens.
    async fn run<T: Send + 'static>(
        &self,
        work: impl FnOnce() -> T + Send + 'static,
    ) -> Result<T, Busy> {
        let admitted = self
            .admitted
            .clone()
            .try_acquire_owned()
            .map_err(|_| Busy)?;
        let running = tokio::time::timeout(self.longest_wait, self.running.clone().acquire_owned())
            .await
            .map_err(|_elapsed| Busy)?
            // Never closed: a closed semaphore would only mean "no more checks".
            .map_err(|_closed| Busy)?;
        let turn: (OwnedSemaphorePermit, OwnedSemaphorePermit) = (admitted, running);
        tokio::task::spawn_blocking(move || {
            let done = work();
            drop(turn);
            done
        })
        .await
        // The work panicked (argon2 does not): refuse rather than take the service down.
        .map_err(|_join| Busy)
    }
}

/// A hash of nothing in particular: verifying against it makes an unknown user name cost as
/// much time as a known one, so timing does not tell which names exist.
pub(crate) fn decoy_hash() -> &'static str {
    "$argon2id$v=19$m=19456,t=2,p=1$c29tZXNhbHRzb21lc2FsdA$4nl6yKc4M/3BX8LhJZ0jVDzHqF8OI7Zb2u8qOwl9eqk"
}

/// A random password of letters and digits, for `users add` without `--password-stdin` and for
/// the first-start administrator.
pub(crate) fn generate() -> String {
    const ALPHABET: &[u8] = b"abcdefghijkmnopqrstuvwxyzABCDEFGHJKLMNPQRSTUVWXYZ23456789";
    let mut rng = rand::rng();
    (0..GENERATED_PASSWORD_CHARS)
        .map(|_| ALPHABET[rng.random_range(0..ALPHABET.len())] as char)
        .collect()
}

pub(crate) fn validate(password: &str) -> Result<(), String> {
    if password.chars().count() < MIN_PASSWORD_CHARS {
        return Err(format!(
            "a password needs at least {MIN_PASSWORD_CHARS} characters"
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_hash_verifies_its_password_only() {
        let stored = hash("correct horse").expect("hash");
        assert!(stored.starts_with("$argon2id$"));
        assert!(verify("correct horse", &stored));
        assert!(!verify("correct horsE", &stored));
        assert!(!verify("correct horse", "not a hash"));
        assert!(
            PasswordHash::new(decoy_hash()).is_ok(),
            "the decoy must cost a real verify"
        );
        assert!(!verify("anything", decoy_hash()));
    }

    /// Work that runs until `open` is set, counting how many run at once.
    fn held_work(
        open: &Arc<std::sync::atomic::AtomicBool>,
        running: &Arc<std::sync::atomic::AtomicUsize>,
        most: &Arc<std::sync::atomic::AtomicUsize>,
    ) -> impl FnOnce() + Send + 'static {
        use std::sync::atomic::Ordering;
        let (open, running, most) = (open.clone(), running.clone(), most.clone());
        move || {
            let now = running.fetch_add(1, Ordering::SeqCst) + 1;
            most.fetch_max(now, Ordering::SeqCst);
            while !open.load(Ordering::SeqCst) {
                std::thread::sleep(Duration::from_millis(1));
            }
            running.fetch_sub(1, Ordering::SeqCst);
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn checks_run_a_few_at_a_time_a_few_more_wait_and_the_rest_are_busy() {
        use std::sync::atomic::{AtomicUsize, Ordering};
        let verifier = Arc::new(Verifier::new(2, 2, Duration::from_secs(5)));
        let gate = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let (running, most) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
        let checks: Vec<_> = (0..10)
            .map(|_| {
                let (verifier, work) = (verifier.clone(), held_work(&gate, &running, &most));
                tokio::spawn(async move { verifier.run(work).await })
            })
            .collect();
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert_eq!(running.load(Ordering::SeqCst), 2, "two run, two wait");
        gate.store(true, Ordering::SeqCst);
        let mut outcomes = Vec::new();
        for check in checks {
            outcomes.push(check.await.expect("task"));
        }
        assert_eq!(outcomes.iter().filter(|o| o.is_ok()).count(), 4);
        assert_eq!(outcomes.iter().filter(|o| **o == Err(Busy)).count(), 6);
        assert_eq!(
            most.load(Ordering::SeqCst),
            2,
            "never more than two at once"
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_check_that_waits_too_long_is_busy_and_an_abandoned_one_keeps_its_turn() {
        use std::sync::atomic::{AtomicUsize, Ordering};
        let verifier = Arc::new(Verifier::new(1, 5, Duration::from_millis(100)));
        let gate = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let (running, most) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
        // The caller gives up on the first check; its work still holds the one turn.
        let abandoned = {
            let (verifier, work) = (verifier.clone(), held_work(&gate, &running, &most));
            tokio::spawn(async move { verifier.run(work).await })
        };
        tokio::time::sleep(Duration::from_millis(50)).await;
        abandoned.abort();
        let late = verifier.run(held_work(&gate, &running, &most)).await;
        assert_eq!(late, Err(Busy), "waited longer than allowed");
        gate.store(true, Ordering::SeqCst);
        assert_eq!(verifier.run(|| 7).await, Ok(7));
        assert_eq!(most.load(Ordering::SeqCst), 1);
    }

    #[test]
    fn generated_passwords_are_long_and_different() {
        let (a, b) = (generate(), generate());
        assert_eq!(a.len(), GENERATED_PASSWORD_CHARS);
        assert_ne!(a, b);
        assert!(validate(&a).is_ok());
        assert!(validate("short").is_err());
    }
}
