//! lightning-liquidity's LiquidityManager as a phone wallet runs it: an LSPS5 client only.
//!
//! It is the PeerManager's custom message handler, so LSPS0 messages (type 37913) from the
//! LSP reach it and its requests leave through the PeerManager's `process_events`. As a
//! client it sets no init or node feature bit (only a service advertises 729). Its answers
//! arrive as LiquidityEvents, which the background loop hands to [`Lsps5Answers`], where
//! the command that sent the request picks up the one carrying its request id.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use lightning::chain::Filter;
use lightning::io;
use lightning::sign::KeysManager;
use lightning::util::persist::KVStoreSync;
use lightning_liquidity::events::LiquidityEvent;
use lightning_liquidity::lsps0::ser::LSPSRequestId;
use lightning_liquidity::lsps5::client::LSPS5ClientConfig;
use lightning_liquidity::lsps5::event::LSPS5ClientEvent;
use lightning_liquidity::utils::time::DefaultTimeProvider;
use lightning_liquidity::{LiquidityClientConfig, LiquidityManagerSync};

use crate::node::{ChanMan, LogBroadcaster};

pub type Liquidity = LiquidityManagerSync<
    Arc<KeysManager>,
    Arc<KeysManager>,
    Arc<ChanMan>,
    Arc<dyn Filter + Send + Sync>,
    Arc<MemoryStore>,
    DefaultTimeProvider,
    Arc<LogBroadcaster>,
>;

/// The LiquidityManager with the LSPS5 client and nothing else (no service: the wallet
/// serves no one).
pub fn client(
    keys: &Arc<KeysManager>, channel_manager: &Arc<ChanMan>, broadcaster: &Arc<LogBroadcaster>,
) -> Result<Liquidity, io::Error> {
    let client_config = LiquidityClientConfig {
        lsps1_client_config: None,
        lsps2_client_config: None,
        lsps5_client_config: Some(LSPS5ClientConfig::default()),
    };
    LiquidityManagerSync::new(
        keys.clone(),
        keys.clone(),
        channel_manager.clone(),
        None::<Arc<dyn Filter + Send + Sync>>,
        None,
        Arc::new(MemoryStore::default()),
        broadcaster.clone(),
        None,
        Some(client_config),
    )
}

/// The LSPS5 client's answers by request id, until the command waiting for each takes it.
#[derive(Default)]
pub struct Lsps5Answers(Mutex<HashMap<LSPSRequestId, LSPS5ClientEvent>>);

impl Lsps5Answers {
    pub fn take(&self, request_id: &LSPSRequestId) -> Option<LSPS5ClientEvent> {
        self.0.lock().ok()?.remove(request_id)
    }

    fn put(&self, request_id: LSPSRequestId, event: LSPS5ClientEvent) {
        if let Ok(mut answers) = self.0.lock() {
            answers.insert(request_id, event);
        }
    }
}

/// One LiquidityEvent from the background loop: an LSPS5 client answer is kept for its
/// command; anything else (no other protocol is configured) is only logged.
pub fn handle(answers: &Lsps5Answers, event: LiquidityEvent) {
    let LiquidityEvent::LSPS5Client(event) = event else {
        eprintln!("lndmailbox-ldk: unhandled liquidity event {event:?}");
        return;
    };
    let request_id = match &event {
        LSPS5ClientEvent::WebhookRegistered { request_id, .. }
        | LSPS5ClientEvent::WebhookRegistrationFailed { request_id, .. }
        | LSPS5ClientEvent::WebhooksListed { request_id, .. }
        | LSPS5ClientEvent::WebhookRemoved { request_id, .. }
        | LSPS5ClientEvent::WebhookRemovalFailed { request_id, .. } => request_id.clone(),
    };
    eprintln!("lndmailbox-ldk: LSPS5 answer {event:?}");
    answers.put(request_id, event);
}

/// The LiquidityManager's store, in memory like the monitors: the node lives only as long
/// as its test. (A client persists little anyway: its queued events.)
#[derive(Default)]
pub struct MemoryStore(Mutex<HashMap<(String, String, String), Vec<u8>>>);

fn poisoned() -> io::Error {
    io::Error::new(io::ErrorKind::Other, "memory store poisoned")
}

impl KVStoreSync for MemoryStore {
    fn read(
        &self, primary_namespace: &str, secondary_namespace: &str, key: &str,
    ) -> Result<Vec<u8>, io::Error> {
        let map = self.0.lock().map_err(|_| poisoned())?;
        map.get(&(primary_namespace.into(), secondary_namespace.into(), key.into()))
            .cloned()
            .ok_or_else(|| io::Error::new(io::ErrorKind::NotFound, key.to_owned()))
    }

    fn write(
        &self, primary_namespace: &str, secondary_namespace: &str, key: &str, buf: Vec<u8>,
    ) -> Result<(), io::Error> {
        let mut map = self.0.lock().map_err(|_| poisoned())?;
        map.insert((primary_namespace.into(), secondary_namespace.into(), key.into()), buf);
        Ok(())
    }

    fn remove(
        &self, primary_namespace: &str, secondary_namespace: &str, key: &str, _lazy: bool,
    ) -> Result<(), io::Error> {
        let mut map = self.0.lock().map_err(|_| poisoned())?;
        map.remove(&(primary_namespace.into(), secondary_namespace.into(), key.into()));
        Ok(())
    }

    fn list(
        &self, primary_namespace: &str, secondary_namespace: &str,
    ) -> Result<Vec<String>, io::Error> {
        let map = self.0.lock().map_err(|_| poisoned())?;
        Ok(map
            .keys()
            .filter(|(p, s, _)| p == primary_namespace && s == secondary_namespace)
            .map(|(_, _, k)| k.clone())
            .collect())
    }
}
