//! What the suite reads from and asks of the operating system: per-thread CPU time, resident
//! memory, the open-files limit, kernel receive timestamps on UDP sockets, timer slack, and
//! the machine's description. Linux only (`/proc`), through `nix`: no `unsafe` here.

use std::collections::HashMap;
use std::io::{self, IoSliceMut};
use std::os::fd::{AsFd, AsRawFd};
use std::time::{SystemTime, UNIX_EPOCH};

use nix::sys::socket::{recvmsg, setsockopt, sockopt, ControlMessageOwned, MsgFlags};
use nix::sys::time::TimeValLike;

/// Nanoseconds since the Unix epoch on CLOCK_REALTIME: the clock the kernel stamps received
/// packets with (SO_TIMESTAMPNS), so a send stamp taken here and a receive stamp taken by the
/// kernel are on one time line.
pub fn realtime_ns() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_nanos() as u64).unwrap_or(0)
}

/// Asks the kernel to stamp every datagram this socket receives (SO_TIMESTAMPNS).
pub fn enable_rx_timestamps<S: AsFd>(sock: &S) -> io::Result<()> {
    setsockopt(sock, sockopt::ReceiveTimestampns, &true).map_err(io::Error::from)
}

/// Receive buffer for the control message of [`recv_stamped`], allocated once per receiver.
pub fn cmsg_buffer() -> Vec<u8> {
    nix::cmsg_space!(nix::sys::time::TimeSpec)
}

/// Receives one datagram (non-blocking sockets: `WouldBlock` when none is queued) with the
/// time the kernel queued it, in realtime nanoseconds (`None` if the socket gave no stamp).
/// The time a packet waits in the socket before we read it is thus not counted as latency.
pub fn recv_stamped<S: AsRawFd>(sock: &S, buf: &mut [u8], cmsg: &mut Vec<u8>) -> io::Result<(usize, Option<u64>)> {
    let mut iov = [IoSliceMut::new(buf)];
    let msg = recvmsg::<()>(sock.as_raw_fd(), &mut iov, Some(cmsg), MsgFlags::MSG_DONTWAIT)
        .map_err(io::Error::from)?;
    let mut stamp = None;
    if let Ok(cmsgs) = msg.cmsgs() {
        for c in cmsgs {
            if let ControlMessageOwned::ScmTimestampns(ts) = c {
                stamp = Some(ts.num_nanoseconds() as u64);
            }
        }
    }
    Ok((msg.bytes, stamp))
}

/// Lets this thread's sleeps end within about a microsecond of their deadline instead of the
/// default 50 us slack, so a load generator can pace packets finely.
pub fn fine_timer_slack() {
    let _ = nix::sys::prctl::set_timerslack(1);
}

/// Raises the soft open-files limit to at least `want` (up to the hard limit). Returns the
/// limit in force afterwards.
pub fn raise_nofile(want: u64) -> u64 {
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    let Ok((soft, hard)) = getrlimit(Resource::RLIMIT_NOFILE) else { return 0 };
    if soft >= want {
        return soft;
    }
    let new = want.min(hard);
    match setrlimit(Resource::RLIMIT_NOFILE, new, hard) {
        Ok(()) => new,
        Err(_) => soft,
    }
}

/// Resident set size of this process in bytes (`VmRSS` of /proc/self/status).
pub fn rss_bytes() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .map_or(0, |kib| kib * 1024)
}

/// The id of this process's thread named `name` (its `comm`), if there is one.
pub fn thread_id(name: &str) -> Option<u32> {
    std::fs::read_dir("/proc/self/task").ok()?.flatten().find_map(|entry| {
        let tid = entry.file_name().to_string_lossy().parse::<u32>().ok()?;
        let comm = std::fs::read_to_string(entry.path().join("comm")).ok()?;
        (comm.trim_end() == name).then_some(tid)
    })
}

/// CPU time thread `tid` of this process has used, in nanoseconds: its CPU-time clock, which
/// another thread may read (`/proc`'s utime and stime count 10 ms ticks, too coarse for a
/// burst of work of a few milliseconds). The clock id is the kernel's
/// `MAKE_THREAD_CPUCLOCK(tid, CPUCLOCK_SCHED)`: `(~tid << 3) | 6`.
pub fn thread_cpu_ns(tid: u32) -> Option<u64> {
    let id = ((!tid) << 3 | 6) as nix::libc::clockid_t;
    let t = nix::time::clock_gettime(nix::time::ClockId::from_raw(id)).ok()?;
    Some(t.tv_sec() as u64 * 1_000_000_000 + t.tv_nsec() as u64)
}

/// Clock ticks per second of /proc's utime and stime.
fn clk_tck() -> f64 {
    match nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK) {
        Ok(Some(t)) if t > 0 => t as f64,
        _ => 100.0,
    }
}

/// CPU time of every thread of this process at one instant: tid -> (name, seconds).
#[derive(Debug, Clone, Default)]
pub struct ThreadTimes(HashMap<u32, (String, f64)>);

impl ThreadTimes {
    /// Reads /proc/self/task/*/stat (utime + stime).
    pub fn now() -> Self {
        let tck = clk_tck();
        let mut map = HashMap::new();
        let Ok(dir) = std::fs::read_dir("/proc/self/task") else { return ThreadTimes(map) };
        for entry in dir.flatten() {
            let Ok(tid) = entry.file_name().to_string_lossy().parse::<u32>() else { continue };
            let Ok(stat) = std::fs::read_to_string(entry.path().join("stat")) else { continue };
            if let Some((name, ticks)) = parse_stat(&stat) {
                map.insert(tid, (name, ticks as f64 / tck));
            }
        }
        ThreadTimes(map)
    }

    /// CPU seconds each thread used since `earlier`, by thread name (threads of one name summed;
    /// threads that started in between count from zero; threads that ended are not seen).
    pub fn since(&self, earlier: &ThreadTimes) -> Vec<(String, f64)> {
        let mut by_name: HashMap<String, f64> = HashMap::new();
        for (tid, (name, secs)) in &self.0 {
            let before = earlier.0.get(tid).map_or(0.0, |(_, s)| *s);
            *by_name.entry(name.clone()).or_default() += (secs - before).max(0.0);
        }
        let mut v: Vec<(String, f64)> = by_name.into_iter().collect();
        v.sort_by(|a, b| b.1.total_cmp(&a.1));
        v
    }
}

/// `(comm, utime + stime)` from one /proc/<pid>/task/<tid>/stat line. The name is between the
/// first `(` and the last `)` (it may itself hold spaces or parentheses).
fn parse_stat(stat: &str) -> Option<(String, u64)> {
    let open = stat.find('(')?;
    let close = stat.rfind(')')?;
    let name = stat.get(open + 1..close)?.to_string();
    let rest: Vec<&str> = stat.get(close + 1..)?.split_whitespace().collect();
    // rest[0] is field 3 (state); utime and stime are fields 14 and 15.
    let utime: u64 = rest.get(11)?.parse().ok()?;
    let stime: u64 = rest.get(12)?.parse().ok()?;
    Some((name, utime + stime))
}

/// Busy time of the whole machine and of this process, to tell how much of the machine others
/// used while we measured (the machine is shared: a neighbour's build skews any figure).
#[derive(Debug, Clone, Copy, Default)]
pub struct MachineCpu {
    /// Ticks of every CPU in user, nice, system, irq and softirq (/proc/stat).
    busy: u64,
    /// Ticks the hypervisor gave to someone else (steal).
    steal: u64,
    /// Ticks of this process, every thread, live or ended (/proc/self/stat).
    own: u64,
}

/// CPU others used over a window, in cores.
#[derive(Debug, Clone, Copy, Default, serde::Serialize)]
pub struct Neighbours {
    /// Busy CPU of every other process (and of kernel threads).
    pub others_cores: f64,
    /// CPU time the hypervisor took away.
    pub steal_cores: f64,
}

impl MachineCpu {
    pub fn now() -> Self {
        let stat = std::fs::read_to_string("/proc/stat").unwrap_or_default();
        let f: Vec<u64> = stat
            .lines()
            .next()
            .unwrap_or("")
            .split_whitespace()
            .skip(1)
            .map(|v| v.parse().unwrap_or(0))
            .collect();
        let at = |i: usize| f.get(i).copied().unwrap_or(0);
        let own = std::fs::read_to_string("/proc/self/stat")
            .ok()
            .and_then(|s| parse_stat(&s))
            .map_or(0, |(_, t)| t);
        MachineCpu { busy: at(0) + at(1) + at(2) + at(5) + at(6), steal: at(7), own }
    }

    pub fn since(&self, earlier: &MachineCpu, secs: f64) -> Neighbours {
        let tck = clk_tck() * secs.max(1e-9);
        let busy = self.busy.saturating_sub(earlier.busy) as f64;
        let own = self.own.saturating_sub(earlier.own) as f64;
        Neighbours {
            others_cores: ((busy - own) / tck).max(0.0),
            steal_cores: self.steal.saturating_sub(earlier.steal) as f64 / tck,
        }
    }
}

/// The machine the figures were measured on.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Machine {
    pub cpu_model: String,
    pub cpus: usize,
    pub mem_total_gib: f64,
    pub kernel: String,
    pub hostname: String,
}

impl Machine {
    pub fn read() -> Self {
        let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
        let cpu_model = cpuinfo
            .lines()
            .find_map(|l| l.strip_prefix("model name").and_then(|r| r.split_once(':')).map(|(_, v)| v.trim()))
            .unwrap_or("unknown")
            .to_string();
        let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
        let mem_kib: f64 = meminfo
            .lines()
            .find_map(|l| l.strip_prefix("MemTotal:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap_or(0.0);
        let read = |p: &str| std::fs::read_to_string(p).map(|s| s.trim().to_string()).unwrap_or_default();
        Machine {
            cpu_model,
            cpus: std::thread::available_parallelism().map_or(1, |n| n.get()),
            mem_total_gib: mem_kib / 1024.0 / 1024.0,
            kernel: read("/proc/sys/kernel/osrelease"),
            hostname: read("/proc/sys/kernel/hostname"),
        }
    }
}

/// Today's date and time in UTC, `YYYY-MM-DD HH:MM:SS UTC` (civil-from-days, H. Hinnant).
pub fn utc_now() -> String {
    let secs = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs()) as i64;
    let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!("{y:04}-{m:02}-{d:02} {:02}:{:02}:{:02} UTC", rem / 3600, rem % 3600 / 60, rem % 60)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_a_thread_stat_line_with_odd_names() {
        let line = "4242 (rtpvisor (x) y) S 1 2 3 4 5 6 7 8 9 10 120 30 0 0 20 0 3 0 100 0 0";
        assert_eq!(parse_stat(line), Some(("rtpvisor (x) y".to_string(), 150)));
    }

    #[test]
    fn reads_this_threads_cpu_and_rss() {
        let t = ThreadTimes::now();
        assert!(!t.0.is_empty());
        assert!(rss_bytes() > 0);
        assert!(utc_now().ends_with("UTC"));
    }

    #[test]
    fn reads_another_threads_cpu_clock() {
        let (tx, rx) = std::sync::mpsc::channel();
        let (stop_tx, stop_rx) = std::sync::mpsc::channel::<()>();
        let worker = std::thread::Builder::new()
            .name("bench-spin".into())
            .spawn(move || {
                let t = std::time::Instant::now();
                while t.elapsed() < std::time::Duration::from_millis(30) {
                    std::hint::black_box(0u64);
                }
                tx.send(()).unwrap();
                let _ = stop_rx.recv();
            })
            .unwrap();
        rx.recv().unwrap();
        let tid = thread_id("bench-spin").expect("the thread by name");
        let ns = thread_cpu_ns(tid).expect("its clock");
        assert!((5_000_000..2_000_000_000).contains(&ns), "{ns} ns after spinning 30 ms");
        stop_tx.send(()).unwrap();
        worker.join().unwrap();
    }
}
