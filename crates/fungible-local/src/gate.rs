//! Taking turns on the CPU cores: every model computation (a llama.cpp decode step, a candle
//! forward pass) passes through one process-wide [`Gate`] sized to the machine's cores.
//!
//! Each computation asks for the threads it runs on. llama.cpp's threads wait for each other
//! at a barrier after every operation by spinning, so when two decodes share the cores each
//! spins while the thread it waits for is descheduled: measured on 2 cores, the local-model
//! tests took over 700 s run side by side against 38 s one at a time. Through the gate two
//! models (or a chat model and the embedding model) take turns instead, in arrival order, and
//! computations that fit in the cores together still run together.

use std::sync::{Condvar, Mutex, MutexGuard, OnceLock};

#[derive(Debug)]
pub(crate) struct Gate {
    state: Mutex<State>,
    turn: Condvar,
    cores: usize,
}

#[derive(Debug)]
struct State {
    /// Cores not taken.
    free: usize,
    /// The next ticket to hand out and the one whose turn it is: first come, first served, so
    /// a scheduler that decodes step after step cannot keep another model out.
    next: u64,
    serving: u64,
}

/// Cores held by one computation; given back when dropped.
#[must_use]
pub(crate) struct Turn<'a> {
    gate: &'a Gate,
    cores: usize,
}

impl Gate {
    fn new(cores: usize) -> Gate {
        let cores = cores.max(1);
        Gate { state: Mutex::new(State { free: cores, next: 0, serving: 0 }), turn: Condvar::new(), cores }
    }

    /// The gate of this process, sized to the cores it may use.
    pub(crate) fn global() -> &'static Gate {
        static GATE: OnceLock<Gate> = OnceLock::new();
        GATE.get_or_init(|| Gate::new(std::thread::available_parallelism().map_or(1, |n| n.get())))
    }

    /// Blocks until `threads` cores are free (all of them, when it asks for more than the
    /// machine has) and every earlier caller has had its turn.
    pub(crate) fn enter(&self, threads: usize) -> Turn<'_> {
        let cores = threads.clamp(1, self.cores);
        let mut state = self.lock();
        let ticket = state.next;
        state.next += 1;
        while state.serving != ticket || state.free < cores {
            state = self.turn.wait(state).unwrap_or_else(|e| e.into_inner());
        }
        state.serving += 1;
        state.free -= cores;
        drop(state);
        // The next in line may fit beside this one.
        self.turn.notify_all();
        Turn { gate: self, cores }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // The state is two counters, always consistent between statements: a panic elsewhere
        // while holding the lock leaves nothing half-done.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl Drop for Turn<'_> {
    fn drop(&mut self) {
        self.gate.lock().free += self.cores;
        self.gate.turn.notify_all();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};

    #[test]
    fn computations_never_take_more_cores_than_there_are() {
        let gate = Arc::new(Gate::new(4));
        let in_use = Arc::new(AtomicUsize::new(0));
        let most = Arc::new(AtomicUsize::new(0));
        let workers: Vec<_> = (0..8)
            .map(|i| {
                let (gate, in_use, most) = (gate.clone(), in_use.clone(), most.clone());
                std::thread::spawn(move || {
                    let threads = [1, 2, 4, 9][i % 4]; // 9: more than there are, takes all 4
                    for _ in 0..200 {
                        let _turn = gate.enter(threads);
                        let now = in_use.fetch_add(threads.min(4), Ordering::SeqCst) + threads.min(4);
                        most.fetch_max(now, Ordering::SeqCst);
                        std::thread::yield_now();
                        in_use.fetch_sub(threads.min(4), Ordering::SeqCst);
                    }
                })
            })
            .collect();
        for w in workers {
            w.join().unwrap();
        }
        assert!(most.load(Ordering::SeqCst) <= 4, "{}", most.load(Ordering::SeqCst));
        assert!(most.load(Ordering::SeqCst) >= 1);
        assert_eq!(gate.lock().free, 4);
    }

    #[test]
    fn small_computations_run_side_by_side() {
        let gate = Gate::new(4);
        let a = gate.enter(2);
        let b = gate.enter(2); // would block forever if the gate served one at a time
        assert_eq!(gate.lock().free, 0);
        drop((a, b));
        assert_eq!(gate.lock().free, 4);
    }
}
