//! Readings from `/proc`: CPU seconds and memory of a process, of the whole
//! machine, the load average; and this process's open-file limit.

/// Seconds of CPU (user + system) a process has used; `who` is a pid or "self".
pub(crate) fn cpu_seconds(who: &str) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{who}/stat")).ok()?;
    // Fields after the command name (which may hold spaces) start at field 3.
    let after = stat.get(stat.rfind(')')? + 1..)?;
    let mut fields = after.split_whitespace().skip(11);
    let utime: u64 = fields.next()?.parse().ok()?;
    let stime: u64 = fields.next()?.parse().ok()?;
    // SAFETY: sysconf only reads a constant.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    (ticks > 0).then(|| (utime + stime) as f64 / ticks as f64)
}

/// A `kB` line of `/proc/PID/status` (`VmRSS`, `VmHWM`).
pub(crate) fn status_kib(who: &str, key: &str) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{who}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with(key))?;
    line.get(key.len()..)?
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()
}

/// Busy and total CPU seconds of the whole machine (all cores), from `/proc/stat`.
fn machine_seconds() -> Option<(f64, f64)> {
    let stat = std::fs::read_to_string("/proc/stat").ok()?;
    let line = stat.lines().next()?.strip_prefix("cpu ")?;
    let ticks: Vec<u64> = line.split_whitespace().filter_map(|t| t.parse().ok()).collect();
    // user nice system idle iowait irq softirq steal (guest is inside user).
    let total: u64 = ticks.iter().take(8).sum();
    let idle = ticks.get(3)? + ticks.get(4).copied().unwrap_or(0);
    // SAFETY: sysconf only reads a constant.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    Some(((total - idle) as f64 / hz, total as f64 / hz))
}

pub(crate) fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|l| l.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|_| "?".into())
}

pub(crate) fn cores() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

/// Raises this process's soft open-file limit to the hard one; returns (before, now).
pub(crate) fn raise_open_files() -> std::io::Result<(u64, u64)> {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit and setrlimit read and write only the struct passed.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    let before = limit.rlim_cur;
    let mut target = limit.rlim_max;
    if target == libc::RLIM_INFINITY {
        // "unlimited" is not a valid soft limit for files; the kernel's cap is.
        target = std::fs::read_to_string("/proc/sys/fs/nr_open")
            .ok()
            .and_then(|t| t.trim().parse().ok())
            .unwrap_or(1 << 20);
    }
    if target > before {
        limit.rlim_cur = target;
        // SAFETY: as above.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &limit) } != 0 {
            return Err(std::io::Error::last_os_error());
        }
    }
    Ok((before, limit.rlim_cur))
}

/// CPU seconds of the processes that share the cores, read at one instant.
#[derive(Clone, Copy, Default)]
pub(crate) struct CpuReading {
    pub(crate) serve: f64,
    pub(crate) consume: f64,
    pub(crate) produce: f64,
    pub(crate) client: f64,
    pub(crate) machine_busy: f64,
    pub(crate) machine_total: f64,
}

impl CpuReading {
    pub(crate) fn now(serve: u32, consume: u32, produce: u32) -> Self {
        let (machine_busy, machine_total) = machine_seconds().unwrap_or_default();
        Self {
            serve: cpu_seconds(&serve.to_string()).unwrap_or_default(),
            consume: cpu_seconds(&consume.to_string()).unwrap_or_default(),
            produce: cpu_seconds(&produce.to_string()).unwrap_or_default(),
            client: cpu_seconds("self").unwrap_or_default(),
            machine_busy,
            machine_total,
        }
    }
}
