//! hearth-bench: Hearth's scenarios measured side by side with the baseline each should
//! approach, in the same run, on this machine. Ratios are what count; absolute times
//! move with the machine.
//!
//!     cargo run --release -p hearth-tests --bin hearth-bench -- [--quick] [--json] [--only NAME,...]
//!
//! Scenario names for `--only`: put, trace, view, sync (new device, one edit,
//! revocation, blob sync), blobs (upload, A to B, against disk baselines), pim (import,
//! CardDAV sync, CardDAV upload under client names), cold, seal, process (real `hearth` processes at 1k/10k/100k records;
//! `--scale` adds 1M), life (a vault that is half mail, 100k records; `--scale`: 1M),
//! reconcile (two devices of a vault of life's size: a new device, then meeting again
//! with nothing or one record changed), thumbnails (a 24 MP JPEG, first and kept),
//! search (100k records; `--quick`: 20k).

mod blobs;
mod cold;
mod life;
mod mail;
mod nodes;
mod pim;
mod process;
mod put;
mod reconcile;
mod report;
mod search;
mod sync;
mod thumbs;
mod trace;
mod view;

use std::path::PathBuf;
use std::time::{Duration, Instant};

use clap::Parser;
use report::Report;

#[derive(Parser)]
#[command(about = "Measure Hearth against its baselines, side by side")]
struct Args {
    /// A shorter run (under 2 minutes on 2 cores): smaller blobs, shorter load phases.
    #[arg(long)]
    quick: bool,
    /// Print one JSON object instead of a table.
    #[arg(long)]
    json: bool,
    /// Only these scenarios (comma-separated): put, trace, view, sync, blobs, pim, cold,
    /// seal, process, life, reconcile.
    #[arg(long, value_delimiter = ',')]
    only: Vec<String>,
    /// Also run the process-level scenarios on a vault of 1,000,000 records, and make
    /// the life's vault 1,000,000 records (minutes; not part of CI).
    #[arg(long)]
    scale: bool,
    /// The process-level scenarios at these sizes only (records, comma-separated).
    #[arg(long, value_delimiter = ',')]
    sizes: Vec<usize>,
    /// Where vaults and baselines write (the disk being measured).
    #[arg(long, env = "TMPDIR", default_value = "/tmp")]
    dir: PathBuf,
    /// Internal: run one side of a scenario in this process.
    #[arg(hide = true, trailing_var_arg = true)]
    child: Vec<String>,
}

pub struct Opts {
    pub quick: bool,
    pub scale: bool,
    pub sizes: Vec<usize>,
    pub dir: PathBuf,
}

impl Opts {
    /// How long each load phase runs.
    pub fn duration(&self) -> Duration {
        if self.quick {
            Duration::from_secs(2)
        } else {
            Duration::from_secs(8)
        }
    }
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    match args
        .child
        .iter()
        .map(String::as_str)
        .collect::<Vec<_>>()
        .as_slice()
    {
        [] => {}
        ["child-edit-trace", side, batch, trace, dir] => {
            return trace::child(side, batch.parse()?, trace.as_ref(), dir.as_ref());
        }
        ["child-cold-start", home] => return cold::child(home.as_ref()),
        other => anyhow::bail!("unexpected arguments: {other:?}"),
    }
    let opts = Opts {
        quick: args.quick,
        scale: args.scale,
        sizes: args.sizes,
        dir: args.dir,
    };
    let wanted = |name: &str| args.only.is_empty() || args.only.iter().any(|o| o == name);
    let started = Instant::now();
    let runtime = tokio::runtime::Runtime::new()?;
    let mut reports: Vec<Report> = Vec::new();
    let mut show = |r: Report| {
        if !args.json {
            r.print();
        }
        reports.push(r);
    };
    if !args.json {
        println!(
            "hearth-bench ({}) on {}",
            if opts.quick { "quick" } else { "full" },
            report::machine()
        );
    }
    if wanted("put") {
        show(runtime.block_on(put::durable_put(&opts))?);
    }
    if wanted("trace") {
        show(trace::edit_trace(&opts)?);
    }
    if wanted("view") {
        show(runtime.block_on(view::view_reads(&opts))?);
    }
    if wanted("sync") {
        for r in runtime.block_on(sync::two_devices(&opts))? {
            show(r);
        }
    }
    if wanted("blobs") {
        for r in runtime.block_on(blobs::blobs(&opts))? {
            show(r);
        }
    }
    if wanted("pim") {
        for r in runtime.block_on(pim::contacts_and_calendars(&opts))? {
            show(r);
        }
    }
    if wanted("mail") {
        show(runtime.block_on(mail::mail_import(&opts))?);
    }
    if wanted("cold") {
        show(runtime.block_on(cold::cold_start(&opts))?);
    }
    if wanted("process") {
        for r in runtime.block_on(process::scenarios(&opts))? {
            show(r);
        }
    }
    if wanted("life") {
        for r in runtime.block_on(life::life_vault(&opts))? {
            show(r);
        }
    }
    if wanted("reconcile") {
        for r in runtime.block_on(reconcile::two_devices_at_size(&opts))? {
            show(r);
        }
    }
    if wanted("search") {
        show(runtime.block_on(search::search_scenario(&opts))?);
    }
    if wanted("thumbnails") {
        show(runtime.block_on(thumbs::thumbnails(&opts))?);
    }
    if wanted("seal") {
        show(runtime.block_on(put::sealing(&opts))?);
    }
    let elapsed = started.elapsed();
    if args.json {
        let out = serde_json::json!({
            "quick": opts.quick,
            "machine": report::machine(),
            "seconds": elapsed.as_secs_f64().round(),
            "scenarios": reports.iter().map(Report::to_json).collect::<Vec<_>>(),
        });
        println!("{}", serde_json::to_string_pretty(&out)?);
    } else {
        let missed: Vec<&str> = reports
            .iter()
            .filter(|r| r.verdict == report::Verdict::Missed)
            .map(|r| r.name.as_str())
            .collect();
        println!(
            "\n{} scenarios in {elapsed:.1?}; targets missed: {missed:?}",
            reports.len()
        );
    }
    Ok(())
}

/// The next number of a xorshift64 generator: cheap, deterministic numbers for data
/// that must not repeat (a `state` of 0 stays 0).
fn xorshift(state: &mut u64) -> u64 {
    *state ^= *state << 13;
    *state ^= *state >> 7;
    *state ^= *state << 17;
    *state
}
