//! The `berth` command line: `serve [CONFIG]`, `verify CONFIG`, `gc [CONFIG] [--dry-run]`,
//! `scrub [CONFIG]`, `--version`.
//! Errors become one line on stderr and a non-zero exit code.

use anyhow::Context;
use berth::app::App;
use berth::config::{self, Config};
use clap::{Parser, Subcommand};
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(Parser)]
#[command(
    name = "berth",
    version,
    about = "An OCI registry on OCI image layouts"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Serve the registry; with no CONFIG, the embedded default (./berth-data on 127.0.0.1:5000).
    Serve {
        /// A zot-format JSON config file.
        config: Option<PathBuf>,
    },
    /// Check a config file and print it resolved.
    Verify {
        /// A zot-format JSON config file.
        config: PathBuf,
    },
    /// Collect garbage once, as the config's gc and retention settings say, and print what
    /// was removed per repository. Refuses while another berth uses a root (it collects
    /// online itself), unless --dry-run.
    Gc {
        /// A zot-format JSON config file; without one, the embedded default, as `serve`.
        config: Option<PathBuf>,
        /// Print what would be removed, and remove nothing.
        #[arg(long)]
        dry_run: bool,
    },
    /// Re-hash every blob the repositories reference and print a table of what is affected;
    /// exits with 1 when anything is. Refuses while another berth uses a root (its own scrub
    /// runs online). Repairs and deletes nothing.
    Scrub {
        /// A zot-format JSON config file; without one, the embedded default, as `serve`.
        config: Option<PathBuf>,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli) {
        Ok(Outcome::Clean) => ExitCode::SUCCESS,
        Ok(Outcome::Affected) => ExitCode::from(1),
        Err(e) => {
            eprintln!("berth: {}", one_line(&e));
            ExitCode::from(2)
        }
    }
}

/// The error and its causes on one line, each cause said once: berth's errors already name
/// their cause in their message, which `{:#}` would repeat (a bad root printed the same OS
/// error three times).
fn one_line(e: &anyhow::Error) -> String {
    let mut line = e.to_string();
    for cause in e.chain().skip(1) {
        let cause = cause.to_string();
        if !line.contains(&cause) {
            line.push_str(": ");
            line.push_str(&cause);
        }
    }
    line
}

/// How a command that finished ended.
enum Outcome {
    /// Nothing to report.
    Clean,
    /// `scrub` found affected blobs.
    Affected,
}

fn run(cli: Cli) -> anyhow::Result<Outcome> {
    match cli.command {
        Command::Verify { config } => {
            let config = Config::load(&config)?;
            for warning in &config.warnings {
                eprintln!("berth: warning: {warning}");
            }
            println!("{}", config::to_pretty_json(&config));
            Ok(Outcome::Clean)
        }
        Command::Gc { config, dry_run } => {
            collect_once(&load_or_default(config.as_deref())?, dry_run)?;
            Ok(Outcome::Clean)
        }
        Command::Scrub { config } => scrub_once(&load_or_default(config.as_deref())?),
        Command::Serve { config } => {
            let config = load_or_default(config.as_deref())?;
            init_logging(&config)?;
            for warning in &config.warnings {
                tracing::warn!("{warning}");
            }
            let app = App::start(&config)?;
            app.run().context("starting the request workers")?;
            Ok(Outcome::Clean)
        }
    }
}

/// The config file given, or the embedded default every command shares.
fn load_or_default(path: Option<&std::path::Path>) -> anyhow::Result<Config> {
    Ok(match path {
        Some(path) => Config::load(path)?,
        None => Config::embedded_default(),
    })
}

fn init_logging(config: &Config) -> anyhow::Result<()> {
    // tiny_http logs through the `log` crate; `init` below bridges those records into
    // tracing, and this lets them through: refused connections and failed accepts are
    // reported there (issue 10, points 9 and 10).
    let level = &config.log.level;
    let filter = tracing_subscriber::EnvFilter::new(format!("berth={level},tiny_http={level}"));
    let builder = tracing_subscriber::fmt().with_env_filter(filter);
    match &config.log.output {
        Some(path) => {
            let file = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(path)
                .with_context(|| format!("log.output: cannot open {}", path.display()))?;
            builder
                .with_ansi(false)
                .with_writer(std::sync::Mutex::new(file))
                .init();
        }
        None => builder
            .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
            .with_writer(std::io::stderr)
            .init(),
    }
    Ok(())
}

/// What an offline command writes into the roots it locks, for a refused server to name.
fn offline_holder(command: &str) -> String {
    format!("berth {command} (pid {})", std::process::id())
}

/// `berth gc`: one sweep of every store, printed as a table.
fn collect_once(config: &Config, dry_run: bool) -> anyhow::Result<()> {
    // A dry run changes nothing, so it may read a root a server holds.
    let holder = (!dry_run).then(|| offline_holder("gc"));
    let (stores, _locks) = berth::app::open_stores(config, holder.as_deref())?;
    let mut failed = Vec::new();
    println!(
        "{:<32} {:<8} {:<80} {:>12}  WHY",
        "REPOSITORY", "WHAT", "NAME", "BYTES"
    );
    for opened in &stores {
        let sweep = berth::storage::collector::sweep(
            &opened.store,
            &opened.key,
            &opened.settings.gc,
            dry_run,
        )?;
        for c in &sweep.collected {
            let repo = c.repository.as_str();
            for (tag, digest) in &c.tags {
                println!(
                    "{repo:<32} {:<8} {:<80} {:>12}  retention: tag of {digest}",
                    "tag", tag, ""
                );
            }
            for (digest, why) in &c.manifests {
                println!(
                    "{repo:<32} {:<8} {:<80} {:>12}  {why}",
                    "manifest",
                    digest.to_string(),
                    ""
                );
            }
            for (digest, size) in &c.blobs {
                println!(
                    "{repo:<32} {:<8} {:<80} {size:>12}  unreferenced",
                    "blob",
                    digest.to_string()
                );
            }
            for (id, size) in &c.uploads {
                println!("{repo:<32} {:<8} {:<80} {size:>12}  idle", "upload", id);
            }
            if c.repository_removed {
                println!("{repo:<32} {:<8} {:<80} {:>12}  empty", "repo", repo, "");
            }
        }
        failed.extend(sweep.failed);
    }
    let verb = if dry_run {
        "would be removed; nothing was"
    } else {
        "removed"
    };
    println!("({verb})");
    for (repo, reason) in &failed {
        eprintln!("berth: gc: {repo}: {reason}");
    }
    if !failed.is_empty() {
        anyhow::bail!("{} repositories could not be collected", failed.len());
    }
    Ok(())
}

/// `berth scrub`: every store, printed as zot's table.
fn scrub_once(config: &Config) -> anyhow::Result<Outcome> {
    let (stores, _locks) = berth::app::open_stores(config, Some(&offline_holder("scrub")))?;
    println!(
        "{:<32} {:<24} {:<9} {:<72} ERROR",
        "REPOSITORY", "TAG", "STATUS", "AFFECTED BLOB"
    );
    let mut affected = false;
    for opened in &stores {
        let report = opened.store.scrub(&opened.key, opened.settings.gc.delay)?;
        affected |= report.affected();
        for repo in &report.repositories {
            let name = repo.repository.as_str();
            if let Some(error) = &repo.error {
                println!("{name:<32} {:<24} {:<9} {:<72} {error}", "", "affected", "");
            }
            for image in &repo.images {
                let tag = image
                    .tag
                    .clone()
                    .unwrap_or_else(|| image.digest.to_string());
                if image.affected.is_empty() {
                    println!("{name:<32} {tag:<24} {:<9}", "ok");
                }
                for blob in &image.affected {
                    println!(
                        "{name:<32} {tag:<24} {:<9} {:<72} {}",
                        "affected",
                        blob.digest.to_string(),
                        blob.error
                    );
                }
            }
        }
    }
    Ok(if affected {
        Outcome::Affected
    } else {
        Outcome::Clean
    })
}
