//! The `berth` command line: `serve [CONFIG]`, `verify CONFIG`, `--version`.
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
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("berth: {e:#}");
            ExitCode::from(2)
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Verify { config } => {
            let config = Config::load(&config)?;
            println!("{}", config::to_pretty_json(&config));
            Ok(())
        }
        Command::Serve { config } => {
            let config = match config {
                Some(path) => Config::load(&path)?,
                None => Config::embedded_default(),
            };
            init_logging(&config)?;
            let app = App::start(&config)?;
            app.run();
            Ok(())
        }
    }
}

fn init_logging(config: &Config) -> anyhow::Result<()> {
    let filter = tracing_subscriber::EnvFilter::new(format!("berth={}", config.log.level));
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
