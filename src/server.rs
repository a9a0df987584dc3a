//! Assembling and running the service: data directory, master key, store, migrations, and
//! `run(listener, router, shutdown)`, which the binary and the tests share.

use crate::clock::Clock;
use crate::config::Config;
use crate::domain::sealing::{KeyError, MasterKey};
use crate::http::{self, AppState};
use crate::service::{Service, ServiceError};
use crate::store::sqlite::SqliteStore;
use crate::store::{Store, StoreError};
use axum::Router;
use std::future::Future;
use std::io::Write;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use tokio::net::TcpListener;

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
        "key file {path} is unusable: {error}; restore the original key file or remove it only if the database is new"
    )]
    BadKeyFile { path: PathBuf, error: KeyError },
    #[error("unsupported database URL (this build supports sqlite: URLs only)")]
    UnsupportedDatabase,
    #[error("database: {0}")]
    Store(#[from] StoreError),
    #[error("service: {0}")]
    Service(#[from] ServiceError),
}

/// An opened service with its store, ready to be served or used by the CLI.
pub struct Opened {
    pub service: Arc<Service>,
    pub store: Arc<SqliteStore>,
    pub state: AppState,
}

fn create_private_dir(path: &Path) -> std::io::Result<()> {
    let mut builder = std::fs::DirBuilder::new();
    builder.recursive(true);
    #[cfg(unix)]
    std::os::unix::fs::DirBuilderExt::mode(&mut builder, 0o700);
    builder.create(path)
}

/// The master key: `TESSERA_SECRET_KEY` if set, else the key file, created (mode 0600) on the
/// first start. A key of the wrong size is refused, never replaced.
pub fn load_or_create_key(config: &Config) -> Result<MasterKey, StartupError> {
    if let Some(key) = &config.secret_key {
        return Ok(key.clone());
    }
    let path = config.data_dir.join(KEY_FILE);
    match std::fs::read_to_string(&path) {
        Ok(text) => MasterKey::from_base64(&text).map_err(|error| StartupError::BadKeyFile { path, error }),
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => {
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
        Err(source) => Err(StartupError::KeyFile { path, source }),
    }
}

/// Opens the store named by the configuration and applies pending migrations.
pub async fn open_store(config: &Config) -> Result<SqliteStore, StartupError> {
    create_private_dir(&config.data_dir).map_err(|source| StartupError::DataDir {
        path: config.data_dir.clone(),
        source,
    })?;
    let store = match config.database_url.as_deref() {
        None => SqliteStore::open_file(&config.data_dir.join(DATABASE_FILE)).await?,
        Some(url) if url.starts_with("sqlite:") => SqliteStore::connect(url).await?,
        Some(_) => return Err(StartupError::UnsupportedDatabase),
    };
    store.migrate().await?;
    Ok(store)
}

/// Everything but the listener: data dir, key, store, migrations, service, HTTP state.
pub async fn open(config: &Config, clock: Arc<dyn Clock>) -> Result<Opened, StartupError> {
    let store = Arc::new(open_store(config).await?);
    let key = load_or_create_key(config)?;
    let dyn_store: Arc<dyn Store> = store.clone();
    let service = Arc::new(Service::new(dyn_store, clock.clone(), key, config.service.clone()).await?);
    let state = AppState::new(service.clone(), clock, config.http());
    Ok(Opened { service, store, state })
}

/// Serves `router` on `listener` until `shutdown` completes, then lets in-flight requests
/// finish (graceful shutdown) before returning.
pub async fn run(
    listener: TcpListener,
    router: Router,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    axum::serve(listener, router.into_make_service_with_connect_info::<SocketAddr>())
        .with_graceful_shutdown(shutdown)
        .await
}

/// The whole application router for an opened service.
pub fn router(opened: &Opened) -> Router {
    http::router(opened.state.clone())
}

/// Completes on SIGINT (Ctrl-C) or SIGTERM.
pub async fn shutdown_signal() {
    let interrupt = async {
        if tokio::signal::ctrl_c().await.is_err() {
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        () = interrupt => tracing::info!("SIGINT received, shutting down"),
        () = terminate => tracing::info!("SIGTERM received, shutting down"),
    }
}
