//! The `tessera` command line: `serve`, `migrate`, the operator's `user` commands, `export` /
//! `import` to move an installation between databases, `backup` / `restore` of the SQLite file,
//! `events` for the webhook's dead events, and `check-config` / `healthcheck`. `main.rs` only calls [`main`].

use crate::clock::{SystemClock, rfc3339};
use crate::config::{Config, LogFormat, ServeArgs, Source, StorageArgs};
use crate::server;
use anyhow::Context;
use clap::{CommandFactory, FromArgMatches, Parser, Subcommand};
use std::io::{BufRead, IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

#[derive(Debug, Parser)]
#[command(
    name = "tessera",
    version,
    about = "Accounts, sessions and TOTP multi-factor authentication with one-time backup codes.",
    after_help = "Environment: TESSERA_SECRET_KEY (base64 of 32 bytes) supplies the master key that seals \
TOTP secrets; without it the key file (--secret-key-file, default DATA_DIR/secret.key) is used, created \
on first start; it must not be readable by group or others. `tessera serve --help` lists every setting \
with its flag, variable and default; `tessera check-config` prints the resolved configuration."
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
    #[command(after_help = crate::config::env_only_help())]
    Serve(ServeArgs),
    /// Print the resolved configuration, one `name = value (source)` line per setting, secrets
    /// masked; exit non-zero with one line when it is invalid.
    #[command(after_help = crate::config::env_only_help())]
    CheckConfig(ServeArgs),
    /// Exit 0 when the server at the configured --listen address answers GET /readyz with 200
    /// (for a container HEALTHCHECK; no curl needed), else print one line and exit 1.
    #[command(after_help = crate::config::env_only_help())]
    Healthcheck(ServeArgs),
    /// Apply pending database migrations and exit.
    Migrate(StorageArgs),
    /// Operator commands on accounts.
    User {
        #[command(subcommand)]
        command: UserCommand,
    },
    /// Write the whole installation to FILE as JSON lines (to move it to another database).
    ///
    /// Users, MFA factors, backup-code hashes, pending setups, live sessions and security events,
    /// from one consistent snapshot: safe while `serve` runs. Secrets stay sealed under the master
    /// key, hashes stay hashes; the file is created with mode 0600 and must not exist yet.
    Export {
        /// The file to create, or `-` for standard output.
        #[arg(value_name = "FILE")]
        file: PathBuf,
        #[command(flatten)]
        storage: StorageArgs,
    },
    /// Load an export into a new, empty database (SQLite or PostgreSQL, as configured).
    ///
    /// Runs the migrations, then writes everything in one transaction: all or nothing. The
    /// configured master key must be the exporting installation's (TESSERA_SECRET_KEY, or its key
    /// file copied to DATA_DIR/secret.key); a database holding any user or event is refused.
    Import {
        /// The export to read, or `-` for standard input.
        #[arg(value_name = "FILE")]
        file: PathBuf,
        #[command(flatten)]
        storage: StorageArgs,
    },
    /// Operator commands on the security-event webhook's dead events.
    Events {
        #[command(subcommand)]
        command: EventsCommand,
    },
    /// Copy the SQLite database to FILE (a new file, mode 0600), consistently, while serve runs.
    ///
    /// Uses SQLite's `VACUUM INTO`: one read snapshot, writers go on. The copy holds password
    /// hashes and TOTP secrets sealed under the master key, which is not in it: keep the key file
    /// (or TESSERA_SECRET_KEY) safe separately. PostgreSQL: use pg_dump.
    Backup {
        /// The backup file to create; it must not exist.
        #[arg(value_name = "FILE")]
        file: PathBuf,
        #[command(flatten)]
        storage: StorageArgs,
    },
    /// Put a backup back as the SQLite database of a stopped installation.
    ///
    /// Checks FILE first (integrity, schema version not newer than this tessera, every sealed
    /// TOTP secret opens under the configured master key), refuses while a serve runs on the
    /// database, and refuses a database holding data unless --force. PostgreSQL: use pg_restore.
    Restore {
        /// The backup to restore.
        #[arg(value_name = "FILE")]
        file: PathBuf,
        /// Replace a database that holds users or events; it is kept as tessera.db.before-restore.
        #[arg(long)]
        force: bool,
        #[command(flatten)]
        storage: StorageArgs,
    },
}

#[derive(Debug, Subcommand)]
pub enum UserCommand {
    /// List all accounts.
    List {
        /// One JSON array on stdout: objects with id, email, created_at, disabled_at, mfa_enabled.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        storage: StorageArgs,
    },
    /// Show one account.
    Show {
        /// The account's email.
        email: String,
        /// One JSON object on stdout (fields in README "Admin commands"); no secrets, no hashes.
        #[arg(long)]
        json: bool,
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
    /// Create an account, also while registration is closed (the first admin).
    ///
    /// The password is read from standard input (one line) with --password-stdin or when stdin is
    /// not a terminal and carries a line; otherwise (or with --generate) a strong one is generated
    /// and printed once on stdout. The password policy of registration applies.
    Create {
        /// The new account's email.
        email: String,
        /// Read the password from standard input (one line).
        #[arg(long, conflicts_with = "generate")]
        password_stdin: bool,
        /// Generate the password and print it once, whatever stdin is.
        #[arg(long)]
        generate: bool,
        #[command(flatten)]
        storage: StorageArgs,
    },
    /// Set a new password (one line on standard input, or --generate); revokes every session and
    /// pending login and clears the password and second-factor throttles.
    SetPassword {
        /// The account's email.
        email: String,
        /// Generate the password and print it once instead of reading it.
        #[arg(long)]
        generate: bool,
        #[command(flatten)]
        storage: StorageArgs,
    },
    /// End every session and pending second login step of the account; prints how many.
    RevokeSessions {
        /// The account's email.
        email: String,
        #[command(flatten)]
        storage: StorageArgs,
    },
    /// Clear the password throttle and the second-factor throttle (counts and locks).
    ///
    /// A TOTP suspension (after 50 failed codes) stays unless --lift-totp-suspension: the user
    /// lifts it by signing in with a backup code.
    Unlock {
        /// The account's email.
        email: String,
        /// Also let TOTP codes work again after a suspension.
        #[arg(long)]
        lift_totp_suspension: bool,
        #[command(flatten)]
        storage: StorageArgs,
    },
    /// Delete the account with its sessions, MFA secret, backup codes and pending setup, in one
    /// transaction; its security events are kept, with a `user_deleted` event.
    Delete {
        /// The account's email.
        email: String,
        /// Do not ask for confirmation (required when stdin is not a terminal).
        #[arg(long)]
        yes: bool,
        #[command(flatten)]
        storage: StorageArgs,
    },
}

/// The storage settings of the command `matches` selected, if it takes them (every command
/// that opens the database flattens [`StorageArgs`]).
fn storage_args(matches: &clap::ArgMatches) -> Option<StorageArgs> {
    let mut leaf = matches;
    while let Some((_, sub)) = leaf.subcommand() {
        leaf = sub;
    }
    leaf.try_get_one::<String>("log").ok()?;
    StorageArgs::from_arg_matches(leaf).ok()
}

/// Where a value of the command line came from: a flag or its variable (clap merges them).
fn source_in(matches: &clap::ArgMatches, name: &str) -> Source {
    if matches.try_contains_id(name).is_err() {
        // Not an argument of these matches (asking clap would panic): say "flag", the layer.
        return Source::Flag;
    }
    match matches.value_source(name) {
        Some(clap::parser::ValueSource::EnvVariable) => Source::Env,
        Some(clap::parser::ValueSource::CommandLine) => Source::Flag,
        _ => Source::Default,
    }
}

/// Logging from the resolved `--log` / `--log-format` (or their variables or file keys); a
/// command without storage settings logs at the defaults.
fn init_logging(storage: Option<&StorageArgs>) -> anyhow::Result<()> {
    let (log, format) = match storage {
        Some(storage) => {
            let config = Config::for_storage(storage).map_err(one_line)?;
            (config.log, config.log_format)
        }
        None => {
            let defaults = Config::default();
            (defaults.log, defaults.log_format)
        }
    };
    let filter =
        tracing_subscriber::EnvFilter::try_new(&log).map_err(|err| anyhow::anyhow!("invalid setting log: {err}"))?;
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Json => builder.json().init(),
        LogFormat::Text => builder.with_ansi(std::io::stderr().is_terminal()).init(),
    }
    Ok(())
}

/// Entry point of the binary.
pub fn main() -> anyhow::Result<()> {
    let matches = Cli::command().get_matches();
    let cli = Cli::from_arg_matches(&matches).unwrap_or_else(|err| err.exit());
    init_logging(storage_args(&matches).as_ref())?;
    crate::service::hashing::limit_allocator_arenas();
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    runtime.block_on(dispatch(cli.command, &matches))
}

/// Runs `command`; `matches` are the parsed command line it came from (check-config asks them
/// whether a value was a flag or its variable, which clap merges).
async fn dispatch(command: Command, matches: &clap::ArgMatches) -> anyhow::Result<()> {
    match command {
        Command::Serve(args) => serve(&args).await,
        Command::CheckConfig(args) => {
            let sub = matches.subcommand_matches("check-config").unwrap_or(matches);
            check_config(&args, &|name| source_in(sub, name))
        }
        Command::Healthcheck(args) => healthcheck(&args).await,
        Command::Migrate(args) => {
            let config = Config::for_storage(&args)?;
            server::open_store(&config).await?;
            println!("migrations applied to {}", describe_database(&config));
            Ok(())
        }
        Command::User { command } => user(command).await,
        Command::Export { file, storage } => export(&file, &storage).await,
        Command::Import { file, storage } => import(&file, &storage).await,
        Command::Events { command } => events(command).await,
        Command::Backup { file, storage } => backup(&file, &storage).await,
        Command::Restore { file, force, storage } => restore(&file, force, &storage).await,
    }
}

fn describe_database(config: &Config) -> String {
    match &config.database_url {
        Some(_) => "the configured database".to_owned(),
        None => config.data_dir.join(server::DATABASE_FILE).display().to_string(),
    }
}

/// `tessera check-config`: every setting with its value and source, secrets masked, then
/// whether the master key is usable (without printing it).
fn check_config(args: &ServeArgs, source: &dyn Fn(&'static str) -> Source) -> anyhow::Result<()> {
    let (config, lines) = Config::explain(args, source).map_err(one_line)?;
    let key = server::load_key(&config).map_err(one_line)?;
    for line in lines {
        println!("{} = {} ({})", line.name, line.value, line.source);
    }
    let key_file = server::key_file(&config);
    let master_key = match (&config.secret_key, key) {
        (Some(_), _) => "from TESSERA_SECRET_KEY".to_owned(),
        (None, Some(_)) => format!("key file {} (present, private)", key_file.display()),
        (None, None) => format!("key file {} (missing: created on first start)", key_file.display()),
    };
    println!("master_key = {master_key}");
    Ok(())
}

/// How long `tessera healthcheck` waits for the whole answer.
const HEALTHCHECK_TIMEOUT: Duration = Duration::from_secs(3);

/// `tessera healthcheck`: `GET /readyz` on the configured address (an unspecified address such as
/// 0.0.0.0 is reached on loopback), one minimal HTTP/1.1 request, 200 or failure.
async fn healthcheck(args: &ServeArgs) -> anyhow::Result<()> {
    let config = Config::resolve(args).map_err(one_line)?;
    let mut target = config.listen;
    if target.ip().is_unspecified() {
        target.set_ip(match target {
            std::net::SocketAddr::V4(_) => std::net::Ipv4Addr::LOCALHOST.into(),
            std::net::SocketAddr::V6(_) => std::net::Ipv6Addr::LOCALHOST.into(),
        });
    }
    let url = format!("http://{target}/readyz");
    let status = tokio::time::timeout(HEALTHCHECK_TIMEOUT, readyz_status(target))
        .await
        .map_err(|_| anyhow::anyhow!("not ready: {url} did not answer within {HEALTHCHECK_TIMEOUT:?}"))?
        .map_err(|err| anyhow::anyhow!("not ready: {url}: {err}"))?;
    if status != 200 {
        anyhow::bail!("not ready: {url} answered {status}");
    }
    println!("ready: {url} answered 200");
    Ok(())
}

/// The status code of `GET /readyz` at `target`.
async fn readyz_status(target: std::net::SocketAddr) -> std::io::Result<u16> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(target).await?;
    let request = format!(
        "GET /readyz HTTP/1.1\r\nHost: {target}\r\nUser-Agent: tessera-healthcheck\r\nConnection: close\r\n\r\n"
    );
    stream.write_all(request.as_bytes()).await?;
    // The status line is all we need: "HTTP/1.1 200 OK".
    let mut head = Vec::new();
    let mut buffer = [0u8; 512];
    while !head.windows(2).any(|pair| pair == b"\r\n") && head.len() < 4096 {
        let read = stream.read(&mut buffer).await?;
        if read == 0 {
            break;
        }
        head.extend_from_slice(&buffer[..read]);
    }
    let line = String::from_utf8_lossy(&head);
    let line = line.lines().next().unwrap_or_default();
    line.strip_prefix("HTTP/1.")
        .and_then(|rest| rest.get(2..5))
        .and_then(|code| code.parse().ok())
        .ok_or_else(|| std::io::Error::new(std::io::ErrorKind::InvalidData, "not an HTTP answer"))
}

async fn serve(args: &ServeArgs) -> anyhow::Result<()> {
    let config = Config::resolve(args).map_err(one_line)?;
    // Held until the process ends: `tessera restore` refuses while it is held.
    let _serving = crate::backup::lock_for_serving(&config).map_err(one_line)?;
    let shutdown = server::shutdown_signal().context("cannot install signal handlers")?;
    let opened = server::open(&config, Arc::new(SystemClock)).await?;
    let listener = server::bind(config.listen).with_context(|| format!("cannot listen on {}", config.listen))?;
    let address = listener.local_addr()?;
    let metrics = match config.metrics_listen {
        Some(address) => Some(server::start_metrics(address, opened.store.clone())?),
        None => None,
    };
    if let Some(metrics) = &metrics {
        tracing::info!(metrics_address = %metrics.address, "serving metrics at GET /metrics");
    }
    let webhook = config.webhook.clone().map(|webhook| start_webhook(&opened, webhook));
    let housekeeping = start_housekeeping(&opened, &config);
    let checkpoints = start_checkpoints(&opened);
    tracing::info!(%address, data_dir = %config.data_dir.display(), "listening");
    server::run(listener, server::router(&opened), config.connections, shutdown).await?;
    // The background tasks end after the last request: an in-flight webhook delivery may finish
    // within its grace and the lease is released; a sweep stops between two batches.
    housekeeping.shutdown().await;
    if let Some(task) = webhook {
        task.shutdown().await;
    }
    if let Some(task) = checkpoints {
        task.abort();
    }
    drop(metrics);
    opened.store.close().await;
    tracing::info!("stopped");
    Ok(())
}

/// Checkpoints SQLite's write-ahead log in the background ([`crate::store::Store::checkpoint`]);
/// nothing for PostgreSQL, which checkpoints by itself.
fn start_checkpoints(opened: &server::Opened) -> Option<tokio::task::JoinHandle<()>> {
    if opened.store.backend() != "sqlite" {
        return None;
    }
    let store = opened.store.clone();
    Some(tokio::spawn(async move {
        let mut interval = tokio::time::interval(crate::store::CHECKPOINT_INTERVAL);
        interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            interval.tick().await;
            if let Err(err) = store.checkpoint().await {
                tracing::debug!(error = %err, "background checkpoint failed");
            }
        }
    }))
}

fn start_housekeeping(opened: &server::Opened, config: &Config) -> crate::housekeeping::HousekeepingTask {
    crate::housekeeping::spawn(
        opened.service.store().clone(),
        opened.service.clock().clone(),
        crate::housekeeping::HousekeepingConfig {
            interval: config.housekeeping_interval,
            event_retention_days: config.event_retention_days,
            session_idle_secs: config.service.session_idle_secs,
            keep_undelivered_events: config.webhook.is_some(),
        },
    )
}

fn start_webhook(opened: &server::Opened, config: crate::webhook::WebhookConfig) -> crate::webhook::WebhookTask {
    // Only the host: the URL may carry credentials or a secret path.
    tracing::info!(
        host = config.url.host_str().unwrap_or_default(),
        "delivering security events to the webhook"
    );
    crate::webhook::spawn(opened.service.store().clone(), config, opened.service.clock().clone())
}

async fn user(command: UserCommand) -> anyhow::Result<()> {
    let storage = match &command {
        UserCommand::List { storage, .. }
        | UserCommand::Show { storage, .. }
        | UserCommand::ResetMfa { storage, .. }
        | UserCommand::Disable { storage, .. }
        | UserCommand::Enable { storage, .. }
        | UserCommand::Create { storage, .. }
        | UserCommand::SetPassword { storage, .. }
        | UserCommand::RevokeSessions { storage, .. }
        | UserCommand::Unlock { storage, .. }
        | UserCommand::Delete { storage, .. } => storage,
    };
    let config = Config::for_storage(storage).map_err(one_line)?;
    // Input first: a refused confirmation or a missing password must not even open the database.
    let input = operator_input(&command)?;
    let opened = server::open_existing(&config, Arc::new(SystemClock))
        .await
        .map_err(one_line)?;
    let result = run_user_command(&opened.service, command, input).await;
    opened.store.close().await;
    result
}

/// What a `user` command reads from the operator before it touches the database.
enum OperatorInput {
    None,
    /// A password read from standard input.
    Password(String),
    /// No password given: generate one and print it once.
    GeneratePassword,
}

/// One line of standard input without its line ending; `None` at end of input.
fn read_stdin_line() -> anyhow::Result<Option<String>> {
    let mut line = String::new();
    let read = std::io::stdin()
        .lock()
        .read_line(&mut line)
        .map_err(|err| anyhow::anyhow!("cannot read standard input: {err}"))?;
    if read == 0 {
        return Ok(None);
    }
    let trimmed = line.strip_suffix('\n').unwrap_or(&line);
    let trimmed = trimmed.strip_suffix('\r').unwrap_or(trimmed);
    Ok(Some(trimmed.to_owned()))
}

fn operator_input(command: &UserCommand) -> anyhow::Result<OperatorInput> {
    let stdin_is_terminal = std::io::stdin().is_terminal();
    match command {
        UserCommand::Create {
            password_stdin,
            generate,
            ..
        } => {
            if *generate || (stdin_is_terminal && !*password_stdin) {
                return Ok(OperatorInput::GeneratePassword);
            }
            match read_stdin_line()? {
                Some(password) => Ok(OperatorInput::Password(password)),
                None if *password_stdin => anyhow::bail!("no password on standard input (one line expected)"),
                // Nothing piped in (a script with stdin closed): generate one.
                None => Ok(OperatorInput::GeneratePassword),
            }
        }
        UserCommand::SetPassword { generate: true, .. } => Ok(OperatorInput::GeneratePassword),
        UserCommand::SetPassword { email, .. } => {
            if stdin_is_terminal {
                // A password typed here would be echoed and left on the screen.
                anyhow::bail!(
                    "set-password reads the new password from standard input: pipe it in (`tessera user set-password {email} < FILE`), or use --generate"
                );
            }
            match read_stdin_line()? {
                Some(password) => Ok(OperatorInput::Password(password)),
                None => anyhow::bail!("no password on standard input (one line expected)"),
            }
        }
        UserCommand::Delete { email, yes, .. } => {
            if *yes {
                return Ok(OperatorInput::None);
            }
            if !stdin_is_terminal {
                anyhow::bail!("refusing to delete {email} without confirmation: add --yes");
            }
            eprint!(
                "Delete {email} with its sessions, MFA secret and backup codes? Its security events are kept. Type the email to confirm: "
            );
            let _ = std::io::stderr().flush();
            match read_stdin_line()? {
                Some(answer) if answer.trim().eq_ignore_ascii_case(email.trim()) => Ok(OperatorInput::None),
                _ => anyhow::bail!("not confirmed: nothing was deleted"),
            }
        }
        _ => Ok(OperatorInput::None),
    }
}

/// One line for a use case's refusal: the validation members say what is wrong.
fn operator_error(err: crate::service::ServiceError, email: &str) -> anyhow::Error {
    use crate::service::ServiceError;
    match err {
        ServiceError::Validation(problems) => anyhow::anyhow!(
            "{}",
            problems
                .iter()
                .map(|(member, message)| format!("{member}: {message}"))
                .collect::<Vec<_>>()
                .join("; ")
        ),
        ServiceError::EmailTaken => {
            anyhow::anyhow!("an account with email {email} already exists; nothing was written")
        }
        other => anyhow::anyhow!("{other}"),
    }
}

fn time_or_null(at: Option<i64>) -> serde_json::Value {
    at.map_or(serde_json::Value::Null, |at| serde_json::Value::String(rfc3339(at)))
}

async fn run_user_command(
    service: &crate::service::Service,
    command: UserCommand,
    input: OperatorInput,
) -> anyhow::Result<()> {
    match command {
        UserCommand::List { json, .. } => {
            let users = service.users().await.map_err(one_line)?;
            if json {
                let list: Vec<serde_json::Value> = users
                    .iter()
                    .map(|user| {
                        serde_json::json!({
                            "id": user.id,
                            "email": user.email,
                            "created_at": rfc3339(user.created_at),
                            "disabled_at": time_or_null(user.disabled_at),
                            "mfa_enabled": user.mfa.is_some(),
                        })
                    })
                    .collect();
                println!("{}", serde_json::Value::Array(list));
                return Ok(());
            }
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
        UserCommand::Show { email, json, .. } => {
            let user = service
                .user_by_email(&email)
                .await
                .map_err(|err| operator_error(err, &email))?
                .with_context(|| format!("no user with email {email}"))?;
            let status = service.status_of(&user).await.map_err(one_line)?;
            if json {
                let mfa = user.mfa.as_ref();
                let shown = serde_json::json!({
                    "id": user.id,
                    "email": user.email,
                    "created_at": rfc3339(user.created_at),
                    "disabled_at": time_or_null(user.disabled_at),
                    "mfa_enabled": mfa.is_some(),
                    "mfa_enabled_at": time_or_null(status.enabled_at),
                    "mfa_setup_pending": status.pending_setup,
                    "backup_codes_remaining": status.backup_codes_remaining,
                    "totp_suspended_at": time_or_null(mfa.and_then(|mfa| mfa.totp_suspended_at)),
                    "second_factor_failures": user.throttle.failures,
                    "second_factor_locked_until": time_or_null(user.throttle.locked_until),
                    "password_failures": user.password_throttle.failures,
                    "password_locked_until": time_or_null(user.password_throttle.locked_until),
                });
                println!("{shown}");
                return Ok(());
            }
            println!("id:                     {}", user.id);
            println!("email:                  {}", user.email);
            println!("created_at:             {}", rfc3339(user.created_at));
            println!("disabled:               {}", user.disabled_at.is_some());
            println!("mfa_enabled:            {}", user.mfa.is_some());
            if let Some(enabled_at) = status.enabled_at {
                println!("mfa_enabled_at:         {}", rfc3339(enabled_at));
                println!("backup_codes_remaining: {}", status.backup_codes_remaining);
            }
            println!("failed_code_attempts:   {}", user.throttle.failures);
        }
        UserCommand::ResetMfa { email, .. } => {
            let user = service
                .operator_reset_mfa(&email)
                .await
                .map_err(|err| operator_error(err, &email))?;
            println!(
                "MFA reset for {}: MFA is off, all sessions revoked, event recorded.",
                user.email
            );
        }
        UserCommand::Disable { email, .. } => {
            let user = service
                .operator_set_disabled(&email, true)
                .await
                .map_err(|err| operator_error(err, &email))?;
            println!(
                "{} is disabled: logins are refused and all sessions revoked.",
                user.email
            );
        }
        UserCommand::Enable { email, .. } => {
            let user = service
                .operator_set_disabled(&email, false)
                .await
                .map_err(|err| operator_error(err, &email))?;
            println!("{} is enabled.", user.email);
        }
        UserCommand::Create { email, .. } => {
            let password = match input {
                OperatorInput::Password(password) => Some(password),
                OperatorInput::GeneratePassword | OperatorInput::None => None,
            };
            let created = service
                .operator_create_user(&email, password)
                .await
                .map_err(|err| operator_error(err, &email))?;
            eprintln!("created {} (id {})", created.user.email, created.user.id);
            if let Some(password) = created.generated_password {
                // The one place it is ever shown: stdout, so a script can capture it.
                println!("{password}");
                eprintln!("the generated password above is shown only once");
            }
        }
        UserCommand::SetPassword { email, .. } => {
            let (password, generated) = match input {
                OperatorInput::Password(password) => (password, false),
                OperatorInput::GeneratePassword | OperatorInput::None => {
                    (crate::service::operator::generated_password(), true)
                }
            };
            let shown = generated.then(|| password.clone());
            let user = service
                .operator_set_password(&email, password)
                .await
                .map_err(|err| operator_error(err, &email))?;
            eprintln!(
                "password of {} set: all sessions and pending logins revoked, throttles cleared",
                user.email
            );
            if let Some(password) = shown {
                println!("{password}");
                eprintln!("the generated password above is shown only once");
            }
        }
        UserCommand::RevokeSessions { email, .. } => {
            let (user, revoked) = service
                .operator_revoke_sessions(&email)
                .await
                .map_err(|err| operator_error(err, &email))?;
            println!(
                "revoked {} sessions and {} pending logins of {}",
                revoked.sessions, revoked.challenges, user.email
            );
        }
        UserCommand::Unlock {
            email,
            lift_totp_suspension,
            ..
        } => {
            let before = service
                .operator_unlock(&email, lift_totp_suspension)
                .await
                .map_err(|err| operator_error(err, &email))?;
            println!(
                "{} unlocked: cleared {} failed passwords and {} failed codes",
                before.email, before.password_throttle.failures, before.throttle.failures
            );
            let suspended = before.mfa.as_ref().is_some_and(|mfa| mfa.totp_suspended_at.is_some());
            match (suspended, lift_totp_suspension) {
                (true, true) => println!("TOTP codes work again (the suspension was lifted)"),
                (true, false) => println!(
                    "TOTP codes stay suspended: the user signs in with a backup code, or run again with --lift-totp-suspension"
                ),
                (false, _) => {}
            }
        }
        UserCommand::Delete { email, .. } => {
            let user = service
                .operator_delete_user(&email)
                .await
                .map_err(|err| operator_error(err, &email))?;
            println!(
                "deleted {} (id {}) with its sessions, MFA and backup codes; its security events are kept",
                user.email, user.id
            );
        }
    }
    Ok(())
}

/// True when FILE is `-`: standard input or output.
fn is_standard_stream(file: &Path) -> bool {
    file.as_os_str() == "-"
}

fn describe_file(file: &Path) -> String {
    if is_standard_stream(file) {
        "standard output".to_owned()
    } else {
        file.display().to_string()
    }
}

/// The progress line of a long export or import: records done so far, redrawn in place at most a
/// few times a second, and only when stderr is a terminal (a log file gets the summary alone).
struct Progress {
    verb: &'static str,
    terminal: bool,
    last: Option<Instant>,
    drawn: bool,
}

impl Progress {
    fn new(verb: &'static str) -> Self {
        Self {
            verb,
            terminal: std::io::stderr().is_terminal(),
            last: None,
            drawn: false,
        }
    }

    fn show(&mut self, counts: &crate::transfer::Counts) {
        if !self.terminal
            || self
                .last
                .is_some_and(|last| last.elapsed() < Duration::from_millis(200))
        {
            return;
        }
        self.last = Some(Instant::now());
        self.drawn = true;
        eprint!(
            "\r{} {} records ({} users)...",
            self.verb,
            counts.records(),
            counts.users
        );
    }

    /// Erases the progress line before the summary or an error is printed.
    fn clear(&mut self) {
        if self.drawn {
            eprint!("\r\x1b[2K");
            self.drawn = false;
        }
    }
}

/// Creates the export file: never over an existing file, readable by the owner only (it holds
/// password hashes and sealed secrets).
fn create_export_file(file: &Path) -> anyhow::Result<std::fs::File> {
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    options.open(file).map_err(|err| {
        anyhow::anyhow!(
            "cannot create {}: {err} (an export never overwrites a file)",
            file.display()
        )
    })
}

/// Our errors already carry their cause in their message: one line for the operator, without
/// anyhow's "Caused by" repeating it.
fn one_line(err: impl std::fmt::Display) -> anyhow::Error {
    anyhow::anyhow!("{err}")
}

async fn export(file: &Path, storage: &StorageArgs) -> anyhow::Result<()> {
    let config = Config::for_storage(storage).map_err(one_line)?;
    // Opened like the `user` commands: an existing database whose secrets the key opens.
    let opened = server::open_existing(&config, Arc::new(SystemClock))
        .await
        .map_err(one_line)?;
    let key = server::load_key(&config)
        .map_err(one_line)?
        .context("no master key is configured")?;
    let now = opened.service.now();
    let (mut out, created): (Box<dyn Write>, Option<std::fs::File>) = if is_standard_stream(file) {
        (Box::new(std::io::BufWriter::new(std::io::stdout().lock())), None)
    } else {
        let created = create_export_file(file)?;
        (Box::new(std::io::BufWriter::new(created.try_clone()?)), Some(created))
    };
    let mut progress = Progress::new("exported");
    let result = crate::transfer::export(opened.store.as_ref(), &key, now, &mut out, &mut |counts| {
        progress.show(counts)
    })
    .await;
    progress.clear();
    opened.store.close().await;
    drop(out);
    let synced = match &created {
        Some(created) => created
            .sync_all()
            .map_err(|err| anyhow::anyhow!("cannot write {}: {err}", file.display())),
        None => Ok(()),
    };
    let counts = match result.map_err(one_line).and_then(|counts| synced.map(|()| counts)) {
        Ok(counts) => counts,
        Err(err) => {
            // A partial file would only be refused by `import` (no end line); don't leave it.
            if created.is_some() {
                let _ = std::fs::remove_file(file);
            }
            return Err(err);
        }
    };
    eprintln!(
        "exported {counts} from the {} database to {}",
        opened.store.backend(),
        describe_file(file)
    );
    Ok(())
}

async fn import(file: &Path, storage: &StorageArgs) -> anyhow::Result<()> {
    let config = Config::for_storage(storage).map_err(one_line)?;
    let input: Box<dyn BufRead> = if is_standard_stream(file) {
        Box::new(std::io::stdin().lock())
    } else {
        let opened =
            std::fs::File::open(file).map_err(|err| anyhow::anyhow!("cannot open {}: {err}", file.display()))?;
        Box::new(std::io::BufReader::new(opened))
    };
    // Header and master key first: a wrong file or key must not create or migrate anything.
    let export = crate::transfer::ExportFile::open(input).map_err(one_line)?;
    let origin = format!(
        "a {} export of {}",
        export.header().source_backend,
        export.header().exported_at
    );
    let key = server::load_key(&config).map_err(one_line)?.with_context(|| {
        format!(
            "no master key is configured: set TESSERA_SECRET_KEY or copy the exporting installation's key file to {}",
            config.data_dir.join(server::KEY_FILE).display()
        )
    })?;
    export.check_key(&key).map_err(one_line)?;
    let store = server::open_store(&config).await.map_err(one_line)?;
    let mut progress = Progress::new("imported");
    let result = export
        .import_into(store.as_ref(), &key, &mut |counts| progress.show(counts))
        .await;
    progress.clear();
    store.close().await;
    let counts = result.map_err(one_line)?;
    let source = if is_standard_stream(file) {
        "standard input".to_owned()
    } else {
        file.display().to_string()
    };
    eprintln!(
        "imported {counts} from {source} ({origin}) into the {} database",
        store.backend()
    );
    Ok(())
}

// --- `tessera events`: the webhook's dead events ---

#[derive(Debug, Subcommand)]
pub enum EventsCommand {
    /// List the security events the webhook gave up on after its last attempt: id, type, time,
    /// attempts and the last error (an HTTP status or a transport error).
    Dead {
        /// One JSON array instead of a table.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        storage: StorageArgs,
    },
    /// Queue a dead event for delivery again; the instance delivering the webhook sends it at
    /// its next poll (and records it dead again if every new attempt fails).
    Redeliver {
        /// The event id, as `tessera events dead` lists it (and `webhook-id` carried it).
        id: i64,
        #[command(flatten)]
        storage: StorageArgs,
    },
}

/// One dead event as `tessera events dead --json` prints it.
#[derive(Debug, serde::Serialize)]
struct DeadEventLine {
    id: i64,
    #[serde(rename = "type")]
    kind: String,
    at: String,
    attempts: u32,
    last_error: String,
    dead_at: String,
    queued_for_redelivery: bool,
}

async fn events(command: EventsCommand) -> anyhow::Result<()> {
    let storage = match &command {
        EventsCommand::Dead { storage, .. } | EventsCommand::Redeliver { storage, .. } => storage,
    };
    let config = Config::for_storage(storage).map_err(one_line)?;
    let opened = server::open_existing(&config, Arc::new(SystemClock))
        .await
        .map_err(one_line)?;
    let result = match command {
        EventsCommand::Dead { json, .. } => list_dead_events(opened.store.as_ref(), json).await,
        EventsCommand::Redeliver { id, .. } => {
            let now = opened.service.now();
            match opened.store.requeue_dead_event(id, now).await.map_err(one_line)? {
                crate::store::Redelivery::Queued => {
                    println!("event {id} is queued for redelivery");
                    Ok(())
                }
                crate::store::Redelivery::AlreadyQueued => {
                    Err(anyhow::anyhow!("event {id} is already queued for redelivery"))
                }
                crate::store::Redelivery::NotDead => Err(anyhow::anyhow!(
                    "event {id} is not dead: it was delivered or is still on its way"
                )),
                crate::store::Redelivery::Unknown => Err(anyhow::anyhow!("no security event has the id {id}")),
            }
        }
    };
    opened.store.close().await;
    result
}

async fn list_dead_events(store: &dyn crate::store::Store, json: bool) -> anyhow::Result<()> {
    // Dead events are few (each is an outage of the receiver that an operator handles): one read.
    let lines: Vec<DeadEventLine> = store
        .dead_webhook_events(false, u32::MAX)
        .await
        .map_err(one_line)?
        .into_iter()
        .map(|event| DeadEventLine {
            id: event.event.id,
            kind: event.event.record.kind,
            at: rfc3339(event.event.record.at),
            attempts: event.attempts,
            last_error: event.last_error,
            dead_at: rfc3339(event.dead_at),
            queued_for_redelivery: event.requeued_at.is_some(),
        })
        .collect();
    let mut out = std::io::stdout().lock();
    if json {
        serde_json::to_writer_pretty(&mut out, &lines)?;
        writeln!(out)?;
        return Ok(());
    }
    writeln!(
        out,
        "{:<12} {:<24} {:<21} {:>8}  {:<7} LAST ERROR",
        "ID", "TYPE", "AT", "ATTEMPTS", "QUEUED"
    )?;
    for line in &lines {
        writeln!(
            out,
            "{:<12} {:<24} {:<21} {:>8}  {:<7} {}",
            line.id,
            line.kind,
            line.at,
            line.attempts,
            if line.queued_for_redelivery { "yes" } else { "no" },
            line.last_error
        )?;
    }
    eprintln!("{} dead event(s)", lines.len());
    Ok(())
}

async fn backup(file: &Path, storage: &StorageArgs) -> anyhow::Result<()> {
    let config = Config::for_storage(storage).map_err(one_line)?;
    let contents = crate::backup::backup(&config, file).await.map_err(one_line)?;
    println!("backed up to {}: {contents}", file.display());
    Ok(())
}

async fn restore(file: &Path, force: bool, storage: &StorageArgs) -> anyhow::Result<()> {
    let config = Config::for_storage(storage).map_err(one_line)?;
    let restored = crate::backup::restore(&config, file, force).await.map_err(one_line)?;
    println!(
        "restored {} into {}: {}; {} sealed TOTP secrets open under the configured key",
        file.display(),
        restored.database.display(),
        restored.contents,
        restored.sealed_checked
    );
    if let Some(kept) = restored.kept {
        println!("the replaced database is kept as {}", kept.display());
    }
    println!("start tessera serve (pending migrations run at start)");
    Ok(())
}
