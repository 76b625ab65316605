//! Liveness by request/reply, which JetStream has no notion of: an owner
//! (a client ID, a queue-group member) answers on a subject, and a newcomer
//! asks there. An answer means the owner is alive; "no responders" means
//! nobody holds the subject; silence means the holder is cut off.

use std::time::Duration;

use async_nats::{Client, RequestErrorKind};
use bytes::Bytes;
use futures_util::StreamExt;
use tokio::task::JoinHandle;

use crate::error::{ErrorCode, JetstanError, Result};

/// Answers on a subject until dropped.
pub struct Presence {
    responder: Option<JoinHandle<()>>,
}

impl Presence {
    pub async fn claim(client: &Client, subject: String) -> Result<Presence> {
        let mut requests = client
            .subscribe(subject)
            .await
            .map_err(|err| JetstanError::new(ErrorCode::ConnectFailed, err.to_string()))?;
        let client = client.clone();
        let responder = tokio::spawn(async move {
            while let Some(request) = requests.next().await {
                if let Some(reply) = request.reply {
                    // A lost answer only makes the asker think we are gone.
                    let _ = client.publish(reply, Bytes::new()).await;
                }
            }
        });
        Ok(Presence {
            responder: Some(responder),
        })
    }

    /// Stops answering. Once this returns, the unsubscribe is queued on the
    /// connection ahead of anything sent after it, so a following `ask`
    /// cannot be answered by us.
    pub async fn leave(mut self) {
        if let Some(responder) = self.responder.take() {
            responder.abort();
            let _ = responder.await;
        }
    }
}

impl Drop for Presence {
    fn drop(&mut self) {
        if let Some(responder) = &self.responder {
            responder.abort();
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Answer {
    Alive,
    NobodyThere,
    Silent,
}

pub async fn ask(client: &Client, subject: &str, wait: Duration) -> Answer {
    match tokio::time::timeout(wait, client.request(subject.to_string(), Bytes::new())).await {
        Ok(Ok(_)) => Answer::Alive,
        Ok(Err(err)) if err.kind() == RequestErrorKind::NoResponders => Answer::NobodyThere,
        Ok(Err(_)) | Err(_) => Answer::Silent,
    }
}

/// Subject on which the live holder of a client ID answers.
pub fn client_subject(cluster_id: &str, client_id: &str) -> String {
    format!("_JSTAN.{cluster_id}.clients.{client_id}")
}

/// Subject on which every live member of a queue group answers.
pub fn member_subject(cluster_id: &str, consumer_name: &str) -> String {
    format!("_JSTAN.{cluster_id}.members.{consumer_name}")
}
