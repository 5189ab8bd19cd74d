//! The `callside` binary: a thin command-line shell over the library.

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context as _;
use clap::{Parser, Subcommand};

use callside::app::Application;
use callside::clock::SystemClock;
use callside::config::{Config, Overrides};
use callside::sandbox::{Sandbox, SandboxPorts};

#[derive(Parser)]
#[command(name = "callside", version, about = "Caller context, booking and CRM write-back beside a voice AI")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

/// Where an operator command finds the configuration and the store it names (the service need
/// not run).
#[derive(clap::Args)]
struct StoreArgs {
    /// Server config file; tenant files are read from its `tenants_dir`.
    #[arg(long, default_value = "config/callside.toml", env = "CALLSIDE_CONFIG")]
    config: PathBuf,
    /// Data directory, overriding the file.
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// Store URL (`sqlite://PATH` or `postgres://…`), overriding the file's `store.url`.
    #[arg(long = "store", env = "CALLSIDE_STORE_URL")]
    store: Option<String>,
}

#[derive(Subcommand)]
enum Command {
    /// Run the service.
    Serve {
        /// Server config file; tenant files are read from its `tenants_dir`.
        #[arg(long, default_value = "config/callside.toml", env = "CALLSIDE_CONFIG")]
        config: PathBuf,
        /// Listen address, overriding the file (e.g. 127.0.0.1:0 for a free port).
        #[arg(long)]
        listen: Option<String>,
        /// Data directory, overriding the file.
        #[arg(long)]
        data_dir: Option<PathBuf>,
        /// Store URL (`sqlite://PATH` or `postgres://…`), overriding the file's `store.url`.
        #[arg(long = "store", env = "CALLSIDE_STORE_URL")]
        store: Option<String>,
    },
    /// Validate the configuration and print every problem found.
    CheckConfig {
        #[arg(long, default_value = "config/callside.toml", env = "CALLSIDE_CONFIG")]
        config: PathBuf,
    },
    /// Exit 0 if the service at URL answers /healthz (for container HEALTHCHECKs: no curl needed).
    Healthcheck {
        #[arg(long, default_value = "http://127.0.0.1:8080/healthz")]
        url: String,
    },
    /// Print the SHA-256 digest of an API key read from standard input, for a tenant file.
    HashKey,
    /// Print the Argon2id hash of a console operator's password read from standard input, for
    /// `[[console.operators]]` in the server file.
    HashPassword,
    /// Revert one call's CRM writes (created objects deleted, overwritten values restored) through
    /// the running service; fields and objects a person edited since are reported, not touched.
    Undo(WritebackAdmin),
    /// Approve a write-back plan held for review (tenant mode "review"): it is written now.
    Approve(WritebackAdmin),
    /// Reject a write-back plan held for review: nothing of it is written.
    Reject(WritebackAdmin),
    /// Run caller matching over a labelled fixture (JSON Lines, format in README) and print
    /// precision and recall per class. Exits 2 if the file cannot be read or parsed.
    MatchEval {
        /// The fixture, e.g. tests/fixtures/match_cases.jsonl.
        file: PathBuf,
    },
    /// List dead-lettered write-back steps (newest first).
    DeadLetters {
        #[command(flatten)]
        at: StoreArgs,
        #[arg(long, default_value_t = 100)]
        limit: i64,
    },
    /// Put a call's dead-lettered (and parked) write-back steps back in the outbox, due now, with
    /// their original idempotency keys. A running service picks them up on its next pass.
    Replay {
        /// The call whose steps to replay.
        #[arg(long = "call")]
        call_id: String,
        #[command(flatten)]
        at: StoreArgs,
    },
    /// Re-encrypt every stored OAuth token (and pending authorization) under the current
    /// `CALLSIDE_SECRET_KEY`, reading older rows with `CALLSIDE_SECRET_KEY_OLD`. Run it after
    /// deploying the new key beside the old one; afterwards the old key can be dropped. Exits 1
    /// if a row is under a key neither variable holds.
    Reencrypt {
        #[command(flatten)]
        at: StoreArgs,
    },
    /// Remove what callside stores about one caller (calls, outcomes, transcripts, write-back
    /// steps, bookings, pending bookings, identity index rows, audit rows) and print which CRM
    /// records and calendar events still hold them: those are the business's own records. Works
    /// on the store directly, with or without the service running; a running service's caches
    /// forget the caller within five minutes. Exits 2 if NUMBER is not a phone number.
    Erase {
        /// The caller's number in any format (read in each tenant's default region).
        #[arg(long)]
        phone: String,
        /// Only this tenant (default: every tenant in the configuration).
        #[arg(long)]
        tenant: Option<String>,
        #[command(flatten)]
        at: StoreArgs,
    },
    /// Run seed 002's ten test calls and seed 003's pilot scenario against one tenant's CRM and
    /// calendar through the real service path (started in-process from the config, on a free
    /// loopback port with a scratch store), verify each outcome by reading the CRM and calendar
    /// back, and score read parity, write parity, match logic, error handling and observability.
    /// Writes FILE (Markdown) and FILE with a .json extension. Exits 1 if any dimension is below
    /// deep, 2 if the pilot could not run.
    Pilot {
        /// The tenant's id (its file in `tenants_dir`).
        #[arg(long)]
        tenant: String,
        /// Where to write the Markdown report (the JSON report goes beside it, `.json`).
        #[arg(long, default_value = "pilot-report.md")]
        report: PathBuf,
        #[arg(long, default_value = "config/callside.toml", env = "CALLSIDE_CONFIG")]
        config: PathBuf,
        /// The tenant's API key (read from the environment so it stays out of shell history).
        #[arg(long, env = "CALLSIDE_API_KEY", hide_env_values = true)]
        api_key: String,
    },
    /// Seed 000's monthly audit of one tenant as a Markdown report: the write-back and webhook
    /// delivery log, duplicate contacts in the CRM for the callers callside touched, overlapping
    /// events on the staff calendars, and the POS's data freshness. Reads the store and the
    /// tenant's vendors (the service need not run). Exits 0 when no section is a problem, 1 when
    /// one is, 2 if the audit could not run (configuration, store, a tenant on the in-process
    /// sandbox).
    Audit {
        /// The tenant's id (its file in `tenants_dir`).
        #[arg(long)]
        tenant: String,
        /// Write the Markdown report here instead of standard output.
        #[arg(long)]
        report: Option<PathBuf>,
        /// The window: from midnight this many days ago (the tenant's zone) to now.
        #[arg(long, default_value_t = callside::audit::DEFAULT_DAYS,
              value_parser = clap::value_parser!(u32).range(1..=callside::audit::MAX_DAYS as i64))]
        days: u32,
        /// The window's end, RFC 3339 (e.g. 2026-11-01T00:00:00Z to audit October); default now.
        #[arg(long)]
        until: Option<jiff::Timestamp>,
        #[command(flatten)]
        at: StoreArgs,
    },
    /// Serve the vendor emulators in their own process (so their state outlives a service that
    /// is killed and restarted), plus a loopback control port to inspect them and inject faults.
    /// Prints one JSON line with every base URL and token, then serves until SIGTERM/Ctrl-C.
    Sandbox {
        #[arg(long, default_value_t = 0)]
        hubspot_port: u16,
        #[arg(long, default_value_t = 0)]
        google_port: u16,
        #[arg(long, default_value_t = 0)]
        graph_port: u16,
        #[arg(long, default_value_t = 0)]
        salesforce_port: u16,
        #[arg(long, default_value_t = 0)]
        pipedrive_port: u16,
        #[arg(long, default_value_t = 0)]
        square_port: u16,
        #[arg(long, default_value_t = 0)]
        shopify_port: u16,
        #[arg(long, default_value_t = 0)]
        control_port: u16,
    },
}

#[derive(clap::Args)]
struct WritebackAdmin {
    /// The call's id.
    #[arg(long = "call")]
    call_id: String,
    /// The running service's base URL.
    #[arg(long, default_value = "http://127.0.0.1:8080")]
    url: String,
    /// The tenant's API key (read from the environment so it stays out of shell history).
    #[arg(long, env = "CALLSIDE_API_KEY", hide_env_values = true)]
    api_key: String,
}

/// POSTs `/v1/writeback/calls/{call}/{action}` and prints the JSON answer; fails on a non-2xx.
async fn writeback_admin(action: &str, a: WritebackAdmin) -> anyhow::Result<()> {
    let base = url::Url::parse(&a.url).with_context(|| format!("{} is not a URL", a.url))?;
    let mut url = base.clone();
    url.path_segments_mut().map_err(|()| anyhow::anyhow!("{} cannot be a base URL", a.url))?.pop_if_empty().extend([
        "v1",
        "writeback",
        "calls",
        &a.call_id,
        action,
    ]);
    let resp = reqwest::Client::new()
        .post(url)
        .bearer_auth(a.api_key.trim())
        .timeout(std::time::Duration::from_secs(120))
        .send()
        .await
        .with_context(|| format!("POST {action} to {}", a.url))?;
    let status = resp.status();
    let body = resp.text().await.unwrap_or_default();
    println!("{body}");
    if status.is_success() { Ok(()) } else { anyhow::bail!("the service answered {status}") }
}

fn init_tracing() {
    let spec = std::env::var("RUST_LOG").unwrap_or_else(|_| "info".into());
    tracing_subscriber::fmt()
        .json()
        .with_env_filter(callside::observe::log_filter(&spec))
        .with_current_span(false)
        .init();
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Command::Serve { config, listen, data_dir, store } => {
            init_tracing();
            match callside::failpoint::arm_from_env() {
                Ok(armed) if !armed.is_empty() => tracing::warn!(?armed, "failpoints armed (crash testing only)"),
                Ok(_) => {}
                Err(e) => {
                    eprintln!("{e}");
                    std::process::exit(2);
                }
            }
            let overrides = Overrides { listen, data_dir, store_url: store };
            let config_path = config;
            let config = match Config::load(&config_path, &overrides) {
                Ok(c) => c,
                Err(e) => {
                    eprint!("{e}");
                    std::process::exit(2);
                }
            };
            let app = Application::build(config, Arc::new(SystemClock)).await?;
            let reloader = app.reloader();
            reloader.set_source(config_path, overrides);
            // SIGHUP reloads the configuration; a bad file is logged and the running one kept.
            callside::reload::on_sighup(reloader).context("installing the SIGHUP handler")?;
            tracing::info!(addr = %app.local_addr(), "callside listening");
            app.run(shutdown_signal()).await
        }
        Command::CheckConfig { config } => match Config::load(&config, &Overrides::default()) {
            Ok(c) => {
                println!("configuration ok: {} tenant(s)", c.tenants.len());
                Ok(())
            }
            Err(e) => {
                eprint!("{e}");
                std::process::exit(2);
            }
        },
        Command::Healthcheck { url } => {
            let resp = reqwest::Client::new()
                .get(&url)
                .timeout(std::time::Duration::from_secs(3))
                .send()
                .await
                .with_context(|| format!("GET {url}"))?;
            if resp.status().is_success() { Ok(()) } else { anyhow::bail!("{url} answered {}", resp.status()) }
        }
        Command::Sandbox {
            hubspot_port,
            google_port,
            graph_port,
            salesforce_port,
            pipedrive_port,
            square_port,
            shopify_port,
            control_port,
        } => {
            init_tracing();
            let ports = SandboxPorts {
                hubspot: hubspot_port,
                google: google_port,
                graph: graph_port,
                salesforce: salesforce_port,
                pipedrive: pipedrive_port,
                square: square_port,
                shopify: shopify_port,
            };
            let sandbox = Sandbox::start_on(ports).await.context("starting the emulators")?;
            sandbox.seed_demo();
            let control = tokio::net::TcpListener::bind(("127.0.0.1", control_port))
                .await
                .with_context(|| format!("binding the control port {control_port}"))?;
            let urls = serde_json::json!({
                "hubspot": sandbox.hubspot.base_url().as_str(),
                "google": sandbox.google.base_url().as_str(),
                "graph": sandbox.graph.base_url().as_str(),
                "salesforce": sandbox.salesforce.base_url().as_str(),
                "pipedrive": sandbox.pipedrive.base_url().as_str(),
                "square": sandbox.square.base_url().as_str(),
                "shopify": sandbox.shopify.base_url().as_str(),
                "control": format!("http://{}/", control.local_addr()?),
                "tokens": {
                    "hubspot": callside::sandbox::HUBSPOT_TOKEN,
                    "google": callside::sandbox::GOOGLE_TOKEN,
                    "graph": callside::sandbox::GRAPH_TOKEN,
                    "salesforce": callside::sandbox::SALESFORCE_TOKEN,
                    "pipedrive": callside::sandbox::PIPEDRIVE_TOKEN,
                    "square": callside::sandbox::SQUARE_TOKEN,
                    "shopify": callside::sandbox::SHOPIFY_TOKEN,
                },
            });
            println!("{urls}");
            let router = callside::sandbox::control::router(sandbox.hubspot.state.clone()).merge(
                callside::sandbox::control::pos_router(sandbox.square.state.clone(), sandbox.shopify.state.clone()),
            );
            axum::serve(control, router).with_graceful_shutdown(shutdown_signal()).await.context("control port")?;
            Ok(())
        }
        Command::Pilot { tenant, report, config, api_key } => {
            match pilot(&tenant, &report, &config, api_key.trim()).await {
                Ok(true) => Ok(()),
                Ok(false) => std::process::exit(1),
                Err(e) => {
                    eprintln!("pilot could not run: {e:#}");
                    std::process::exit(2);
                }
            }
        }
        Command::Audit { tenant, report, days, until, at } => {
            match audit(&tenant, report.as_deref(), days, until, at).await {
                Ok(true) => Ok(()),
                Ok(false) => std::process::exit(1),
                Err(e) => {
                    eprintln!("audit could not run: {e:#}");
                    std::process::exit(2);
                }
            }
        }
        Command::DeadLetters { at, limit } => {
            let store = at.open_store().await?;
            let dead = store.dead_letters(limit).await?;
            if dead.is_empty() {
                println!("no dead letters");
            }
            for d in dead {
                println!(
                    "{}\t{}\tstep {} ({})\t{} attempts\t{}\t{}",
                    d.updated_at,
                    d.tenant,
                    d.step_id,
                    d.kind,
                    d.attempts,
                    d.call_id,
                    d.last_error.unwrap_or_default()
                );
            }
            Ok(())
        }
        Command::Replay { call_id, at } => {
            let store = at.open_store().await?;
            let replay = callside::store::Requeue::Failed;
            let now = jiff::Timestamp::now();
            match store.requeue_call(None, &call_id, replay, "writeback.replay", &serde_json::json!({}), now).await? {
                Some(n) => {
                    println!("replayed {n} step(s) of call {call_id}");
                    Ok(())
                }
                None => {
                    eprintln!("no call {call_id} in the store");
                    std::process::exit(1);
                }
            }
        }
        Command::Erase { phone, tenant, at } => {
            let (config, store) = at.open().await?;
            match callside::privacy::erase_caller(&store, &config.tenants, &phone, tenant.as_deref()).await {
                Ok(erasures) => {
                    print!("{}", callside::privacy::render_erasure(&erasures));
                    store.close().await;
                    Ok(())
                }
                Err(e @ (callside::privacy::EraseError::NotAPhone(_) | callside::privacy::EraseError::NoTenant(_))) => {
                    eprintln!("{e}");
                    std::process::exit(2);
                }
                Err(e) => Err(e.into()),
            }
        }
        Command::Reencrypt { at } => {
            let cipher = callside::connections::TokenCipher::from_env().context("reading the keys")?;
            let store = at.open_store().await?;
            let report = callside::connections::reencrypt(&store, &cipher).await?;
            println!(
                "re-encrypted {} connection(s) and {} pending authorization(s) under key {}",
                report.connections,
                report.oauth_states,
                cipher.key_id()
            );
            if !report.unreadable.is_empty() {
                eprintln!(
                    "under a key that is neither CALLSIDE_SECRET_KEY nor CALLSIDE_SECRET_KEY_OLD (left as they are): {}",
                    report.unreadable.join(", ")
                );
                std::process::exit(1);
            }
            Ok(())
        }
        Command::HashKey => {
            let mut key = String::new();
            std::io::stdin().read_line(&mut key)?;
            println!("{}", hex::encode(callside::config::api_key_digest(key.trim())));
            Ok(())
        }
        Command::Undo(a) => writeback_admin("undo", a).await,
        Command::Approve(a) => writeback_admin("approve", a).await,
        Command::Reject(a) => writeback_admin("reject", a).await,
        Command::MatchEval { file } => {
            use callside::matching::eval;
            let parsed = std::fs::read_to_string(&file)
                .map_err(|e| e.to_string())
                .and_then(|text| eval::parse(&text).map_err(|e| e.to_string()));
            match parsed {
                Ok(cases) => {
                    print!("{}", eval::render(&eval::evaluate(&cases)));
                    Ok(())
                }
                Err(e) => {
                    eprintln!("{}: {e}", file.display());
                    std::process::exit(2);
                }
            }
        }
        Command::HashPassword => {
            let mut password = String::new();
            std::io::stdin().read_line(&mut password)?;
            let password = password.trim_end_matches(['\r', '\n']);
            anyhow::ensure!(password.len() >= 12, "use a password of at least 12 characters");
            println!("{}", callside::console::auth::hash_password(password));
            Ok(())
        }
    }
}

/// `callside pilot`: the service in-process (scratch data dir, free port), the plan run through
/// its WebSocket, the reports written. `Ok(all_deep)`.
async fn pilot(
    tenant_id: &str,
    report: &std::path::Path,
    config: &std::path::Path,
    api_key: &str,
) -> anyhow::Result<bool> {
    use callside::pilot::{Degrade, NoDegrade, Pilot, ServiceAccess, sandbox_switches};
    let scratch = std::env::temp_dir().join(format!("callside-pilot-{}", std::process::id()));
    std::fs::create_dir_all(&scratch).with_context(|| format!("creating {}", scratch.display()))?;
    let overrides = Overrides { listen: Some("127.0.0.1:0".into()), data_dir: Some(scratch.clone()), store_url: None };
    let config = Config::load(config, &overrides).map_err(|e| anyhow::anyhow!("{e}"))?;
    let app = Application::build(config, Arc::new(SystemClock)).await?;
    let core = app.core();
    let tenant = core.tenants.by_id(tenant_id).with_context(|| format!("no tenant {tenant_id:?}"))?;
    anyhow::ensure!(tenant.accepts_key(api_key), "CALLSIDE_API_KEY is not an API key of tenant {tenant_id:?}");
    let dialed = tenant.config.numbers.first().cloned().context("the tenant has no number")?;
    let degrade: Arc<dyn Degrade> = match (app.sandbox(), tenant.config.crm.base_url.as_str()) {
        (Some(s), "sandbox") => sandbox_switches(s, &tenant.config.crm.vendor),
        _ => Arc::new(NoDegrade),
    };
    let access = ServiceAccess::new(&format!("http://{}", app.local_addr()), api_key, &dialed);
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(app.run(async move {
        let _ = stopped.await;
    }));
    let result = Pilot::new(access, tenant, degrade, core.clock.clone()).run().await;
    let _ = stop.send(());
    server.await.context("the service task")??;
    let _ = std::fs::remove_dir_all(&scratch);
    let result = result?;
    println!(
        "
{}",
        result.table()
    );
    std::fs::write(report, result.markdown()).with_context(|| format!("writing {}", report.display()))?;
    let json = report.with_extension("json");
    std::fs::write(&json, result.json()).with_context(|| format!("writing {}", json.display()))?;
    println!("reports: {} and {}", report.display(), json.display());
    Ok(result.all_deep())
}

/// `callside audit`: the tenant's connectors built offline, the report gathered and written.
/// `Ok(no problem)`.
async fn audit(
    tenant_id: &str,
    report: Option<&std::path::Path>,
    days: u32,
    until: Option<jiff::Timestamp>,
    at: StoreArgs,
) -> anyhow::Result<bool> {
    let (config, store) = at.open().await?;
    let clock: callside::clock::SharedClock = Arc::new(SystemClock);
    let (tenant, budgets) = callside::app::offline_tenant(&config, tenant_id, &store, clock.clone())?;
    let result =
        callside::audit::run(&store, &tenant, Some(&budgets), until.unwrap_or_else(|| clock.now()), days).await;
    store.close().await;
    let result = result?;
    let markdown = result.markdown();
    match report {
        Some(path) => {
            std::fs::write(path, &markdown).with_context(|| format!("writing {}", path.display()))?;
            let verdicts: Vec<String> = callside::audit::SECTIONS
                .iter()
                .zip(result.assessments())
                .map(|(name, a)| format!("{name}: {}", a.verdict.as_str()))
                .collect();
            println!("{}\nreport: {}", verdicts.join("\n"), path.display());
        }
        None => print!("{markdown}"),
    }
    Ok(!result.has_problem())
}

impl StoreArgs {
    /// The store the config names.
    async fn open_store(self) -> anyhow::Result<callside::store::Store> {
        Ok(self.open().await?.1)
    }

    /// The validated config (exit 2 with every problem if it is not) and the store it names.
    async fn open(self) -> anyhow::Result<(Config, callside::store::Store)> {
        let overrides = Overrides { listen: None, data_dir: self.data_dir, store_url: self.store };
        let config = match Config::load(&self.config, &overrides) {
            Ok(c) => c,
            Err(e) => {
                eprint!("{e}");
                std::process::exit(2);
            }
        };
        let store = callside::store::Store::open(&config.store_url)
            .await
            .with_context(|| format!("opening the store at {}", callside::store::redact_url(&config.store_url)))?;
        Ok((config, store))
    }
}

async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {},
        _ = term => {},
    }
    tracing::info!("shutdown signal received");
}
