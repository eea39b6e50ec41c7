//! `WatchDeregistration`'s stream: one task per watcher, woken only by committed events (this
//! replica's, and on PostgreSQL other replicas', see `storage::listen`) and by resyncs — no
//! polling. `Sequencer` decides what is sent: each event once, in sequence order; a repeat is
//! dropped, and a gap (another replica's event not yet relayed when this replica's next one is
//! published, or news lost with a dropped connection) is filled from the store.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::broadcast::error::RecvError;
use tokio::time::MissedTickBehavior;
use tokio_stream::Stream;
use tonic::Status;

use super::error::ApiError;
use super::watchers::WatchPermit;
use super::{convert, pb};
use crate::app::{Gateway, Watch};
use crate::domain::{CaseEvent, CaseId};
use crate::rpc::auth::CallerCheck;

/// The events of `id` from the start of its trail to its end (the stream ends after a terminal
/// event), or until the client goes away, or until the replica starts to drain (`draining`
/// turns true): then it ends with UNAVAILABLE `SHUTTING_DOWN`, so the watcher moves to another
/// replica rather than holding this one's drain open. `permit` holds the stream's place under the
/// principal's cap until the task ends. `caller` judges the caller again before each event and
/// every `caller.every()` between them: a certificate revoked (or whose CRL went stale) or a
/// principal removed or changed role while the stream is open ends it with the status its next
/// call would get.
pub(super) fn stream(
    gateway: Arc<Gateway>,
    id: CaseId,
    watch: Watch,
    permit: WatchPermit,
    caller: Option<CallerCheck>,
    mut draining: tokio::sync::watch::Receiver<bool>,
) -> impl Stream<Item = Result<pb::WatchDeregistrationResponse, Status>> + Send + 'static {
    let (tx, rx) = tokio::sync::mpsc::channel(16);
    let Watch {
        past,
        mut live,
        mut resyncs,
    } = watch;
    // Woken also by the client going away: tonic drops the response stream when the call is
    // cancelled, reset or its connection lost, which closes the channel, and the task ends at
    // once, freeing its subscription and its permit — not at the case's next event.
    tokio::spawn(async move {
        let _permit = permit;
        let mut seq = Sequencer::default();
        let mut pending = past;
        let every = caller
            .as_ref()
            .map_or(Duration::from_secs(3600), CallerCheck::every);
        let mut recheck = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
        recheck.set_missed_tick_behavior(MissedTickBehavior::Delay);
        let still_admitted = || caller.as_ref().map_or(Ok(()), CallerCheck::recheck);
        loop {
            if *draining.borrow_and_update() {
                let _ = tx.send(Err(ApiError::shutting_down().into())).await;
                return;
            }
            let (send, gap) = seq.take(&pending);
            for e in send {
                if let Err(status) = still_admitted() {
                    let _ = tx.send(Err(status)).await;
                    return;
                }
                let msg = pb::WatchDeregistrationResponse {
                    event: Some(convert::event_out(&e)),
                };
                if tx.send(Ok(msg)).await.is_err() {
                    return;
                }
                if e.state.is_terminal() {
                    return;
                }
            }
            let reread = gap
                || tokio::select! {
                    () = tx.closed() => return,
                    r = live.recv() => match r {
                        Ok(e) => {
                            pending = if e.case_id == id { vec![e] } else { Vec::new() };
                            false
                        }
                        // Fell behind the broadcast: read what was missed from the store.
                        Err(RecvError::Lagged(_)) => true,
                        Err(RecvError::Closed) => return,
                    },
                    // News may have been missed (the relay reconnected).
                    r = resyncs.changed() => {
                        if r.is_err() {
                            return;
                        }
                        true
                    }
                    // No event for a while: the caller is judged again all the same.
                    _ = recheck.tick() => {
                        if let Err(status) = still_admitted() {
                            let _ = tx.send(Err(status)).await;
                            return;
                        }
                        pending.clear();
                        false
                    }
                    // Checked at the top of the loop. (A dropped sender: the app is gone.)
                    r = draining.changed() => {
                        if r.is_err() {
                            return;
                        }
                        continue;
                    }
                };
            if reread {
                pending = match gateway.events_after(&id, seq.last).await {
                    Ok(v) => v,
                    Err(e) => {
                        let _ = tx.send(Err(ApiError::from(e).into())).await;
                        return;
                    }
                };
                if gap && pending.first().is_none_or(|e| e.sequence != seq.last + 1) {
                    // The store has nothing newer after all: wait for the next news.
                    pending.clear();
                }
            }
        }
    });
    tokio_stream::wrappers::ReceiverStream::new(rx)
}

/// Which events a watcher sends: strictly the next sequence number each time.
#[derive(Debug, Default)]
struct Sequencer {
    /// The sequence number of the last event sent (0: none yet).
    last: i64,
}

impl Sequencer {
    /// The events of `batch` (one case's, in order) to send now, and whether a gap was found
    /// after them (then the store is asked for everything after `last`). Repeats are dropped.
    fn take(&mut self, batch: &[CaseEvent]) -> (Vec<CaseEvent>, bool) {
        let mut send = Vec::new();
        for e in batch {
            if e.sequence <= self.last {
                continue;
            }
            if e.sequence > self.last + 1 {
                return (send, true);
            }
            self.last = e.sequence;
            send.push(e.clone());
        }
        (send, false)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::{State, Timestamp};

    fn events(id: &CaseId, seqs: &[i64]) -> Vec<CaseEvent> {
        seqs.iter()
            .map(|&sequence| CaseEvent {
                case_id: id.clone(),
                sequence,
                kind: "accepted".into(),
                state: State::Accepted,
                actor: "system".into(),
                at: Timestamp(1_700_000_000_000_000),
                trace_id: String::new(),
                detail: String::new(),
                hash: String::new(),
                key_id: None,
            })
            .collect()
    }

    fn seqs(v: &[CaseEvent]) -> Vec<i64> {
        v.iter().map(|e| e.sequence).collect()
    }

    #[test]
    fn each_event_is_sent_once_in_order_and_a_gap_asks_for_a_reread() {
        let id = crate::clock::new_case_id();
        let mut s = Sequencer::default();
        let (sent, gap) = s.take(&events(&id, &[1, 2, 3]));
        assert_eq!((seqs(&sent), gap), (vec![1, 2, 3], false));
        // A repeat (this replica's event relayed back, or re-read) is dropped.
        let (sent, gap) = s.take(&events(&id, &[2, 3]));
        assert_eq!((seqs(&sent), gap), (vec![], false));
        // 5 before 4 (another replica's 4 not yet relayed): nothing sent, re-read.
        let (sent, gap) = s.take(&events(&id, &[5]));
        assert_eq!((seqs(&sent), gap), (vec![], true));
        assert_eq!(s.last, 3);
        // The re-read trail fills it; the late 4 is then a repeat.
        let (sent, gap) = s.take(&events(&id, &[4, 5]));
        assert_eq!((seqs(&sent), gap), (vec![4, 5], false));
        let (sent, gap) = s.take(&events(&id, &[4]));
        assert_eq!((seqs(&sent), gap), (vec![], false));
        // A gap after some sendable events: those go, then the re-read.
        let (sent, gap) = s.take(&events(&id, &[6, 8]));
        assert_eq!((seqs(&sent), gap), (vec![6], true));
    }
}
