//! What a scenario measured, printed as a table or as one JSON object.

use serde_json::{Value, json};

/// One measured number.
#[derive(Clone)]
pub struct Figure {
    pub label: String,
    pub value: f64,
    pub unit: &'static str,
}

pub fn fig(label: impl Into<String>, value: f64, unit: &'static str) -> Figure {
    Figure {
        label: label.into(),
        value,
        unit,
    }
}

/// Whether the scenario's target was reached.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Met,
    Missed,
    /// The scenario reports a figure and has no pass mark.
    Reported,
}

pub struct Report {
    pub name: String,
    pub figures: Vec<Figure>,
    pub baseline: Vec<Figure>,
    /// Hearth's figure divided by the baseline's, as the target states it.
    pub ratio: Option<(String, f64)>,
    pub target: String,
    pub verdict: Verdict,
    pub notes: Vec<String>,
}

impl Report {
    pub fn new(name: impl Into<String>, target: impl Into<String>) -> Self {
        Self {
            name: name.into(),
            figures: Vec::new(),
            baseline: Vec::new(),
            ratio: None,
            target: target.into(),
            verdict: Verdict::Reported,
            notes: Vec::new(),
        }
    }

    /// Sets the verdict from several conditions: met only if all hold.
    pub fn judge(&mut self, conditions: &[bool]) {
        self.verdict = if conditions.iter().all(|c| *c) {
            Verdict::Met
        } else {
            Verdict::Missed
        };
    }

    pub fn to_json(&self) -> Value {
        let figures = |f: &[Figure]| {
            Value::Object(
                f.iter()
                    .map(|f| {
                        (
                            f.label.clone(),
                            json!({"value": round(f.value), "unit": f.unit}),
                        )
                    })
                    .collect(),
            )
        };
        json!({
            "scenario": self.name,
            "figures": figures(&self.figures),
            "baseline": figures(&self.baseline),
            "ratio": self.ratio.as_ref().map(|(l, r)| json!({"what": l, "value": round(*r)})),
            "target": self.target,
            "met": match self.verdict {
                Verdict::Met => json!(true),
                Verdict::Missed => json!(false),
                Verdict::Reported => Value::Null,
            },
            "notes": self.notes,
        })
    }

    pub fn print(&self) {
        let verdict = match self.verdict {
            Verdict::Met => "MET",
            Verdict::Missed => "MISSED",
            Verdict::Reported => "reported",
        };
        println!("\n## {} — target: {} — {verdict}", self.name, self.target);
        for f in &self.figures {
            println!("  {:<52} {:>12} {}", f.label, show(f.value), f.unit);
        }
        for f in &self.baseline {
            println!(
                "  baseline: {:<42} {:>12} {}",
                f.label,
                show(f.value),
                f.unit
            );
        }
        if let Some((label, r)) = &self.ratio {
            println!("  ratio: {label:<45} {:>12}", format!("{r:.2}x"));
        }
        for n in &self.notes {
            println!("  note: {n}");
        }
    }
}

fn round(v: f64) -> f64 {
    if v.abs() >= 100.0 {
        v.round()
    } else {
        (v * 1000.0).round() / 1000.0
    }
}

fn show(v: f64) -> String {
    if v.abs() >= 100.0 {
        format!("{v:.0}")
    } else {
        format!("{v:.3}")
    }
}

/// Percentile `p` (0–100) of sorted durations, in milliseconds.
pub fn percentile_ms(sorted: &[std::time::Duration], p: usize) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let index = (sorted.len() * p / 100).min(sorted.len() - 1);
    sorted[index].as_secs_f64() * 1e3
}

/// The machine, so a result can be read against where it was measured.
pub fn machine() -> Value {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let model = cpuinfo
        .lines()
        .find(|l| l.starts_with("model name"))
        .and_then(|l| l.split(':').nth(1))
        .map(|m| m.trim().to_owned())
        .unwrap_or_else(|| "unknown".into());
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    let memory_kb = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| {
            m.lines()
                .find(|l| l.starts_with("MemTotal:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|n| n.parse::<u64>().ok())
        })
        .unwrap_or(0);
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    json!({
        "cpu": model,
        "cores": cores,
        "memory_gib": (memory_kb as f64 / 1024.0 / 1024.0 * 10.0).round() / 10.0,
        "kernel": kernel.trim(),
    })
}

/// Peak resident memory of a process, in MiB, from /proc (Linux).
pub fn peak_rss_mib(pid: Option<u32>) -> Option<f64> {
    memory_mib(pid, "VmHWM:")
}

/// Resident memory of a process now, in MiB (Linux).
pub fn rss_mib(pid: Option<u32>) -> Option<f64> {
    memory_mib(pid, "VmRSS:")
}

fn memory_mib(pid: Option<u32>, field: &str) -> Option<f64> {
    let path = match pid {
        Some(pid) => format!("/proc/{pid}/status"),
        None => "/proc/self/status".to_owned(),
    };
    let status = std::fs::read_to_string(path).ok()?;
    let kb: f64 = status
        .lines()
        .find(|l| l.starts_with(field))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()?;
    Some(kb / 1024.0)
}
