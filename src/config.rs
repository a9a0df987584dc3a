//! Configuration, defined once: the `settings!` table below names every setting with its type,
//! default, help text and environment variable, and generates from it the command-line flags
//! ([`StorageArgs`], [`ServeArgs`]), the TOML file's keys (`FileConfig`, unknown keys refused)
//! and the merge: a flag wins over its `TESSERA_*` variable (clap), which wins over the file
//! (`--config` / `TESSERA_CONFIG`), which wins over the default. Validation is code on the
//! resolved values ([`Config::resolve`]), and `tessera check-config` prints each value with its
//! source.
//!
//! Secrets are never flags or file keys (both end up in shell histories and backups) and are
//! never printed: the master key comes from `TESSERA_SECRET_KEY` or the key file
//! (`--secret-key-file`, by default in the data directory), the webhook's signing secret from
//! `TESSERA_EVENTS_WEBHOOK_SECRET` or the file named by `TESSERA_EVENTS_WEBHOOK_SECRET_FILE`
//! ([`SECRETS`]).

use crate::domain::sealing::{KeyError, MasterKey};
use crate::domain::totp::TotpPolicy;
use crate::http::HttpSettings;
use crate::http::client_addr::IpRange;
use crate::server::ConnectionLimits;
use crate::service::ServiceConfig;
use crate::store::postgres::PgSettings;
use crate::webhook::WebhookConfig;
use serde::Deserialize;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;
use zeroize::Zeroizing;

/// Where a resolved value came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    Flag,
    Env,
    File,
    Default,
}

impl std::fmt::Display for Source {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Source::Flag => "flag",
            Source::Env => "env",
            Source::File => "file",
            Source::Default => "default",
        })
    }
}

/// A value as `--help` and `tessera check-config` print it.
pub trait Show {
    fn show(&self) -> String;
}

macro_rules! show_by_display {
    ($($ty:ty),*) => {$(
        impl Show for $ty {
            fn show(&self) -> String {
                self.to_string()
            }
        }
    )*};
}
show_by_display!(u32, u64, i32, i64, usize, bool, String, SocketAddr, LogFormat);

impl Show for PathBuf {
    fn show(&self) -> String {
        self.display().to_string()
    }
}

impl Show for Vec<IpRange> {
    fn show(&self) -> String {
        if self.is_empty() {
            return "none".into();
        }
        self.iter().map(ToString::to_string).collect::<Vec<_>>().join(",")
    }
}

impl<T: Show> Show for Option<T> {
    fn show(&self) -> String {
        self.as_ref().map_or_else(|| "none".into(), Show::show)
    }
}

/// Log line format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(try_from = "String")]
pub enum LogFormat {
    #[default]
    Text,
    Json,
}

impl std::str::FromStr for LogFormat {
    type Err = String;
    fn from_str(text: &str) -> Result<Self, String> {
        match text {
            "text" => Ok(LogFormat::Text),
            "json" => Ok(LogFormat::Json),
            other => Err(format!("{other:?} is not a log format: use text or json")),
        }
    }
}

impl TryFrom<String> for LogFormat {
    type Error = String;
    fn try_from(text: String) -> Result<Self, String> {
        text.parse()
    }
}

impl std::fmt::Display for LogFormat {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            LogFormat::Text => "text",
            LogFormat::Json => "json",
        })
    }
}

/// The help line of a setting: its text and, when it has one, its default.
fn help_text(help: &str, default: Option<String>) -> String {
    match default {
        Some(default) => format!("{help} [default: {default}]"),
        None => help.to_owned(),
    }
}

/// A value picked from the flag/env layer or the file, with where it came from.
#[derive(Debug, Clone)]
struct Resolved<T> {
    value: T,
    source: Source,
}

impl<T> Resolved<Option<T>> {
    fn or_default(self, default: impl FnOnce() -> T) -> Resolved<T> {
        match self.value {
            Some(value) => Resolved {
                value,
                source: self.source,
            },
            None => Resolved {
                value: default(),
                source: Source::Default,
            },
        }
    }
}

fn pick<T>(
    arg: Option<T>,
    file: Option<T>,
    name: &'static str,
    source: &dyn Fn(&'static str) -> Source,
) -> Resolved<Option<T>> {
    match (arg, file) {
        (Some(value), _) => Resolved {
            value: Some(value),
            source: source(name),
        },
        (None, Some(value)) => Resolved {
            value: Some(value),
            source: Source::File,
        },
        (None, None) => Resolved {
            value: None,
            source: Source::Default,
        },
    }
}

/// One setting's description, for documentation checks and tools.
#[derive(Debug, Clone, Copy)]
pub struct SettingInfo {
    /// The TOML key; the flag is `--` and this with `-` for `_`.
    pub name: &'static str,
    pub env: &'static str,
    pub help: &'static str,
}

/// Generates, from one table, the flags, the file keys, the merge with defaults and the
/// description of every setting. Each entry:
/// `name: Type [= default] => env "VAR", value "NAME", help "text" [, arg(extra clap attributes)];`
/// A setting without a default resolves to `Option<Type>`.
macro_rules! settings {
    (@raw $ty:ty) => { Option<$ty> };
    (@raw $ty:ty, $default:expr) => { $ty };
    (@shown $ty:ty) => { None::<String> };
    (@shown $ty:ty, $default:expr) => { Some(Show::show(&{ let value: $ty = $default; value })) };
    (@fill $resolved:expr, $ty:ty) => { $resolved };
    (@fill $resolved:expr, $ty:ty, $default:expr) => { $resolved.or_default(|| -> $ty { $default }) };
    (
        storage: [$(
            $sname:ident : $sty:ty $(= $sdefault:expr)? => env $senv:literal, value $svalue:literal, help $shelp:literal
                $(, arg($($sextra:tt)*))? ;
        )*]
        serve: [$(
            $name:ident : $ty:ty $(= $default:expr)? => env $env:literal, value $value:literal, help $help:literal
                $(, arg($($extra:tt)*))? ;
        )*]
    ) => {
        /// Settings shared by every command that opens the database.
        #[derive(Debug, Clone, Default, clap::Args)]
        pub struct StorageArgs {
            /// TOML configuration file; its keys are the long flag names with `_` for `-`.
            #[arg(long, env = "TESSERA_CONFIG", value_name = "FILE")]
            pub config: Option<PathBuf>,
            $(
                #[arg(long, env = $senv, value_name = $svalue,
                      help = help_text($shelp, settings!(@shown $sty $(, $sdefault)?)) $(, $($sextra)*)?)]
                pub $sname: Option<$sty>,
            )*
        }

        /// Settings of `tessera serve` (and of `check-config` and `healthcheck`, which must see
        /// what `serve` sees).
        #[derive(Debug, Clone, Default, clap::Args)]
        pub struct ServeArgs {
            #[command(flatten)]
            pub storage: StorageArgs,
            $(
                #[arg(long, env = $env, value_name = $value,
                      help = help_text($help, settings!(@shown $ty $(, $default)?)) $(, $($extra)*)?)]
                pub $name: Option<$ty>,
            )*
        }

        /// The TOML file: every key optional, unknown keys refused (a typo must not pass silently).
        #[derive(Debug, Default, Deserialize)]
        #[serde(deny_unknown_fields)]
        struct FileConfig {
            $( $sname: Option<$sty>, )*
            $( $name: Option<$ty>, )*
        }

        /// Every setting merged with its default, before validation.
        #[derive(Debug, Clone)]
        struct Raw {
            $( $sname: Resolved<settings!(@raw $sty $(, $sdefault)?)>, )*
            $( $name: Resolved<settings!(@raw $ty $(, $default)?)>, )*
        }

        impl Raw {
            fn merge(args: &ServeArgs, file: FileConfig, source: &dyn Fn(&'static str) -> Source) -> Self {
                Raw {
                    $( $sname: settings!(@fill
                        pick(args.storage.$sname.clone(), file.$sname, stringify!($sname), source),
                        $sty $(, $sdefault)?), )*
                    $( $name: settings!(@fill
                        pick(args.$name.clone(), file.$name, stringify!($name), source),
                        $ty $(, $default)?), )*
                }
            }

            /// `(name, value, source)` of every setting, in table order.
            fn lines(&self) -> Vec<(&'static str, String, Source)> {
                vec![
                    $( (stringify!($sname), Show::show(&self.$sname.value), self.$sname.source), )*
                    $( (stringify!($name), Show::show(&self.$name.value), self.$name.source), )*
                ]
            }
        }

        /// Every setting of the table (the file's keys), in order.
        pub const SETTINGS: &[SettingInfo] = &[
            $( SettingInfo { name: stringify!($sname), env: $senv, help: $shelp }, )*
            $( SettingInfo { name: stringify!($name), env: $env, help: $help }, )*
        ];
    };
}

settings! {
    storage: [
        data_dir: PathBuf = PathBuf::from("./tessera-data") => env "TESSERA_DATA_DIR", value "DIR",
            help "Directory for the SQLite database and the key file.";
        database_url: String => env "TESSERA_DATABASE_URL", value "URL",
            help "Database URL [default: sqlite://DATA_DIR/tessera.db]. `postgres://USER@HOST/DB` selects \
PostgreSQL (several instances may share it); TLS by `?sslmode=require` or `verify-full`.",
            arg(hide_env_values = true);
        database_pool_size: u32 = PgSettings::default().pool_size => env "TESSERA_DATABASE_POOL_SIZE", value "N",
            help "PostgreSQL connections this instance keeps at most; all instances together must stay below \
the server's max_connections.";
        database_statement_timeout_ms: u64 = millis(PgSettings::default().statement_timeout)
            => env "TESSERA_DATABASE_STATEMENT_TIMEOUT_MS", value "MS",
            help "PostgreSQL statement timeout, also the longest wait for a pooled connection, in milliseconds; \
past it the request answers 503.";
        secret_key_file: PathBuf => env "TESSERA_SECRET_KEY_FILE", value "FILE",
            help "The master key file (base64 of 32 bytes, mode 0600), created on first start if missing; keep it \
outside the data directory so a copy of the data is not a copy of the key; a mounted container secret works \
[default: DATA_DIR/secret.key].";
        log: String = "info,sqlx=warn".to_owned() => env "TESSERA_LOG", value "FILTER",
            help "Log filter (tracing-subscriber EnvFilter syntax, e.g. `debug` or `info,tessera=debug`).";
        log_format: LogFormat = LogFormat::Text => env "TESSERA_LOG_FORMAT", value "FORMAT",
            help "Log line format: text or json (one JSON object per line).";
    ]
    serve: [
        listen: SocketAddr = SocketAddr::from(([127, 0, 0, 1], 8080)) => env "TESSERA_LISTEN", value "ADDR",
            help "Address to listen on.";
        request_timeout_secs: u64 = 30 => env "TESSERA_REQUEST_TIMEOUT_SECS", value "SECS",
            help "Seconds before a request is abandoned with 503.";
        session_idle_timeout_secs: i64 = ServiceConfig::default().session_idle_secs
            => env "TESSERA_SESSION_IDLE_TIMEOUT_SECS", value "SECS",
            help "Seconds of inactivity that end a session.";
        session_lifetime_secs: i64 = ServiceConfig::default().session_lifetime_secs
            => env "TESSERA_SESSION_LIFETIME_SECS", value "SECS",
            help "Absolute session lifetime in seconds.";
        ip_rate_limit_per_minute: u32 = 30 => env "TESSERA_IP_RATE_LIMIT_PER_MINUTE", value "N",
            help "Requests per minute per client (IPv4 address or IPv6 /64) on the unauthenticated API routes \
(register, login, login/mfa, /api/openapi.json, /problems/...) and on every authenticated write (POST or \
DELETE with a session); /healthz, /readyz, the web page and authenticated reads are not limited; 0 disables.";
        trusted_proxies: Vec<IpRange> = Vec::new() => env "TESSERA_TRUSTED_PROXIES", value "RANGES",
            help "Proxies whose X-Forwarded-For is believed: comma-separated addresses or CIDR ranges \
(10.0.0.0/8, 2001:db8::/32).",
            arg(value_delimiter = ',');
        registration_open: bool = ServiceConfig::default().registration_open
            => env "TESSERA_REGISTRATION_OPEN", value "BOOL",
            help "Whether POST /api/auth/register accepts new accounts.";
        mfa_issuer: String = ServiceConfig::default().mfa_issuer => env "TESSERA_MFA_ISSUER", value "NAME",
            help "Issuer name shown by authenticator apps.";
        totp_skew_steps: u32 = TotpPolicy::default().skew_steps => env "TESSERA_TOTP_SKEW_STEPS", value "N",
            help "TOTP steps accepted either side of now (0..=2).";
        reauth_per_minute: u32 = ServiceConfig::default().reauth_per_minute
            => env "TESSERA_REAUTH_PER_MINUTE", value "N",
            help "Re-authentications (MFA setup, password change, regenerate and disable backup codes) per \
account and minute, successful or not; 0 disables.";
        max_connections: usize = ConnectionLimits::default().max_connections
            => env "TESSERA_MAX_CONNECTIONS", value "N",
            help "Connections served at once; more wait in the backlog.";
        header_read_timeout_secs: u64 = ConnectionLimits::default().header_read_timeout.as_secs()
            => env "TESSERA_HEADER_READ_TIMEOUT_SECS", value "SECS",
            help "Seconds a client has to send a request head; also the keep-alive idle limit.";
        max_connections_per_ip: usize = ConnectionLimits::default().max_connections_per_ip
            => env "TESSERA_MAX_CONNECTIONS_PER_IP", value "N",
            help "Connections one client (an IPv4 address or IPv6 /64) may hold open; more are closed at once.";
        body_read_timeout_secs: u64 = 10 => env "TESSERA_BODY_READ_TIMEOUT_SECS", value "SECS",
            help "Seconds a client has to send a whole request body, then 408.";
        events_webhook_url: String => env "TESSERA_EVENTS_WEBHOOK_URL", value "URL",
            help "URL that receives every security event as JSON signed the Standard Webhooks way; needs \
TESSERA_EVENTS_WEBHOOK_SECRET or TESSERA_EVENTS_WEBHOOK_SECRET_FILE, a whsec_ secret [default: none].",
            arg(hide_env_values = true);
        events_webhook_lease_secs: u64 = 30 => env "TESSERA_EVENTS_WEBHOOK_LEASE_SECS", value "SECS",
            help "Seconds the webhook delivery lease lasts: with several instances on one database, how soon \
another instance takes over delivery from one that died.";
        metrics_listen: SocketAddr => env "TESSERA_METRICS_LISTEN", value "ADDR",
            help "Address of a separate listener serving GET /metrics (Prometheus); off by default, e.g. \
127.0.0.1:9464";
        event_retention_days: u32 = 400 => env "TESSERA_EVENT_RETENTION_DAYS", value "DAYS",
            help "Days security events are kept before housekeeping deletes them.";
        housekeeping_interval_secs: u64 = 300 => env "TESSERA_HOUSEKEEPING_INTERVAL_SECS", value "SECS",
            help "Seconds between housekeeping sweeps (expired sessions, mfa tokens, setups, old events).";
        access_log: bool = false => env "TESSERA_ACCESS_LOG", value "BOOL",
            help "Whether every finished request is logged (method, route, status, latency, request id); \
off by default: it costs 5-35 % of the session-introspection rate (BENCHMARKS.md).";
        hashing_threads: usize = 0 => env "TESSERA_HASHING_THREADS", value "N",
            help "Threads that run argon2 (password and backup-code hashing), each holding at most 19 MiB; \
more logins queue; 0 = one per core.";
        hashing_nice: i32 = ServiceConfig::default().hashing_nice => env "TESSERA_HASHING_NICE", value "N",
            help "How much nicer (0..=19) the hashing threads run than the rest of the process: higher lets \
session lookups preempt argon2 during a login flood; 0 = the same priority.";
    ]
}

fn millis(duration: Duration) -> u64 {
    u64::try_from(duration.as_millis()).unwrap_or(u64::MAX)
}

/// A secret: only ever from the environment, either the value itself or (the `_FILE` variant,
/// as container platforms mount secrets) a file holding it; never a flag, never a file key,
/// never printed.
#[derive(Debug, Clone, Copy)]
pub struct SecretInfo {
    pub name: &'static str,
    pub env: &'static str,
    /// The variable naming a file that holds the value.
    pub file_env: &'static str,
    pub help: &'static str,
}

/// The master key (its `_FILE` variant is the key file setting, `secret_key_file`).
pub const SECRET_KEY: SecretInfo = SecretInfo {
    name: "secret_key",
    env: "TESSERA_SECRET_KEY",
    file_env: "TESSERA_SECRET_KEY_FILE",
    help: "the master key that seals TOTP secrets, base64 of 32 bytes; without it the key file \
(--secret-key-file / TESSERA_SECRET_KEY_FILE, default DATA_DIR/secret.key) is used, created on first start; \
setting both is an error",
};

/// The webhook's signing secret.
pub const WEBHOOK_SECRET: SecretInfo = SecretInfo {
    name: "events_webhook_secret",
    env: "TESSERA_EVENTS_WEBHOOK_SECRET",
    file_env: "TESSERA_EVENTS_WEBHOOK_SECRET_FILE",
    help: "the webhook's signing secret (whsec_ + base64 of 24 to 64 random bytes), or the file holding it (trailing newline \
trimmed); setting both is an error",
};

/// Every secret.
pub const SECRETS: [SecretInfo; 2] = [SECRET_KEY, WEBHOOK_SECRET];

/// The part of `--help` that lists the settings only the environment can give (secrets).
pub fn env_only_help() -> String {
    let mut text = String::from("Secrets, only from the environment (values never shown):\n");
    for secret in SECRETS {
        if secret.file_env == SECRET_KEY.file_env {
            text.push_str(&format!("  {}: {}\n", secret.env, secret.help));
        } else {
            text.push_str(&format!("  {} / {}: {}\n", secret.env, secret.file_env, secret.help));
        }
    }
    text.push_str(
        "Every other setting may also be a key of the TOML file (--config / TESSERA_CONFIG), named as its \
flag with `_` for `-`; a flag wins over its variable, which wins over the file.",
    );
    text
}

/// Why the configuration cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("invalid config file {path}: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("TESSERA_SECRET_KEY is unusable: {0}")]
    SecretKey(KeyError),
    #[error("invalid setting {name}: {message}")]
    Invalid { name: &'static str, message: String },
}

/// The resolved configuration.
#[derive(Debug, Clone)]
pub struct Config {
    pub listen: SocketAddr,
    pub data_dir: PathBuf,
    pub database_url: Option<String>,
    /// PostgreSQL pool size and statement timeout (unused with SQLite).
    pub postgres: PgSettings,
    /// From `TESSERA_SECRET_KEY`; `None` means the key file in the data directory.
    pub secret_key: Option<MasterKey>,
    /// The key file when it is not `secret.key` in the data directory.
    pub secret_key_file: Option<PathBuf>,
    pub request_timeout: Duration,
    pub body_read_timeout: Duration,
    pub service: ServiceConfig,
    pub ip_rate_limit_per_minute: u32,
    pub trusted_proxies: Vec<IpRange>,
    pub connections: ConnectionLimits,
    /// Where security events are delivered, if anywhere.
    pub webhook: Option<WebhookConfig>,
    /// The separate Prometheus listener, off when `None`.
    pub metrics_listen: Option<SocketAddr>,
    /// Days security events are kept.
    pub event_retention_days: u32,
    /// Time between housekeeping sweeps.
    pub housekeeping_interval: Duration,
    /// Whether finished requests are logged.
    pub access_log: bool,
    /// The log filter (EnvFilter syntax).
    pub log: String,
    pub log_format: LogFormat,
}

impl Default for Config {
    /// The defaults of the settings table, with no file and no environment.
    fn default() -> Self {
        let raw = Raw::merge(&ServeArgs::default(), FileConfig::default(), &|_| Source::Default);
        Config::validate(raw, &|_| None)
            .map(|(config, _)| config)
            .expect("the defaults are valid")
    }
}

fn read_file(path: Option<&Path>) -> Result<FileConfig, ConfigError> {
    let Some(path) = path else {
        return Ok(FileConfig::default());
    };
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
        path: path.into(),
        source,
    })?;
    toml::from_str(&text).map_err(|err| ConfigError::Parse {
        path: path.into(),
        // toml's message spans several lines (it quotes the offending line): one is enough, and
        // it names the key ("unknown field `lisen`, expected one of ...").
        message: one_line_toml_error(&err),
    })
}

fn one_line_toml_error(err: &toml::de::Error) -> String {
    let message = err.message().trim();
    match err.span() {
        Some(span) => format!("{message} (at byte {})", span.start),
        None => message.to_owned(),
    }
}

/// A secret from `env` or from the file `file_env` names (its trailing newline trimmed).
fn read_secret(
    info: &SecretInfo,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<Option<(Zeroizing<String>, &'static str)>, ConfigError> {
    let direct = env(info.env).map(Zeroizing::new);
    let file = env(info.file_env);
    match (direct, file) {
        (Some(_), Some(_)) => Err(ConfigError::Invalid {
            name: info.env,
            message: format!("set {} or {}, not both", info.env, info.file_env),
        }),
        (Some(value), None) => Ok(Some((value, info.env))),
        (None, Some(path)) => {
            let text = Zeroizing::new(std::fs::read_to_string(&path).map_err(|err| ConfigError::Invalid {
                name: info.file_env,
                message: format!("cannot read {path}: {err}"),
            })?);
            let value = text.strip_suffix('\n').unwrap_or(&text);
            let value = value.strip_suffix('\r').unwrap_or(value);
            Ok(Some((Zeroizing::new(value.to_owned()), info.file_env)))
        }
        (None, None) => Ok(None),
    }
}

/// One line of `tessera check-config`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExplainedSetting {
    pub name: &'static str,
    /// The value as it would be written; secrets are `set (hidden)` or `not set`.
    pub value: String,
    /// `flag`, `env`, `file`, `default`, or for a secret the variable it came from.
    pub source: String,
}

/// A URL as `check-config` prints it: a password or a query (either may be a credential)
/// replaced by `hidden`.
fn redact_url(text: &str) -> String {
    let Ok(mut url) = reqwest::Url::parse(text) else {
        return text.to_owned();
    };
    if url.password().is_some() {
        let _ = url.set_password(Some("hidden"));
    }
    if url.query().is_some() {
        url.set_query(Some("hidden"));
    }
    url.to_string()
}

fn positive(name: &'static str, value: u64) -> Result<(), ConfigError> {
    if value > 0 {
        Ok(())
    } else {
        Err(ConfigError::Invalid {
            name,
            message: "must be positive".into(),
        })
    }
}

fn positive_i64(name: &'static str, value: i64) -> Result<i64, ConfigError> {
    if value > 0 {
        Ok(value)
    } else {
        Err(ConfigError::Invalid {
            name,
            message: "must be positive".into(),
        })
    }
}

impl Config {
    /// Resolves the settings of commands that only open the database.
    pub fn for_storage(args: &StorageArgs) -> Result<Self, ConfigError> {
        Self::resolve(&ServeArgs {
            storage: args.clone(),
            ..ServeArgs::default()
        })
    }

    /// Resolves defaults <- file <- env/flags, reads the secrets from the environment and
    /// validates the result.
    pub fn resolve(args: &ServeArgs) -> Result<Self, ConfigError> {
        Self::explain(args, &|_| Source::Flag).map(|(config, _)| config)
    }

    /// Like [`Config::resolve`], also returning every setting's value and source (secrets
    /// masked). `source` tells a flag from a variable (clap merges them before we see them).
    pub fn explain(
        args: &ServeArgs,
        source: &dyn Fn(&'static str) -> Source,
    ) -> Result<(Self, Vec<ExplainedSetting>), ConfigError> {
        let file = read_file(args.storage.config.as_deref())?;
        let raw = Raw::merge(args, file, source);
        let (config, mut lines) = Self::validate(raw, &|name| std::env::var(name).ok())?;
        let config_line = ExplainedSetting {
            name: "config",
            value: args.storage.config.show(),
            source: match &args.storage.config {
                Some(_) => source("config").to_string(),
                None => Source::Default.to_string(),
            },
        };
        lines.insert(0, config_line);
        Ok((config, lines))
    }

    fn validate(raw: Raw, env: &dyn Fn(&str) -> Option<String>) -> Result<(Self, Vec<ExplainedSetting>), ConfigError> {
        let mut lines: Vec<ExplainedSetting> = raw
            .lines()
            .into_iter()
            .map(|(name, value, source)| ExplainedSetting {
                name,
                value,
                source: source.to_string(),
            })
            .collect();
        for line in &mut lines {
            if line.name == "database_url" || line.name == "events_webhook_url" {
                line.value = redact_url(&line.value);
            }
        }
        let skew = raw.totp_skew_steps.value;
        if skew > 2 {
            return Err(ConfigError::Invalid {
                name: "totp_skew_steps",
                message: "must be 0, 1 or 2".into(),
            });
        }
        positive("request_timeout_secs", raw.request_timeout_secs.value)?;
        let issuer = raw.mfa_issuer.value.clone();
        if issuer.trim().is_empty() || issuer.contains(':') {
            return Err(ConfigError::Invalid {
                name: "mfa_issuer",
                message: "must be non-empty and contain no ':'".into(),
            });
        }
        positive("max_connections", raw.max_connections.value as u64)?;
        positive("header_read_timeout_secs", raw.header_read_timeout_secs.value)?;
        positive("events_webhook_lease_secs", raw.events_webhook_lease_secs.value)?;
        positive("max_connections_per_ip", raw.max_connections_per_ip.value as u64)?;
        positive("body_read_timeout_secs", raw.body_read_timeout_secs.value)?;
        positive("database_pool_size", u64::from(raw.database_pool_size.value))?;
        positive("database_statement_timeout_ms", raw.database_statement_timeout_ms.value)?;
        positive("event_retention_days", u64::from(raw.event_retention_days.value))?;
        if raw.hashing_threads.value > 1024 {
            return Err(ConfigError::Invalid {
                name: "hashing_threads",
                message: "must be at most 1024 (each thread may hold 19 MiB)".into(),
            });
        }
        if !(0..=19).contains(&raw.hashing_nice.value) {
            return Err(ConfigError::Invalid {
                name: "hashing_nice",
                message: "must be between 0 and 19".into(),
            });
        }
        positive("housekeeping_interval_secs", raw.housekeeping_interval_secs.value)?;
        if let Err(err) = tracing_subscriber::EnvFilter::try_new(&raw.log.value) {
            return Err(ConfigError::Invalid {
                name: "log",
                message: format!("not a log filter: {err}"),
            });
        }
        let webhook_secret = read_secret(&WEBHOOK_SECRET, env)?;
        let webhook = match raw.events_webhook_url.value.clone() {
            Some(url) => {
                let secret = webhook_secret.as_ref().map(|(secret, _)| secret.to_string());
                let mut webhook = WebhookConfig::new(&url, secret).map_err(|message| ConfigError::Invalid {
                    // The URL is checked first; every later refusal is about the secret.
                    name: if message.contains("TESSERA_EVENTS_WEBHOOK_SECRET") {
                        "events_webhook_secret"
                    } else {
                        "events_webhook_url"
                    },
                    message,
                })?;
                webhook.lease_ttl = Duration::from_secs(raw.events_webhook_lease_secs.value);
                Some(webhook)
            }
            None => None,
        };
        // The key's `_FILE` variant is the key file setting (`secret_key_file`), read at start by
        // `server::load_key`; only the value itself is read here.
        let secret_key = match env(SECRET_KEY.env).map(Zeroizing::new) {
            Some(text) => Some(MasterKey::from_base64(&text).map_err(ConfigError::SecretKey)?),
            None => None,
        };
        if secret_key.is_some() && raw.secret_key_file.value.is_some() {
            return Err(ConfigError::Invalid {
                name: "TESSERA_SECRET_KEY",
                message:
                    "set TESSERA_SECRET_KEY or the key file (--secret-key-file, TESSERA_SECRET_KEY_FILE), not both"
                        .into(),
            });
        }
        for (info, secret) in [
            (SECRET_KEY, secret_key.is_some().then_some(SECRET_KEY.env)),
            (WEBHOOK_SECRET, webhook_secret.as_ref().map(|(_, from)| *from)),
        ] {
            lines.push(ExplainedSetting {
                name: info.name,
                value: if secret.is_some() { "set (hidden)" } else { "not set" }.into(),
                source: secret.map_or_else(|| Source::Default.to_string(), |from| format!("env {from}")),
            });
        }
        let service_defaults = ServiceConfig::default();
        let config = Config {
            listen: raw.listen.value,
            data_dir: raw.data_dir.value,
            database_url: raw.database_url.value,
            postgres: PgSettings {
                pool_size: raw.database_pool_size.value,
                statement_timeout: Duration::from_millis(raw.database_statement_timeout_ms.value),
            },
            secret_key,
            secret_key_file: raw.secret_key_file.value,
            request_timeout: Duration::from_secs(raw.request_timeout_secs.value),
            body_read_timeout: Duration::from_secs(raw.body_read_timeout_secs.value),
            service: ServiceConfig {
                session_idle_secs: positive_i64("session_idle_timeout_secs", raw.session_idle_timeout_secs.value)?,
                session_lifetime_secs: positive_i64("session_lifetime_secs", raw.session_lifetime_secs.value)?,
                registration_open: raw.registration_open.value,
                reauth_per_minute: raw.reauth_per_minute.value,
                hashing_threads: raw.hashing_threads.value,
                hashing_nice: raw.hashing_nice.value,
                mfa_issuer: issuer,
                totp: TotpPolicy {
                    skew_steps: skew,
                    ..TotpPolicy::default()
                },
                ..service_defaults
            },
            ip_rate_limit_per_minute: raw.ip_rate_limit_per_minute.value,
            trusted_proxies: raw.trusted_proxies.value,
            connections: ConnectionLimits {
                max_connections: raw.max_connections.value,
                max_connections_per_ip: raw.max_connections_per_ip.value,
                header_read_timeout: Duration::from_secs(raw.header_read_timeout_secs.value),
            },
            webhook,
            metrics_listen: raw.metrics_listen.value,
            event_retention_days: raw.event_retention_days.value,
            housekeeping_interval: Duration::from_secs(raw.housekeeping_interval_secs.value),
            access_log: raw.access_log.value,
            log: raw.log.value,
            log_format: raw.log_format.value,
        };
        Ok((config, lines))
    }

    /// The HTTP layer's part.
    pub fn http(&self) -> HttpSettings {
        HttpSettings {
            request_timeout: self.request_timeout,
            body_read_timeout: self.body_read_timeout,
            trusted_proxies: self.trusted_proxies.clone(),
            ip_rate_limit_per_minute: self.ip_rate_limit_per_minute,
            access_log: self.access_log,
        }
    }
}
#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    #[test]
    fn flags_win_over_the_file_which_wins_over_defaults() {
        let mut file = tempfile::NamedTempFile::new().unwrap();
        writeln!(
            file,
            "listen = \"127.0.0.1:9000\"\nmfa_issuer = \"Acme\"\nip_rate_limit_per_minute = 5"
        )
        .unwrap();
        let args = ServeArgs {
            storage: StorageArgs {
                config: Some(file.path().into()),
                ..StorageArgs::default()
            },
            ip_rate_limit_per_minute: Some(7),
            ..ServeArgs::default()
        };
        let config = Config::resolve(&args).unwrap();
        assert_eq!(config.listen, "127.0.0.1:9000".parse().unwrap());
        assert_eq!(config.service.mfa_issuer, "Acme");
        assert_eq!(config.ip_rate_limit_per_minute, 7);
        assert_eq!(config.data_dir, PathBuf::from("./tessera-data"));
        assert_eq!(config.request_timeout, Duration::from_secs(30));
    }

    #[test]
    fn trusted_proxies_are_cidr_ranges_in_the_file_and_the_new_limits_have_defaults() {
        let mut file = tempfile::NamedTempFile::new().unwrap();
        writeln!(
            file,
            "trusted_proxies = [\"10.0.0.0/8\", \"2001:db8::/32\", \"192.0.2.1\"]\nbody_read_timeout_secs = 5"
        )
        .unwrap();
        let args = ServeArgs {
            storage: StorageArgs {
                config: Some(file.path().into()),
                ..StorageArgs::default()
            },
            ..ServeArgs::default()
        };
        let config = Config::resolve(&args).unwrap();
        let proxies: Vec<String> = config.trusted_proxies.iter().map(ToString::to_string).collect();
        assert_eq!(proxies, ["10.0.0.0/8", "2001:db8::/32", "192.0.2.1/32"]);
        assert_eq!(config.body_read_timeout, Duration::from_secs(5));
        assert_eq!(config.connections.max_connections_per_ip, 64);
        let mut bad = tempfile::NamedTempFile::new().unwrap();
        writeln!(bad, "trusted_proxies = [\"10.0.0.0/40\"]").unwrap();
        let args = ServeArgs {
            storage: StorageArgs {
                config: Some(bad.path().into()),
                ..StorageArgs::default()
            },
            ..ServeArgs::default()
        };
        assert!(matches!(Config::resolve(&args), Err(ConfigError::Parse { .. })));
    }

    #[test]
    fn unknown_keys_and_bad_values_are_refused() {
        let mut file = tempfile::NamedTempFile::new().unwrap();
        writeln!(file, "lisen = \"127.0.0.1:9000\"").unwrap();
        let args = ServeArgs {
            storage: StorageArgs {
                config: Some(file.path().into()),
                ..StorageArgs::default()
            },
            ..ServeArgs::default()
        };
        assert!(matches!(Config::resolve(&args), Err(ConfigError::Parse { .. })));
        let skew = ServeArgs {
            totp_skew_steps: Some(5),
            ..ServeArgs::default()
        };
        assert!(matches!(
            Config::resolve(&skew),
            Err(ConfigError::Invalid {
                name: "totp_skew_steps",
                ..
            })
        ));
    }

    fn with_file(text: &str) -> (tempfile::NamedTempFile, ServeArgs) {
        let mut file = tempfile::NamedTempFile::new().unwrap();
        write!(file, "{text}").unwrap();
        let args = ServeArgs {
            storage: StorageArgs {
                config: Some(file.path().into()),
                ..StorageArgs::default()
            },
            ..ServeArgs::default()
        };
        (file, args)
    }

    fn no_env(_: &str) -> Option<String> {
        None
    }

    #[test]
    fn an_unknown_key_is_refused_by_name_on_one_line() {
        let (_file, args) = with_file("listen = \"127.0.0.1:9000\"\nsession_idle_timout_secs = 60\n");
        let err = Config::resolve(&args).unwrap_err().to_string();
        assert!(err.contains("unknown field `session_idle_timout_secs`"), "{err}");
        assert!(!err.contains('\n'), "{err}");
        // A secret is never a file key either.
        let (_file, args) = with_file("secret_key = \"AAAA\"\n");
        let err = Config::resolve(&args).unwrap_err().to_string();
        assert!(err.contains("unknown field `secret_key`"), "{err}");
    }

    #[test]
    fn every_new_setting_is_read_from_the_file_and_from_flags() {
        let (_file, args) = with_file(
            "metrics_listen = \"127.0.0.1:9464\"\nevent_retention_days = 30\nhousekeeping_interval_secs = 60\n\
             access_log = false\nlog = \"debug\"\nlog_format = \"json\"\n",
        );
        let config = Config::resolve(&args).unwrap();
        assert_eq!(config.metrics_listen, Some("127.0.0.1:9464".parse().unwrap()));
        assert_eq!(config.event_retention_days, 30);
        assert_eq!(config.housekeeping_interval, Duration::from_secs(60));
        assert!(!config.access_log);
        assert_eq!(config.log, "debug");
        assert_eq!(config.log_format, LogFormat::Json);

        let flags = ServeArgs {
            storage: StorageArgs {
                log: Some("warn".into()),
                log_format: Some(LogFormat::Text),
                ..args.storage.clone()
            },
            metrics_listen: Some("127.0.0.1:1".parse().unwrap()),
            event_retention_days: Some(7),
            housekeeping_interval_secs: Some(5),
            access_log: Some(true),
            ..args.clone()
        };
        let (config, lines) = Config::explain(&flags, &|_| Source::Flag).unwrap();
        assert_eq!(config.metrics_listen, Some("127.0.0.1:1".parse().unwrap()));
        assert_eq!(config.event_retention_days, 7);
        assert_eq!(config.housekeeping_interval, Duration::from_secs(5));
        assert!(config.access_log);
        assert_eq!((config.log.as_str(), config.log_format), ("warn", LogFormat::Text));
        let line = |name: &str| lines.iter().find(|line| line.name == name).cloned().unwrap();
        assert_eq!(line("event_retention_days").source, "flag");
        assert_eq!(line("listen").source, "default");
        assert_eq!(line("log").value, "warn");

        let defaults = Config::default();
        assert_eq!(defaults.metrics_listen, None);
        assert_eq!(defaults.event_retention_days, 400);
        assert_eq!(defaults.housekeeping_interval, Duration::from_secs(300));
        assert!(!defaults.access_log);
        assert_eq!(
            (defaults.log.as_str(), defaults.log_format),
            ("info,sqlx=warn", LogFormat::Text)
        );
    }

    #[test]
    fn bad_log_settings_and_zero_intervals_are_refused_by_name() {
        for (text, name) in [
            ("log = \"info,[[\"\n", "log"),
            ("housekeeping_interval_secs = 0\n", "housekeeping_interval_secs"),
            ("event_retention_days = 0\n", "event_retention_days"),
        ] {
            let (_file, args) = with_file(text);
            let err = Config::resolve(&args).unwrap_err().to_string();
            assert!(err.contains(&format!("invalid setting {name}")), "{text}: {err}");
        }
        let (_file, args) = with_file("log_format = \"xml\"\n");
        let err = Config::resolve(&args).unwrap_err().to_string();
        assert!(err.contains("not a log format"), "{err}");
    }

    #[test]
    fn the_webhook_secret_comes_from_its_variable_or_its_file_never_both() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("webhook-secret");
        std::fs::write(&path, "whsec_ZnJvbS1hLWZpbGUtMDEyMzQ1Njc4OS1hYmNkZWZnaA==\n").unwrap();
        let path_text = path.to_str().unwrap().to_owned();
        let raw = || {
            let args = ServeArgs {
                events_webhook_url: Some("https://hooks.example/events".into()),
                ..ServeArgs::default()
            };
            Raw::merge(&args, FileConfig::default(), &|_| Source::Flag)
        };

        let from_file = |name: &str| (name == "TESSERA_EVENTS_WEBHOOK_SECRET_FILE").then(|| path_text.clone());
        let (config, lines) = Config::validate(raw(), &from_file).unwrap();
        let signed_with =
            |secret: &str| crate::webhook::signature(&crate::webhook::parse_secret(secret).unwrap(), "1", 0, b"{}");
        assert_eq!(
            config.webhook.unwrap().sign("1", 0, b"{}"),
            signed_with("whsec_ZnJvbS1hLWZpbGUtMDEyMzQ1Njc4OS1hYmNkZWZnaA=="),
            "the trailing newline is trimmed"
        );
        let line = lines.iter().find(|line| line.name == "events_webhook_secret").unwrap();
        assert_eq!(line.value, "set (hidden)");
        assert_eq!(line.source, "env TESSERA_EVENTS_WEBHOOK_SECRET_FILE");

        let direct = |name: &str| {
            (name == "TESSERA_EVENTS_WEBHOOK_SECRET")
                .then(|| "whsec_ZGlyZWN0LXNlY3JldC0wMTIzNDU2Nzg5LWFiY2RlZg==".to_owned())
        };
        let (config, _) = Config::validate(raw(), &direct).unwrap();
        assert_eq!(
            config.webhook.unwrap().sign("1", 0, b"{}"),
            signed_with("whsec_ZGlyZWN0LXNlY3JldC0wMTIzNDU2Nzg5LWFiY2RlZg==")
        );

        let both = |name: &str| match name {
            "TESSERA_EVENTS_WEBHOOK_SECRET" => Some("whsec_ZGlyZWN0LXNlY3JldC0wMTIzNDU2Nzg5LWFiY2RlZg==".to_owned()),
            "TESSERA_EVENTS_WEBHOOK_SECRET_FILE" => Some(path_text.clone()),
            _ => None,
        };
        let err = Config::validate(raw(), &both).unwrap_err().to_string();
        assert!(err.contains("not both"), "{err}");
        assert!(!err.contains("ZGly"), "no secret in the message: {err}");

        let missing = dir.path().join("absent").to_str().unwrap().to_owned();
        let absent = |name: &str| (name == "TESSERA_EVENTS_WEBHOOK_SECRET_FILE").then(|| missing.clone());
        let err = Config::validate(raw(), &absent).unwrap_err().to_string();
        assert!(
            err.contains("TESSERA_EVENTS_WEBHOOK_SECRET_FILE") && err.contains("absent"),
            "{err}"
        );

        let err = Config::validate(raw(), &no_env).unwrap_err().to_string();
        assert!(err.contains("TESSERA_EVENTS_WEBHOOK_SECRET"), "{err}");
    }

    #[test]
    fn the_master_key_variable_and_a_key_file_together_are_refused() {
        let key = data_encoding::BASE64.encode(&[7u8; 32]);
        let env = |name: &str| (name == "TESSERA_SECRET_KEY").then(|| key.clone());
        let args = ServeArgs {
            storage: StorageArgs {
                secret_key_file: Some("/run/secrets/tessera-key".into()),
                ..StorageArgs::default()
            },
            ..ServeArgs::default()
        };
        let raw = Raw::merge(&args, FileConfig::default(), &|_| Source::Flag);
        let err = Config::validate(raw, &env).unwrap_err().to_string();
        assert!(err.contains("not both"), "{err}");
        assert!(!err.contains(&key), "{err}");
        let raw = Raw::merge(&ServeArgs::default(), FileConfig::default(), &|_| Source::Flag);
        let (config, lines) = Config::validate(raw, &env).unwrap();
        assert!(config.secret_key.is_some());
        let line = lines.iter().find(|line| line.name == "secret_key").unwrap();
        assert_eq!(
            (line.value.as_str(), line.source.as_str()),
            ("set (hidden)", "env TESSERA_SECRET_KEY")
        );
        assert!(lines.iter().all(|line| !line.value.contains(&key)));
    }

    #[test]
    fn the_readme_table_lists_every_setting_with_its_flag_variable_and_default() {
        let readme = include_str!("../README.md");
        let raw = Raw::merge(&ServeArgs::default(), FileConfig::default(), &|_| Source::Default);
        let defaults = raw.lines();
        assert_eq!(defaults.len(), SETTINGS.len());
        for (setting, (name, default, _)) in SETTINGS.iter().zip(defaults) {
            assert_eq!(setting.name, name);
            let row = format!(
                "| `{}` | `--{}` | `{}` | ",
                setting.name,
                setting.name.replace('_', "-"),
                setting.env
            );
            let line = readme
                .lines()
                .find(|line| line.starts_with(&row))
                .unwrap_or_else(|| panic!("README has no row {row}"));
            if default != "none" {
                assert!(
                    line[row.len()..].starts_with(&format!("`{default}` |")),
                    "{line}: default {default}"
                );
            }
        }
        for secret in SECRETS {
            assert!(readme.contains(&format!("`{}`", secret.env)), "{}", secret.env);
            assert!(
                readme.contains(&format!("`{}`", secret.file_env)),
                "{}",
                secret.file_env
            );
        }
    }
}
