//! What `twine place` and `twine replay` share: reading the trace files, the
//! `--hosts-shape` value, and the names of hosts in output files.

use std::path::Path;

use twine::sched::pack::Hosts;
use twine::sched::{GpuGrant, Resources};

/// Reads a trace file with `parse`; errors name the path.
pub(crate) fn read<T>(
    path: &Path,
    parse: impl Fn(&str, std::fs::File) -> Result<T, twine::sched::trace::TraceError>,
) -> Result<T, Vec<String>> {
    let file = std::fs::File::open(path).map_err(|e| vec![format!("{}: {e}", path.display())])?;
    parse(&path.display().to_string(), file).map_err(|e| vec![e.to_string()])
}

/// A `--hosts-shape` value: `CPU_MILLI,MEMORY_MIB,GPUS[,GPU_MODEL]`.
pub(crate) fn parse_shape(text: &str) -> Result<Hosts, Vec<String>> {
    let bad = |m: &str| {
        vec![format!(
            "--hosts-shape: {m} (got {text:?}; expected CPU_MILLI,MEMORY_MIB,GPUS[,GPU_MODEL])"
        )]
    };
    let parts: Vec<&str> = text.split(',').map(str::trim).collect();
    if !(3..=4).contains(&parts.len()) {
        return Err(bad("expected three or four comma-separated fields"));
    }
    let number = |s: &str, what: &str| {
        s.parse::<u64>()
            .map_err(|_| bad(&format!("{what} must be a whole number")))
    };
    let cpu = number(parts[0], "CPU_MILLI")?;
    let mem = number(parts[1], "MEMORY_MIB")?;
    let gpus =
        u8::try_from(number(parts[2], "GPUS")?).map_err(|_| bad("GPUS must be at most 255"))?;
    if cpu == 0 || mem == 0 {
        return Err(bad("CPU_MILLI and MEMORY_MIB must be positive"));
    }
    let gpu_model = parts
        .get(3)
        .filter(|m| !m.is_empty())
        .map(|m| (*m).to_owned());
    Ok(Hosts::Identical {
        capacity: Resources::new(cpu, mem),
        gpus,
        gpu_model,
    })
}

/// The name of host `index`: its node's name, or `host-NNNNN` for identical hosts.
pub(crate) fn host_name(hosts: &Hosts, index: usize) -> Result<String, String> {
    match hosts {
        Hosts::Listed(nodes) => nodes
            .get(index)
            .map(|n| n.name.clone())
            .ok_or_else(|| format!("internal error: no node #{index} among {}", nodes.len())),
        _ => Ok(format!("host-{index:05}")),
    }
}

/// A grant's devices as an output file writes them: indexes joined by `|`, empty for none.
pub(crate) fn gpu_devices(grant: &GpuGrant) -> String {
    let devices: Vec<String> = grant.indexes().map(|i| i.to_string()).collect();
    devices.join("|")
}
