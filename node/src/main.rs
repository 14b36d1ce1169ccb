//! The `meridian` binary: `meridian up` runs one region node; other
//! subcommands are tools around it (`regions check`).

use clap::{Parser, Subcommand};
use std::net::SocketAddr;
use std::path::PathBuf;

#[derive(Parser)]
#[command(
    name = "meridian",
    version,
    about = "Meridian multiplayer game backend: one region node"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run a region node on embedded storage.
    Up {
        /// TOML config file.
        #[arg(long)]
        config: Option<PathBuf>,
        #[arg(long)]
        data_dir: Option<PathBuf>,
        /// Region name (a file under regions/).
        #[arg(long)]
        region: Option<String>,
        /// HTTP listen address (default from the region file, 127.0.0.1:7700).
        #[arg(long)]
        http: Option<SocketAddr>,
        /// auto (text on a terminal, JSON otherwise), text or json.
        #[arg(long)]
        log_format: Option<String>,
    },
    /// Load bots that behave like players (loopback targets only by default).
    Bots {
        /// Node URL(s), comma-separated.
        #[arg(long, value_delimiter = ',')]
        target: Vec<String>,
        #[arg(long, default_value_t = 100)]
        players: usize,
        /// login-storm, profile-read or telemetry.
        #[arg(long)]
        scenario: String,
        /// e.g. 10s, 2m.
        #[arg(long, default_value = "10s")]
        duration: String,
        /// Open loop at this many requests per second (default: closed loop).
        #[arg(long)]
        rate: Option<u64>,
        /// Closed-loop workers.
        #[arg(long, default_value_t = 64)]
        concurrency: usize,
        /// Write the report as JSON.
        #[arg(long)]
        json: Option<PathBuf>,
        #[arg(long)]
        allow_remote: bool,
        /// No live progress line.
        #[arg(long)]
        quiet: bool,
    },
    /// Region catalog tools.
    Regions {
        #[command(subcommand)]
        command: RegionsCommand,
    },
}

#[derive(Subcommand)]
enum RegionsCommand {
    /// Validate every region file; errors name the file and the field.
    Check {
        #[arg(default_value = "regions")]
        dir: PathBuf,
    },
}

fn main() -> std::process::ExitCode {
    // One crypto provider for rustls everywhere (QUIC, TLS clients): aws-lc-rs.
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    let cli = Cli::parse();
    match cli.command {
        Command::Up {
            config,
            data_dir,
            region,
            http,
            log_format,
        } => {
            let flags = meridian::config::Overrides {
                region,
                data_dir,
                http_addr: http,
                log_format,
            };
            let cfg = match meridian::config::load(config.as_deref(), std::env::vars(), &flags) {
                Ok(c) => c,
                Err(e) => {
                    eprintln!("meridian: {e:#}");
                    return std::process::ExitCode::from(2);
                }
            };
            meridian::node::init_logging(&cfg.log_format);
            let rt = match tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()
            {
                Ok(rt) => rt,
                Err(e) => {
                    eprintln!("meridian: cannot start runtime: {e}");
                    return std::process::ExitCode::FAILURE;
                }
            };
            match rt.block_on(meridian::node::run(cfg)) {
                Ok(()) => std::process::ExitCode::SUCCESS,
                Err(e) => {
                    tracing::error!(error = %format!("{e:#}"), "node failed");
                    eprintln!("meridian: {e:#}");
                    std::process::ExitCode::FAILURE
                }
            }
        }
        Command::Bots {
            target,
            players,
            scenario,
            duration,
            rate,
            concurrency,
            json,
            allow_remote,
            quiet,
        } => {
            let duration = match meridian_sim::bots::parse_duration(&duration) {
                Ok(d) => d,
                Err(e) => {
                    eprintln!("meridian bots: --duration: {e}");
                    return std::process::ExitCode::from(2);
                }
            };
            let targets = if target.is_empty() {
                vec!["http://127.0.0.1:7700".to_string()]
            } else {
                target
            };
            let cfg = meridian_sim::bots::BotConfig {
                targets,
                players,
                scenario,
                duration,
                rate,
                concurrency,
                allow_remote,
                progress: !quiet,
            };
            let rt = match tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()
            {
                Ok(rt) => rt,
                Err(e) => {
                    eprintln!("meridian bots: cannot start runtime: {e}");
                    return std::process::ExitCode::FAILURE;
                }
            };
            match rt.block_on(meridian_sim::bots::run(cfg)) {
                Ok(report) => {
                    print!("{}", report.table());
                    if let Some(path) = json {
                        let text = serde_json::to_string_pretty(&report).unwrap_or_default();
                        if let Err(e) = std::fs::write(&path, text) {
                            eprintln!("meridian bots: writing {}: {e}", path.display());
                            return std::process::ExitCode::FAILURE;
                        }
                    }
                    std::process::ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("meridian bots: {e}");
                    std::process::ExitCode::from(2)
                }
            }
        }
        Command::Regions {
            command: RegionsCommand::Check { dir },
        } => match meridian::regions::check_catalog(&dir) {
            Ok(regions) => {
                println!(
                    "{}: {} regions OK: {}",
                    dir.display(),
                    regions.len(),
                    regions.keys().cloned().collect::<Vec<_>>().join(", ")
                );
                std::process::ExitCode::SUCCESS
            }
            Err(errors) => {
                for e in errors {
                    eprintln!("error: {e}");
                }
                std::process::ExitCode::FAILURE
            }
        },
    }
}
