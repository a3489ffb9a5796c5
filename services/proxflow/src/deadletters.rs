//! `proxflow deadletters` (what consumers gave up on, newest first, with the `PF_EVT` sequence that
//! names each and whether it was replayed) and `proxflow deadletters replay <seq>` (the original
//! published again, once), rendered from [`proxflow_view::deadletters`].
//!
//! A replay publishes on whatever subject the original had (ingest, command or event), so it runs
//! as a user allowed to publish everywhere: the admin user the CLI normally runs as. No service
//! user may.

use chrono::Utc;
use proxflow_runtime::bus::{self, Bus};
use proxflow_runtime::ops::Metrics;
use proxflow_view::deadletters::{self, DEFAULT_LIMIT, Filter, Letter};

use crate::listing::{Table, at, print_json};
use crate::provision::wire_name;
use crate::settings::Settings;

/// How much of a letter's detail the table shows (`--json` has all of it).
const DETAIL_WIDTH: usize = 120;

/// `proxflow deadletters ...`.
#[derive(Debug, clap::Args)]
#[command(args_conflicts_with_subcommands = true)]
pub struct DeadLettersArgs {
    #[command(subcommand)]
    command: Option<DeadLetterCommand>,
    /// Only those of this consumer (its durable name: workflow-provision, orchestrator-provision, ...).
    #[arg(long)]
    consumer: Option<String>,
    /// Only those since: a duration back (90m, 2d) or an RFC 3339 time [default: all the stream keeps].
    #[arg(long, value_parser = crate::listing::since)]
    since: Option<chrono::DateTime<Utc>>,
    /// At most this many, the newest.
    #[arg(long, default_value_t = DEFAULT_LIMIT)]
    limit: usize,
    /// Print the letters as JSON.
    #[arg(long)]
    json: bool,
}

/// `proxflow deadletters <command>`.
#[derive(Debug, clap::Subcommand)]
pub enum DeadLetterCommand {
    /// Publish the original of dead letter <seq> again (its subject, headers and payload), once:
    /// a second replay of the same letter is refused. Fix the cause first.
    Replay {
        /// The letter's sequence in PF_EVT (the SEQ column of `proxflow deadletters`).
        seq: u64,
        /// Print the replay as JSON.
        #[arg(long)]
        json: bool,
    },
}

async fn connect(settings: &Settings, name: &str) -> anyhow::Result<Bus> {
    Ok(bus::connect(&settings.nats, name, Metrics::new()).await?)
}

/// Runs `proxflow deadletters ...`.
pub async fn run(settings: &Settings, args: DeadLettersArgs) -> anyhow::Result<()> {
    match args.command {
        Some(DeadLetterCommand::Replay { seq, json }) => replay(settings, seq, json).await,
        None => {
            let bus = connect(settings, "proxflow deadletters").await?;
            let filter = Filter {
                consumer: args.consumer,
                since: args.since,
                limit: args.limit,
            };
            let letters = deadletters::list(&bus, &filter).await?;
            if args.json {
                return print_json(&letters);
            }
            if letters.is_empty() {
                println!("no dead letters");
            } else {
                print!("{}", render(&letters));
            }
            Ok(())
        }
    }
}

async fn replay(settings: &Settings, seq: u64, json: bool) -> anyhow::Result<()> {
    let bus = connect(settings, "proxflow deadletters replay").await?;
    let by = std::env::var("USER")
        .or_else(|_| std::env::var("LOGNAME"))
        .map_or_else(|_| "cli".to_owned(), |user| format!("cli:{user}"));
    let done = deadletters::replay(&bus, seq, &by).await?;
    if json {
        return print_json(&done);
    }
    let stored = done
        .stored_as
        .map(|s| format!("sequence {s}"))
        .unwrap_or_default();
    println!(
        "replayed dead letter {seq} to {}: {} {stored} (Nats-Msg-Id {})",
        done.subject,
        if done.duplicate {
            "already stored by an earlier attempt as"
        } else {
            "stored as"
        },
        done.msg_id
    );
    Ok(())
}

fn render(letters: &[Letter]) -> String {
    let mut table = Table::new(&[
        "SEQ",
        "CONSUMER",
        "REASON",
        "AT",
        "DELIVERIES",
        "SUBJECT",
        "REPLAYED",
        "DETAIL",
    ]);
    for l in letters {
        let d = &l.letter;
        let detail: String = if d.detail.chars().count() > DETAIL_WIDTH {
            let cut: String = d.detail.chars().take(DETAIL_WIDTH - 1).collect();
            format!("{cut}…")
        } else {
            d.detail.clone()
        };
        table.row([
            l.seq.to_string(),
            d.consumer.clone(),
            wire_name(d.reason),
            at(d.dead_lettered_at),
            d.deliveries.to_string(),
            d.subject.clone(),
            l.replayed
                .as_ref()
                .map(|r| format!("replayed {} by {}", at(r.at), r.by))
                .unwrap_or_default(),
            detail,
        ]);
    }
    table.render("")
}
