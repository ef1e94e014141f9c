//! Facts about the host the daemon reads once or each tick: the page size, the file
//! descriptor limit, and `MemTotal`, `SwapTotal` and `SwapFree` from `meminfo`.

use std::path::Path;

use super::DaemonError;

/// `MemTotal`, `SwapTotal` and `SwapFree`, bytes.
#[derive(Debug, Clone, Copy, Default)]
pub(super) struct Meminfo {
    pub(super) mem_total: u64,
    pub(super) swap_total: u64,
    pub(super) swap_free: u64,
}

/// The kernel's page size.
pub(super) fn page_size() -> Result<u64, DaemonError> {
    use nix::unistd::{SysconfVar, sysconf};
    let what = "sysconf(_SC_PAGESIZE)";
    match sysconf(SysconfVar::PAGE_SIZE) {
        Ok(Some(n)) => u64::try_from(n).map_err(|_| DaemonError::System {
            what,
            source: nix::errno::Errno::EINVAL,
        }),
        Ok(None) => Err(DaemonError::System {
            what,
            source: nix::errno::Errno::EINVAL,
        }),
        Err(source) => Err(DaemonError::System { what, source }),
    }
}

/// Raises this process's `RLIMIT_NOFILE` soft limit to the hard limit (a sized cgroup
/// keeps seven files open) and returns the new soft limit.
pub fn raise_fd_limit() -> Result<u64, DaemonError> {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    let (soft, hard) =
        getrlimit(Resource::RLIMIT_NOFILE).map_err(|source| DaemonError::System {
            what: "getrlimit(RLIMIT_NOFILE)",
            source,
        })?;
    if soft < hard {
        setrlimit(Resource::RLIMIT_NOFILE, hard, hard).map_err(|source| DaemonError::System {
            what: "setrlimit(RLIMIT_NOFILE)",
            source,
        })?;
    }
    Ok(hard)
}

/// `MemTotal`, `SwapTotal` and `SwapFree` of the `meminfo` file at `path`.
pub(super) fn read_meminfo(path: &Path) -> Result<Meminfo, DaemonError> {
    let bad = |reason: String| DaemonError::Meminfo {
        path: path.to_owned(),
        reason,
    };
    let text = std::fs::read_to_string(path).map_err(|e| bad(e.to_string()))?;
    let mut found = [None; 3];
    for line in text.lines() {
        let Some((key, rest)) = line.split_once(':') else {
            continue;
        };
        let slot = match key {
            "MemTotal" => 0,
            "SwapTotal" => 1,
            "SwapFree" => 2,
            _ => continue,
        };
        let kib: u64 = rest
            .trim()
            .trim_end_matches("kB")
            .trim()
            .parse()
            .map_err(|_| bad(format!("cannot parse {line:?}: expected `KEY: N kB`")))?;
        found[slot] = Some(kib.saturating_mul(1024));
    }
    match found {
        [Some(mem_total), Some(swap_total), Some(swap_free)] => Ok(Meminfo {
            mem_total,
            swap_total,
            swap_free,
        }),
        _ => Err(bad("MemTotal, SwapTotal or SwapFree is missing".into())),
    }
}
