//! Stopping cleanly, as mini-redis does: the trigger tells every task holding a `Shutdown`,
//! then waits until all of them are dropped (or a deadline passes).

use std::time::Duration;

use tokio::sync::{mpsc, watch};

/// Held by every long-running task; tells it to stop. Cloning registers one more task that the
/// trigger waits for.
#[derive(Clone)]
pub struct Shutdown {
    told: watch::Receiver<bool>,
    _alive: mpsc::Sender<()>,
}

impl Shutdown {
    pub fn is_shutdown(&self) -> bool {
        *self.told.borrow()
    }

    /// Resolves once shutdown is triggered (at once if it already was). Cancel-safe.
    pub async fn recv(&mut self) {
        // An error means the trigger is gone: that is a shutdown too.
        let _ = self.told.wait_for(|told| *told).await;
    }
}

pub struct Trigger {
    tell: watch::Sender<bool>,
    alive_tx: mpsc::Sender<()>,
    alive_rx: mpsc::Receiver<()>,
}

impl Default for Trigger {
    fn default() -> Self {
        Trigger::new()
    }
}

impl Trigger {
    pub fn new() -> Trigger {
        let (tell, _) = watch::channel(false);
        let (alive_tx, alive_rx) = mpsc::channel(1);
        Trigger {
            tell,
            alive_tx,
            alive_rx,
        }
    }

    pub fn subscribe(&self) -> Shutdown {
        Shutdown {
            told: self.tell.subscribe(),
            _alive: self.alive_tx.clone(),
        }
    }

    /// Tells every `Shutdown`, then waits until all of them are dropped or `within` passed;
    /// returns whether all were dropped.
    pub async fn shutdown(self, within: Duration) -> bool {
        let Trigger {
            tell,
            alive_tx,
            mut alive_rx,
        } = self;
        let _ = tell.send(true);
        drop(alive_tx);
        // recv() returns None once every sender (every Shutdown) is dropped.
        tokio::time::timeout(within, alive_rx.recv()).await.is_ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn waits_for_every_task_then_gives_up_at_the_deadline() {
        let trigger = Trigger::new();
        let mut quick = trigger.subscribe();
        tokio::spawn(async move { quick.recv().await });
        assert!(trigger.shutdown(Duration::from_secs(5)).await);

        let trigger = Trigger::new();
        let stuck = trigger.subscribe();
        assert!(!trigger.shutdown(Duration::from_millis(50)).await);
        assert!(stuck.is_shutdown());
    }
}
