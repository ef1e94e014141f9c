//! What the agent makes of a job before it boots a container: the unit files,
//! the journald drop-in, the binds, and the names on the host.

use std::fmt::Write as _;
use std::path::PathBuf;

use twine_spec::UnitSet;

use crate::container::{Bind, ContainerConfig, SeedFile};
use crate::logs;
use crate::state::JobDirs;

use super::AgentSettings;

/// Where the job's credentials appear inside the container.
pub const IDENTITY_INSIDE: &str = "/run/twine/identity";
/// Where the job's journal directory appears inside the container.
pub(crate) const JOURNAL_INSIDE: &str = "/var/log/journal";

/// The job's key on the host: one path component, injective, from any job
/// name twine-spec accepts (it allows `/`, spaces and any printable text).
/// `[A-Za-z0-9_.-]` stay, every other byte is `%XX`; a leading `.` too.
pub fn job_key(job: &str) -> String {
    let mut out = String::with_capacity(job.len());
    for (i, b) in job.bytes().enumerate() {
        let keep = b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-') || (b == b'.' && i > 0);
        if keep {
            out.push(char::from(b));
        } else {
            let _ = write!(out, "%{b:02X}");
        }
    }
    out
}

/// The container name of generation `generation` of a job: letters, digits,
/// `-`, `_`, `.`, at most 64 bytes. The key is shortened and a hash keeps
/// distinct jobs apart.
pub(crate) fn container_name(key: &str, generation: u64) -> String {
    let clean: String = key
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' {
                c
            } else {
                '_'
            }
        })
        .take(32)
        .collect();
    // FNV-1a: a stable, dependency-free 64-bit hash; collisions only cost a
    // refused start (the cgroup exists), never a mix-up.
    let hash = key.bytes().fold(0xcbf2_9ce4_8422_2325_u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    });
    format!("{clean}-{:08x}-{generation}", hash >> 32)
}

/// The container configuration for one generation of a job.
pub(crate) fn container_config(
    key: &str,
    units: &UnitSet,
    dirs: &JobDirs,
    generation: u64,
    settings: &AgentSettings,
) -> ContainerConfig {
    let mut config = ContainerConfig::new(
        container_name(key, generation),
        settings.rootfs.clone(),
        dirs.container(generation),
    );
    config.network = settings.network;
    config.ready_timeout = settings.ready_timeout;
    config.cgroup_parent = settings.cgroup_parent.clone();
    for file in units.files() {
        config.seed.push(SeedFile::File {
            path: PathBuf::from("etc/systemd/system").join(&file.name),
            contents: file.contents.into_bytes(),
            mode: 0o644,
        });
    }
    let (path, contents) = logs::journald_dropin();
    config.seed.push(SeedFile::File {
        path: path.into(),
        contents: contents.as_bytes().to_vec(),
        mode: 0o644,
    });
    // The console is the agent's record of the boot, not a login prompt.
    config.seed.push(SeedFile::Symlink {
        path: "etc/systemd/system/console-getty.service".into(),
        to: "/dev/null".into(),
    });
    config.binds.push(Bind {
        source: dirs.journal(),
        target: JOURNAL_INSIDE.into(),
        read_only: false,
    });
    config.binds.push(Bind {
        source: dirs.identity(),
        target: IDENTITY_INSIDE.into(),
        read_only: true,
    });
    config
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn job_keys_are_one_component_and_injective() {
        let names = [
            "web", "web/a", "web%2Fa", ".hidden", "a b", "ü", "a.b", "-x",
        ];
        let keys: Vec<String> = names.iter().map(|n| job_key(n)).collect();
        for (name, key) in names.iter().zip(&keys) {
            assert!(
                !key.contains('/') && !key.starts_with('.') && !key.is_empty(),
                "{name} -> {key}"
            );
        }
        let mut unique = keys.clone();
        unique.sort();
        unique.dedup();
        assert_eq!(unique.len(), keys.len(), "{keys:?}");
        assert_eq!(job_key("web-1.x_y"), "web-1.x_y");
    }

    #[test]
    fn container_names_fit_the_container_rules() {
        for key in ["web", "%2Fweird%20name", &"x".repeat(200)] {
            let name = container_name(key, 7);
            assert!(name.len() <= 64, "{name}");
            assert!(
                name.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_')),
                "{name}"
            );
            assert!(name.ends_with("-7"));
        }
        assert_ne!(container_name("a_b", 1), container_name("a%20b", 1));
    }
}
