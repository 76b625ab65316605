//! One member's share of a pull consumer: what it asks the server for and
//! what it holds.
//!
//! STAN's `maxInFlight` is per member: a member is never sent more messages
//! than it may hold unacked, however many members share a queue group. A
//! JetStream consumer's `max_ack_pending` is per consumer, so each member
//! asks with pull requests for no more than its room (`maxInFlight` minus
//! what it holds and what it already asked for), and asks again as acks
//! free room, instead of pulling whenever messages arrive.

use std::collections::hash_map::Entry;
use std::time::Duration;

use async_nats::jetstream::consumer::{self, pull::BatchConfig};
use async_nats::{Client, StatusCode, Subject, Subscriber};
use futures_util::{FutureExt, StreamExt};
use tokio::time::Instant;

use crate::id_map::IdMap;

/// How long a pull request waits on the server for messages.
const PULL_EXPIRES: Duration = Duration::from_secs(30);
pub const PULL_HEARTBEAT: Duration = Duration::from_secs(5);
/// Silence, while a pull is waiting, after which the consumer counts as lost.
const SILENCE: Duration = Duration::from_secs(11);
pub const MAX_PULL_BATCH: usize = 1000;
/// The server's redelivery timer starts when it sends; ours when the message
/// arrives, and a little later still, so that room freed by a lapsed message
/// is filled by its redelivery, not by the next message.
const LAPSE_MARGIN: Duration = Duration::from_millis(500);

struct Held {
    reply: Subject,
    lapses: Instant,
    /// Takes room: delivered and its ack clock still running.
    counted: bool,
}

/// Delivered, not yet acked messages by stream sequence (which is also the
/// ack id JS gets): their reply subjects and when their ack clocks run out.
/// A redelivery replaces the reply, so an ack of either delivery settles it.
/// Owned by the subscription task alone.
pub struct Registry {
    held: IdMap<u64, Held>,
    counted: usize,
    ack_wait: Duration,
    registered: u64,
}

/// A message whose clock ran out this long ago was most likely handled by
/// another member: forget it, so the registry does not grow with failures.
const FORGET_AFTER_ACK_WAITS: u32 = 10;
/// Every this many registrations the registry forgets such messages.
const PRUNE_EVERY: u64 = 1024;

impl Registry {
    pub fn new(ack_wait: Duration) -> Registry {
        Registry {
            held: IdMap::default(),
            counted: 0,
            ack_wait: ack_wait + LAPSE_MARGIN,
            registered: 0,
        }
    }

    pub fn register(&mut self, sequence: u64, reply: Subject, now: Instant) {
        self.registered += 1;
        if self.registered.is_multiple_of(PRUNE_EVERY) {
            self.prune(now);
        }
        let lapses = now + self.ack_wait;
        match self.held.entry(sequence) {
            Entry::Occupied(mut entry) => {
                let held = entry.get_mut();
                held.reply = reply;
                held.lapses = lapses;
                if !held.counted {
                    held.counted = true;
                    self.counted += 1;
                }
            }
            Entry::Vacant(entry) => {
                entry.insert(Held {
                    reply,
                    lapses,
                    counted: true,
                });
                self.counted += 1;
            }
        }
    }

    pub fn take(&mut self, ids: &[f64]) -> Vec<Subject> {
        ids.iter()
            .filter_map(|id| self.held.remove(&(*id as u64)))
            .map(|held| {
                if held.counted {
                    self.counted -= 1;
                }
                held.reply
            })
            .collect()
    }

    /// The replies of messages still being worked on, their ack clocks
    /// restarted (JetStream's "in progress").
    pub fn restart_clocks(&mut self, ids: &[f64], now: Instant) -> Vec<Subject> {
        let lapses = now + self.ack_wait;
        let mut replies = Vec::with_capacity(ids.len());
        for id in ids {
            if let Some(held) = self.held.get_mut(&(*id as u64)).filter(|held| held.counted) {
                held.lapses = lapses;
                replies.push(held.reply.clone());
            }
        }
        replies
    }

    pub fn take_all(&mut self) -> Vec<Subject> {
        self.counted = 0;
        self.held.drain().map(|(_, held)| held.reply).collect()
    }

    /// The oldest stream sequence delivered and not acked.
    pub fn floor(&self) -> Option<u64> {
        self.held.keys().copied().min()
    }

    /// Messages taking room.
    pub fn counted(&self) -> usize {
        self.counted
    }

    fn prune(&mut self, now: Instant) {
        let long_ago = self.ack_wait * FORGET_AFTER_ACK_WAITS;
        self.held
            .retain(|_, held| held.counted || held.lapses + long_ago > now);
    }

    /// Messages whose ack clock ran out are the server's again (it delivers
    /// them anew) and stop taking room. Returns when the next clock runs out.
    pub fn lapse(&mut self, now: Instant) -> Option<Instant> {
        self.prune(now);
        let mut next: Option<Instant> = None;
        for held in self.held.values_mut().filter(|held| held.counted) {
            if held.lapses <= now {
                held.counted = false;
                self.counted -= 1;
            } else {
                next = Some(next.map_or(held.lapses, |n| n.min(held.lapses)));
            }
        }
        next
    }
}

fn wanted(limit: usize, counted: usize, asked: usize) -> Option<usize> {
    let room = limit.saturating_sub(counted + asked);
    let step = limit.min(MAX_PULL_BATCH);
    if room == 0 || (asked > 0 && room < step.div_ceil(2)) {
        None
    } else {
        Some(room.min(MAX_PULL_BATCH))
    }
}

/// What arrived on the pull inbox.
pub enum Pulled {
    Message(async_nats::Message),
    /// A heartbeat or the end of a pull request: nothing to deliver.
    Nothing,
    /// The consumer is gone or unreachable: bind again.
    Lost(String),
}

/// The inbox pull requests are answered on, and how many messages are asked
/// for and not yet delivered.
pub struct Pulls {
    inbox: Subject,
    subscriber: Subscriber,
    asked: usize,
    heard: Instant,
}

impl Pulls {
    pub async fn open(client: &Client) -> Result<Pulls, async_nats::SubscribeError> {
        let inbox = Subject::from(client.new_inbox());
        let subscriber = client.subscribe(inbox.clone()).await?;
        Ok(Pulls {
            inbox,
            subscriber,
            asked: 0,
            heard: Instant::now(),
        })
    }

    /// How many to ask for now, given the room: nothing while enough is asked
    /// already, so requests stay few and large.
    pub fn wanted(&self, limit: usize, counted: usize) -> Option<usize> {
        wanted(limit, counted, self.asked)
    }

    pub async fn ask(
        &mut self,
        consumer: &consumer::PullConsumer,
        batch: usize,
    ) -> Result<(), String> {
        let config = BatchConfig {
            batch,
            expires: Some(PULL_EXPIRES),
            idle_heartbeat: PULL_HEARTBEAT,
            ..Default::default()
        };
        consumer
            .request_batch(config, self.inbox.clone())
            .await
            .map_err(|err| err.to_string())?;
        if self.asked == 0 {
            self.heard = Instant::now();
        }
        self.asked += batch;
        Ok(())
    }

    /// Requests made before a reconnect may be gone with the old connection.
    pub fn forget_requests(&mut self) {
        self.asked = 0;
    }

    /// When silence means the consumer is lost: only while a request waits.
    pub fn silent_after(&self) -> Option<Instant> {
        (self.asked > 0).then(|| self.heard + SILENCE)
    }

    pub async fn next(&mut self) -> Option<async_nats::Message> {
        self.subscriber.next().await
    }

    /// Already arrived, without waiting.
    pub fn try_next(&mut self) -> Option<async_nats::Message> {
        self.subscriber.next().now_or_never().flatten()
    }

    pub fn sort(&mut self, message: async_nats::Message) -> Pulled {
        self.heard = Instant::now();
        let status = message.status.unwrap_or(StatusCode::OK);
        if status == StatusCode::OK {
            self.asked = self.asked.saturating_sub(1);
            return Pulled::Message(message);
        }
        if status == StatusCode::IDLE_HEARTBEAT {
            return Pulled::Nothing;
        }
        let description = message.description.as_deref().unwrap_or("");
        let unfilled = message
            .headers
            .as_ref()
            .and_then(|headers| headers.get("Nats-Pending-Messages"))
            .and_then(|value| value.as_str().parse::<usize>().ok());
        match (status, unfilled) {
            // A request expired or ended (a leader change): what it did not
            // deliver is no longer asked for.
            (StatusCode::TIMEOUT | StatusCode::REQUEST_TERMINATED, Some(unfilled))
                if description != "Consumer Deleted" =>
            {
                self.asked = self.asked.saturating_sub(unfilled);
                Pulled::Nothing
            }
            (StatusCode::TIMEOUT, None) | (StatusCode::NOT_FOUND, _) => {
                self.asked = 0;
                Pulled::Nothing
            }
            _ => {
                self.asked = 0;
                Pulled::Lost(format!("pull answered {status}: {description}"))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn room_is_what_the_member_may_still_hold() {
        let mut registry = Registry::new(Duration::from_secs(1));
        let now = Instant::now();
        registry.register(5, Subject::from("r5"), now);
        registry.register(6, Subject::from("r6"), now);
        assert_eq!(registry.counted(), 2);
        // A redelivery of a held message takes no more room.
        registry.register(5, Subject::from("r5b"), now);
        assert_eq!(registry.counted(), 2);
        assert_eq!(registry.take(&[5.0]), vec![Subject::from("r5b")]);
        assert_eq!(registry.counted(), 1);
        // Its clock ran out: no longer counted, but still known by sequence.
        let later = now + Duration::from_secs(2);
        assert_eq!(registry.lapse(later), None);
        assert_eq!(registry.counted(), 0);
        assert_eq!(registry.floor(), Some(6));
        // An in-progress restart only touches counted messages.
        assert!(registry.restart_clocks(&[6.0], later).is_empty());
        registry.register(6, Subject::from("r6b"), later);
        assert_eq!(registry.restart_clocks(&[6.0], later).len(), 1);
        assert_eq!(registry.counted(), 1);
        // Lapsed long ago (another member handled it, most likely): forgotten.
        registry.register(7, Subject::from("r7"), later);
        let much_later = later + Duration::from_secs(60);
        registry.lapse(much_later);
        assert_eq!(registry.counted(), 0);
        assert_eq!(registry.floor(), Some(6));
        registry.lapse(much_later + Duration::from_secs(60));
        assert_eq!(registry.floor(), None);
    }

    #[test]
    fn asks_for_room_in_few_large_requests() {
        assert_eq!(wanted(1, 0, 0), Some(1));
        assert_eq!(wanted(1, 1, 0), None);
        assert_eq!(wanted(1, 0, 1), None);
        assert_eq!(wanted(100, 10, 0), Some(90));
        // Asked for enough already: wait until half a step is free.
        assert_eq!(wanted(100, 40, 20), None);
        assert_eq!(wanted(100, 30, 20), Some(50));
        assert_eq!(wanted(16384, 0, 0), Some(MAX_PULL_BATCH));
        assert_eq!(wanted(16384, 0, 15_000), Some(MAX_PULL_BATCH));
        assert_eq!(wanted(16384, 16_000, 300), None);
    }
}
