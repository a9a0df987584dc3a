//! The hashing pool: where argon2 (the only deliberately slow work) runs, on `size` dedicated
//! OS threads fed from one queue, never on an async worker or on tokio's blocking pool.
//!
//! What it guarantees, and why each part is there:
//!
//! - **Bounded memory.** Each thread owns at most one [`HashingMemory`] (argon2's 19 MiB), made
//!   on its first hash and reused by every later one, so the process holds at most
//!   `size x 19 MiB` of argon2 memory whatever the load. A thread idle for
//!   [`IDLE_RELEASE`] gives its memory back. tokio's blocking pool, used before, started a thread
//!   whenever the running ones were busy, and each thread's glibc arena kept the 19 MiB it had
//!   freed (RSS of 500 to 900 MB after a flood on 2 cores).
//! - **Slots live as long as the hash.** A caller that gives up (request timeout, client gone)
//!   stops waiting, but a hash that has started runs to its end on its thread and holds the
//!   thread until then; so abandoned hashes never pile up beyond `size`. A job whose caller gave
//!   up before it started is skipped: its result would go nowhere.
//! - **Isolation.** The threads run at a lower scheduling priority (niceness raised by
//!   [`DEFAULT_NICE`] over the process's own), so the async workers that answer session
//!   lookups preempt them when both want a core: a flood of password guesses slows password
//!   logins, not everyone else.
//! - **Giving way to other requests.** Niceness alone is not enough: the scheduler lets a
//!   running hashing thread finish its slice before a waking async worker gets the core, and
//!   during a login flood two nice hashing threads still took 1.2-1.7 of two cores and doubled
//!   introspection's p99 (BENCHMARKS.md, isolation). So half the threads (rounded down) are
//!   *yielding* threads, scheduled `SCHED_IDLE` (any other thread that wakes takes their core at
//!   once), the others *normal* ones at the lowered niceness. The pool counts the requests in
//!   flight ([`Traffic`], entered by the HTTP edge) and its own waiting callers: while more
//!   requests that do not wait on a hash are in flight than the pool has threads (so a few
//!   logins between their database steps do not count), only the yielding threads take jobs,
//!   and a normal thread takes a job only once it has waited [`STARVED`] (so hashing yields,
//!   but logins never starve for long behind a saturated server). With only hashes in flight
//!   the normal threads take jobs first and the yielding ones help when they are all busy, so
//!   a lone login is not left to a thread that anything else on the machine preempts. One
//!   thread (one core) is a normal thread that always takes jobs.
//! - **Visibility.** `tessera_hashing_queue_length` (gauge: jobs waiting for a thread) and
//!   `tessera_hashing_wait_seconds` (histogram: time from queueing to start) through the
//!   `metrics` facade; without an installed recorder they cost nothing.

use super::{ServiceError, ServiceResult};
use crate::domain::password::HashingMemory;
use std::collections::VecDeque;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, Once};
use std::time::{Duration, Instant};
use tokio::sync::oneshot;

/// A thread that has had no job for this long frees its argon2 memory (given back to the
/// operating system, see [`release_large_allocations_to_the_os`]); the next hash allocates again.
pub const IDLE_RELEASE: Duration = Duration::from_secs(30);

/// How much nicer than the rest of the process hashing threads run: 10 steps, so the scheduler
/// gives a waking async worker the core before a hashing thread, while the hashing threads
/// still get every cycle the workers leave idle (the full login rate when nothing else runs).
/// The measurements and the trade-off: BENCHMARKS.md, "Password hashing".
pub const DEFAULT_NICE: i32 = 10;

/// How often a hashing thread held back by other requests looks again (see [`Traffic`]).
const RECHECK: Duration = Duration::from_millis(2);

/// A job that has waited this long is taken by a normal thread even while other requests are
/// in flight (see the module documentation).
pub const STARVED: Duration = Duration::from_secs(2);

/// The gauge of jobs waiting for a hashing thread.
pub const QUEUE_LENGTH_METRIC: &str = "tessera_hashing_queue_length";
/// The histogram of the time a job waited for a hashing thread, in seconds.
pub const WAIT_METRIC: &str = "tessera_hashing_wait_seconds";

/// The memory a hashing thread owns: made on first use, dropped after [`IDLE_RELEASE`].
#[derive(Debug, Default)]
pub struct WorkerMemory(Option<HashingMemory>);

impl WorkerMemory {
    /// The thread's argon2 memory, allocated on the first call.
    pub fn get(&mut self) -> &mut HashingMemory {
        self.0.get_or_insert_with(HashingMemory::new)
    }

    fn release(&mut self) {
        self.0 = None;
    }

    fn is_held(&self) -> bool {
        self.0.is_some()
    }
}

type Work = Box<dyn FnOnce(&mut WorkerMemory) + Send>;

struct Job {
    queued_at: Instant,
    work: Work,
}

#[derive(Default)]
struct Queue {
    jobs: VecDeque<Job>,
    /// Jobs running on a normal thread now.
    running_normal: usize,
    closed: bool,
}

/// What a hashing thread is (see the module documentation).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    /// `SCHED_IDLE`; takes jobs while other requests are in flight, or when every normal
    /// thread is busy.
    Yielding,
    /// The lowered niceness; takes jobs while only hashes are in flight, or starved ones.
    Normal,
}

struct Shared {
    queue: Mutex<Queue>,
    ready: Condvar,
    size: usize,
    /// Threads of [`Kind::Normal`].
    normal_threads: usize,
    traffic: Traffic,
    /// Callers awaiting a job of this pool (queued or running), counted until their future is
    /// done or dropped.
    waiting: AtomicUsize,
}

impl Shared {
    /// Are more requests in flight that do not wait on this pool than it has threads? (A caller
    /// that gave up counts as neither.) The margin keeps logins between their database steps,
    /// and a request or two beside them, from counting as traffic to give way to: with fewer
    /// such requests than threads the cores are not short.
    fn others_in_flight(&self) -> bool {
        self.traffic.0.load(Ordering::Relaxed) > self.waiting.load(Ordering::Relaxed) + self.size
    }

    /// May a thread of `kind` take the first of `queue`'s jobs now?
    fn may_take(&self, kind: Kind, queue: &Queue) -> bool {
        let Some(first) = queue.jobs.front() else {
            return false;
        };
        match kind {
            Kind::Yielding => self.others_in_flight() || queue.running_normal >= self.normal_threads,
            Kind::Normal => {
                self.yielding_threads() == 0 || !self.others_in_flight() || first.queued_at.elapsed() >= STARVED
            }
        }
    }

    fn yielding_threads(&self) -> usize {
        self.size - self.normal_threads
    }

    fn lock(&self) -> MutexGuard<'_, Queue> {
        // A job never runs under this lock, so a poisoned one still holds a consistent queue.
        self.queue.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// How many of `size` hashing threads are yielding threads (half, rounded down: one of two,
/// none of one); they are the ones that hash while other requests are in flight.
pub fn yielding_threads(size: usize) -> usize {
    size / 2
}

/// The count of requests in flight, shared by the HTTP edge (which enters it once per request)
/// and the hashing pool (which gives way while some of them are not waiting on a hash).
/// Cloning shares the count.
#[derive(Debug, Clone, Default)]
pub struct Traffic(Arc<AtomicUsize>);

impl Traffic {
    /// Counts one request in flight until the guard is dropped.
    pub fn enter(&self) -> TrafficGuard {
        self.0.fetch_add(1, Ordering::Relaxed);
        TrafficGuard(self.0.clone())
    }

    /// Requests in flight now.
    pub fn in_flight(&self) -> usize {
        self.0.load(Ordering::Relaxed)
    }
}

/// One request in flight (see [`Traffic::enter`]).
#[derive(Debug)]
pub struct TrafficGuard(Arc<AtomicUsize>);

impl Drop for TrafficGuard {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// A caller awaiting a job, counted in [`Shared::waiting`] until dropped.
struct Waiting<'a>(&'a AtomicUsize);

impl<'a> Waiting<'a> {
    fn new(count: &'a AtomicUsize) -> Self {
        count.fetch_add(1, Ordering::Relaxed);
        Self(count)
    }
}

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Closes the queue when the last handle of a pool goes: the threads finish the queued jobs
/// and exit.
struct Handle {
    shared: Arc<Shared>,
}

impl Drop for Handle {
    fn drop(&mut self) {
        self.shared.lock().closed = true;
        self.shared.ready.notify_all();
    }
}

/// Runs argon2 on `size` dedicated threads, one job per thread at a time; see the module
/// documentation. Cloning shares the threads.
#[derive(Clone)]
pub struct HashingPool {
    handle: Arc<Handle>,
}

impl std::fmt::Debug for HashingPool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HashingPool").field("size", &self.size()).finish()
    }
}

impl HashingPool {
    /// `size` threads (at least one) at the default niceness.
    pub fn new(size: usize) -> Self {
        Self::with_priority(size, DEFAULT_NICE)
    }

    /// `size` threads (at least one) running `nice` steps nicer than the process (0 = the
    /// priority of the rest of the process; up to 19 lower), with traffic nobody enters.
    pub fn with_priority(size: usize, nice: i32) -> Self {
        Self::with_traffic(size, nice, Traffic::default())
    }

    /// `size` threads running `nice` steps nicer than the process, giving way to the requests
    /// counted in `traffic` (see the module documentation).
    pub fn with_traffic(size: usize, nice: i32, traffic: Traffic) -> Self {
        release_large_allocations_to_the_os();
        let size = size.max(1);
        let yielding = yielding_threads(size);
        let shared = Arc::new(Shared {
            queue: Mutex::new(Queue::default()),
            ready: Condvar::new(),
            size,
            normal_threads: size - yielding,
            traffic,
            waiting: AtomicUsize::new(0),
        });
        for index in 0..size {
            let shared = shared.clone();
            let kind = if index < yielding { Kind::Yielding } else { Kind::Normal };
            let spawned = std::thread::Builder::new()
                .name(format!("tessera-hash-{index}"))
                .spawn(move || worker(&shared, kind, nice));
            if let Err(err) = spawned {
                // The threads that did start serve the queue; none at all is reported by `run`
                // never answering, so say why here.
                tracing::error!(error = %err, "could not start a password hashing thread");
            }
        }
        Self {
            handle: Arc::new(Handle { shared }),
        }
    }

    /// The number of hashing threads.
    pub fn size(&self) -> usize {
        self.handle.shared.size
    }

    /// The requests in flight this pool gives way to.
    pub fn traffic(&self) -> &Traffic {
        &self.handle.shared.traffic
    }

    /// Runs `work` on a hashing thread (work that allocates its own memory, or none).
    pub async fn run<T, F>(&self, work: F) -> ServiceResult<T>
    where
        F: FnOnce() -> T + Send + 'static,
        T: Send + 'static,
    {
        self.run_in_memory(move |_| work()).await
    }

    /// Runs `work` on a hashing thread with that thread's reusable argon2 memory.
    pub async fn run_in_memory<T, F>(&self, work: F) -> ServiceResult<T>
    where
        F: FnOnce(&mut WorkerMemory) -> T + Send + 'static,
        T: Send + 'static,
    {
        let (sender, receiver) = oneshot::channel();
        let job = Job {
            queued_at: Instant::now(),
            work: Box::new(move |memory: &mut WorkerMemory| {
                // The caller stopped waiting before a thread was free: nobody needs the result.
                if sender.is_closed() {
                    return;
                }
                let _ = sender.send(work(memory));
            }),
        };
        let shared = &self.handle.shared;
        let _waiting = Waiting::new(&shared.waiting);
        {
            let mut queue = shared.lock();
            queue.jobs.push_back(job);
            metrics::gauge!(QUEUE_LENGTH_METRIC).set(queue.jobs.len() as f64);
            // Every thread looks: which kind may take the job depends on the traffic.
            shared.ready.notify_all();
        }
        receiver
            .await
            .map_err(|_| ServiceError::Internal("hashing task failed (it panicked)".into()))
    }
}

/// The cores this process may run on (2 when unknown).
pub fn cores() -> usize {
    std::thread::available_parallelism().map_or(2, |n| n.get())
}

/// What a hashing thread does next.
enum Next {
    Run(Job),
    ReleaseMemory,
    Exit,
}

fn worker(shared: &Shared, kind: Kind, nice: i32) {
    lower_priority(nice);
    if kind == Kind::Yielding {
        schedule_idle();
    }
    let mut memory = WorkerMemory::default();
    loop {
        match next(shared, kind, memory.is_held()) {
            Next::Run(job) => {
                metrics::histogram!(WAIT_METRIC).record(job.queued_at.elapsed().as_secs_f64());
                // A panicking job drops its sender, so its caller gets an error; the thread
                // (and its memory, which argon2 overwrites before reading) goes on serving.
                let work = job.work;
                let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| work(&mut memory)));
                if kind == Kind::Normal {
                    shared.lock().running_normal -= 1;
                    // A yielding thread held back while this one was busy may look again.
                    shared.ready.notify_all();
                }
            }
            Next::ReleaseMemory => memory.release(),
            Next::Exit => return,
        }
    }
}

/// Waits for a job a thread of `kind` may run (see [`Shared::may_take`]); with memory held,
/// for at most [`IDLE_RELEASE`].
fn next(shared: &Shared, kind: Kind, holding_memory: bool) -> Next {
    let mut queue = shared.lock();
    loop {
        if !queue.jobs.is_empty() {
            if shared.may_take(kind, &queue) {
                let Some(job) = queue.jobs.pop_front() else { continue };
                if kind == Kind::Normal {
                    queue.running_normal += 1;
                }
                metrics::gauge!(QUEUE_LENGTH_METRIC).set(queue.jobs.len() as f64);
                return Next::Run(job);
            }
            // Held back: look again shortly (requests are counted by atomics nobody signals
            // on, and a job's wait by the clock) or when a normal thread's job ends.
            queue = shared
                .ready
                .wait_timeout(queue, RECHECK)
                .unwrap_or_else(|poisoned| poisoned.into_inner())
                .0;
            continue;
        }
        if queue.closed {
            return Next::Exit;
        }
        if holding_memory {
            let (guard, waited) = shared
                .ready
                .wait_timeout(queue, IDLE_RELEASE)
                .unwrap_or_else(|poisoned| poisoned.into_inner());
            queue = guard;
            if waited.timed_out() && queue.jobs.is_empty() && !queue.closed {
                return Next::ReleaseMemory;
            }
        } else {
            queue = shared
                .ready
                .wait(queue)
                .unwrap_or_else(|poisoned| poisoned.into_inner());
        }
    }
}

/// Lowers the calling thread's priority by `nice` steps below the process's own niceness (at
/// most to 19), so that `nice -n 5 tessera serve` still leaves its hashing threads below its
/// other threads. Linux sets niceness per thread, by thread id. Lowering needs no privilege; a
/// failure only loses the isolation, so it is logged, not fatal.
fn lower_priority(nice: i32) {
    if nice == 0 {
        return;
    }
    #[cfg(target_os = "linux")]
    {
        // SAFETY: plain system calls on the calling thread's own id; no memory is shared.
        // getpriority may return -1 as a niceness: errno tells an error apart.
        let result = unsafe {
            let tid = libc::gettid() as libc::id_t;
            *libc::__errno_location() = 0;
            let own = libc::getpriority(libc::PRIO_PROCESS, tid);
            if own == -1 && *libc::__errno_location() != 0 {
                -1
            } else {
                libc::setpriority(libc::PRIO_PROCESS, tid, own.saturating_add(nice).min(19))
            }
        };
        if result != 0 {
            tracing::warn!(
                nice,
                error = %std::io::Error::last_os_error(),
                "could not lower the priority of a password hashing thread"
            );
        }
    }
}

/// Moves the calling thread to `SCHED_IDLE`: it runs when its core has nothing else to run, and
/// any other thread that wakes there takes the core at once (where a nice thread would finish
/// its slice first). Needs no privilege; going back would, so a thread stays yielding. A
/// failure only loses the isolation, so it is logged, not fatal.
fn schedule_idle() {
    #[cfg(target_os = "linux")]
    {
        let param = libc::sched_param { sched_priority: 0 };
        // SAFETY: changes the scheduling policy of the calling thread (id 0) only.
        if unsafe { libc::sched_setscheduler(0, libc::SCHED_IDLE, &param) } != 0 {
            tracing::warn!(
                error = %std::io::Error::last_os_error(),
                "could not make a password hashing thread yield (SCHED_IDLE)"
            );
        }
    }
}

/// Caps glibc's malloc arenas at two (its default is eight per core). Each thread that
/// allocates otherwise gets an arena of its own as contention appears, and every arena keeps its
/// freed memory: with two tokio workers, five SQLite worker threads and the hashing threads that
/// would be up to sixteen arenas (BENCHMARKS.md, memory). Called once at start,
/// before any thread exists; other allocators ignore it.
pub fn limit_allocator_arenas() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only changes a tunable of the allocator; called before threads start.
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, 2);
    }
}

/// Makes glibc serve every allocation of 1 MiB or more (argon2's 19 MiB blocks) with its own
/// `mmap`, unmapped again when freed. By default glibc raises that threshold to the size of the
/// first large block freed, after which 19 MiB blocks come from, and stay in, the allocating
/// thread's arena. Process-wide, set once; other allocators ignore it.
fn release_large_allocations_to_the_os() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        #[cfg(all(target_os = "linux", target_env = "gnu"))]
        // SAFETY: mallopt only changes a tunable of the allocator; called before any hashing.
        unsafe {
            libc::mallopt(libc::M_MMAP_THRESHOLD, 1 << 20);
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
    use std::sync::mpsc;

    #[tokio::test]
    async fn an_abandoned_hash_keeps_its_slot_until_it_finishes() {
        let pool = HashingPool::new(1);
        let (started_tx, started_rx) = tokio::sync::oneshot::channel();
        let (release_tx, release_rx) = mpsc::channel::<()>();
        let first = pool.run(move || {
            let _ = started_tx.send(());
            let _ = release_rx.recv();
        });
        // The caller gives up (a request timeout) once the hash is running on its thread.
        tokio::select! {
            _ = first => panic!("the first hash cannot finish before it is released"),
            _ = started_rx => {}
        }
        let second_ran = Arc::new(AtomicBool::new(false));
        let flag = second_ran.clone();
        let second = pool.run(move || flag.store(true, Ordering::SeqCst));
        tokio::pin!(second);
        assert!(
            tokio::time::timeout(Duration::from_millis(200), &mut second)
                .await
                .is_err(),
            "the abandoned hash still holds the only slot"
        );
        assert!(!second_ran.load(Ordering::SeqCst));
        release_tx.send(()).unwrap();
        tokio::time::timeout(Duration::from_secs(10), second)
            .await
            .expect("the slot is free once the abandoned hash ends")
            .unwrap();
        assert!(second_ran.load(Ordering::SeqCst));
    }

    #[tokio::test]
    async fn a_job_abandoned_while_queued_never_runs() {
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
        let ran = Arc::new(AtomicBool::new(false));
        let flag = ran.clone();
        let queued = pool.run(move || flag.store(true, Ordering::SeqCst));
        // Queued behind the blocker, then given up.
        assert!(tokio::time::timeout(Duration::from_millis(100), queued).await.is_err());
        release_tx.send(()).unwrap();
        blocker.await.unwrap().unwrap();
        // A later job runs after the abandoned one would have: by then it was skipped.
        pool.run(|| ()).await.unwrap();
        assert!(!ran.load(Ordering::SeqCst));
    }

    #[tokio::test]
    async fn never_more_jobs_run_at_once_than_threads() {
        let pool = HashingPool::new(2);
        let running = Arc::new(AtomicUsize::new(0));
        let most = Arc::new(AtomicUsize::new(0));
        let jobs: Vec<_> = (0..12)
            .map(|_| {
                let (pool, running, most) = (pool.clone(), running.clone(), most.clone());
                tokio::spawn(async move {
                    pool.run(move || {
                        let now = running.fetch_add(1, Ordering::SeqCst) + 1;
                        most.fetch_max(now, Ordering::SeqCst);
                        std::thread::sleep(Duration::from_millis(20));
                        running.fetch_sub(1, Ordering::SeqCst);
                    })
                    .await
                })
            })
            .collect();
        for job in jobs {
            job.await.unwrap().unwrap();
        }
        assert_eq!(most.load(Ordering::SeqCst), 2);
    }

    /// A login whose hash runs until the returned sender sends (or is dropped); returns once
    /// the hash has started on a thread.
    async fn occupy_a_thread(pool: &HashingPool) -> (mpsc::Sender<()>, tokio::task::JoinHandle<ServiceResult<()>>) {
        let (release_tx, release_rx) = mpsc::channel::<()>();
        let (started_tx, started_rx) = tokio::sync::oneshot::channel();
        let long = tokio::spawn({
            let pool = pool.clone();
            async move {
                let _request = pool.traffic().enter();
                pool.run(move || {
                    let _ = started_tx.send(());
                    let _ = release_rx.recv();
                })
                .await
            }
        });
        started_rx.await.unwrap();
        (release_tx, long)
    }

    /// `count` requests that do not hash, in flight until the guards are dropped.
    fn others(pool: &HashingPool, count: usize) -> Vec<TrafficGuard> {
        (0..count).map(|_| pool.traffic().enter()).collect()
    }

    /// Runs `logins` jobs of 30 ms at once, each from a caller counted as a request in flight
    /// (as the HTTP edge counts a login), and returns the most that ran at the same time.
    async fn most_at_once(pool: &HashingPool, logins: usize) -> usize {
        let running = Arc::new(AtomicUsize::new(0));
        let most = Arc::new(AtomicUsize::new(0));
        let jobs: Vec<_> = (0..logins)
            .map(|_| {
                let (pool, running, most) = (pool.clone(), running.clone(), most.clone());
                tokio::spawn(async move {
                    let _request = pool.traffic().enter();
                    pool.run(move || {
                        let now = running.fetch_add(1, Ordering::SeqCst) + 1;
                        most.fetch_max(now, Ordering::SeqCst);
                        std::thread::sleep(Duration::from_millis(30));
                        running.fetch_sub(1, Ordering::SeqCst);
                    })
                    .await
                })
            })
            .collect();
        for job in jobs {
            job.await.unwrap().unwrap();
        }
        most.load(Ordering::SeqCst)
    }

    #[tokio::test]
    async fn hashing_gives_way_while_other_requests_are_in_flight() {
        assert_eq!(yielding_threads(1), 0);
        assert_eq!(yielding_threads(2), 1);
        assert_eq!(yielding_threads(3), 1);
        assert_eq!(yielding_threads(8), 4);
        let pool = HashingPool::with_traffic(2, 0, Traffic::default());
        // Only logins in flight: both threads hash.
        assert_eq!(most_at_once(&pool, 8).await, 2);
        assert_eq!(pool.traffic().in_flight(), 0);
        // As many requests that do not hash as threads: not enough to give way.
        let few = others(&pool, 2);
        assert_eq!(most_at_once(&pool, 8).await, 2);
        // More of them (introspections) in flight: one thread at a time.
        let other = others(&pool, 3);
        assert_eq!(pool.traffic().in_flight(), 5);
        assert_eq!(most_at_once(&pool, 8).await, 1);
        // Once they are done, both again.
        drop(other);
        drop(few);
        assert_eq!(pool.traffic().in_flight(), 0);
        assert_eq!(most_at_once(&pool, 8).await, 2);
    }

    #[tokio::test]
    async fn a_held_back_job_starts_when_the_other_request_ends() {
        let pool = HashingPool::with_traffic(2, 0, Traffic::default());
        let other = others(&pool, 3);
        // A long hash takes the one thread allowed while `other` is in flight.
        let (release_tx, long) = occupy_a_thread(&pool).await;
        let second = tokio::spawn({
            let pool = pool.clone();
            async move {
                let _request = pool.traffic().enter();
                pool.run(|| ()).await
            }
        });
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert!(!second.is_finished(), "held back while another request is in flight");
        // The other requests end: the second thread takes the job within a few rechecks.
        drop(other);
        tokio::time::timeout(Duration::from_secs(10), second)
            .await
            .expect("the held-back job runs once only logins are in flight")
            .unwrap()
            .unwrap();
        release_tx.send(()).unwrap();
        long.await.unwrap().unwrap();
    }

    #[cfg(target_os = "linux")]
    #[tokio::test]
    async fn jobs_beside_other_requests_run_on_the_yielding_thread() {
        fn policy() -> i32 {
            // SAFETY: reads the calling thread's own scheduling policy.
            unsafe { libc::sched_getscheduler(0) }
        }
        let pool = HashingPool::with_traffic(2, 0, Traffic::default());
        // A lone login: a normal thread.
        {
            let _login = pool.traffic().enter();
            assert_eq!(pool.run(policy).await.unwrap(), libc::SCHED_OTHER);
        }
        // Beside requests that do not hash: the yielding thread, scheduled SCHED_IDLE.
        let _other = others(&pool, 3);
        let _login = pool.traffic().enter();
        assert_eq!(pool.run(policy).await.unwrap(), libc::SCHED_IDLE);
        // One thread: a normal thread that always takes jobs.
        let single = HashingPool::with_traffic(1, 0, Traffic::default());
        let _other = others(&single, 3);
        let _login = single.traffic().enter();
        assert_eq!(single.run(policy).await.unwrap(), libc::SCHED_OTHER);
    }

    #[tokio::test]
    async fn a_starved_job_goes_to_a_normal_thread_despite_other_requests() {
        let pool = HashingPool::with_traffic(2, 0, Traffic::default());
        let _other = others(&pool, 3);
        // The yielding thread is busy with a long hash.
        let (release_tx, long) = occupy_a_thread(&pool).await;
        let queued = Instant::now();
        let second = tokio::spawn({
            let pool = pool.clone();
            async move {
                let _request = pool.traffic().enter();
                pool.run(Instant::now).await
            }
        });
        let started = tokio::time::timeout(STARVED * 5, second)
            .await
            .expect("a starved job is taken by the normal thread")
            .unwrap()
            .unwrap();
        let waited = started - queued;
        assert!(
            waited >= STARVED,
            "held back while other requests were in flight: {waited:?}"
        );
        release_tx.send(()).unwrap();
        long.await.unwrap().unwrap();
    }

    #[tokio::test]
    async fn a_thread_reuses_its_memory_and_survives_a_panicking_job() {
        let pool = HashingPool::new(1);
        let held_before = |memory: &mut WorkerMemory| {
            let held = memory.is_held();
            memory.get();
            held
        };
        assert!(
            !pool.run_in_memory(held_before).await.unwrap(),
            "allocated on first use"
        );
        let panicked = pool.run(|| panic!("a broken job")).await;
        assert!(matches!(panicked, Err(ServiceError::Internal(_))), "{panicked:?}");
        assert!(pool.run_in_memory(held_before).await.unwrap(), "kept for the next hash");
    }

    #[cfg(target_os = "linux")]
    #[tokio::test]
    async fn hashing_threads_run_nicer_than_the_process() {
        fn own_nice() -> i32 {
            // SAFETY: reads the calling thread's own niceness.
            unsafe { libc::getpriority(libc::PRIO_PROCESS, libc::gettid() as libc::id_t) }
        }
        let process = own_nice();
        let pool = HashingPool::with_priority(1, 7);
        let nice = pool.run(own_nice).await.unwrap();
        // New threads inherit the creating thread's niceness; 7 more, or 19 at most.
        assert_eq!(nice, (process + 7).min(19), "process {process}");
        assert_eq!(HashingPool::with_priority(1, 0).run(own_nice).await.unwrap(), process);
    }
}
