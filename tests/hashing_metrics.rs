//! The hashing pool reports its queue through the `metrics` facade: the gauge
//! `tessera_hashing_queue_length` (jobs waiting for a thread) and the histogram
//! `tessera_hashing_wait_seconds` (how long each waited). Its own test binary, because it
//! installs the process's global recorder (a small one of its own that keeps every value).

use metrics::{Counter, Gauge, GaugeFn, Histogram, HistogramFn, Key, KeyName, Metadata, Recorder, SharedString, Unit};
use std::collections::HashMap;
use std::sync::{Arc, Mutex, mpsc};
use std::time::{Duration, Instant};
use tessera::service::HashingPool;
use tessera::service::hashing::{QUEUE_LENGTH_METRIC, WAIT_METRIC};

/// Every value set or recorded, per metric name, in order.
#[derive(Default)]
struct Values(Mutex<HashMap<String, Vec<f64>>>);

impl Values {
    fn of(&self, name: &str) -> Vec<f64> {
        self.0.lock().unwrap().get(name).cloned().unwrap_or_default()
    }
}

struct Handle {
    name: String,
    values: Arc<Values>,
}

impl Handle {
    fn push(&self, value: f64) {
        self.values
            .0
            .lock()
            .unwrap()
            .entry(self.name.clone())
            .or_default()
            .push(value);
    }
}

impl GaugeFn for Handle {
    fn increment(&self, _: f64) {
        panic!("the queue gauge is only ever set");
    }
    fn decrement(&self, _: f64) {
        panic!("the queue gauge is only ever set");
    }
    fn set(&self, value: f64) {
        self.push(value);
    }
}

impl HistogramFn for Handle {
    fn record(&self, value: f64) {
        self.push(value);
    }
}

struct Keeper(Arc<Values>);

impl Keeper {
    fn handle(&self, key: &Key) -> Arc<Handle> {
        Arc::new(Handle {
            name: key.name().to_owned(),
            values: self.0.clone(),
        })
    }
}

impl Recorder for Keeper {
    fn describe_counter(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}
    fn describe_gauge(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}
    fn describe_histogram(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}
    fn register_counter(&self, _: &Key, _: &Metadata<'_>) -> Counter {
        Counter::noop()
    }
    fn register_gauge(&self, key: &Key, _: &Metadata<'_>) -> Gauge {
        Gauge::from_arc(self.handle(key))
    }
    fn register_histogram(&self, key: &Key, _: &Metadata<'_>) -> Histogram {
        Histogram::from_arc(self.handle(key))
    }
}

#[tokio::test]
async fn the_queue_length_and_each_wait_are_reported() {
    let values = Arc::new(Values::default());
    metrics::set_global_recorder(Keeper(values.clone())).expect("the only recorder of this binary");

    let pool = HashingPool::new(1);
    let (release_tx, release_rx) = mpsc::channel::<()>();
    let (started_tx, started_rx) = tokio::sync::oneshot::channel();
    let blocker = tokio::spawn({
        let pool = pool.clone();
        async move {
            pool.run(move || {
                let _ = started_tx.send(());
                let _ = release_rx.recv();
            })
            .await
        }
    });
    started_rx.await.unwrap();
    let waiting: Vec<_> = (0..3)
        .map(|_| {
            let pool = pool.clone();
            tokio::spawn(async move { pool.run(|| ()).await })
        })
        .collect();
    // All three queued behind the blocker: the gauge climbs to 3.
    let deadline = Instant::now() + Duration::from_secs(10);
    while values.of(QUEUE_LENGTH_METRIC).last() != Some(&3.0) {
        assert!(Instant::now() < deadline, "{:?}", values.of(QUEUE_LENGTH_METRIC));
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let held = Instant::now();
    tokio::time::sleep(Duration::from_millis(300)).await;
    release_tx.send(()).unwrap();
    blocker.await.unwrap().unwrap();
    for job in waiting {
        job.await.unwrap().unwrap();
    }
    let held = held.elapsed().as_secs_f64();

    assert_eq!(values.of(QUEUE_LENGTH_METRIC).last(), Some(&0.0), "drained");
    let waits = values.of(WAIT_METRIC);
    assert_eq!(waits.len(), 4, "one wait per job: {waits:?}");
    // The blocker started at once; the three others waited at least as long as it was held.
    let mut queued: Vec<f64> = waits[1..].to_vec();
    queued.sort_by(f64::total_cmp);
    assert!(waits[0] < queued[0], "{waits:?}");
    assert!(
        queued[0] >= 0.3 && queued[2] <= held + 10.0,
        "{waits:?} (held {held:.3} s)"
    );
}
