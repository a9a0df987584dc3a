//! Housekeeping: a background sweep that deletes what no request can use any more (expired or
//! idle sessions, expired `mfa_token`s, expired pending MFA setups) and security events older
//! than the retention.
//!
//! Every delete is one short statement of at most [`BATCH`] rows, with a yield between
//! batches, so SQLite's write lock is never held for long and requests interleave with a large
//! sweep. Events the configured webhook has not delivered yet (past its cursor, or dead) are
//! never deleted.
//!
//! Must not: decide what is expired differently from the store's reads (the same comparisons
//! are used), or hold a transaction across batches.

use crate::clock::Clock;
use crate::store::{Store, StoreError, SweepKind};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// Rows deleted per statement.
pub const BATCH: u32 = 500;

/// What a sweep deletes and how often.
#[derive(Debug, Clone, Copy)]
pub struct HousekeepingConfig {
    /// Time between sweeps.
    pub interval: Duration,
    /// Security events older than this many days are deleted.
    pub event_retention_days: u32,
    /// Sessions idle this long are dead (the service's idle timeout).
    pub session_idle_secs: i64,
    /// A webhook is configured: events it has not delivered are kept.
    pub keep_undelivered_events: bool,
}

/// Rows one sweep deleted, by kind.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SweepReport {
    pub sessions: u64,
    pub mfa_tokens: u64,
    pub pending_setups: u64,
    pub security_events: u64,
}

/// One full sweep at the clock's current time, in batches of [`BATCH`]; stops early (between
/// batches) when `stop` says so.
pub async fn sweep(
    store: &dyn Store,
    clock: &dyn Clock,
    config: &HousekeepingConfig,
    stop: Option<&watch::Receiver<bool>>,
) -> Result<SweepReport, StoreError> {
    let now = clock.now().unix_timestamp();
    let retention = i64::from(config.event_retention_days).saturating_mul(86_400);
    let kinds = [
        SweepKind::Sessions {
            idle_secs: config.session_idle_secs,
        },
        SweepKind::Challenges,
        SweepKind::PendingSetups,
        SweepKind::Events {
            before: now.saturating_sub(retention),
            keep_undelivered: config.keep_undelivered_events,
        },
    ];
    let mut report = SweepReport::default();
    for kind in kinds {
        let mut deleted = 0u64;
        loop {
            if stop.is_some_and(|stop| *stop.borrow()) {
                break;
            }
            let batch = store.sweep(kind, now, BATCH).await?;
            deleted += batch;
            metrics::counter!("tessera_housekeeping_deleted_total", "kind" => kind.label()).increment(batch);
            if batch < u64::from(BATCH) {
                break;
            }
            // Let requests (and their writes) in between two batches.
            tokio::task::yield_now().await;
        }
        match kind {
            SweepKind::Sessions { .. } => report.sessions = deleted,
            SweepKind::Challenges => report.mfa_tokens = deleted,
            SweepKind::PendingSetups => report.pending_setups = deleted,
            SweepKind::Events { .. } => report.security_events = deleted,
        }
    }
    Ok(report)
}

/// The running housekeeping task.
pub struct HousekeepingTask {
    stop: watch::Sender<bool>,
    handle: JoinHandle<()>,
}

impl HousekeepingTask {
    /// Stops between two batches (a batch in progress is one statement and finishes).
    pub async fn shutdown(self) {
        let _ = self.stop.send(true);
        let _ = self.handle.await;
    }
}

/// Starts the sweep: the first one right away, then every `interval`.
pub fn spawn(store: Arc<dyn Store>, clock: Arc<dyn Clock>, config: HousekeepingConfig) -> HousekeepingTask {
    let (stop, mut stopped) = watch::channel(false);
    let handle = tokio::spawn(async move {
        loop {
            match sweep(store.as_ref(), clock.as_ref(), &config, Some(&stopped)).await {
                Ok(report) if report != SweepReport::default() => tracing::info!(
                    sessions = report.sessions,
                    mfa_tokens = report.mfa_tokens,
                    pending_setups = report.pending_setups,
                    security_events = report.security_events,
                    "housekeeping deleted expired rows"
                ),
                Ok(_) => {}
                Err(err) => {
                    tracing::warn!(error = %err, "housekeeping sweep failed; trying again at the next interval")
                }
            }
            if *stopped.borrow() {
                return;
            }
            tokio::select! {
                _ = tokio::time::sleep(config.interval) => {}
                _ = stopped.changed() => return,
            }
        }
    });
    HousekeepingTask { stop, handle }
}
