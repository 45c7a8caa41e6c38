//! [`Recorder`]: takes records off the request path and writes them in batches.
//!
//! `record` never waits: it is a `try_send` into a queue bounded in records and in bytes, and
//! a full queue drops the record (counted in [`RecorderCounters::dropped`], logged). The
//! request path hands over each record with its bodies already JSON text
//! ([`EncodedBodies`], encoded from the borrowed canonical request and response): one buffer
//! per body, so the queue holds and counts exactly the bytes it will write, and the writer
//! frees two buffers per record rather than the hundred small allocations of a canonical
//! request. One writer takes up to `batch_size` records at a time and writes them in one
//! transaction. When a write fails (the store is down or slow) the writer keeps the batch and
//! retries with backoff, so records wait in the queue up to its bound and none that fit is
//! lost; their bytes count until they are written. A batch the store refuses for its data (a
//! constraint, a value it cannot hold) is written record by record, and only the refused
//! records are dropped and reported. `shutdown` stops taking records, writes everything
//! queued and returns. The gateway starts it with [`Recorder::start_in_background`]: the
//! writer and its store connections on a thread of their own that the kernel runs only on
//! CPU time nothing else wants (`SCHED_IDLE`, [`WriterPriority`]).

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use tokio::sync::{Notify, mpsc, oneshot};

use crate::cap::Truncation;
use crate::record::{EncodedBodies, EncodedRecord, InferenceRecord};
use crate::store::{Store, StoreError};

/// Where the writer puts batches: the [`Store`], or a test double.
pub trait BatchSink: Send + Sync + 'static {
    fn write<'a>(
        &'a self,
        batch: &'a [EncodedRecord],
    ) -> Pin<Box<dyn Future<Output = Result<(), StoreError>> + Send + 'a>>;
}

impl BatchSink for Store {
    fn write<'a>(
        &'a self,
        batch: &'a [EncodedRecord],
    ) -> Pin<Box<dyn Future<Output = Result<(), StoreError>> + Send + 'a>> {
        Box::pin(self.insert_encoded(batch))
    }
}

/// How the writer thread of [`Recorder::start_in_background`] is scheduled (Linux).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WriterPriority {
    /// `SCHED_IDLE`: it runs only when no other thread wants the CPU, and any thread that
    /// wakes takes the core from it at once, so the request path never waits behind it. On a
    /// machine that stays saturated it gets no time: the queue fills to its bound and further
    /// records are dropped (counted). The default.
    Idle,
    /// A nice value (0 to 19): a smaller share of the CPU under contention; at 0, the
    /// priority of the thread that starts it.
    Nice(i32),
}

#[derive(Debug, Clone, Copy)]
pub struct RecorderOptions {
    pub queue_capacity: usize,
    /// The most bytes the records queued or being written may hold (as `queued_bytes` counts
    /// them): what keeps a slow or unavailable store from growing the gateway's memory.
    pub queue_bytes: usize,
    pub batch_size: usize,
    /// How long the writer lets a batch fill after its first record before writing it; a
    /// flush or a full batch cuts it short. The writer is not woken by each record.
    pub flush_interval: Duration,
    /// First retry delay after a failed write (doubles up to 5 s).
    pub retry_delay: Duration,
    /// On shutdown, how long to keep retrying a store that is down before giving up (and
    /// reporting what was lost).
    pub shutdown_timeout: Duration,
    /// [`Recorder::start_in_background`]: how the writer thread is scheduled.
    pub writer_priority: WriterPriority,
    /// The most bytes (estimated) one record's request and response may hold; larger ones
    /// are stored cut and marked ([`Bodies::capped`]), so one client's huge requests cannot
    /// fill `queue_bytes` and push out everyone else's records.
    pub max_record_bytes: usize,
}

/// The default bound of the queue's bytes: about 5,000 typical records (seconds of a store
/// outage at 1,000 requests/s), and what keeps a gateway saturated so long that its writer
/// never runs within 40 MiB of memory.
pub const DEFAULT_QUEUE_BYTES: usize = 8 << 20;

impl Default for RecorderOptions {
    fn default() -> RecorderOptions {
        RecorderOptions {
            queue_capacity: 10_000,
            queue_bytes: DEFAULT_QUEUE_BYTES,
            batch_size: 256,
            flush_interval: Duration::from_millis(200),
            retry_delay: Duration::from_millis(100),
            shutdown_timeout: Duration::from_secs(10),
            writer_priority: WriterPriority::Idle,
            max_record_bytes: crate::cap::DEFAULT_MAX_RECORD_BYTES,
        }
    }
}

/// What the recorder has done so far.
#[derive(Debug, Default)]
pub struct RecorderCounters {
    /// Records written to the store.
    pub written: AtomicU64,
    /// Records dropped because the queue was full, or lost at shutdown.
    pub dropped: AtomicU64,
    /// Failed batch writes (each is retried).
    pub write_errors: AtomicU64,
    /// Bytes of the records queued or being written: their bodies' buffers, and about 512
    /// bytes each for the rest.
    pub queued_bytes: AtomicUsize,
}

/// A record on its way to the writer, and the bytes it counts in the queue.
struct Queued {
    record: EncodedRecord,
    bytes: usize,
}

enum Message {
    Record(Box<Queued>),
    /// Answered once everything queued before it is written.
    Flush(oneshot::Sender<()>),
    /// Write what is queued and end the writer (sent by `shutdown`).
    Stop,
}

/// Where the writer runs, to wait for its end.
enum Writer {
    /// A task on the runtime that started it.
    Task(tokio::task::JoinHandle<()>),
    /// A thread of its own ([`Recorder::start_in_background`]); the receiver hears when it
    /// has ended.
    Thread(oneshot::Receiver<()>),
}

/// The handle the request path holds. Cheap to clone.
#[derive(Clone)]
pub struct Recorder {
    tx: mpsc::Sender<Message>,
    counters: Arc<RecorderCounters>,
    max_bytes: usize,
    closed: Arc<AtomicBool>,
    writer: Arc<std::sync::Mutex<Option<Writer>>>,
    /// Wakes the writer before its flush interval is up: a flush, or a full batch queued.
    wake: Arc<Notify>,
    batch_size: usize,
    max_record_bytes: usize,
}

impl std::fmt::Debug for Recorder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Recorder")
            .field("counters", &self.counters)
            .finish_non_exhaustive()
    }
}

impl Recorder {
    /// Starts the writer task on the current runtime.
    pub fn start(sink: impl BatchSink, options: RecorderOptions) -> Recorder {
        let (tx, rx) = mpsc::channel(options.queue_capacity.max(1));
        let counters = Arc::new(RecorderCounters::default());
        let wake = Arc::new(Notify::new());
        let writer = tokio::spawn(write_loop(Arc::new(sink), rx, options, counters.clone(), wake.clone()));
        Recorder::new(tx, counters, wake, Writer::Task(writer), options)
    }

    /// Like [`Recorder::start`], but the writer runs on a thread of its own, with its own
    /// single-threaded runtime, at a lower CPU priority (`writer_priority`, on Linux), and its
    /// sink is made there by `open`. A [`Store`] opened that way has connections of its own,
    /// and SQLite's connection threads, started from that thread, inherit its scheduling. So
    /// the inserts run on CPU time the request path leaves over, instead of taking turns with
    /// it on a busy machine.
    pub async fn start_in_background<S, F, Fut>(open: F, options: RecorderOptions) -> Result<Recorder, StoreError>
    where
        S: BatchSink,
        F: FnOnce() -> Fut + Send + 'static,
        Fut: Future<Output = Result<S, StoreError>>,
    {
        let (tx, rx) = mpsc::channel(options.queue_capacity.max(1));
        let counters = Arc::new(RecorderCounters::default());
        let wake = Arc::new(Notify::new());
        let (ready_tx, ready_rx) = oneshot::channel::<Result<(), StoreError>>();
        let (ended_tx, ended_rx) = oneshot::channel::<()>();
        let (thread_counters, thread_wake) = (counters.clone(), wake.clone());
        std::thread::Builder::new()
            .name("fungible-recorder".into())
            .spawn(move || {
                lower_this_threads_priority(options.writer_priority);
                let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
                    Ok(runtime) => runtime,
                    Err(e) => {
                        let _ = ready_tx.send(Err(StoreError::Unavailable(format!("recorder runtime: {e}"))));
                        return;
                    }
                };
                runtime.block_on(async move {
                    let sink = match open().await {
                        Ok(sink) => sink,
                        Err(e) => {
                            let _ = ready_tx.send(Err(e));
                            return;
                        }
                    };
                    let _ = ready_tx.send(Ok(()));
                    write_loop(Arc::new(sink), rx, options, thread_counters, thread_wake).await;
                });
                let _ = ended_tx.send(());
            })
            .map_err(|e| StoreError::Unavailable(format!("could not start the recorder thread: {e}")))?;
        ready_rx
            .await
            .map_err(|_| StoreError::Unavailable("the recorder thread ended while starting".into()))??;
        Ok(Recorder::new(tx, counters, wake, Writer::Thread(ended_rx), options))
    }

    fn new(
        tx: mpsc::Sender<Message>,
        counters: Arc<RecorderCounters>,
        wake: Arc<Notify>,
        writer: Writer,
        options: RecorderOptions,
    ) -> Recorder {
        Recorder {
            tx,
            counters,
            max_bytes: options.queue_bytes,
            closed: Arc::new(AtomicBool::new(false)),
            writer: Arc::new(std::sync::Mutex::new(Some(writer))),
            wake,
            batch_size: options.batch_size.max(1),
            max_record_bytes: options.max_record_bytes,
        }
    }

    /// Queues `record` (its `request` and `response` as JSON values); never waits. A full
    /// queue (or a recorder shut down) drops it.
    pub fn record(&self, record: InferenceRecord) {
        self.enqueue(EncodedRecord::from(record));
    }

    /// The most bytes one record's bodies may hold (`max_record_bytes`).
    pub fn max_record_bytes(&self) -> usize {
        self.max_record_bytes
    }

    /// Queues `record` with the canonical request and response it answered, encoded here as
    /// JSON text within `max_record_bytes` ([`EncodedBodies::encode`]; `earlier`: what an
    /// earlier cap of this request left out); never waits. A full queue (or a recorder shut
    /// down) drops it.
    pub fn record_with(
        &self,
        record: InferenceRecord,
        request: &fungible_types::ChatRequest,
        response: Option<&fungible_types::ChatResponse>,
        earlier: Option<Truncation>,
    ) {
        // A saturated gateway whose writer cannot keep up drops records: decide that before
        // spending the encoding on one.
        let estimate = crate::record::estimate(request, response).min(self.max_record_bytes);
        let queued = self.counters.queued_bytes.load(Ordering::Relaxed);
        // As in `enqueue`, one record alone is always let in.
        if queued > 0 && queued + estimate > self.max_bytes {
            self.count_drop("the queue is full (the store is slow or down)");
            return;
        }
        let bodies = EncodedBodies::encode(request, response, self.max_record_bytes, earlier);
        self.enqueue(EncodedRecord { record, bodies });
    }

    fn enqueue(&self, record: EncodedRecord) {
        if self.closed.load(Ordering::Relaxed) {
            self.count_drop("the recorder is shut down");
            return;
        }
        let bytes = record.bytes();
        let queued = Queued { record, bytes };
        let before = self
            .counters
            .queued_bytes
            .fetch_add(bytes, Ordering::Relaxed);
        // One record alone is always let in (the request body limit bounds it).
        if before > 0 && before + bytes > self.max_bytes {
            self.counters
                .queued_bytes
                .fetch_sub(bytes, Ordering::Relaxed);
            self.count_drop("the queue is full (the store is slow or down)");
            return;
        }
        if self.tx.try_send(Message::Record(Box::new(queued))).is_err() {
            self.counters
                .queued_bytes
                .fetch_sub(bytes, Ordering::Relaxed);
            self.count_drop("the queue is full (the store is slow or down)");
        } else if self.queued() >= self.batch_size {
            self.wake.notify_one();
        }
    }

    fn count_drop(&self, why: &str) {
        let n = self.counters.dropped.fetch_add(1, Ordering::Relaxed) + 1;
        // The first drop, then one line per 1,000.
        if n == 1 || n.is_multiple_of(1000) {
            tracing::warn!(dropped = n, "inference records dropped: {why}");
        }
    }

    pub fn counters(&self) -> &RecorderCounters {
        &self.counters
    }

    /// Records queued and not written yet (approximate).
    pub fn queued(&self) -> usize {
        self.tx.max_capacity() - self.tx.capacity()
    }

    /// Waits until every record queued before this call is written (or the writer gave up).
    pub async fn flush(&self) {
        let (tx, rx) = oneshot::channel();
        if self.tx.send(Message::Flush(tx)).await.is_ok() {
            self.wake.notify_one();
            let _ = rx.await;
        }
    }

    /// Stops taking records, writes what is queued and waits for the writer to finish.
    pub async fn shutdown(&self) {
        self.closed.store(true, Ordering::Relaxed);
        self.flush().await;
        let writer = self.writer.lock().ok().and_then(|mut w| w.take());
        if let Some(writer) = writer {
            // Everything queued is written (or given up on): the writer ends at `Stop`.
            if self.tx.send(Message::Stop).await.is_ok() {
                self.wake.notify_one();
            }
            let _ = match writer {
                Writer::Task(task) => task.await.map_err(drop),
                Writer::Thread(ended) => ended.await.map_err(drop),
            };
        }
        let c = &self.counters;
        tracing::info!(
            written = c.written.load(Ordering::Relaxed),
            dropped = c.dropped.load(Ordering::Relaxed),
            "recorder stopped"
        );
    }
}

async fn write_loop(
    sink: Arc<dyn BatchSink>,
    mut rx: mpsc::Receiver<Message>,
    options: RecorderOptions,
    counters: Arc<RecorderCounters>,
    wake: Arc<Notify>,
) {
    let mut queued: Vec<Queued> = Vec::with_capacity(options.batch_size);
    let mut batch: Vec<EncodedRecord> = Vec::with_capacity(options.batch_size);
    // The queue bytes of the records in `batch`, released once they are written (or lost).
    let mut batch_bytes = 0;
    let mut waiting: Vec<oneshot::Sender<()>> = Vec::new();
    loop {
        // Block for the first message, then let the batch fill for `flush_interval` without
        // being woken by each record (a wake-up per request costs the request path CPU and
        // latency): a flush or a full batch cuts the wait short. Then take what is there.
        let Some(first) = rx.recv().await else { break };
        let mut next = Some(first);
        let mut slept = false;
        let mut stopping = false;
        loop {
            match next.take() {
                Some(Message::Record(q)) => {
                    batch_bytes += q.bytes;
                    queued.push(*q);
                }
                Some(Message::Flush(done)) => {
                    waiting.push(done);
                    break;
                }
                Some(Message::Stop) => {
                    stopping = true;
                    break;
                }
                None => {}
            }
            if queued.len() >= options.batch_size.max(1) {
                break;
            }
            next = match rx.try_recv() {
                Ok(m) => Some(m),
                Err(mpsc::error::TryRecvError::Empty) if !slept => {
                    slept = true;
                    let _ = tokio::time::timeout(options.flush_interval, wake.notified()).await;
                    continue;
                }
                Err(_) => break,
            };
        }
        batch.extend(queued.drain(..).map(|q| q.record));
        write_with_retry(&*sink, &mut batch, &options, &counters, !waiting.is_empty()).await;
        counters
            .queued_bytes
            .fetch_sub(std::mem::take(&mut batch_bytes), Ordering::Relaxed);
        for done in waiting.drain(..) {
            let _ = done.send(());
        }
        if stopping {
            return;
        }
    }
    batch.extend(queued.drain(..).map(|q| q.record));
    write_with_retry(&*sink, &mut batch, &options, &counters, true).await;
    counters
        .queued_bytes
        .fetch_sub(batch_bytes, Ordering::Relaxed);
}

/// Schedules the calling thread (not the whole process: Linux keeps the policy and nice value
/// per thread) as `priority` says; threads it starts inherit both. Neither `SCHED_IDLE` nor
/// raising one's own nice value needs a privilege; failing is harmless (logged).
fn lower_this_threads_priority(priority: WriterPriority) {
    #[cfg(target_os = "linux")]
    match priority {
        WriterPriority::Idle => {
            use thread_priority::{NormalThreadSchedulePolicy, ThreadPriority, ThreadSchedulePolicy};
            let idle = ThreadSchedulePolicy::Normal(NormalThreadSchedulePolicy::Idle);
            if let Err(e) = thread_priority::set_thread_priority_and_policy(thread_priority::thread_native_id(), ThreadPriority::Min, idle) {
                // thread-priority sets the policy, then the nice value: the second step fails
                // (harmlessly) in a process that already runs at a nice value above 0.
                tracing::debug!("recorder: could not set the writer thread's scheduling (SCHED_IDLE, then nice): {e:?}");
            }
        }
        WriterPriority::Nice(nice) if nice > 0 => {
            if let Err(e) = rustix::process::setpriority_process(None, nice) {
                tracing::debug!("recorder: could not lower the writer thread's priority: {e}");
            }
        }
        WriterPriority::Nice(_) => {}
    }
    #[cfg(not(target_os = "linux"))]
    let _ = priority;
}

/// Writes `batch`, retrying with backoff until it is written. A flush (shutdown) gives up
/// after `shutdown_timeout` and counts the batch as dropped.
async fn write_with_retry(
    sink: &dyn BatchSink,
    batch: &mut Vec<EncodedRecord>,
    options: &RecorderOptions,
    counters: &RecorderCounters,
    flushing: bool,
) {
    if batch.is_empty() {
        return;
    }
    let started = tokio::time::Instant::now();
    let mut delay = options.retry_delay;
    loop {
        match sink.write(batch).await {
            Ok(()) => {
                counters
                    .written
                    .fetch_add(batch.len() as u64, Ordering::Relaxed);
                batch.clear();
                return;
            }
            Err(e) if e.is_permanent() => {
                // The store is up and refused some record of the batch: write them one by
                // one, so that one bad record is dropped (and reported) instead of holding
                // back every record after it forever.
                counters.write_errors.fetch_add(1, Ordering::Relaxed);
                let mut kept = Vec::new();
                for record in batch.drain(..) {
                    match sink.write(std::slice::from_ref(&record)).await {
                        Ok(()) => {
                            counters.written.fetch_add(1, Ordering::Relaxed);
                        }
                        Err(e) if e.is_permanent() => {
                            counters.dropped.fetch_add(1, Ordering::Relaxed);
                            tracing::error!(id = %record.record.id, "inference record dropped: the store refused it: {e}");
                        }
                        Err(_) => kept.push(record),
                    }
                }
                *batch = kept;
                if batch.is_empty() {
                    return;
                }
            }
            Err(e) => {
                let n = counters.write_errors.fetch_add(1, Ordering::Relaxed) + 1;
                if n == 1 || n.is_power_of_two() {
                    tracing::warn!(
                        records = batch.len(),
                        failures = n,
                        "could not write inference records, retrying: {e}"
                    );
                }
                if flushing && started.elapsed() >= options.shutdown_timeout {
                    counters
                        .dropped
                        .fetch_add(batch.len() as u64, Ordering::Relaxed);
                    tracing::error!(
                        records = batch.len(),
                        "inference records lost: the store stayed unavailable: {e}"
                    );
                    batch.clear();
                    return;
                }
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_secs(5));
            }
        }
    }
}
