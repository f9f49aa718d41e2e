//! The LISTEN side of wake-ups: one connection per store while workers subscribe, reconnected
//! with backoff; after a (re)connect every queue is woken, since notifications sent meanwhile
//! are lost.

use std::time::Duration;

use sqlx::PgPool;
use sqlx::postgres::PgListener;
use tokio::sync::broadcast;

use super::CHANNEL;
use crate::store::WAKE_ALL;

pub(super) fn spawn_listener(pool: PgPool, tx: broadcast::Sender<String>) {
    tokio::spawn(async move {
        let mut backoff = Duration::from_millis(50);
        loop {
            let listener = async {
                let mut l = PgListener::connect_with(&pool).await?;
                l.listen(CHANNEL).await?;
                Ok::<_, sqlx::Error>(l)
            }
            .await;
            let mut l = match listener {
                Ok(l) => l,
                Err(e) => {
                    tracing::warn!(error = %e, "windlass-jobs: LISTEN failed, retrying");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(5));
                    continue;
                }
            };
            backoff = Duration::from_millis(50);
            // Anything sent while we were not listening is lost: make everyone look.
            let _ = tx.send(WAKE_ALL.to_owned());
            loop {
                match l.try_recv().await {
                    Ok(Some(n)) => {
                        if tx.send(n.payload().to_owned()).is_err() {
                            return; // no subscriber left
                        }
                    }
                    Ok(None) => {
                        // Connection lost; PgListener reconnects on the next call.
                        if tx.send(WAKE_ALL.to_owned()).is_err() {
                            return;
                        }
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "windlass-jobs: LISTEN connection failed");
                        break;
                    }
                }
            }
        }
    });
}
