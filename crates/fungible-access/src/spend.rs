//! Spend persistence off the request path: settled costs are summed per (key, period) in
//! memory and added to the store in one write per pair every [`FLUSH_INTERVAL`], so a busy
//! key costs the store a few writes a second, not one per request. The counters that admit
//! requests (memory or Redis) are updated at once; the store is what a restart (or a Redis
//! that lost its state) starts from. [`SpendWriter::flush`] writes what is pending (at
//! shutdown, and before the admin API reads a key's spend).

use std::collections::HashMap;
use std::time::Duration;

use fungible_store::Store;
use tokio::sync::{mpsc, oneshot};

/// How long a settled cost may wait before it is written to the store.
pub const FLUSH_INTERVAL: Duration = Duration::from_millis(200);

enum Message {
    Add { key_id: String, period: String, usd: f64 },
    Flush(oneshot::Sender<()>),
}

/// Handle to the task that writes spend to the store. Cheap to clone.
#[derive(Clone)]
pub struct SpendWriter {
    tx: mpsc::UnboundedSender<Message>,
}

impl SpendWriter {
    /// Starts the writer task on the current runtime.
    pub fn start(store: Store) -> SpendWriter {
        let (tx, rx) = mpsc::unbounded_channel();
        tokio::spawn(run(store, rx));
        SpendWriter { tx }
    }

    /// Queues `usd` to be added to the key's spend in `period`.
    pub fn add(&self, key_id: &str, period: &str, usd: f64) {
        let message = Message::Add {
            key_id: key_id.to_owned(),
            period: period.to_owned(),
            usd,
        };
        if self.tx.send(message).is_err() {
            tracing::warn!(key = key_id, "spend writer stopped: a cost was not persisted");
        }
    }

    /// Writes everything queued so far; returns once it is in the store (or failed).
    pub async fn flush(&self) {
        let (done, wait) = oneshot::channel();
        if self.tx.send(Message::Flush(done)).is_ok() {
            let _ = wait.await;
        }
    }
}

async fn run(store: Store, mut rx: mpsc::UnboundedReceiver<Message>) {
    let mut pending: HashMap<(String, String), f64> = HashMap::new();
    let mut tick = tokio::time::interval(FLUSH_INTERVAL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            message = rx.recv() => match message {
                Some(Message::Add { key_id, period, usd }) => {
                    *pending.entry((key_id, period)).or_default() += usd;
                }
                Some(Message::Flush(done)) => {
                    write(&store, &mut pending).await;
                    let _ = done.send(());
                }
                None => {
                    write(&store, &mut pending).await;
                    return;
                }
            },
            _ = tick.tick() => write(&store, &mut pending).await,
        }
    }
}

/// Adds each pending sum to the store; a failed write stays pending for the next round.
async fn write(store: &Store, pending: &mut HashMap<(String, String), f64>) {
    let mut failed = HashMap::new();
    for ((key_id, period), usd) in pending.drain() {
        if let Err(e) = store.add_key_spend(&key_id, &period, usd).await {
            tracing::warn!(key = %key_id, "could not persist spend (will retry): {e}");
            failed.insert((key_id, period), usd);
        }
    }
    *pending = failed;
}
