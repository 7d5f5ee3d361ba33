//! A small disk of the run's own: a tmpfs mounted on a temporary folder, which the run can fill
//! to the last byte and free again, to see what the service does when its database's disk is
//! full. Mounting needs root (as `scripts/test.sh` and CI run the tests); the tmpfs is unmounted
//! when the guard drops, whether the run passed or not.

use anyhow::{ensure, Context};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;

/// The file [`SmallDisk::fill`] writes and [`SmallDisk::free`] removes.
const FILLER: &str = "filler";

/// A mounted tmpfs; unmounted (lazily, should a process still hold a file on it) on drop.
pub struct SmallDisk {
    folder: tempfile::TempDir,
}

impl SmallDisk {
    /// Mounts a tmpfs of `bytes` on a new temporary folder.
    pub fn mount(bytes: u64) -> anyhow::Result<SmallDisk> {
        let folder = tempfile::Builder::new()
            .prefix("pb-disk-")
            .tempdir()
            .context("a temporary folder")?;
        let status = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={bytes}"), "tmpfs"])
            .arg(folder.path())
            .status()
            .context("running mount")?;
        ensure!(
            status.success(),
            "mount -t tmpfs on {} failed ({status}): the tests must run as root",
            folder.path().display()
        );
        Ok(SmallDisk { folder })
    }

    pub fn path(&self) -> &Path {
        self.folder.path()
    }

    /// `sqlite://…/<name>?mode=rwc`: a SQLite database on this disk.
    pub fn sqlite_url(&self, name: &str) -> String {
        format!("sqlite://{}/{name}?mode=rwc", self.path().display())
    }

    /// Writes a filler file until the disk refuses another byte; returns its size.
    pub fn fill(&self) -> anyhow::Result<u64> {
        let mut file = std::fs::File::create(self.filler()).context("creating the filler")?;
        let block = vec![0u8; 64 * 1024];
        let mut written = 0u64;
        loop {
            match file.write(&block) {
                Ok(0) => break,
                Ok(n) => written += n as u64,
                Err(error) if error.kind() == std::io::ErrorKind::StorageFull => break,
                Err(error) => return Err(error).context("writing the filler"),
            }
        }
        Ok(written)
    }

    /// Removes the filler: the disk has room again.
    pub fn free(&self) -> anyhow::Result<()> {
        std::fs::remove_file(self.filler()).context("removing the filler")
    }

    fn filler(&self) -> PathBuf {
        self.path().join(FILLER)
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        // Lazy: a service process still running (a failing test) must not keep it mounted.
        let unmounted = Command::new("umount")
            .arg("-l")
            .arg(self.folder.path())
            .status()
            .is_ok_and(|status| status.success());
        if !unmounted {
            eprintln!("could not unmount {}", self.folder.path().display());
        }
    }
}
