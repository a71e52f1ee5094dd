//! Stopping the daemon's tasks cleanly (tokio's mini-redis pattern): one `Trigger` tells every
//! `Shutdown` to stop, then waits until each of them is dropped ("all done"), or a deadline.
//! A task holds its `Shutdown` until it has finished, so its drop means the task is over.

use std::time::Duration;

use tokio::sync::{mpsc, watch};

/// Held by every long-running task; tells it to stop. Cloning registers one more task that the
/// trigger waits for.
#[derive(Clone, Debug)]
pub struct Shutdown {
    /// Turns true once when the trigger fires.
    stop: watch::Receiver<bool>,
    /// Never sent on: dropped with the task, which tells the trigger one more task is done.
    _done: mpsc::Sender<()>,
}

impl Shutdown {
    pub fn is_shutdown(&self) -> bool {
        // A trigger dropped without firing is taken as a stop too: nobody is left to fire it.
        *self.stop.borrow() || self.stop.has_changed().is_err()
    }

    /// Resolves once shutdown is triggered (at once if it already was). Cancel-safe, usable in
    /// select!.
    pub async fn recv(&mut self) {
        // Err: the trigger is gone, which is a stop as well.
        let _ = self.stop.wait_for(|stop| *stop).await;
    }
}

/// Owned by whoever decides when the daemon stops (`service::run`, on SIGTERM).
#[derive(Debug)]
pub struct Trigger {
    stop: watch::Sender<bool>,
    done_tx: mpsc::Sender<()>,
    done_rx: mpsc::Receiver<()>,
}

impl Default for Trigger {
    fn default() -> Trigger {
        Trigger::new()
    }
}

impl Trigger {
    pub fn new() -> Trigger {
        let (stop, _) = watch::channel(false);
        let (done_tx, done_rx) = mpsc::channel(1);
        Trigger {
            stop,
            done_tx,
            done_rx,
        }
    }

    pub fn subscribe(&self) -> Shutdown {
        Shutdown {
            stop: self.stop.subscribe(),
            _done: self.done_tx.clone(),
        }
    }

    /// Tells every Shutdown, then waits until all of them are dropped or `within` passed;
    /// returns whether all were dropped.
    pub async fn shutdown(self, within: Duration) -> bool {
        let Trigger {
            stop,
            done_tx,
            mut done_rx,
        } = self;
        stop.send_replace(true);
        drop(done_tx);
        // No message is ever sent: recv returns None once the last Shutdown is dropped.
        tokio::time::timeout(within, done_rx.recv()).await.is_ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const WITHIN: Duration = Duration::from_secs(5);

    #[tokio::test(start_paused = true)]
    async fn with_no_task_the_shutdown_is_done_at_once() {
        let start = tokio::time::Instant::now();
        assert!(Trigger::new().shutdown(WITHIN).await);
        assert_eq!(start.elapsed(), Duration::ZERO);
    }

    #[tokio::test(start_paused = true)]
    async fn every_task_is_told_and_waited_for() {
        let trigger = Trigger::new();
        let mut ended = Vec::new();
        for stops_after in [0u64, 1, 3] {
            let mut shutdown = trigger.subscribe();
            assert!(!shutdown.is_shutdown());
            ended.push(tokio::spawn(async move {
                shutdown.recv().await;
                assert!(shutdown.is_shutdown());
                // Some cleanup that takes a while, the Shutdown still held.
                tokio::time::sleep(Duration::from_secs(stops_after)).await;
                tokio::time::Instant::now()
            }));
        }
        let start = tokio::time::Instant::now();
        assert!(trigger.shutdown(WITHIN).await);
        // The trigger returned when the slowest task (3 s of cleanup) ended, not before.
        assert_eq!(start.elapsed(), Duration::from_secs(3));
        for task in ended {
            assert!(task.await.unwrap() <= start + Duration::from_secs(3));
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_task_that_does_not_stop_is_waited_for_only_until_the_deadline() {
        let trigger = Trigger::new();
        let stuck = trigger.subscribe();
        let start = tokio::time::Instant::now();
        assert!(!trigger.shutdown(Duration::from_secs(2)).await);
        assert_eq!(start.elapsed(), Duration::from_secs(2));
        assert!(stuck.is_shutdown());
    }

    #[tokio::test(start_paused = true)]
    async fn clones_are_waited_for_too() {
        let trigger = Trigger::new();
        let first = trigger.subscribe();
        let mut second = first.clone();
        drop(first);
        let task = tokio::spawn(async move {
            second.recv().await;
            tokio::time::sleep(Duration::from_secs(1)).await;
            drop(second);
        });
        let start = tokio::time::Instant::now();
        assert!(trigger.shutdown(WITHIN).await);
        assert_eq!(start.elapsed(), Duration::from_secs(1));
        task.await.unwrap();
    }

    #[tokio::test(start_paused = true)]
    async fn recv_is_cancel_safe_and_resolves_at_once_after_the_trigger() {
        let trigger = Trigger::new();
        let mut shutdown = trigger.subscribe();
        // Cancelled many times in a select! before the trigger: no wakeup is lost.
        for _ in 0..3 {
            tokio::select! {
                _ = shutdown.recv() => panic!("not triggered yet"),
                _ = tokio::time::sleep(Duration::from_millis(10)) => {}
            }
        }
        let waiter = tokio::spawn(async move {
            for _ in 0..2 {
                // Resolves every time once triggered.
                shutdown.recv().await;
            }
        });
        assert!(trigger.shutdown(WITHIN).await);
        waiter.await.unwrap();
    }

    #[tokio::test(start_paused = true)]
    async fn a_dropped_trigger_stops_the_tasks() {
        let trigger = Trigger::new();
        let mut shutdown = trigger.subscribe();
        drop(trigger);
        assert!(shutdown.is_shutdown());
        shutdown.recv().await;
    }
}
