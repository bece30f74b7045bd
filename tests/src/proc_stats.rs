//! This process's memory and file descriptors, read from `/proc/self`, so a
//! test can assert that an attack or a load does not make them grow without
//! bound. Linux only; elsewhere the readers return `None` and the callers skip
//! the assertion with a printed note.

/// A `kB` field of `/proc/self/status` (e.g. `VmRSS`, `VmHWM`), in bytes.
pub fn status_bytes(field: &str) -> Option<u64> {
    status_bytes_at("/proc/self/status", field)
}

/// A `kB` field of another process's `/proc/<pid>/status` (a child daemon
/// measured from the test); `None` once it has exited.
pub fn status_bytes_of(pid: u32, field: &str) -> Option<u64> {
    status_bytes_at(&format!("/proc/{pid}/status"), field)
}

/// Open file descriptors of another process.
pub fn open_fds_of(pid: u32) -> Option<usize> {
    Some(std::fs::read_dir(format!("/proc/{pid}/fd")).ok()?.count())
}

fn status_bytes_at(path: &str, field: &str) -> Option<u64> {
    let status = std::fs::read_to_string(path).ok()?;
    let line = status.lines().find(|l| l.starts_with(field) && l[field.len()..].starts_with(':'))?;
    let kb: u64 = line[field.len() + 1..].trim().trim_end_matches("kB").trim().parse().ok()?;
    Some(kb * 1024)
}

/// Resident memory now.
pub fn rss_bytes() -> Option<u64> {
    status_bytes("VmRSS")
}

/// Peak resident memory since the process started.
pub fn peak_rss_bytes() -> Option<u64> {
    status_bytes("VmHWM")
}

/// Open file descriptors (sockets included).
pub fn open_fds() -> Option<usize> {
    Some(std::fs::read_dir("/proc/self/fd").ok()?.count())
}

pub const MIB: u64 = 1 << 20;

/// Reset the peak (`VmHWM`) to the current resident size, so that
/// [`peak_rss_bytes`] measures one phase of a test. Linux 4.0 and newer;
/// returns whether it worked.
pub fn reset_peak_rss() -> bool {
    std::fs::write("/proc/self/clear_refs", "5").is_ok()
}

/// Peak resident memory above the resident size at the last
/// [`reset_peak_rss`] (`base`), in bytes.
pub fn peak_growth_since(base: Option<u64>) -> Option<u64> {
    Some(peak_rss_bytes()?.saturating_sub(base?))
}
