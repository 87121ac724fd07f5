//! `berth-vendor`: parse arguments, set up logging, run one command.
//!
//! `serve` prints the bound address (`127.0.0.1:PORT`) as the first line on
//! stdout, then logs to stderr until SIGINT or SIGTERM.

use std::io::Write;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{bail, Context};
use clap::{Parser, Subcommand};
use vendor_server::keys::{encode_hex, generate_signing_key, load_signing_key, parse_public_key};
use vendor_server::store::describe_check;
use vendor_server::{Server, ServerConfig, Store, Template, TlsFiles};

#[derive(Debug, Parser)]
#[command(
    name = "berth-vendor",
    version,
    about = "Berth's reference vendor server"
)]
struct Cli {
    /// The SQLite database (created if missing).
    #[arg(long, global = true, default_value = "berth-vendor.db")]
    db: PathBuf,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Serve the provisioning endpoints.
    Serve {
        #[arg(long, default_value = "127.0.0.1:8443")]
        listen: SocketAddr,
        /// The vendor's Ed25519 seed file (from `keygen`).
        #[arg(long)]
        key: PathBuf,
        /// PEM certificate chain.
        #[arg(long, requires = "tls_key", conflicts_with = "insecure_http")]
        tls_cert: Option<PathBuf>,
        /// PEM private key.
        #[arg(long, requires = "tls_cert", conflicts_with = "insecure_http")]
        tls_key: Option<PathBuf>,
        /// Plain HTTP, for tests and demos; loopback addresses only.
        #[arg(long)]
        insecure_http: bool,
    },
    /// Make a new signing key; prints its public key in hex.
    Keygen {
        #[arg(long, default_value = "vendor.key")]
        out: PathBuf,
    },
    /// Print the public key of a signing key file in hex.
    Pubkey {
        #[arg(long)]
        key: PathBuf,
    },
    /// The device registry.
    Device {
        #[command(subcommand)]
        command: DeviceCommand,
    },
    /// Plan templates.
    Template {
        #[command(subcommand)]
        command: TemplateCommand,
    },
    /// Publish the model's template as its next plan version.
    Publish {
        #[arg(long)]
        model: String,
        /// Set this template first.
        #[arg(long)]
        template: Option<PathBuf>,
    },
    /// List the reports gateways sent.
    Reports {
        #[arg(long)]
        json: bool,
    },
}

#[derive(Debug, Subcommand)]
enum DeviceCommand {
    /// Register a device; prints its plan id.
    Add {
        #[arg(long)]
        serial: String,
        #[arg(long)]
        model: String,
        /// The device's Ed25519 public key, 64 hex digits.
        #[arg(long)]
        public_key: String,
    },
    /// List registered devices.
    List,
}

#[derive(Debug, Subcommand)]
enum TemplateCommand {
    /// Check a template and make it the model's draft.
    Set {
        #[arg(long)]
        model: String,
        file: PathBuf,
    },
    /// Check a template file without storing it.
    Check { file: PathBuf },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("BERTH_VENDOR_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .init();
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("berth-vendor: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn open(db: &Path) -> anyhow::Result<Store> {
    Ok(Store::open(db)?)
}

fn set_template(store: &Store, model: &str, file: &Path) -> anyhow::Result<()> {
    Template::load(file)?;
    let text =
        std::fs::read_to_string(file).with_context(|| format!("cannot read {}", file.display()))?;
    store.set_template(model, &text)?;
    Ok(())
}

fn run(cli: Cli) -> anyhow::Result<()> {
    let mut out = std::io::stdout().lock();
    match cli.command {
        Command::Serve {
            listen,
            key,
            tls_cert,
            tls_key,
            insecure_http,
        } => {
            let tls = match (tls_cert, tls_key) {
                (Some(cert), Some(key)) => Some(TlsFiles { cert, key }),
                _ if insecure_http => None,
                _ => {
                    bail!("give --tls-cert and --tls-key, or --insecure-http on a loopback address")
                }
            };
            let signing_key = load_signing_key(&key)?;
            let store = open(&cli.db)?;
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .context("cannot start the async runtime")?;
            rt.block_on(async move {
                let server = Server::bind(
                    ServerConfig {
                        listen,
                        tls,
                        signing_key,
                    },
                    store,
                )
                .await?;
                writeln!(out, "{}", server.local_addr())?;
                out.flush()?;
                drop(out);
                tracing::info!(
                    addr = %server.local_addr(),
                    scheme = server.scheme(),
                    public_key = %encode_hex(server.public_key().as_bytes()),
                    "serving"
                );
                server.run(shutdown_signal()).await?;
                tracing::info!("stopped");
                anyhow::Ok(())
            })?;
        }
        Command::Keygen { out: path } => {
            let k = generate_signing_key(&path)?;
            writeln!(out, "{}", encode_hex(k.verifying_key().as_bytes()))?;
        }
        Command::Pubkey { key } => {
            let k = load_signing_key(&key)?;
            writeln!(out, "{}", encode_hex(k.verifying_key().as_bytes()))?;
        }
        Command::Device { command } => match command {
            DeviceCommand::Add {
                serial,
                model,
                public_key,
            } => {
                protocol::announce::check_serial(&serial)
                    .with_context(|| format!("bad serial `{serial}`"))?;
                if model.is_empty()
                    || model.len() > protocol::announce::MAX_MODEL
                    || model.chars().any(char::is_control)
                {
                    bail!(
                        "bad model `{model}`: 1 to {} bytes, no control characters",
                        protocol::announce::MAX_MODEL
                    );
                }
                let key = parse_public_key(&public_key)?;
                let d = open(&cli.db)?.add_device(&model, &serial, &key)?;
                writeln!(out, "{}", d.plan_id)?;
            }
            DeviceCommand::List => {
                for d in open(&cli.db)?.devices()? {
                    writeln!(
                        out,
                        "{}\t{}\t{}\t{}",
                        d.model,
                        d.serial,
                        d.plan_id,
                        encode_hex(&d.public_key)
                    )?;
                }
            }
        },
        Command::Template { command } => match command {
            TemplateCommand::Set { model, file } => {
                set_template(&open(&cli.db)?, &model, &file)?;
            }
            TemplateCommand::Check { file } => {
                Template::load(&file)?;
            }
        },
        Command::Publish { model, template } => {
            let store = open(&cli.db)?;
            if let Some(file) = template {
                set_template(&store, &model, &file)?;
            } else if let Some(text) = store.template(&model)? {
                // Re-check: a template stored by an older berth-vendor may
                // break a rule added since.
                Template::parse(&text, &format!("template of model `{model}`"))?;
            }
            let v = store.publish(&model)?;
            writeln!(out, "model `{model}`: published version {v}")?;
        }
        Command::Reports { json } => {
            let reports = open(&cli.db)?.reports()?;
            if json {
                let list: Vec<_> = reports
                    .iter()
                    .map(|s| {
                        let r = &s.report;
                        serde_json::json!({
                            "id": s.id,
                            "received_at": s.received_at,
                            "plan_id": r.plan_id,
                            "version": r.version,
                            "gateway_id": r.gateway_id,
                            "serial": r.serial,
                            "jail": r.jail,
                            "address": r.address,
                            "state": format!("{:?}", r.state).to_lowercase(),
                            "error": r.error,
                            "checks": r.checks.iter().map(|c| serde_json::json!({
                                "app": c.app,
                                "index": c.index,
                                "passed": c.passed,
                                "output": c.output,
                                "elapsed_ms": c.elapsed_ms,
                            })).collect::<Vec<_>>(),
                        })
                    })
                    .collect();
                serde_json::to_writer_pretty(&mut out, &list)?;
                writeln!(out)?;
            } else {
                for s in &reports {
                    let r = &s.report;
                    let passed = r.checks.iter().filter(|c| c.passed).count();
                    writeln!(
                        out,
                        "#{} plan {} v{} gateway {} serial {} jail {} {:?} address {} checks {}/{}{}",
                        s.id,
                        r.plan_id,
                        r.version,
                        r.gateway_id,
                        r.serial,
                        r.jail,
                        r.state,
                        r.address.as_deref().unwrap_or("-"),
                        passed,
                        r.checks.len(),
                        r.error.as_deref().map(|e| format!(" error: {e}")).unwrap_or_default()
                    )?;
                    for c in r.checks.iter().filter(|c| !c.passed) {
                        writeln!(out, "    {}", describe_check(c))?;
                    }
                }
            }
        }
    }
    Ok(())
}

/// Completes on SIGINT or SIGTERM.
async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = match signal(SignalKind::terminate()) {
        Ok(s) => s,
        Err(e) => {
            tracing::warn!(error = %e, "cannot watch SIGTERM; stopping on SIGINT only");
            let _ = tokio::signal::ctrl_c().await;
            return;
        }
    };
    tokio::select! {
        // Both are cancel-safe: they only wait for a signal.
        _ = term.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
}
