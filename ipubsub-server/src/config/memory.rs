//! The memory this process may use, for the defaults of `engine.max_buffered_bytes` and
//! `http.max_body_bytes_in_flight`.

/// Share of the memory this process may use that in-memory messages get by default.
const DEFAULT_SHARE: u64 = 4;

/// Budget when the machine's memory cannot be read (not Linux, no `/proc`).
const FALLBACK: u64 = 1 << 30;

/// `engine.max_buffered_bytes` when unset: a quarter of the memory this process may use
/// ([`memory_limit`]), or 1 GiB when that cannot be read.
pub(crate) fn default_budget() -> u64 {
    memory_limit().map_or(FALLBACK, |limit| limit / DEFAULT_SHARE)
}

/// Share of the memory this process may use that request bodies in flight get by default.
const BODY_SHARE: u64 = 8;

/// The most request bodies in flight get by default: plenty for a busy node (10,000
/// publishers with 16 KB bodies at once), small enough that their copies while parsing stay
/// well within the memory a node leaves to requests.
const BODY_CAP: u64 = 256 << 20;

/// `http.max_body_bytes_in_flight` when unset: an eighth of the memory this process may use,
/// at most 256 MiB (256 MiB when that memory cannot be read).
pub(crate) fn default_body_budget() -> u64 {
    memory_limit().map_or(BODY_CAP, |limit| (limit / BODY_SHARE).min(BODY_CAP))
}

/// The memory this process may use: the machine's (`MemTotal`), or its cgroup's
/// `memory.max` (cgroup v2) if that is lower.
pub(crate) fn memory_limit() -> Option<u64> {
    let total = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|text| mem_total(&text));
    let cgroup = std::fs::read_to_string("/proc/self/cgroup")
        .ok()
        .and_then(|text| cgroup_v2_path(&text).map(str::to_owned))
        .and_then(|path| std::fs::read_to_string(format!("/sys/fs/cgroup{path}/memory.max")).ok())
        .and_then(|text| text.trim().parse::<u64>().ok());
    match (total, cgroup) {
        (Some(total), Some(cgroup)) => Some(total.min(cgroup)),
        (total, cgroup) => total.or(cgroup),
    }
}

/// `MemTotal` of `/proc/meminfo`, in bytes.
fn mem_total(meminfo: &str) -> Option<u64> {
    let line = meminfo.lines().find(|l| l.starts_with("MemTotal:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    kib.checked_mul(1024)
}

/// The cgroup v2 path in `/proc/self/cgroup` (the `0::` line).
fn cgroup_v2_path(cgroup: &str) -> Option<&str> {
    cgroup.lines().find_map(|l| l.strip_prefix("0::"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_machine_and_the_cgroup() {
        let meminfo = "MemTotal:       24576000 kB\nMemFree:  100 kB\n";
        assert_eq!(mem_total(meminfo), Some(24_576_000 * 1024));
        assert_eq!(mem_total("MemFree: 1 kB\n"), None);
        assert_eq!(
            cgroup_v2_path("0::/system.slice/x.service\n"),
            Some("/system.slice/x.service")
        );
        assert_eq!(cgroup_v2_path("12:memory:/x\n"), None);
        // On this (Linux) machine the budget is a quarter of something real.
        let limit = memory_limit().expect("/proc/meminfo");
        assert_eq!(default_budget(), limit / 4);
    }
}
