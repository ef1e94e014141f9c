//! Helpers the test files share.
#![allow(clippy::unwrap_used, dead_code)]

use std::path::PathBuf;

use twine_profiles::change::Setting;
use twine_profiles::key::{CmdlineArg, SysctlKey};

/// The sysctl setting `key`.
pub(crate) fn sysctl(key: &str) -> Setting {
    Setting::Sysctl {
        key: SysctlKey::new(key).unwrap(),
    }
}

/// The command-line setting `arg`.
pub(crate) fn cmdline(arg: &str) -> Setting {
    Setting::Cmdline {
        arg: CmdlineArg::new(arg).unwrap(),
    }
}

/// The example profiles' directory.
pub(crate) fn examples() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("examples/profiles")
}
