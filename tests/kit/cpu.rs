//! Readings of this machine, from /proc: CPU time of the processes a run involves and of the
//! whole machine, the machine's idle floor, a process's resident memory, and what the machine
//! is. The benchmarks report them beside their figures; the tests read memory.
//!
//! CPU figures are clock ticks summed over an interval ([`CpuTicks::since`]) and shown in % of
//! one core ([`CpuTicks::percent`]); the machine's own figures add up to `100 x cores`.

use super::broker::amqp_url_from_env;
use super::database::PG_PORT;
use std::collections::HashMap;
use std::process::Stdio;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// CPUs this process may run on: its affinity (`taskset`), not the machine's.
pub fn usable_cores() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

/// CPUs the machine has online: what the totals of /proc/stat add up, whatever this process's
/// affinity. Read once: every CPU share divides by it, sample after sample.
pub fn machine_cores() -> usize {
    static CORES: OnceLock<usize> = OnceLock::new();
    *CORES.get_or_init(|| {
        let stat = std::fs::read_to_string("/proc/stat").unwrap_or_default();
        let cores = stat
            .lines()
            .filter_map(|line| line.strip_prefix("cpu"))
            .filter(|rest| rest.starts_with(|c: char| c.is_ascii_digit()))
            .count();
        if cores == 0 {
            usable_cores()
        } else {
            cores
        }
    })
}

/// The CPUs a process may run on, as `Cpus_allowed_list` in /proc/<pid>/status (`self` for
/// this one): which cores a `taskset` left it.
pub fn allowed_cpus(pid: &str) -> String {
    status_field(pid, "Cpus_allowed_list:").unwrap_or_else(|| "unknown".into())
}

/// Resident memory of a process (VmRSS), KiB; 0 when it cannot be read.
pub fn resident_kib(pid: u32) -> u64 {
    kib_field(pid, "VmRSS:")
}

/// The most resident memory a process has had since it started (VmHWM, the kernel's own high
/// water mark: no peak between two readings is missed), KiB; 0 when it cannot be read.
pub fn peak_resident_kib(pid: u32) -> u64 {
    kib_field(pid, "VmHWM:")
}

fn kib_field(pid: u32, name: &str) -> u64 {
    status_field(&pid.to_string(), name)
        .and_then(|value| value.trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

fn status_field(pid: &str, name: &str) -> Option<String> {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()?
        .lines()
        .find_map(|line| line.strip_prefix(name))
        .map(|value| value.trim().to_owned())
}

/// utime + stime of one process (all its threads, those that exited included), clock ticks.
pub fn process_ticks(pid: u32) -> u64 {
    stat_ticks(&format!("/proc/{pid}/stat"))
}

/// utime + stime from a `stat` file of /proc (a process's or a thread's), in clock ticks.
fn stat_ticks(path: &str) -> u64 {
    let stat = std::fs::read_to_string(path).unwrap_or_default();
    // The command name may contain spaces and parentheses: fields count after its last `)`.
    let after = stat.rsplit_once(')').map_or("", |(_, rest)| rest);
    let fields: Vec<&str> = after.split_whitespace().collect();
    let field = |i: usize| {
        fields
            .get(i)
            .and_then(|f| f.parse::<u64>().ok())
            .unwrap_or(0)
    };
    // utime and stime are fields 14 and 15 of proc(5); 11 and 12 after the name.
    field(11) + field(12)
}

/// Ticks of this process's live threads called `name` (a runtime's `thread_name`).
fn own_thread_ticks(name: &str) -> u64 {
    let mut ticks = 0;
    for entry in std::fs::read_dir("/proc/self/task")
        .into_iter()
        .flatten()
        .flatten()
    {
        let path = entry.path();
        let comm = std::fs::read_to_string(path.join("comm")).unwrap_or_default();
        if comm.trim() == name {
            ticks += stat_ticks(&format!("{}/stat", path.display()));
        }
    }
    ticks
}

fn pids() -> impl Iterator<Item = u32> {
    std::fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|entry| entry.file_name().to_str()?.parse().ok())
}

/// Ticks of the whole machine since boot (/proc/stat, all cores together).
#[derive(Clone, Copy, Default, Debug)]
pub struct MachineTicks {
    /// Neither idle, nor waiting for I/O, nor stolen by the hypervisor.
    pub busy: u64,
    pub iowait: u64,
    /// Time the hypervisor gave to other guests while this one wanted to run.
    pub steal: u64,
    pub all: u64,
}

pub fn machine_ticks() -> MachineTicks {
    let stat = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    // user nice system idle iowait irq softirq steal
    let fields: Vec<u64> = stat
        .lines()
        .next()
        .unwrap_or_default()
        .split_whitespace()
        .skip(1)
        .take(8)
        .filter_map(|f| f.parse().ok())
        .collect();
    let field = |i: usize| fields.get(i).copied().unwrap_or(0);
    let all: u64 = fields.iter().sum();
    let (idle, iowait, steal) = (field(3), field(4), field(7));
    MachineTicks {
        busy: all.saturating_sub(idle + iowait + steal),
        iowait,
        steal,
        all,
    }
}

/// The broker and database the run talks to, found once by their listening ports (`AMQP_URL`'s
/// and PostgreSQL's): other brokers or databases may run on the machine, such as the private
/// ones of the outage tests.
struct Servers {
    rabbitmq: Option<u32>,
    postgres: Option<u32>,
}

fn servers() -> &'static Servers {
    static SERVERS: OnceLock<Servers> = OnceLock::new();
    SERVERS.get_or_init(|| Servers {
        rabbitmq: listener_pid(amqp_port(&amqp_url_from_env())),
        postgres: listener_pid(PG_PORT),
    })
}

/// The pids of RabbitMQ and PostgreSQL as found (`None`: not on this machine, or not ours to
/// read).
pub fn server_pids() -> (Option<u32>, Option<u32>) {
    (servers().rabbitmq, servers().postgres)
}

fn amqp_port(url: &str) -> u16 {
    let authority = url.split("://").nth(1).unwrap_or(url);
    let host_port = authority.split('/').next().unwrap_or(authority);
    let host_port = host_port.rsplit('@').next().unwrap_or(host_port);
    host_port
        .rsplit_once(':')
        .and_then(|(_, port)| port.parse().ok())
        .unwrap_or(5672)
}

/// The process listening on TCP `port`, through /proc/net/tcp{,6} and the processes' sockets.
fn listener_pid(port: u16) -> Option<u32> {
    let mut inodes = Vec::new();
    for table in ["/proc/net/tcp", "/proc/net/tcp6"] {
        let text = std::fs::read_to_string(table).unwrap_or_default();
        for line in text.lines().skip(1) {
            let fields: Vec<&str> = line.split_whitespace().collect();
            let listening = fields.get(3) == Some(&"0A");
            let local_port = fields
                .get(1)
                .and_then(|a| a.rsplit_once(':'))
                .and_then(|(_, p)| u16::from_str_radix(p, 16).ok());
            if listening && local_port == Some(port) {
                if let Some(inode) = fields.get(9) {
                    inodes.push(format!("socket:[{inode}]"));
                }
            }
        }
    }
    pids().find(|pid| {
        let fds = std::fs::read_dir(format!("/proc/{pid}/fd"));
        fds.into_iter().flatten().flatten().any(|fd| {
            let target = std::fs::read_link(fd.path()).unwrap_or_default();
            inodes.iter().any(|i| target.as_os_str() == i.as_str())
        })
    })
}

/// The PostgreSQL server: the postmaster and its children (backends, writers).
fn postgres_ticks(postmaster: u32) -> u64 {
    let children =
        std::fs::read_to_string(format!("/proc/{postmaster}/task/{postmaster}/children"))
            .unwrap_or_default();
    children
        .split_whitespace()
        .filter_map(|pid| pid.parse().ok())
        .map(process_ticks)
        .sum::<u64>()
        + process_ticks(postmaster)
}

/// CPU time (clock ticks) of what a run accounts for, and of the whole machine: since boot when
/// taken with [`CpuTicks::take`], over one or more intervals after [`CpuTicks::since`] (and
/// [`CpuTicks::add`]).
#[derive(Clone, Copy, Default, Debug)]
pub struct CpuTicks {
    pub machine: MachineTicks,
    /// This process, all its threads.
    pub own: u64,
    /// This process's threads of the name given to `take`.
    pub own_threads: u64,
    /// The processes given to `take` (the service, a baseline's), 0 for none.
    pub watched: [u64; 2],
    pub rabbitmq: u64,
    pub postgres: u64,
}

impl CpuTicks {
    /// `watched`: up to two processes of the run; `threads`: a name of this process's threads.
    pub fn take(watched: [Option<u32>; 2], threads: Option<&str>) -> CpuTicks {
        let servers = servers();
        CpuTicks {
            machine: machine_ticks(),
            own: process_ticks(std::process::id()),
            own_threads: threads.map_or(0, own_thread_ticks),
            watched: watched.map(|pid| pid.map_or(0, process_ticks)),
            rabbitmq: servers.rabbitmq.map_or(0, process_ticks),
            postgres: servers.postgres.map_or(0, postgres_ticks),
        }
    }

    pub fn since(&self, earlier: &CpuTicks) -> CpuTicks {
        let machine = MachineTicks {
            busy: self.machine.busy.saturating_sub(earlier.machine.busy),
            iowait: self.machine.iowait.saturating_sub(earlier.machine.iowait),
            steal: self.machine.steal.saturating_sub(earlier.machine.steal),
            all: self.machine.all.saturating_sub(earlier.machine.all),
        };
        CpuTicks {
            machine,
            own: self.own.saturating_sub(earlier.own),
            own_threads: self.own_threads.saturating_sub(earlier.own_threads),
            watched: [0, 1].map(|i| self.watched[i].saturating_sub(earlier.watched[i])),
            rabbitmq: self.rabbitmq.saturating_sub(earlier.rabbitmq),
            postgres: self.postgres.saturating_sub(earlier.postgres),
        }
    }

    /// Adds another interval's ticks: rounds of a benchmark add up.
    pub fn add(&mut self, other: &CpuTicks) {
        self.machine.busy += other.machine.busy;
        self.machine.iowait += other.machine.iowait;
        self.machine.steal += other.machine.steal;
        self.machine.all += other.machine.all;
        self.own += other.own;
        self.own_threads += other.own_threads;
        self.watched[0] += other.watched[0];
        self.watched[1] += other.watched[1];
        self.rabbitmq += other.rabbitmq;
        self.postgres += other.postgres;
    }

    /// `ticks` of this interval in % of one core (0 for an empty interval).
    pub fn percent(&self, ticks: u64) -> f64 {
        // /proc/stat counts every core: its elapsed ticks are cores x wall-clock ticks.
        let wall = self.machine.all as f64 / machine_cores() as f64;
        if wall <= 0.0 {
            return 0.0;
        }
        ticks as f64 * 100.0 / wall
    }

    /// Busy ticks of everything else: other people's work, the kernel's own threads.
    pub fn other(&self) -> u64 {
        let accounted = self.own + self.watched[0] + self.watched[1];
        self.machine
            .busy
            .saturating_sub(accounted + self.rabbitmq + self.postgres)
    }
}

/// CPU ticks of every process on the machine, by pid, with its name: who else was busy.
pub struct ProcessTable {
    ticks: HashMap<u32, (String, u64)>,
    all: u64,
}

impl ProcessTable {
    pub fn take() -> ProcessTable {
        let mut ticks = HashMap::new();
        for pid in pids() {
            let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
            ticks.insert(pid, (comm.trim().to_owned(), process_ticks(pid)));
        }
        ProcessTable {
            ticks,
            all: machine_ticks().all,
        }
    }

    /// The three busiest processes since `earlier` but `ours`, this one and RabbitMQ, summed by
    /// name, in % of one core.
    pub fn busiest_since(&self, earlier: &ProcessTable, ours: &[u32]) -> String {
        let wall = self.all.saturating_sub(earlier.all) as f64 / machine_cores() as f64;
        let rabbitmq = servers().rabbitmq;
        let mut by_name: HashMap<&str, u64> = HashMap::new();
        for (pid, (comm, used)) in &self.ticks {
            if ours.contains(pid) || *pid == std::process::id() || Some(*pid) == rabbitmq {
                continue;
            }
            let before = earlier.ticks.get(pid).map_or(0, |(_, t)| *t);
            *by_name.entry(comm.as_str()).or_default() += used.saturating_sub(before);
        }
        let mut busiest: Vec<(&str, u64)> = by_name.into_iter().filter(|(_, t)| *t > 0).collect();
        busiest.sort_by_key(|b| std::cmp::Reverse(b.1));
        if busiest.is_empty() || wall <= 0.0 {
            return "none".into();
        }
        busiest
            .iter()
            .take(3)
            .map(|(name, t)| format!("{name} {:.0}%", *t as f64 * 100.0 / wall))
            .collect::<Vec<_>>()
            .join(", ")
    }
}

/// Above the machine's floor, in % of one core, that still counts as quiet: leftovers such as
/// the broker settling after a publish, or a burst of other people's builds and tests, must not
/// skew a measurement.
const QUIET_MARGIN: f64 = 20.0;
/// The least CPU other processes used over one second so far, % of one core (f64 bits).
static FLOOR: AtomicU64 = AtomicU64::new(u64::MAX);

fn floor() -> f64 {
    match FLOOR.load(Ordering::Relaxed) {
        u64::MAX => f64::MAX,
        bits => f64::from_bits(bits),
    }
}

/// CPU used by every process but this one over the next second, in % of one core; lowers the
/// floor when it is the least seen.
async fn others_busy() -> f64 {
    let before = CpuTicks::take([None, None], None);
    tokio::time::sleep(Duration::from_secs(1)).await;
    let used = CpuTicks::take([None, None], None).since(&before);
    let busy = used.percent(used.machine.busy.saturating_sub(used.own));
    if busy < floor() {
        FLOOR.store(busy.to_bits(), Ordering::Relaxed);
    }
    busy
}

/// The machine's steady background load: the quietest second out of up to ten (fewer once
/// one is below `enough`).
pub async fn background_load(enough: f64) -> f64 {
    for _ in 0..10 {
        if others_busy().await < enough {
            break;
        }
    }
    floor()
}

/// Waits until other processes have used less than the machine's floor plus a margin for
/// `seconds` seconds in a row, at most `limit`; says whether they did.
pub async fn wait_for_quiet(limit: Duration, seconds: u32) -> bool {
    let deadline = Instant::now() + limit;
    let (mut warned, mut quiet_for) = (false, 0);
    loop {
        let busy = others_busy().await;
        quiet_for = if busy < floor() + QUIET_MARGIN {
            quiet_for + 1
        } else {
            0
        };
        if quiet_for >= seconds {
            return true;
        }
        if quiet_for > 0 {
            continue;
        }
        if Instant::now() >= deadline {
            eprintln!(
                "WARNING: the machine is still busy ({busy:.0}% of one core); measuring anyway"
            );
            return false;
        }
        if !warned {
            eprintln!("waiting for the machine to quieten (busy: {busy:.0}% of one core)");
            warned = true;
        }
    }
}

/// A command's trimmed standard output, or "unknown".
pub fn command_output(program: &str, args: &[&str]) -> String {
    std::process::Command::new(program)
        .args(args)
        .stderr(Stdio::null())
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "unknown".into())
}

/// The CPU's model name.
pub fn cpu_model() -> String {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    cpuinfo
        .lines()
        .find_map(|l| l.strip_prefix("model name"))
        .and_then(|l| l.split(':').nth(1))
        .map_or("unknown".into(), |m| m.trim().to_owned())
}

/// The machine's memory, `23.5 GiB`.
pub fn memory() -> String {
    let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
    meminfo
        .lines()
        .find_map(|l| l.strip_prefix("MemTotal:"))
        .and_then(|kb| kb.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        .map_or("unknown".into(), |kb| {
            format!("{:.1} GiB", kb / 1024.0 / 1024.0)
        })
}

/// This process's soft limit on open files.
pub fn open_file_limit() -> Option<u64> {
    let limits = std::fs::read_to_string("/proc/self/limits").unwrap_or_default();
    limits
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .and_then(|l| l.split_whitespace().nth(3))
        .and_then(|v| v.parse().ok())
}
