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
        /// Replace the node running on this data dir in place (blue/green):
        /// it hands over leadership, drains its game servers and passes its
        /// HTTP listener to this process. Exits 3 when no node runs there,
        /// 4 when the running node refused (it keeps serving).
        #[arg(long)]
        takeover: bool,
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
        /// A `server` role token (needed by the economy scenario to grant coins).
        #[arg(long, env = "MERIDIAN_BOTS_SERVER_TOKEN")]
        server_token: Option<String>,
    },
    /// Cluster PKI: the CA and node certificates for the mesh's mutual TLS.
    Certs {
        #[command(subcommand)]
        command: CertsCommand,
    },
    /// Measure every region's beacon (UDP echo) and pick the nearest.
    PingRegions {
        /// Any node's URL; its `GET /regions` lists the beacons.
        #[arg(long, default_value = "http://127.0.0.1:7700")]
        via: String,
        /// Probes per region (median is reported).
        #[arg(long, default_value_t = 5)]
        count: u32,
    },
    /// Drain a running node (POST /admin/drain): readiness off, no new game
    /// servers, economy voter seats moved to other regions. Waits until the
    /// seats moved; stop the node afterwards (SIGTERM) at any time.
    Drain {
        /// The node's URL.
        #[arg(long, default_value = "http://127.0.0.1:7700")]
        via: String,
        #[arg(long, env = "MERIDIAN_ADMIN_TOKEN", hide_env_values = true)]
        admin_token: String,
        /// Give up waiting after this many seconds.
        #[arg(long, default_value_t = 60)]
        wait_s: u64,
    },
    /// Run a 3-region mesh on this machine (regions from regions/), with
    /// injected inter-region latency, until Ctrl-C.
    Demo {
        #[arg(long, default_value = "demo-data")]
        data_dir: PathBuf,
        /// Injected RTT in ms between region pairs (1-2, 1-3, 2-3).
        #[arg(long, default_value = "30,80,140", value_delimiter = ',')]
        latency_ms: Vec<u64>,
        /// Simulated client distance: beacon reply delay in ms per region
        /// (so `ping-regions` on loopback has a nearest region).
        #[arg(long, default_value = "10,45,90", value_delimiter = ',')]
        client_latency_ms: Vec<u64>,
        #[arg(long, default_value = "regions")]
        regions_dir: PathBuf,
    },
    /// The reference external game server for `dgs.backend = "process"`
    /// (reads the MERIDIAN_* environment the node passes; see docs/matchmaking.md).
    GameServer {
        /// --duration-s S, --tick-rate-hz N, --join-timeout-ms MS,
        /// --crash-in-mode MODE, --crash-after-ms MS.
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// Region catalog tools.
    Regions {
        #[command(subcommand)]
        command: RegionsCommand,
    },
}

#[derive(Subcommand)]
enum CertsCommand {
    /// Create a cluster CA (ca.pem, ca.key) in DIR.
    Init {
        #[arg(long, default_value = "certs/ca")]
        dir: PathBuf,
    },
    /// Issue a node certificate signed by the cluster CA.
    Issue {
        #[arg(long)]
        node: String,
        #[arg(long, default_value = "certs/ca")]
        ca_dir: PathBuf,
        /// Output directory (node.pem, node.key); default certs/NODE.
        #[arg(long)]
        out: Option<PathBuf>,
        #[arg(long, default_value_t = 365)]
        days: u64,
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

fn fail(what: &str, e: impl std::fmt::Display) -> std::process::ExitCode {
    eprintln!("meridian {what}: {e}");
    std::process::ExitCode::FAILURE
}

fn runtime() -> std::io::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
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
            takeover,
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
            // One descriptor per client connection: take what the kernel allows.
            let fds = meridian_sim::bots::raise_fd_limit();
            tracing::info!(open_files_max = fds, "file descriptor limit");
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
            match rt.block_on(meridian::node::run(cfg, takeover)) {
                Ok(()) => std::process::ExitCode::SUCCESS,
                Err(e) if e.downcast_ref::<meridian::takeover::NotRunning>().is_some() => {
                    tracing::error!(error = %format!("{e:#}"), "nothing to take over");
                    eprintln!("meridian: {e:#}");
                    std::process::ExitCode::from(3)
                }
                Err(e) if e.downcast_ref::<meridian::takeover::Refused>().is_some() => {
                    tracing::error!(error = %format!("{e:#}"), "takeover refused");
                    eprintln!("meridian: {e:#}");
                    std::process::ExitCode::from(4)
                }
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
            server_token,
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
                server_token,
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
        Command::GameServer { args } => meridian_dgs::refserver::main_with_args(&args),
        Command::Certs { command } => match command {
            CertsCommand::Init { dir } => match meridian_mesh::pki::init_ca(&dir) {
                Ok(()) => {
                    println!(
                        "cluster CA created in {} (keep ca.key secret)",
                        dir.display()
                    );
                    std::process::ExitCode::SUCCESS
                }
                Err(e) => fail("certs init", e),
            },
            CertsCommand::Issue {
                node,
                ca_dir,
                out,
                days,
            } => {
                let out = out.unwrap_or_else(|| PathBuf::from("certs").join(&node));
                let validity = std::time::Duration::from_secs(days.max(1) * 24 * 3600);
                match meridian_mesh::pki::issue_node_cert(&ca_dir, &node, &out, validity) {
                    Ok(()) => {
                        println!(
                            "certificate for {node} written to {} (valid {days} days)",
                            out.display()
                        );
                        std::process::ExitCode::SUCCESS
                    }
                    Err(e) => fail("certs issue", e),
                }
            }
        },
        Command::Drain {
            via,
            admin_token,
            wait_s,
        } => match runtime() {
            Ok(rt) => match rt.block_on(meridian::tools::drain(&via, &admin_token, wait_s)) {
                Ok(line) => {
                    println!("{line}");
                    std::process::ExitCode::SUCCESS
                }
                Err(e) => fail("drain", e),
            },
            Err(e) => fail("drain", e),
        },
        Command::PingRegions { via, count } => match runtime() {
            Ok(rt) => match rt.block_on(meridian::tools::ping_regions(&via, count)) {
                Ok(table) => {
                    print!("{table}");
                    std::process::ExitCode::SUCCESS
                }
                Err(e) => fail("ping-regions", e),
            },
            Err(e) => fail("ping-regions", e),
        },
        Command::Demo {
            data_dir,
            latency_ms,
            client_latency_ms,
            regions_dir,
        } => {
            match meridian::tools::demo(&data_dir, &regions_dir, &latency_ms, &client_latency_ms) {
                Ok(()) => std::process::ExitCode::SUCCESS,
                Err(e) => fail("demo", e),
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
