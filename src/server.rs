//! Assembling and running the service: data directory, master key, store, migrations, and
//! `run(listener, router, shutdown)`, which the binary and the tests share.

use crate::clock::Clock;
use crate::config::Config;
use crate::domain::sealing::{KeyError, MasterKey};
use crate::http::client_addr::budget_key;
use crate::http::{self, AppState};
use crate::service::{Service, ServiceError};
use crate::store::postgres::PgStore;
use crate::store::sqlite::SqliteStore;
use crate::store::{Store, StoreError};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use std::collections::HashMap;
use std::future::Future;
use std::io::Write;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tower::ServiceExt;

/// Name of the key file inside the data directory.
pub const KEY_FILE: &str = "secret.key";
/// Name of the SQLite database inside the data directory.
pub const DATABASE_FILE: &str = "tessera.db";

/// Why the service could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartupError {
    #[error("cannot prepare data directory {path}: {source}")]
    DataDir { path: PathBuf, source: std::io::Error },
    #[error("cannot read or write key file {path}: {source}")]
    KeyFile { path: PathBuf, source: std::io::Error },
    #[error(
        "key file {path} is accessible to group or others (mode {mode:03o}); make it private with `chmod 600 {path}` and start again"
    )]
    KeyFileExposed { path: PathBuf, mode: u32 },
    #[error(
        "key file {path} is unusable: {error}; restore the original key file or remove it only if the database is new"
    )]
    BadKeyFile { path: PathBuf, error: KeyError },
    #[error(
        "the database holds TOTP secrets sealed with another master key; set the original TESSERA_SECRET_KEY or key file"
    )]
    WrongKey,
    #[error(
        "the database holds sealed TOTP secrets but the key file {path} is missing; restore it (or set TESSERA_SECRET_KEY)"
    )]
    MissingKey { path: PathBuf },
    #[error("no database at {path}; check --data-dir, or run `tessera migrate` to create one")]
    NoDatabase { path: PathBuf },
    #[error("unsupported database URL: use sqlite:PATH or postgres://USER@HOST/DATABASE")]
    UnsupportedDatabase,
    #[error("database: {0}")]
    Store(#[from] StoreError),
    #[error("service: {0}")]
    Service(#[from] ServiceError),
    #[error("cannot listen for metrics on {address}: {error}")]
    MetricsListen { address: SocketAddr, error: std::io::Error },
    #[error("{0}")]
    Metrics(#[from] crate::metrics::RecorderError),
}

/// An opened service with its store, ready to be served or used by the CLI.
pub struct Opened {
    pub service: Arc<Service>,
    pub store: Arc<dyn Store>,
    pub state: AppState,
}

fn create_private_dir(path: &Path) -> std::io::Result<()> {
    let mut builder = std::fs::DirBuilder::new();
    builder.recursive(true);
    #[cfg(unix)]
    std::os::unix::fs::DirBuilderExt::mode(&mut builder, 0o700);
    builder.create(path)
}

/// Where the key file is: `--secret-key-file`, else `secret.key` in the data directory.
pub fn key_file(config: &Config) -> PathBuf {
    config
        .secret_key_file
        .clone()
        .unwrap_or_else(|| config.data_dir.join(KEY_FILE))
}

/// Creates an empty file of mode 0600 unless it exists. The database is created this way
/// before SQLite opens it, because SQLite creates a file with the process umask (often
/// world-readable) and gives its `-wal` and `-shm` files the database file's mode.
fn create_private_file(path: &Path) -> std::io::Result<()> {
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    match options.open(path) {
        Ok(_) => Ok(()),
        Err(err) if err.kind() == std::io::ErrorKind::AlreadyExists => Ok(()),
        Err(err) => Err(err),
    }
}

/// Warns when a data directory made by someone else (we create it 0700) lets other users in:
/// they could copy the database, and the key file too while it lives there.
fn warn_if_exposed(dir: &Path) {
    #[cfg(unix)]
    if let Ok(metadata) = std::fs::metadata(dir) {
        let mode = std::os::unix::fs::PermissionsExt::mode(&metadata.permissions()) & 0o777;
        if mode & 0o077 != 0 {
            tracing::warn!(
                path = %dir.display(),
                mode = format!("{mode:03o}"),
                "the data directory is accessible to group or others; make it private with chmod 700"
            );
        }
    }
}

/// The master key from `TESSERA_SECRET_KEY` or the key file; `None` when neither exists yet.
/// A key of the wrong size is refused, never replaced; so is a key file that other users may
/// read (whoever can read it can open every TOTP secret), with the command that fixes it.
pub fn load_key(config: &Config) -> Result<Option<MasterKey>, StartupError> {
    if let Some(key) = &config.secret_key {
        return Ok(Some(key.clone()));
    }
    let path = key_file(config);
    #[cfg(unix)]
    if let Ok(metadata) = std::fs::metadata(&path) {
        let mode = std::os::unix::fs::PermissionsExt::mode(&metadata.permissions()) & 0o777;
        if mode & 0o077 != 0 {
            return Err(StartupError::KeyFileExposed { path, mode });
        }
    }
    match std::fs::read_to_string(&path) {
        Ok(text) => MasterKey::from_base64(&text)
            .map(Some)
            .map_err(|error| StartupError::BadKeyFile { path, error }),
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(source) => Err(StartupError::KeyFile { path, source }),
    }
}

/// Creates the key file (mode 0600) with a fresh key; never overwrites one.
fn create_key_file(config: &Config) -> Result<MasterKey, StartupError> {
    let path = key_file(config);
    let key = MasterKey::generate();
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    let mut file = options.open(&path).map_err(|source| StartupError::KeyFile {
        path: path.clone(),
        source,
    })?;
    file.write_all(key.to_base64().as_bytes())
        .and_then(|()| file.write_all(b"\n"))
        .and_then(|()| file.sync_all())
        .map_err(|source| StartupError::KeyFile {
            path: path.clone(),
            source,
        })?;
    tracing::info!(path = %path.display(), "created a new master key file");
    Ok(key)
}

/// The key for this database: the configured one if the sealed secrets in the database were
/// sealed with it; a new one (written to the key file) only when the database holds no sealed
/// secret yet. A missing or different key for a database with secrets stops the start: a new
/// key would silently make every enrolled authenticator useless.
async fn key_for(config: &Config, store: &dyn Store) -> Result<MasterKey, StartupError> {
    let key = load_key(config)?;
    let sample = store.any_sealed_secret().await?;
    match (key, sample) {
        (Some(key), Some(sealed)) if !key.sealed_this(&sealed) => Err(StartupError::WrongKey),
        (Some(key), _) => Ok(key),
        (None, Some(_)) => Err(StartupError::MissingKey { path: key_file(config) }),
        (None, None) => create_key_file(config),
    }
}

/// Opens the store named by the configuration (SQLite in the data directory by default, or the
/// `sqlite:` / `postgres:` URL) and applies pending migrations.
pub async fn open_store(config: &Config) -> Result<Arc<dyn Store>, StartupError> {
    // The data directory holds the key file on every backend, and the database on SQLite.
    create_private_dir(&config.data_dir).map_err(|source| StartupError::DataDir {
        path: config.data_dir.clone(),
        source,
    })?;
    warn_if_exposed(&config.data_dir);
    let store: Arc<dyn Store> = match config.database_url.as_deref() {
        None => {
            let path = config.data_dir.join(DATABASE_FILE);
            create_private_file(&path).map_err(|source| StartupError::DataDir {
                path: path.clone(),
                source,
            })?;
            Arc::new(SqliteStore::open_file(&path).await?)
        }
        Some(url) if url.starts_with("sqlite:") => Arc::new(SqliteStore::connect(url).await?),
        Some(url) if url.starts_with("postgres:") || url.starts_with("postgresql:") => {
            Arc::new(PgStore::connect(url, config.postgres).await?)
        }
        Some(_) => return Err(StartupError::UnsupportedDatabase),
    };
    store.migrate().await?;
    Ok(store)
}

/// Like [`open`], for operator commands: refuses a data directory without a database instead
/// of creating one (a mistyped `--data-dir` must not look like an empty installation).
pub async fn open_existing(config: &Config, clock: Arc<dyn Clock>) -> Result<Opened, StartupError> {
    let database = config.data_dir.join(DATABASE_FILE);
    if config.database_url.is_none() && !database.exists() {
        return Err(StartupError::NoDatabase { path: database });
    }
    open(config, clock).await
}

/// Everything but the listener: data dir, key, store, migrations, service, HTTP state.
pub async fn open(config: &Config, clock: Arc<dyn Clock>) -> Result<Opened, StartupError> {
    // A broken key file is reported before anything is created or migrated.
    load_key(config)?;
    let store = open_store(config).await?;
    let key = key_for(config, store.as_ref()).await?;
    let service = Arc::new(Service::new(store.clone(), clock, key, config.service.clone()).await?);
    let state = AppState::new(service.clone(), config.http());
    Ok(Opened { service, store, state })
}

/// Binds a listener with a deep accept backlog (4096, the usual `somaxconn`): while every
/// connection slot is taken, new clients wait there instead of having their SYNs dropped.
pub fn bind(address: std::net::SocketAddr) -> std::io::Result<TcpListener> {
    let socket = if address.is_ipv4() {
        tokio::net::TcpSocket::new_v4()?
    } else {
        tokio::net::TcpSocket::new_v6()?
    };
    socket.set_reuseaddr(true)?;
    socket.bind(address)?;
    socket.listen(4096)
}

/// Limits of the connection layer, below HTTP.
#[derive(Debug, Clone, Copy)]
pub struct ConnectionLimits {
    /// Connections served at once; further clients wait in the listen backlog until a slot frees.
    pub max_connections: usize,
    /// Connections one client (an IPv4 address or IPv6 /64, see [`budget_key`]) may hold open;
    /// a further one is closed as soon as it is accepted. Without it one address could hold
    /// every slot with slow or idle requests.
    pub max_connections_per_ip: usize,
    /// Time a client gets to send a complete request head, and the longest an idle keep-alive
    /// connection is kept (hyper starts this timer whenever it waits for a head). Defends against
    /// slow-header clients and hordes of idle connections.
    pub header_read_timeout: Duration,
}

impl Default for ConnectionLimits {
    fn default() -> Self {
        Self {
            max_connections: 512,
            max_connections_per_ip: 64,
            header_read_timeout: Duration::from_secs(10),
        }
    }
}

/// Serves `router` on `listener` until `shutdown` completes, then stops accepting and lets
/// in-flight requests finish (graceful shutdown) before returning.
///
/// A small accept loop of our own rather than `axum::serve`: it bounds the number of open
/// connections, in all and per client, and sets hyper's header-read timeout, none of which
/// `axum::serve` exposes.
pub async fn run(
    listener: TcpListener,
    router: impl http::App,
    limits: ConnectionLimits,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let slots = Arc::new(Semaphore::new(limits.max_connections.max(1)));
    let per_client = Arc::new(OpenPerClient::default());
    let graceful = GracefulShutdown::new();
    let mut shutdown = std::pin::pin!(shutdown);
    loop {
        let permit = tokio::select! {
            permit = slots.clone().acquire_owned() => match permit {
                Ok(permit) => permit,
                Err(_) => break,
            },
            () = &mut shutdown => break,
        };
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(err) => {
                    // Out of file descriptors and similar: back off briefly instead of spinning.
                    tracing::warn!(error = %err, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        // Over its cap, a client's new connection is dropped unanswered (its slot goes to the
        // next accept): answering would mean reading its request, the work the cap refuses.
        let Some(client_slot) = per_client.open(peer.ip(), limits.max_connections_per_ip.max(1)) else {
            tracing::debug!(peer = %peer.ip(), "connection refused: too many open from this client");
            drop(stream);
            continue;
        };
        let service = router
            .clone()
            .map_request(|request: axum::extract::Request<Incoming>| request.map(axum::body::Body::new));
        let connection = http1::Builder::new()
            .timer(TokioTimer::new())
            .header_read_timeout(limits.header_read_timeout)
            .serve_connection(TokioIo::new(stream), TowerToHyperService::new(service));
        let connection = graceful.watch(connection);
        // The client's address travels with the connection's task (`http::extract::peer_ip`).
        tokio::spawn(http::extract::with_peer(peer, async move {
            if let Err(err) = connection.await {
                tracing::debug!(error = %err, "connection ended with an error");
            }
            drop(client_slot);
            drop(permit);
        }));
    }
    drop(listener);
    graceful.shutdown().await;
    Ok(())
}

/// Open connections per client key; an entry exists only while its client has a connection,
/// so the map never holds more entries than there are open connections.
#[derive(Debug, Default)]
struct OpenPerClient(Mutex<HashMap<IpAddr, usize>>);

/// One open connection of a client; dropping it frees the client's slot.
struct ClientSlot {
    key: IpAddr,
    open: Arc<OpenPerClient>,
}

impl OpenPerClient {
    fn open(self: &Arc<Self>, ip: IpAddr, cap: usize) -> Option<ClientSlot> {
        let key = budget_key(ip);
        let mut open = self.0.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        let count = open.entry(key).or_insert(0);
        if *count >= cap {
            return None;
        }
        *count += 1;
        Some(ClientSlot {
            key,
            open: self.clone(),
        })
    }
}

impl Drop for ClientSlot {
    fn drop(&mut self) {
        let mut open = self.open.0.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        if let Some(count) = open.get_mut(&self.key) {
            *count -= 1;
            if *count == 0 {
                open.remove(&self.key);
            }
        }
    }
}

/// The whole application for an opened service.
pub fn router(opened: &Opened) -> impl http::App {
    http::router(opened.state.clone())
}

/// A future that completes on SIGINT (Ctrl-C) or SIGTERM. The handlers are installed when this
/// function is called, not when the future is first polled, so a signal that arrives right after
/// start-up still shuts down gracefully instead of killing the process.
pub fn shutdown_signal() -> std::io::Result<impl Future<Output = ()> + Send + 'static> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut interrupt = signal(SignalKind::interrupt())?;
    let mut terminate = signal(SignalKind::terminate())?;
    Ok(async move {
        tokio::select! {
            _ = interrupt.recv() => tracing::info!("SIGINT received, shutting down"),
            _ = terminate.recv() => tracing::info!("SIGTERM received, shutting down"),
        }
    })
}

/// The metrics listener (`--metrics-listen`) while it runs; dropping it stops it.
pub struct MetricsListener {
    /// The bound address (the real port when the configured one was 0).
    pub address: SocketAddr,
    serving: tokio::task::JoinHandle<std::io::Result<()>>,
    upkeep: tokio::task::JoinHandle<()>,
}

impl Drop for MetricsListener {
    fn drop(&mut self) {
        self.serving.abort();
        self.upkeep.abort();
    }
}

/// Installs the metrics recorder, binds `address` and serves `GET /metrics` there (and nothing
/// else), with the pool gauges read from `store` at each scrape. A listener of its own, so the
/// metrics are never exposed with the API by accident. Must be called inside the runtime.
pub fn start_metrics(address: SocketAddr, store: Arc<dyn Store>) -> Result<MetricsListener, StartupError> {
    let router = crate::metrics::router(store)?;
    let listener = bind(address).map_err(|error| StartupError::MetricsListen { address, error })?;
    let bound = listener
        .local_addr()
        .map_err(|error| StartupError::MetricsListen { address, error })?;
    // A scraper or two, not the public: a few connections are plenty.
    let limits = ConnectionLimits {
        max_connections: 16,
        max_connections_per_ip: 16,
        header_read_timeout: Duration::from_secs(10),
    };
    Ok(MetricsListener {
        address: bound,
        serving: tokio::spawn(run(listener, router, limits, std::future::pending())),
        upkeep: tokio::spawn(crate::metrics::upkeep()),
    })
}
