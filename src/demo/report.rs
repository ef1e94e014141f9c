//! The demo's report: `report.md`, `summary.json` and four SVG plots, plus the short
//! summary printed on stdout.

use std::fmt::Write as _;
use std::path::Path;

use plotters::prelude::*;
use serde_json::json;

use super::steps::Outcome;

type Error = Box<dyn std::error::Error>;

/// The plots, with what each shows.
const PLOTS: [(&str, &str); 4] = [
    ("entitlements.svg", "hosts per entitlement, by machine type"),
    (
        "utilisation.svg",
        "CPU and memory allocated on each entitlement's hosts",
    ),
    ("rollout.svg", "hosts updated over time in the rollout"),
    (
        "memory.svg",
        "memory.high and memory.current over time under the resizer",
    ),
];

/// Writes everything into `out`.
pub(crate) fn write(out: &Path, o: &Outcome) -> Result<(), Error> {
    let at = |name: &str, e: Error| -> Error { format!("{name}: {e}").into() };
    entitlements_plot(&out.join(PLOTS[0].0), o).map_err(|e| at(PLOTS[0].0, e))?;
    utilisation_plot(&out.join(PLOTS[1].0), o).map_err(|e| at(PLOTS[1].0, e))?;
    rollout_plot(&out.join(PLOTS[2].0), o).map_err(|e| at(PLOTS[2].0, e))?;
    memory_plot(&out.join(PLOTS[3].0), o).map_err(|e| at(PLOTS[3].0, e))?;
    std::fs::write(
        out.join("summary.json"),
        serde_json::to_string_pretty(&summary(o))?,
    )?;
    std::fs::write(out.join("report.md"), markdown(o))?;
    Ok(())
}

fn mib(b: u64) -> f64 {
    b as f64 / f64::from(1 << 20)
}

/// The figures the test checks, and the placements to check them by.
fn summary(o: &Outcome) -> serde_json::Value {
    let d = &o.drain;
    let r = &o.rollout;
    let s = &o.memory.summary;
    json!({
        "region": o.region,
        "entitlements": o.entitlements.iter().map(|e| json!({
            "name": e.name, "hosts": e.hosts, "hosts_by_type": e.by_type,
            "cpu_used": e.cpu_used, "memory_used": e.memory_used,
        })).collect::<Vec<_>>(),
        "jobs": o.jobs.iter().map(|j| json!({
            "name": j.name, "entitlement": j.entitlement, "tasks": j.tasks, "placed": j.placed,
            "placed_first_try": j.first_try, "unplaced_why": j.unplaced_why,
            "demand": { "cpu_milli": j.cpu_milli, "memory_mib": j.memory_mib, "gpus": j.gpus },
            "units": j.units, "verify": j.verify,
        })).collect::<Vec<_>>(),
        "profile_switches": o.switches.iter().map(|s| json!({
            "host": s.host.0, "from": s.from, "to": s.to, "changes": s.changes, "verified": s.verified,
        })).collect::<Vec<_>>(),
        "placements": o.placements,
        "drain": {
            "rack": d.rack, "hosts": d.hosts, "tasks": d.tasks, "moved": d.moved,
            "stopped": d.stopped, "cache_tasks": d.cache_tasks, "cache_moves_held_back": d.held_back,
            "max_replicas_of_a_shard_moving": d.max_replicas_moving, "minutes": d.minutes,
            "tasks_left": d.left.last().copied().unwrap_or(0),
        },
        "rollout": {
            "hosts": r.hosts, "updated": r.updated, "waves": r.waves, "hours": r.hours,
            "trailing": r.trailing,
        },
        "memory": {
            "minutes": o.memory.workload.duration_s / 60,
            "cold_mib": mib(o.memory.workload.cold_anon + o.memory.workload.cold_file),
            "cold_given_back_mib": mib(s.cold_given_back),
            "hot_missing_mib": mib(s.hot_missing),
            "converged_at_s": s.converged_at_s,
            "final_memory_high_mib": o.memory.rows.last().and_then(|r| r.high).map(mib),
        },
    })
}

/// The short summary on stdout.
pub(crate) fn summary_lines(o: &Outcome, out: &Path) -> Vec<String> {
    let mut l = Vec::new();
    l.push(format!(
        "region: {} hosts in {} racks; entitlements: {}",
        o.hosts,
        o.region["racks"],
        o.entitlements
            .iter()
            .map(|e| format!("{} {} hosts", e.name, e.hosts))
            .collect::<Vec<_>>()
            .join(", ")
    ));
    for j in &o.jobs {
        l.push(format!(
            "job {:<6} {:>5}/{} tasks placed in {}; units {}",
            j.name, j.placed, j.tasks, j.entitlement, j.verify
        ));
    }
    l.push(format!(
        "profiles: {} hosts switched to web through twine-profiles ({} verified)",
        o.switches.len(),
        o.switches.iter().filter(|s| s.verified).count()
    ));
    let d = &o.drain;
    l.push(format!(
        "drain of {}: {} tasks moved off {} hosts in {} min, {} stopped; the cache held back {} moves to keep its shards",
        d.rack,
        d.moved.values().sum::<usize>(),
        d.hosts,
        d.minutes,
        d.stopped,
        d.held_back
    ));
    l.push(format!(
        "rollout: {}/{} hosts updated in {} waves over {:.1} simulated hours",
        o.rollout.updated,
        o.rollout.hosts,
        o.rollout.waves.len(),
        o.rollout.hours
    ));
    let s = &o.memory.summary;
    l.push(format!(
        "memory: the resizer gave back {:.0} of {:.0} MiB of cold memory in {} min",
        mib(s.cold_given_back),
        mib(o.memory.workload.cold_anon + o.memory.workload.cold_file),
        o.memory.workload.duration_s / 60
    ));
    l.push(format!("report: {}", out.join("report.md").display()));
    l
}

fn markdown(o: &Outcome) -> String {
    let mut m = String::new();
    let _ = writeln!(m, "# twine demo\n");
    let _ = writeln!(
        m,
        "The whole suite on an embedded region: a spec admitted to an entitlement, its tasks \
         placed by the allocator, hosts switched to the profile it needs, its units rendered, a \
         rack drained through TaskControl, a host update rolled out, and one task's memory \
         sized by pressure. Every figure here is also in `summary.json`.\n"
    );
    let _ = writeln!(m, "## 1. The region\n");
    let _ = writeln!(
        m,
        "{} hosts, {} datacenters, {} power domains, {} racks of 40.\n",
        o.hosts, o.region["datacenters"], o.region["power_domains"], o.region["racks"]
    );
    let _ = writeln!(
        m,
        "| machine type | hosts | cores | memory GiB | GPUs |\n| --- | --- | --- | --- | --- |"
    );
    if let Some(types) = o.region["machine_types"].as_array() {
        for t in types {
            let _ = writeln!(
                m,
                "| {} | {} | {} | {} | {} |",
                t["name"].as_str().unwrap_or("?"),
                t["hosts"],
                t["cpu_milli"].as_u64().unwrap_or(0) / 1000,
                t["memory_mib"].as_u64().unwrap_or(0) / 1024,
                t["gpus"]
            );
        }
    }
    let _ = writeln!(m, "\n## 2. Admit and place\n");
    let _ = writeln!(
        m,
        "| job | entitlement | per task | tasks | placed | first try |\n| --- | --- | --- | --- | --- | --- |"
    );
    for j in &o.jobs {
        let _ = writeln!(
            m,
            "| {} | {} | {} cores, {} GiB{} | {} | {} | {} |",
            j.name,
            j.entitlement,
            j.cpu_milli / 1000,
            j.memory_mib / 1024,
            if j.gpus > 0 {
                format!(", {} GPUs", j.gpus)
            } else {
                String::new()
            },
            j.tasks,
            j.placed,
            j.first_try
        );
    }
    for j in &o.jobs {
        if let Some(why) = &j.unplaced_why {
            let _ = writeln!(
                m,
                "\n{}: what was not placed at first, and why: `{why}`",
                j.name
            );
        }
    }
    let _ = writeln!(
        m,
        "\n| entitlement | hosts | by machine type | CPU used | memory used |\n| --- | --- | --- | --- | --- |"
    );
    for e in &o.entitlements {
        let types: Vec<String> = e.by_type.iter().map(|(t, n)| format!("{n} {t}")).collect();
        let _ = writeln!(
            m,
            "| {} | {} | {} | {:.0} % | {:.0} % |",
            e.name,
            e.hosts,
            types.join(", "),
            e.cpu_used * 100.0,
            e.memory_used * 100.0
        );
    }
    let _ = writeln!(
        m,
        "\n![hosts per entitlement](entitlements.svg)\n\n![utilisation](utilisation.svg)\n"
    );
    let _ = writeln!(m, "## 3. Host profiles\n");
    let _ = writeln!(
        m,
        "The web service asks for the `web` profile. The allocator proposed {} switches of \
         free-pool hosts; each was planned and applied through twine-profiles on a directory \
         standing for the host's `/` (`host-roots/host-N`), read back, then recorded in the \
         allocator, and the waiting tasks placed.\n",
        o.switches.len()
    );
    if let Some(s) = o.switches.first() {
        let _ = writeln!(m, "host {} ({} -> {}):\n", s.host.0, s.from, s.to);
        for c in &s.changes {
            let _ = writeln!(m, "- `{c}`");
        }
    }
    let _ = writeln!(
        m,
        "\n{} of {} switched hosts verified (nothing left to plan, nothing drifted).\n",
        o.switches.iter().filter(|s| s.verified).count(),
        o.switches.len()
    );
    let _ = writeln!(m, "## 4. Units\n");
    let _ = writeln!(
        m,
        "| job | units | systemd-analyze verify |\n| --- | --- | --- |"
    );
    for j in &o.jobs {
        let _ = writeln!(m, "| {} | {} | {} |", j.name, j.units.join(" "), j.verify);
    }
    let _ = writeln!(
        m,
        "\nThe web spec:\n\n```toml\n{}```\n\nand its main unit:\n\n```ini\n{}```\n",
        o.spec_example, o.unit_example
    );
    let d = &o.drain;
    let _ = writeln!(m, "## 5. Maintenance: a rack drained through TaskControl\n");
    let moved: Vec<String> = d.moved.iter().map(|(j, n)| format!("{n} {j}")).collect();
    let _ = writeln!(
        m,
        "Rack {} ({} hosts, {} tasks, {} of them cache tasks) is drained: an advance notice \
         to every job with a 4-hour deadline, and a move offered for each task. Every job but \
         the cache approves at once; the cache answers with its own controller (3 replicas \
         per shard, neighbouring tasks share shards), which approves a move only if no shard \
         it holds has a replica down. It held back {} move requests until the moves before \
         them had landed; at most {} replica(s) of one shard moved at once.\n\n\
         Moved: {}; stopped at the deadline: {}; the rack was empty after {} minutes.\n",
        d.rack,
        d.hosts,
        d.tasks,
        d.cache_tasks,
        d.held_back,
        d.max_replicas_moving,
        moved.join(", "),
        d.stopped,
        d.minutes
    );
    let r = &o.rollout;
    let _ = writeln!(m, "## 6. Maintenance: a rollout across the region\n");
    let waves: Vec<String> = r.waves.iter().map(ToString::to_string).collect();
    let _ = writeln!(
        m,
        "A live host update in waves of {} hosts (canaries, then 1 %, 5 %, 25 %, 100 %), at \
         most 2 hosts per rack, 20 per power domain and 200 per datacenter at once, a health \
         gate after each wave: {} of {} hosts updated in {:.1} simulated hours, {} trailing.\n\n\
         ![rollout progress](rollout.svg)\n",
        waves.join(", "),
        r.updated,
        r.hosts,
        r.hours,
        r.trailing
    );
    let s = &o.memory.summary;
    let _ = writeln!(m, "## 7. Memory: the resizer\n");
    let _ = writeln!(
        m,
        "Senpai (memory.high mode, its defaults) on one task with 200 MiB hot and 1 GiB cold \
         memory, for {} minutes: {:.0} MiB of cold memory given back, {:.1} MiB of the hot set \
         missing at the end, 90 % of the cold set gone {}.\n\n![memory.high over time](memory.svg)\n",
        o.memory.workload.duration_s / 60,
        mib(s.cold_given_back),
        mib(s.hot_missing),
        s.converged_at_s
            .map_or("never within the run".to_owned(), |t| format!("at {t} s"))
    );
    let _ = writeln!(m, "## Plots\n");
    for (file, what) in PLOTS {
        let _ = writeln!(m, "- [{file}]({file}): {what}");
    }
    m
}

const TYPE_COLOURS: [RGBColor; 3] = [
    RGBColor(66, 133, 244),
    RGBColor(219, 68, 55),
    RGBColor(15, 157, 88),
];

fn entitlements_plot(path: &Path, o: &Outcome) -> Result<(), Error> {
    let types = ["small", "big", "gpu"];
    let top = o
        .entitlements
        .iter()
        .map(|e| e.hosts)
        .max()
        .unwrap_or(1)
        .max(1) as f64
        * 1.15;
    let n = o.entitlements.len() as f64;
    let area = SVGBackend::new(path, (800, 480)).into_drawing_area();
    area.fill(&WHITE)?;
    let mut chart = ChartBuilder::on(&area)
        .caption("twine demo: hosts per entitlement", ("sans-serif", 20))
        .margin(10)
        .x_label_area_size(30)
        .y_label_area_size(60)
        .build_cartesian_2d(0.0..n, 0.0..top)?;
    let names: Vec<String> = o.entitlements.iter().map(|e| e.name.clone()).collect();
    chart
        .configure_mesh()
        .disable_x_mesh()
        .x_labels(names.len() * 2 + 1)
        .x_label_formatter(&|x| bar_label(&names, *x))
        .y_desc("hosts")
        .draw()?;
    for (k, t) in types.iter().enumerate() {
        let colour = TYPE_COLOURS[k];
        let bars: Vec<_> = o
            .entitlements
            .iter()
            .enumerate()
            .map(|(i, e)| {
                let below: usize = types[..k]
                    .iter()
                    .map(|t| e.by_type.get(*t).copied().unwrap_or(0))
                    .sum();
                let here = e.by_type.get(*t).copied().unwrap_or(0);
                let x = i as f64;
                Rectangle::new(
                    [(x + 0.2, below as f64), (x + 0.8, (below + here) as f64)],
                    colour.filled(),
                )
            })
            .collect();
        chart
            .draw_series(bars)?
            .label(*t)
            .legend(move |(x, y)| Rectangle::new([(x, y - 5), (x + 15, y + 5)], colour.filled()));
    }
    chart
        .configure_series_labels()
        .background_style(WHITE)
        .border_style(BLACK)
        .draw()?;
    area.present()?;
    Ok(())
}

fn utilisation_plot(path: &Path, o: &Outcome) -> Result<(), Error> {
    let n = o.entitlements.len() as f64;
    let area = SVGBackend::new(path, (800, 480)).into_drawing_area();
    area.fill(&WHITE)?;
    let mut chart = ChartBuilder::on(&area)
        .caption(
            "twine demo: allocated share of each entitlement's hosts",
            ("sans-serif", 20),
        )
        .margin(10)
        .x_label_area_size(30)
        .y_label_area_size(60)
        .build_cartesian_2d(0.0..n, 0.0..110.0)?;
    let names: Vec<String> = o.entitlements.iter().map(|e| e.name.clone()).collect();
    chart
        .configure_mesh()
        .disable_x_mesh()
        .x_labels(names.len() * 2 + 1)
        .x_label_formatter(&|x| bar_label(&names, *x))
        .y_desc("% allocated")
        .draw()?;
    for (k, (label, colour)) in [("CPU", TYPE_COLOURS[0]), ("memory", TYPE_COLOURS[1])]
        .into_iter()
        .enumerate()
    {
        let bars: Vec<_> = o
            .entitlements
            .iter()
            .enumerate()
            .map(|(i, e)| {
                let v = if k == 0 { e.cpu_used } else { e.memory_used } * 100.0;
                let x = i as f64 + 0.15 + 0.35 * k as f64;
                Rectangle::new([(x, 0.0), (x + 0.33, v)], colour.filled())
            })
            .collect();
        chart
            .draw_series(bars)?
            .label(label)
            .legend(move |(x, y)| Rectangle::new([(x, y - 5), (x + 15, y + 5)], colour.filled()));
    }
    chart
        .configure_series_labels()
        .background_style(WHITE)
        .border_style(BLACK)
        .draw()?;
    area.present()?;
    Ok(())
}

fn rollout_plot(path: &Path, o: &Outcome) -> Result<(), Error> {
    let r = &o.rollout;
    let end = r.hours.max(0.1);
    let area = SVGBackend::new(path, (800, 480)).into_drawing_area();
    area.fill(&WHITE)?;
    let mut chart = ChartBuilder::on(&area)
        .caption(
            "twine demo: a live host update in waves across the region",
            ("sans-serif", 20),
        )
        .margin(10)
        .x_label_area_size(30)
        .y_label_area_size(70)
        .build_cartesian_2d(0.0..end, 0.0..(r.hosts.max(1) as f64 * 1.05))?;
    chart
        .configure_mesh()
        .x_desc("simulated hours")
        .y_desc("hosts updated")
        .draw()?;
    chart.draw_series(LineSeries::new(
        r.progress.iter().map(|(t, n)| (*t, *n as f64)),
        &BLUE,
    ))?;
    area.present()?;
    Ok(())
}

fn memory_plot(path: &Path, o: &Outcome) -> Result<(), Error> {
    let area = SVGBackend::new(path, (800, 480)).into_drawing_area();
    area.fill(&WHITE)?;
    crate::oomd::draw_memory(
        &area,
        "twine demo: Senpai sizing one task's memory",
        20,
        &o.memory.rows,
    )?;
    area.present()?;
    Ok(())
}

/// The name under bar `i`, centred at `i + 0.5`; no label elsewhere.
fn bar_label(names: &[String], x: f64) -> String {
    names
        .iter()
        .enumerate()
        .find(|(i, _)| (x - (*i as f64 + 0.5)).abs() < 0.01)
        .map(|(_, n)| n.clone())
        .unwrap_or_default()
}
