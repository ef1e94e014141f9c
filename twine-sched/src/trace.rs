//! Reading the cluster-trace CSV files (the columns of the Alibaba openb GPU trace).
//!
//! Nodes: `sn,cpu_milli,memory_mib,gpu,model`. Pods: `name,cpu_milli,memory_mib,
//! num_gpu,gpu_milli,gpu_spec,qos,pod_phase,creation_time,deletion_time,scheduled_time`
//! (only the first six are required). Columns are found by header name, so their
//! order does not matter and extra columns are ignored. Every bad row is a
//! [`TraceError`] naming the source, the line, the field and the value.

use std::collections::HashSet;
use std::io::Read;

use crate::resources::{Demand, GPU_MILLI, GpuDemand, Resources};

/// A host from a nodes file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TraceNode {
    /// `sn`: the node's name.
    pub name: String,
    /// `cpu_milli`, `memory_mib`.
    pub capacity: Resources,
    /// `gpu`: number of devices.
    pub gpus: u8,
    /// `model`: the GPU model, if any.
    pub gpu_model: Option<String>,
}

/// A task from a pods file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TracePod {
    /// `name`.
    pub name: String,
    /// `cpu_milli`, `memory_mib`, `num_gpu`, `gpu_milli`.
    pub demand: Demand,
    /// `gpu_spec`: the GPU models the pod accepts (`|`-separated); empty accepts any.
    pub gpu_spec: Vec<String>,
    /// `creation_time` in seconds, if present.
    pub creation_time: Option<u64>,
    /// `deletion_time` in seconds, if present and not empty.
    pub deletion_time: Option<u64>,
}

/// A row or header of a trace file that could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{source_name}:{line}: {field}: {problem} (got {value:?})")]
#[non_exhaustive]
pub struct TraceError {
    /// The file (or other source) being read.
    pub source_name: String,
    /// 1-based line number (the header is line 1).
    pub line: u64,
    /// The column, as the header names it; `-` for a row that is not valid CSV.
    pub field: String,
    /// The offending value.
    pub value: String,
    /// What is wrong.
    pub problem: TraceProblem,
}

/// Which kind of record a trace file holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum TraceRecord {
    /// A row of a nodes file.
    Node,
    /// A row of a pods file.
    Pod,
}

impl std::fmt::Display for TraceRecord {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            TraceRecord::Node => "node",
            TraceRecord::Pod => "pod",
        })
    }
}

/// What is wrong with a trace file, as [`TraceError::problem`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum TraceProblem {
    /// Not valid CSV (the CSV reader's own words).
    #[error("{0}")]
    Csv(String),
    /// A required column is not in the header.
    #[error("required column is missing from the header")]
    MissingColumn,
    /// A number column holds something else.
    #[error("expected a whole number that is not negative")]
    NotANumber,
    /// A number above what the column allows.
    #[error("must be at most {max}")]
    TooLarge {
        /// The largest value allowed.
        max: u64,
    },
    /// An empty name.
    #[error("a {0} needs a name")]
    NoName(TraceRecord),
    /// A name used twice in one file.
    #[error("duplicate {0} name")]
    DuplicateName(TraceRecord),
    /// A node with GPUs and an empty model, in a file with a `model` column.
    #[error("a node with GPUs needs a model")]
    NoGpuModel,
    /// `gpu_milli` without `num_gpu`.
    #[error("a GPU share needs num_gpu = 1")]
    ShareWithoutGpu,
    /// `num_gpu` without `gpu_milli`.
    #[error("a pod with GPUs needs gpu_milli between 1 and 1000")]
    GpusWithoutMilli,
    /// A share of a device asked for by a pod with several devices.
    #[error("only single-GPU pods may ask for a share of a device")]
    ShareOfSeveral,
}

struct Table {
    source_name: String,
    headers: Vec<String>,
    records: Vec<(u64, csv::StringRecord)>,
}

impl Table {
    fn read(source_name: &str, reader: impl Read) -> Result<Table, TraceError> {
        let err = |line: u64, message: String| TraceError {
            source_name: source_name.to_owned(),
            line,
            field: "-".to_owned(),
            value: String::new(),
            problem: TraceProblem::Csv(message),
        };
        let mut csv = csv::ReaderBuilder::new()
            .has_headers(true)
            .flexible(false)
            .from_reader(reader);
        let headers = csv
            .headers()
            .map_err(|e| err(1, e.to_string()))?
            .iter()
            .map(|h| h.trim().to_owned())
            .collect();
        let mut records = Vec::new();
        for record in csv.records() {
            let record = record.map_err(|e| {
                let line = e.position().map_or(0, csv::Position::line);
                err(line, e.to_string())
            })?;
            let line = record.position().map_or(0, csv::Position::line);
            records.push((line, record));
        }
        Ok(Table {
            source_name: source_name.to_owned(),
            headers,
            records,
        })
    }

    /// The data rows, with their line numbers.
    fn rows(&self) -> impl Iterator<Item = Row<'_>> {
        self.records.iter().map(|(line, record)| Row {
            source_name: &self.source_name,
            line: *line,
            headers: &self.headers,
            record,
        })
    }

    /// The positions of required columns, in the order asked.
    fn required<const N: usize>(&self, names: [&str; N]) -> Result<[usize; N], TraceError> {
        let mut found = [0; N];
        for (slot, name) in found.iter_mut().zip(names) {
            *slot = self.column(name).ok_or_else(|| TraceError {
                source_name: self.source_name.clone(),
                line: 1,
                field: name.to_owned(),
                value: self.headers.join(","),
                problem: TraceProblem::MissingColumn,
            })?;
        }
        Ok(found)
    }

    /// The position of an optional column.
    fn column(&self, name: &str) -> Option<usize> {
        self.headers.iter().position(|h| h == name)
    }
}

struct Row<'a> {
    source_name: &'a str,
    line: u64,
    headers: &'a [String],
    record: &'a csv::StringRecord,
}

impl Row<'_> {
    fn error(&self, column: usize, problem: TraceProblem) -> TraceError {
        TraceError {
            source_name: self.source_name.to_owned(),
            line: self.line,
            field: self.headers[column].clone(),
            value: self.text(column).to_owned(),
            problem,
        }
    }

    /// The name in `column`: not empty, and not seen before in this file.
    fn unique_name(
        &self,
        column: usize,
        seen: &mut HashSet<String>,
        what: TraceRecord,
    ) -> Result<String, TraceError> {
        let name = self.text(column).to_owned();
        if name.is_empty() {
            return Err(self.error(column, TraceProblem::NoName(what)));
        }
        if !seen.insert(name.clone()) {
            return Err(self.error(column, TraceProblem::DuplicateName(what)));
        }
        Ok(name)
    }

    fn text(&self, column: usize) -> &str {
        // The reader is not flexible: every record has a cell under every header.
        self.record.get(column).map_or("", str::trim)
    }

    fn number(&self, column: usize, max: u64) -> Result<u64, TraceError> {
        let text = self.text(column);
        let n: u64 = text
            .parse()
            .map_err(|_| self.error(column, TraceProblem::NotANumber))?;
        if n > max {
            return Err(self.error(column, TraceProblem::TooLarge { max }));
        }
        Ok(n)
    }

    /// A number of at most `max` in a narrower type (`max` fits in it).
    fn small<T: TryFrom<u64>>(&self, column: usize, max: u64) -> Result<T, TraceError> {
        T::try_from(self.number(column, max)?)
            .map_err(|_| self.error(column, TraceProblem::TooLarge { max }))
    }

    fn optional_number(&self, column: Option<usize>) -> Result<Option<u64>, TraceError> {
        match column {
            Some(c) if !self.text(c).is_empty() => self.number(c, u64::MAX).map(Some),
            _ => Ok(None),
        }
    }
}

/// The largest CPU (millicores) or memory (MiB) a trace row may state: 2^40, so sums
/// over millions of rows cannot overflow.
pub const MAX_AMOUNT: u64 = 1 << 40;

/// Reads a nodes file.
pub fn read_nodes(source_name: &str, reader: impl Read) -> Result<Vec<TraceNode>, TraceError> {
    let table = Table::read(source_name, reader)?;
    let [sn, cpu, mem, gpu] = table.required(["sn", "cpu_milli", "memory_mib", "gpu"])?;
    let model = table.column("model");
    let mut names = HashSet::new();
    let mut nodes = Vec::with_capacity(table.records.len());
    for row in table.rows() {
        let name = row.unique_name(sn, &mut names, TraceRecord::Node)?;
        let gpus: u8 = row.small(gpu, 64)?;
        let gpu_model = model
            .map(|m| row.text(m))
            .filter(|m| !m.is_empty())
            .map(str::to_owned);
        if gpus > 0 && gpu_model.is_none() && model.is_some() {
            return Err(row.error(gpu, TraceProblem::NoGpuModel));
        }
        nodes.push(TraceNode {
            name,
            capacity: Resources::new(row.number(cpu, MAX_AMOUNT)?, row.number(mem, MAX_AMOUNT)?),
            gpus,
            gpu_model,
        });
    }
    Ok(nodes)
}

/// Reads a pods file.
pub fn read_pods(source_name: &str, reader: impl Read) -> Result<Vec<TracePod>, TraceError> {
    let table = Table::read(source_name, reader)?;
    let [name, cpu, mem, num_gpu, gpu_milli] =
        table.required(["name", "cpu_milli", "memory_mib", "num_gpu", "gpu_milli"])?;
    let spec = table.column("gpu_spec");
    let created = table.column("creation_time");
    let deleted = table.column("deletion_time");
    let mut names = HashSet::new();
    let mut pods = Vec::with_capacity(table.records.len());
    for row in table.rows() {
        let pod_name = row.unique_name(name, &mut names, TraceRecord::Pod)?;
        let count: u8 = row.small(num_gpu, 64)?;
        let milli: u16 = row.small(gpu_milli, u64::from(GPU_MILLI))?;
        let gpu = match (count, milli) {
            (0, 0) => GpuDemand::None,
            (0, _) => return Err(row.error(gpu_milli, TraceProblem::ShareWithoutGpu)),
            (_, 0) => return Err(row.error(gpu_milli, TraceProblem::GpusWithoutMilli)),
            (n, GPU_MILLI) => GpuDemand::Whole(n),
            (1, m) => GpuDemand::Shared(m),
            (_, _) => return Err(row.error(gpu_milli, TraceProblem::ShareOfSeveral)),
        };
        // No gpu_spec column, or an empty cell: any model will do.
        let gpu_spec = spec
            .map(|s| row.text(s))
            .filter(|s| !s.is_empty())
            .map(|s| s.split('|').map(|m| m.trim().to_owned()).collect())
            .unwrap_or_default();
        pods.push(TracePod {
            name: pod_name,
            demand: Demand {
                resources: Resources::new(
                    row.number(cpu, MAX_AMOUNT)?,
                    row.number(mem, MAX_AMOUNT)?,
                ),
                gpu,
            },
            gpu_spec,
            creation_time: row.optional_number(created)?,
            deletion_time: row.optional_number(deleted)?,
        });
    }
    Ok(pods)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_trace_shape() {
        let nodes = read_nodes(
            "n.csv",
            "sn,cpu_milli,memory_mib,gpu,model\na,96000,393216,8,G2\nb,32000,262144,0,\n"
                .as_bytes(),
        )
        .unwrap();
        assert_eq!(nodes[0].gpus, 8);
        assert_eq!(nodes[1].gpu_model, None);
        let pods = read_pods(
            "p.csv",
            "name,cpu_milli,memory_mib,num_gpu,gpu_milli,gpu_spec,qos\np0,12000,16384,1,460,,LS\np1,1,1,2,1000,V100M16|V100M32,BE\np2,1,1,0,0,,BE\n".as_bytes(),
        )
        .unwrap();
        assert_eq!(pods[0].demand.gpu, GpuDemand::Shared(460));
        assert_eq!(pods[1].demand.gpu, GpuDemand::Whole(2));
        assert_eq!(pods[1].gpu_spec, ["V100M16", "V100M32"]);
        assert_eq!(pods[2].demand.gpu, GpuDemand::None);
    }

    #[test]
    fn bad_rows_name_line_field_and_value() {
        let header = "name,cpu_milli,memory_mib,num_gpu,gpu_milli\n";
        for (row, field, value) in [
            ("p,-1,1,0,0", "cpu_milli", "-1"),
            (
                "p,1,99999999999999999999999,0,0",
                "memory_mib",
                "99999999999999999999999",
            ),
            ("p,1,1,2,500", "gpu_milli", "500"),
            ("p,1,1,0,300", "gpu_milli", "300"),
            ("p,1,1,1,1001", "gpu_milli", "1001"),
            ("p,1,1,300,1000", "num_gpu", "300"),
            (",1,1,0,0", "name", ""),
        ] {
            let e =
                read_pods("p.csv", format!("{header}ok,1,1,0,0\n{row}\n").as_bytes()).unwrap_err();
            assert_eq!(
                (e.line, e.field.as_str(), e.value.as_str()),
                (3, field, value),
                "{e}"
            );
        }
        let e = read_pods("p.csv", "name,cpu_milli\np,1\n".as_bytes()).unwrap_err();
        assert_eq!(e.field, "memory_mib");
        let e = read_pods(
            "p.csv",
            format!("{header}p,1,1,0,0\np,1,1,0,0\n").as_bytes(),
        )
        .unwrap_err();
        assert_eq!(e.problem, TraceProblem::DuplicateName(TraceRecord::Pod));
        let e = read_pods("p.csv", format!("{header}p,1,1,0\n").as_bytes()).unwrap_err();
        assert_eq!(e.line, 2, "{e}");
    }
}
