//! Configuration: built-in defaults, then an optional TOML file (`--config`), then `TESSERA_*`
//! environment variables, then command-line flags (clap merges the last two: a flag wins over
//! its variable).
//!
//! The master key is never a flag or a file setting (both end up in shell histories and
//! backups): it comes from `TESSERA_SECRET_KEY` or from the key file (`--secret-key-file`, by
//! default in the data directory); only the file's path may be configured.

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

/// Settings shared by every command that opens the database.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct StorageArgs {
    /// TOML configuration file; its keys are the long flag names with `_` for `-`.
    #[arg(long, env = "TESSERA_CONFIG", value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Directory for the SQLite database and the key file [default: ./tessera-data].
    #[arg(long, env = "TESSERA_DATA_DIR", value_name = "DIR")]
    pub data_dir: Option<PathBuf>,
    /// Database URL [default: sqlite://DATA_DIR/tessera.db]. `postgres://USER@HOST/DB` selects
    /// PostgreSQL (several instances may share it); TLS by `?sslmode=require` or `verify-full`.
    #[arg(long, env = "TESSERA_DATABASE_URL", value_name = "URL", hide_env_values = true)]
    pub database_url: Option<String>,
    /// PostgreSQL connections this instance keeps at most; all instances together must stay
    /// below the server's max_connections [default: 10].
    #[arg(long, env = "TESSERA_DATABASE_POOL_SIZE", value_name = "N")]
    pub database_pool_size: Option<u32>,
    /// PostgreSQL statement timeout, also the longest wait for a pooled connection, in
    /// milliseconds; past it the request answers 503 [default: 5000].
    #[arg(long, env = "TESSERA_DATABASE_STATEMENT_TIMEOUT_MS", value_name = "MS")]
    pub database_statement_timeout_ms: Option<u64>,
    /// The master key file, created (mode 0600) on first start if missing; keep it outside the
    /// data directory so a copy of the data is not a copy of the key [default: DATA_DIR/secret.key].
    #[arg(long, env = "TESSERA_SECRET_KEY_FILE", value_name = "FILE")]
    pub secret_key_file: Option<PathBuf>,
}

/// Settings of `tessera serve`.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct ServeArgs {
    #[command(flatten)]
    pub storage: StorageArgs,
    /// Address to listen on [default: 127.0.0.1:8080].
    #[arg(long, env = "TESSERA_LISTEN", value_name = "ADDR")]
    pub listen: Option<SocketAddr>,
    /// Seconds before a request is abandoned with 503 [default: 30].
    #[arg(long, env = "TESSERA_REQUEST_TIMEOUT_SECS", value_name = "SECS")]
    pub request_timeout_secs: Option<u64>,
    /// Seconds of inactivity that end a session [default: 1800].
    #[arg(long, env = "TESSERA_SESSION_IDLE_TIMEOUT_SECS", value_name = "SECS")]
    pub session_idle_timeout_secs: Option<i64>,
    /// Absolute session lifetime in seconds [default: 43200].
    #[arg(long, env = "TESSERA_SESSION_LIFETIME_SECS", value_name = "SECS")]
    pub session_lifetime_secs: Option<i64>,
    /// Requests per minute per client (IPv4 address or IPv6 /64) on the unauthenticated endpoints
    /// and authenticated writes; 0 disables [default: 30].
    #[arg(long, env = "TESSERA_IP_RATE_LIMIT_PER_MINUTE", value_name = "N")]
    pub ip_rate_limit_per_minute: Option<u32>,
    /// Proxies whose X-Forwarded-For is believed: comma-separated addresses or CIDR ranges
    /// (10.0.0.0/8, 2001:db8::/32) [default: none].
    #[arg(long, env = "TESSERA_TRUSTED_PROXIES", value_name = "RANGES", value_delimiter = ',')]
    pub trusted_proxies: Option<Vec<IpRange>>,
    /// Whether POST /api/auth/register accepts new accounts [default: true].
    #[arg(long, env = "TESSERA_REGISTRATION_OPEN", value_name = "BOOL")]
    pub registration_open: Option<bool>,
    /// Issuer name shown by authenticator apps [default: Tessera].
    #[arg(long, env = "TESSERA_MFA_ISSUER", value_name = "NAME")]
    pub mfa_issuer: Option<String>,
    /// TOTP steps accepted either side of now (0..=2) [default: 1].
    #[arg(long, env = "TESSERA_TOTP_SKEW_STEPS", value_name = "N")]
    pub totp_skew_steps: Option<u32>,
    /// Re-authentications (MFA setup, password change, regenerate and disable backup codes) per
    /// account and minute, successful or not; 0 disables [default: 10].
    #[arg(long, env = "TESSERA_REAUTH_PER_MINUTE", value_name = "N")]
    pub reauth_per_minute: Option<u32>,
    /// Connections served at once; more wait in the backlog [default: 512].
    #[arg(long, env = "TESSERA_MAX_CONNECTIONS", value_name = "N")]
    pub max_connections: Option<usize>,
    /// Seconds a client has to send a request head; also the keep-alive idle limit [default: 10].
    #[arg(long, env = "TESSERA_HEADER_READ_TIMEOUT_SECS", value_name = "SECS")]
    pub header_read_timeout_secs: Option<u64>,
    /// Connections one client (an IPv4 address or IPv6 /64) may hold open; more are closed at
    /// once [default: 64].
    #[arg(long, env = "TESSERA_MAX_CONNECTIONS_PER_IP", value_name = "N")]
    pub max_connections_per_ip: Option<usize>,
    /// Seconds a client has to send a whole request body, then 408 [default: 10].
    #[arg(long, env = "TESSERA_BODY_READ_TIMEOUT_SECS", value_name = "SECS")]
    pub body_read_timeout_secs: Option<u64>,
    /// URL that receives every security event as signed JSON (HMAC-SHA256) [default: none].
    #[arg(long, env = "TESSERA_EVENTS_WEBHOOK_URL", value_name = "URL")]
    pub events_webhook_url: Option<String>,
    /// Seconds the webhook delivery lease lasts: with several instances on one database, how
    /// soon another instance takes over delivery from one that died [default: 30].
    #[arg(long, env = "TESSERA_EVENTS_WEBHOOK_LEASE_SECS", value_name = "SECS")]
    pub events_webhook_lease_secs: Option<u64>,
    /// One info line per request (method, path, status, latency, request id). It costs 5-35 %
    /// of the introspection rate (BENCHMARKS.md); security events are recorded in the database
    /// either way [default: false].
    #[arg(long, env = "TESSERA_ACCESS_LOG", value_name = "BOOL")]
    pub access_log: Option<bool>,
}

/// The TOML file: every key optional, unknown keys refused (a typo must not pass silently).
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileConfig {
    data_dir: Option<PathBuf>,
    secret_key_file: Option<PathBuf>,
    database_url: Option<String>,
    database_pool_size: Option<u32>,
    database_statement_timeout_ms: Option<u64>,
    listen: Option<SocketAddr>,
    request_timeout_secs: Option<u64>,
    session_idle_timeout_secs: Option<i64>,
    session_lifetime_secs: Option<i64>,
    ip_rate_limit_per_minute: Option<u32>,
    trusted_proxies: Option<Vec<IpRange>>,
    registration_open: Option<bool>,
    mfa_issuer: Option<String>,
    totp_skew_steps: Option<u32>,
    reauth_per_minute: Option<u32>,
    max_connections: Option<usize>,
    header_read_timeout_secs: Option<u64>,
    max_connections_per_ip: Option<usize>,
    body_read_timeout_secs: Option<u64>,
    events_webhook_url: Option<String>,
    events_webhook_lease_secs: Option<u64>,
    access_log: Option<bool>,
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
    /// Whether every request is logged ("request finished", at info).
    pub access_log: bool,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 8080)),
            data_dir: PathBuf::from("./tessera-data"),
            database_url: None,
            postgres: PgSettings::default(),
            secret_key: None,
            secret_key_file: None,
            request_timeout: Duration::from_secs(30),
            body_read_timeout: Duration::from_secs(10),
            service: ServiceConfig::default(),
            ip_rate_limit_per_minute: 30,
            trusted_proxies: Vec::new(),
            connections: ConnectionLimits::default(),
            webhook: None,
            access_log: false,
        }
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
        message: err.to_string(),
    })
}

impl Config {
    /// Resolves the settings of commands that only open the database.
    pub fn for_storage(args: &StorageArgs) -> Result<Self, ConfigError> {
        Self::resolve(&ServeArgs {
            storage: args.clone(),
            ..ServeArgs::default()
        })
    }

    /// Resolves defaults <- file <- env/flags, and reads `TESSERA_SECRET_KEY`.
    pub fn resolve(args: &ServeArgs) -> Result<Self, ConfigError> {
        let file = read_file(args.storage.config.as_deref())?;
        let defaults = Config::default();
        let service_defaults = ServiceConfig::default();
        let skew = args
            .totp_skew_steps
            .or(file.totp_skew_steps)
            .unwrap_or(service_defaults.totp.skew_steps);
        if skew > 2 {
            return Err(ConfigError::Invalid {
                name: "totp_skew_steps",
                message: "must be 0, 1 or 2".into(),
            });
        }
        let positive = |name: &'static str, value: i64| {
            if value > 0 {
                Ok(value)
            } else {
                Err(ConfigError::Invalid {
                    name,
                    message: "must be positive".into(),
                })
            }
        };
        let request_timeout_secs = args.request_timeout_secs.or(file.request_timeout_secs).unwrap_or(30);
        positive(
            "request_timeout_secs",
            i64::try_from(request_timeout_secs).unwrap_or(i64::MAX),
        )?;
        let issuer = args
            .mfa_issuer
            .clone()
            .or(file.mfa_issuer)
            .unwrap_or(service_defaults.mfa_issuer.clone());
        if issuer.trim().is_empty() || issuer.contains(':') {
            return Err(ConfigError::Invalid {
                name: "mfa_issuer",
                message: "must be non-empty and contain no ':'".into(),
            });
        }
        let limits = ConnectionLimits::default();
        let max_connections = args
            .max_connections
            .or(file.max_connections)
            .unwrap_or(limits.max_connections);
        if max_connections == 0 {
            return Err(ConfigError::Invalid {
                name: "max_connections",
                message: "must be positive".into(),
            });
        }
        let header_read_timeout_secs = args
            .header_read_timeout_secs
            .or(file.header_read_timeout_secs)
            .unwrap_or(limits.header_read_timeout.as_secs());
        positive(
            "header_read_timeout_secs",
            i64::try_from(header_read_timeout_secs).unwrap_or(i64::MAX),
        )?;
        let lease_secs = args.events_webhook_lease_secs.or(file.events_webhook_lease_secs);
        if let Some(secs) = lease_secs {
            positive("events_webhook_lease_secs", i64::try_from(secs).unwrap_or(i64::MAX))?;
        }
        let max_connections_per_ip = args
            .max_connections_per_ip
            .or(file.max_connections_per_ip)
            .unwrap_or(limits.max_connections_per_ip);
        if max_connections_per_ip == 0 {
            return Err(ConfigError::Invalid {
                name: "max_connections_per_ip",
                message: "must be positive".into(),
            });
        }
        let body_read_timeout_secs = args
            .body_read_timeout_secs
            .or(file.body_read_timeout_secs)
            .unwrap_or(defaults.body_read_timeout.as_secs());
        positive(
            "body_read_timeout_secs",
            i64::try_from(body_read_timeout_secs).unwrap_or(i64::MAX),
        )?;
        let webhook = match args.events_webhook_url.clone().or(file.events_webhook_url) {
            Some(url) => {
                let mut webhook = WebhookConfig::new(&url, std::env::var("TESSERA_EVENTS_WEBHOOK_SECRET").ok())
                    .map_err(|message| ConfigError::Invalid {
                        name: "events_webhook_url",
                        message,
                    })?;
                if let Some(secs) = lease_secs {
                    webhook.lease_ttl = Duration::from_secs(secs);
                }
                Some(webhook)
            }
            None => None,
        };
        let pg_defaults = PgSettings::default();
        let pool_size = args
            .storage
            .database_pool_size
            .or(file.database_pool_size)
            .unwrap_or(pg_defaults.pool_size);
        positive("database_pool_size", i64::from(pool_size))?;
        let statement_timeout_ms = args
            .storage
            .database_statement_timeout_ms
            .or(file.database_statement_timeout_ms)
            .map_or(pg_defaults.statement_timeout, Duration::from_millis);
        positive(
            "database_statement_timeout_ms",
            i64::try_from(statement_timeout_ms.as_millis()).unwrap_or(i64::MAX),
        )?;
        let secret_key = match std::env::var("TESSERA_SECRET_KEY") {
            Ok(text) => Some(MasterKey::from_base64(&text).map_err(ConfigError::SecretKey)?),
            Err(_) => None,
        };
        Ok(Config {
            listen: args.listen.or(file.listen).unwrap_or(defaults.listen),
            data_dir: args
                .storage
                .data_dir
                .clone()
                .or(file.data_dir)
                .unwrap_or(defaults.data_dir),
            database_url: args.storage.database_url.clone().or(file.database_url),
            postgres: PgSettings {
                pool_size,
                statement_timeout: statement_timeout_ms,
            },
            secret_key,
            secret_key_file: args.storage.secret_key_file.clone().or(file.secret_key_file),
            request_timeout: Duration::from_secs(request_timeout_secs),
            body_read_timeout: Duration::from_secs(body_read_timeout_secs),
            service: ServiceConfig {
                session_idle_secs: positive(
                    "session_idle_timeout_secs",
                    args.session_idle_timeout_secs
                        .or(file.session_idle_timeout_secs)
                        .unwrap_or(service_defaults.session_idle_secs),
                )?,
                session_lifetime_secs: positive(
                    "session_lifetime_secs",
                    args.session_lifetime_secs
                        .or(file.session_lifetime_secs)
                        .unwrap_or(service_defaults.session_lifetime_secs),
                )?,
                registration_open: args.registration_open.or(file.registration_open).unwrap_or(true),
                reauth_per_minute: args
                    .reauth_per_minute
                    .or(file.reauth_per_minute)
                    .unwrap_or(service_defaults.reauth_per_minute),
                mfa_issuer: issuer,
                totp: TotpPolicy {
                    skew_steps: skew,
                    ..TotpPolicy::default()
                },
                ..service_defaults
            },
            ip_rate_limit_per_minute: args
                .ip_rate_limit_per_minute
                .or(file.ip_rate_limit_per_minute)
                .unwrap_or(30),
            trusted_proxies: args
                .trusted_proxies
                .clone()
                .or(file.trusted_proxies)
                .unwrap_or_default(),
            connections: ConnectionLimits {
                max_connections,
                max_connections_per_ip,
                header_read_timeout: Duration::from_secs(header_read_timeout_secs),
            },
            webhook,
            access_log: args.access_log.or(file.access_log).unwrap_or(defaults.access_log),
        })
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
}
