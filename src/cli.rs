//! The `tessera` command line: `serve`, `migrate`, and the operator's `user` commands.
//! `main.rs` only calls [`main`].

use crate::clock::{SystemClock, rfc3339};
use crate::config::{Config, ServeArgs, StorageArgs};
use crate::server;
use anyhow::Context;
use clap::{Parser, Subcommand};
use std::io::IsTerminal;
use std::sync::Arc;

#[derive(Debug, Parser)]
#[command(
    name = "tessera",
    version,
    about = "Accounts, sessions and TOTP multi-factor authentication with one-time backup codes.",
    after_help = "Environment: TESSERA_SECRET_KEY (base64 of 32 bytes) supplies the master key that seals \
TOTP secrets; without it the key file (--secret-key-file, default DATA_DIR/secret.key) is used, created \
on first start; it must not be readable by group or others. \
TESSERA_LOG sets the log filter (default: info), TESSERA_LOG_FORMAT=json switches to JSON logs."
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

// Parsed once per process; boxing the large `serve` variant would only add noise.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the HTTP service (applies pending migrations first).
    Serve(ServeArgs),
    /// Apply pending database migrations and exit.
    Migrate(StorageArgs),
    /// Operator commands on accounts.
    User {
        #[command(subcommand)]
        command: UserCommand,
    },
}

#[derive(Debug, Subcommand)]
pub enum UserCommand {
    /// List all accounts.
    List(StorageArgs),
    /// Show one account.
    Show {
        /// The account's email.
        email: String,
        #[command(flatten)]
        storage: StorageArgs,
    },
    /// Turn MFA off for a user who lost both phone and backup codes; revokes their sessions.
    ResetMfa {
        /// The account's email.
        email: String,
        #[command(flatten)]
        storage: StorageArgs,
    },
    /// Disable an account: logins are refused (403) and its sessions are revoked.
    Disable {
        /// The account's email.
        email: String,
        #[command(flatten)]
        storage: StorageArgs,
    },
    /// Enable a disabled account again.
    Enable {
        /// The account's email.
        email: String,
        #[command(flatten)]
        storage: StorageArgs,
    },
}

fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_env("TESSERA_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,sqlx=warn"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    if std::env::var("TESSERA_LOG_FORMAT").is_ok_and(|format| format == "json") {
        builder.json().init();
    } else {
        builder.with_ansi(std::io::stderr().is_terminal()).init();
    }
}

/// Entry point of the binary.
pub fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    init_logging();
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    runtime.block_on(dispatch(cli.command))
}

async fn dispatch(command: Command) -> anyhow::Result<()> {
    match command {
        Command::Serve(args) => serve(&args).await,
        Command::Migrate(args) => {
            let config = Config::for_storage(&args)?;
            server::open_store(&config).await?;
            println!("migrations applied to {}", describe_database(&config));
            Ok(())
        }
        Command::User { command } => user(command).await,
    }
}

fn describe_database(config: &Config) -> String {
    match &config.database_url {
        Some(_) => "the configured database".to_owned(),
        None => config.data_dir.join(server::DATABASE_FILE).display().to_string(),
    }
}

async fn serve(args: &ServeArgs) -> anyhow::Result<()> {
    let config = Config::resolve(args)?;
    let shutdown = server::shutdown_signal().context("cannot install signal handlers")?;
    let opened = server::open(&config, Arc::new(SystemClock)).await?;
    let listener = server::bind(config.listen).with_context(|| format!("cannot listen on {}", config.listen))?;
    let address = listener.local_addr()?;
    let webhook = config.webhook.clone().map(|webhook| start_webhook(&opened, webhook));
    tracing::info!(%address, data_dir = %config.data_dir.display(), "listening");
    server::run(listener, server::router(&opened), config.connections, shutdown).await?;
    if let Some(task) = webhook {
        task.abort();
    }
    opened.store.close().await;
    tracing::info!("stopped");
    Ok(())
}

fn start_webhook(opened: &server::Opened, config: crate::webhook::WebhookConfig) -> tokio::task::JoinHandle<()> {
    // Only the host: the URL may carry credentials or a secret path.
    tracing::info!(
        host = config.url.host_str().unwrap_or_default(),
        "delivering security events to the webhook"
    );
    crate::webhook::spawn(opened.service.store().clone(), config)
}

async fn user(command: UserCommand) -> anyhow::Result<()> {
    let storage = match &command {
        UserCommand::List(storage) => storage,
        UserCommand::Show { storage, .. }
        | UserCommand::ResetMfa { storage, .. }
        | UserCommand::Disable { storage, .. }
        | UserCommand::Enable { storage, .. } => storage,
    };
    let config = Config::for_storage(storage)?;
    let opened = server::open_existing(&config, Arc::new(SystemClock)).await?;
    let service = &opened.service;
    match command {
        UserCommand::List(_) => {
            let users = service.users().await?;
            println!("{:<38} {:<40} {:<5} CREATED", "ID", "EMAIL", "MFA");
            for user in users {
                let mfa = if user.mfa.is_some() { "on" } else { "off" };
                println!(
                    "{:<38} {:<40} {:<5} {}",
                    user.id,
                    user.email,
                    mfa,
                    rfc3339(user.created_at)
                );
            }
        }
        UserCommand::Show { email, .. } => {
            let user = service
                .user_by_email(&email)
                .await?
                .with_context(|| format!("no user with email {email}"))?;
            println!("id:                     {}", user.id);
            println!("email:                  {}", user.email);
            println!("created_at:             {}", rfc3339(user.created_at));
            println!("disabled:               {}", user.disabled_at.is_some());
            println!("mfa_enabled:            {}", user.mfa.is_some());
            let status = service.status_of(&user).await?;
            if let Some(enabled_at) = status.enabled_at {
                println!("mfa_enabled_at:         {}", rfc3339(enabled_at));
                println!("backup_codes_remaining: {}", status.backup_codes_remaining);
            }
            println!("failed_code_attempts:   {}", user.throttle.failures);
        }
        UserCommand::ResetMfa { email, .. } => {
            let user = service.operator_reset_mfa(&email).await?;
            println!(
                "MFA reset for {}: MFA is off, all sessions revoked, event recorded.",
                user.email
            );
        }
        UserCommand::Disable { email, .. } => {
            let user = service.operator_set_disabled(&email, true).await?;
            println!(
                "{} is disabled: logins are refused and all sessions revoked.",
                user.email
            );
        }
        UserCommand::Enable { email, .. } => {
            let user = service.operator_set_disabled(&email, false).await?;
            println!("{} is enabled.", user.email);
        }
    }
    opened.store.close().await;
    Ok(())
}
