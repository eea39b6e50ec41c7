//! The in-process event bus: what was committed, told to whoever waits for it in this process.
//! Owns the broadcast of committed audit events (watchers subscribe), the work signal (idle
//! engine workers wake early) and the resync signal (news may have been missed: re-read).
//! The store publishes what this process commits after the commit and, on PostgreSQL, what
//! other replicas commit as their notifications arrive (`storage::listen`). The bus stores
//! nothing and must not be relied on for delivery — the database stays the source of truth (a
//! lagging watcher, or one told to resync, re-reads the trail; a worker also wakes on its idle
//! poll).

use std::sync::Arc;

use tokio::sync::{Notify, broadcast, watch};

use crate::domain::CaseEvent;

/// Events a slow subscriber may fall behind before it sees `Lagged` (and re-reads).
const CAPACITY: usize = 4096;

/// Cheap to clone: clones share the same channel and signal.
#[derive(Clone, Debug)]
pub struct EventBus {
    events: broadcast::Sender<CaseEvent>,
    work: Arc<Notify>,
    /// Counts resyncs; watchers wait for it to change.
    resync: Arc<watch::Sender<u64>>,
}

impl Default for EventBus {
    fn default() -> Self {
        Self::new()
    }
}

impl EventBus {
    pub fn new() -> Self {
        let (events, _) = broadcast::channel(CAPACITY);
        Self {
            events,
            work: Arc::new(Notify::new()),
            resync: Arc::new(watch::channel(0).0),
        }
    }

    /// Hands committed events to the current subscribers. Never waits: with no subscriber the
    /// events are dropped, and a slow one loses the oldest (it is told so when it reads).
    pub fn publish(&self, events: impl IntoIterator<Item = CaseEvent>) {
        for e in events {
            // An error only means nobody is subscribed right now.
            let _ = self.events.send(e);
        }
    }

    /// Wakes one worker waiting on the work signal, or the next one to wait (effects may have
    /// been enqueued or made due). One, not all: a worker that claims a full batch wakes the
    /// next itself, so a commit with a little work does not send every idle worker to the
    /// database to find nothing.
    pub fn notify_work(&self) {
        self.work.notify_one();
    }

    /// Tells every subscriber that events may have been committed without being published here
    /// (the news from other replicas was interrupted): watchers re-read their case's trail
    /// from the last event they sent, and idle workers look for work.
    pub fn resync(&self) {
        self.resync.send_modify(|n| *n = n.wrapping_add(1));
        self.notify_work();
    }

    /// The resync signal: `changed()` resolves after each `resync` from now on.
    pub fn resyncs(&self) -> watch::Receiver<u64> {
        self.resync.subscribe()
    }

    /// Whether anyone is subscribed to the events (else there is nobody to publish to).
    pub fn has_subscribers(&self) -> bool {
        self.events.receiver_count() > 0
    }

    /// Events published from now on.
    pub fn subscribe(&self) -> broadcast::Receiver<CaseEvent> {
        self.events.subscribe()
    }

    /// The signal `notify_work` raises. A waiter must register (`Notified::enable`) before it
    /// looks for work, so a signal raised in between is not missed.
    pub fn work_signal(&self) -> Arc<Notify> {
        self.work.clone()
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::domain::{State, Timestamp};

    fn event(sequence: i64) -> CaseEvent {
        CaseEvent {
            case_id: crate::clock::new_case_id(),
            sequence,
            kind: "accepted".into(),
            state: State::Accepted,
            actor: "system".into(),
            at: Timestamp(1_700_000_000_000_000),
            trace_id: String::new(),
            detail: String::new(),
            hash: String::new(),
            key_id: None,
        }
    }

    #[tokio::test]
    async fn a_subscriber_gets_what_is_published_after_it_subscribed() {
        let bus = EventBus::new();
        bus.publish([event(1)]);
        let mut rx = bus.subscribe();
        bus.publish([event(2), event(3)]);
        assert_eq!(rx.recv().await.expect("event").sequence, 2);
        assert_eq!(rx.recv().await.expect("event").sequence, 3);
        assert!(rx.try_recv().is_err(), "nothing else was published");
        // A clone is the same bus.
        bus.clone().publish([event(4)]);
        assert_eq!(rx.recv().await.expect("event").sequence, 4);
    }

    #[tokio::test]
    async fn a_dropped_or_idle_subscriber_does_not_block_publishing() {
        let bus = EventBus::new();
        let dropped = bus.subscribe();
        drop(dropped);
        let mut idle = bus.subscribe();
        // Far more than the channel holds: publish must return although nobody reads.
        bus.publish((0..(CAPACITY as i64) * 2).map(event));
        let mut late = bus.subscribe();
        bus.publish([event(-1)]);
        assert_eq!(late.recv().await.expect("event").sequence, -1);
        // The idle subscriber is told it fell behind rather than holding publishers up.
        assert!(matches!(
            idle.recv().await,
            Err(broadcast::error::RecvError::Lagged(_))
        ));
    }

    #[tokio::test]
    async fn resync_reaches_every_watcher_and_wakes_workers() {
        let bus = EventBus::new();
        assert!(!bus.has_subscribers());
        let _rx = bus.subscribe();
        assert!(bus.has_subscribers());
        let mut a = bus.resyncs();
        let mut b = bus.clone().resyncs();
        let signal = bus.work_signal();
        let notified = signal.notified();
        tokio::pin!(notified);
        notified.as_mut().enable();
        assert!(!a.has_changed().expect("open"), "nothing happened yet");
        bus.resync();
        for rx in [&mut a, &mut b] {
            tokio::time::timeout(Duration::from_secs(5), rx.changed())
                .await
                .expect("told")
                .expect("open");
        }
        tokio::time::timeout(Duration::from_secs(5), notified)
            .await
            .expect("a resync also wakes workers");
    }

    #[tokio::test]
    async fn notify_work_wakes_one_waiter_not_all() {
        let bus = EventBus::new();
        let signal = bus.work_signal();
        let (first, second) = (signal.notified(), signal.notified());
        tokio::pin!(first, second);
        first.as_mut().enable();
        second.as_mut().enable();
        bus.notify_work();
        tokio::time::timeout(Duration::from_secs(5), &mut first)
            .await
            .expect("the first waiter was woken");
        assert!(
            tokio::time::timeout(Duration::from_millis(50), &mut second)
                .await
                .is_err(),
            "one piece of news wakes one worker"
        );
        bus.notify_work();
        tokio::time::timeout(Duration::from_secs(5), second)
            .await
            .expect("the next piece of news wakes the next");
    }

    #[tokio::test]
    async fn notify_work_wakes_a_registered_waiter() {
        let bus = EventBus::new();
        let signal = bus.work_signal();
        let notified = signal.notified();
        tokio::pin!(notified);
        notified.as_mut().enable();
        bus.notify_work();
        tokio::time::timeout(Duration::from_secs(5), notified)
            .await
            .expect("the waiter was woken");
    }
}
