//! `loadtest`: see the library docs and BENCHMARKS.md for the profiles and their commands.

use std::path::PathBuf;
use std::sync::Arc;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "loadtest", about = "Open-loop load test of callside, with the echo floor and invariant checks")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run a profile; exits 1 when an invariant fails.
    Run(Box<loadtest::RunArgs>),
    /// Write the generated configuration (for `callside serve` started by hand, then `run --url`).
    WriteConfig {
        #[arg(long)]
        dir: PathBuf,
        #[arg(long, default_value_t = 20)]
        tenants: usize,
        #[arg(long, default_value_t = 20)]
        known_callers: usize,
        #[arg(long, default_value_t = 5)]
        max_backoff_secs: u64,
    },
    /// The echo floor's server (started by `run` as a child process).
    #[command(hide = true)]
    EchoServer {
        #[arg(long, default_value = "127.0.0.1:0")]
        listen: String,
    },
    /// Run callside itself (the same application as `callside serve`), so `run` needs no other
    /// binary; started by `run` as a child process.
    Serve {
        #[arg(long)]
        config: PathBuf,
        #[arg(long)]
        listen: Option<String>,
    },
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    match cli.command {
        Command::Run(args) => {
            let result = rt.block_on(loadtest::run(*args))?;
            if !result.passed {
                eprintln!("loadtest: an invariant FAILED");
                std::process::exit(1);
            }
            Ok(())
        }
        Command::WriteConfig { dir, tenants, known_callers, max_backoff_secs } => {
            let specs = loadtest::setup::tenant_specs(tenants, known_callers);
            let knobs = loadtest::setup::ServerKnobs {
                unsafe_bypass_hold_ledger: false,
                max_backoff_secs,
                max_concurrent_calls: 20_000,
                crm_requests_per_10s: None,
            };
            let path = loadtest::setup::write_config(&dir, &specs, &knobs)?;
            println!("{}", path.display());
            Ok(())
        }
        Command::EchoServer { listen } => {
            loadtest::raise_nofile();
            rt.block_on(loadtest::load::echo_server(&listen))
        }
        Command::Serve { config, listen } => {
            use tracing_subscriber::EnvFilter;
            tracing_subscriber::fmt()
                .json()
                .with_env_filter(EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("warn")))
                .init();
            let overrides = callside::config::Overrides { listen, data_dir: None, store_url: None };
            let config = match callside::config::Config::load(&config, &overrides) {
                Ok(c) => c,
                Err(e) => {
                    eprint!("{e}");
                    std::process::exit(2);
                }
            };
            rt.block_on(async move {
                let app = callside::app::Application::build(config, Arc::new(callside::clock::SystemClock)).await?;
                eprintln!("callside listening on {}", app.local_addr());
                app.run(async {
                    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
                        .expect("SIGTERM handler");
                    tokio::select! {
                        _ = term.recv() => {}
                        _ = tokio::signal::ctrl_c() => {}
                    }
                })
                .await
            })
        }
    }
}
