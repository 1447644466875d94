//! The LDK objects one node is made of, built and wired together once at start.
//!
//! Nothing here touches a chain: the funding transactions come from lnd, the channels are
//! zero-conf, and the node is thrown away after the test, so monitors live in memory and
//! transactions are only logged.

use std::sync::{Arc, RwLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use lightning::bitcoin::secp256k1::PublicKey;
use lightning::bitcoin::{Network, Transaction};
use lightning::chain::chaininterface::{BroadcasterInterface, ConfirmationTarget, FeeEstimator};
use lightning::chain::chainmonitor::{ChainMonitor, Persist};
use lightning::chain::channelmonitor::{ChannelMonitor, ChannelMonitorUpdate};
use lightning::chain::{BestBlock, ChannelMonitorUpdateStatus, Filter};
use lightning::ln::channelmanager::{ChainParameters, ChannelManager};
use lightning::ln::peer_handler::{IgnoringMessageHandler, MessageHandler, PeerManager};
use lightning::onion_message::messenger::{DefaultMessageRouter, OnionMessenger};
use lightning::routing::gossip::NetworkGraph;
use lightning::routing::router::DefaultRouter;
use lightning::routing::scoring::{
    ProbabilisticScorer, ProbabilisticScoringDecayParameters, ProbabilisticScoringFeeParameters,
};
use lightning::sign::{EntropySource, InMemorySigner, KeysManager, NodeSigner};
use lightning::util::config::{ChannelHandshakeConfig, UserConfig};
use lightning::util::logger::{Level, Logger, Record};
use lightning::util::persist::MonitorName;
use lightning_net_tokio::SocketDescriptor;

use lightning_liquidity::lsps5::validator::LSPS5Validator;

use crate::handler::ReportingAsyncPayments;
use crate::liquidity::{self, Liquidity, Lsps5Answers};

pub type Graph = NetworkGraph<Arc<StderrLogger>>;
type Scorer = ProbabilisticScorer<Arc<Graph>, Arc<StderrLogger>>;
type Router = DefaultRouter<
    Arc<Graph>,
    Arc<StderrLogger>,
    Arc<KeysManager>,
    Arc<RwLock<Scorer>>,
    ProbabilisticScoringFeeParameters,
    Scorer,
>;
pub type MsgRouter = DefaultMessageRouter<Arc<Graph>, Arc<StderrLogger>, Arc<KeysManager>>;
pub type ChainMon = ChainMonitor<
    InMemorySigner,
    Arc<dyn Filter + Send + Sync>,
    Arc<LogBroadcaster>,
    Arc<FixedFees>,
    Arc<StderrLogger>,
    Arc<MemoryPersister>,
    Arc<KeysManager>,
>;
pub type ChanMan = ChannelManager<
    Arc<ChainMon>,
    Arc<LogBroadcaster>,
    Arc<KeysManager>,
    Arc<KeysManager>,
    Arc<KeysManager>,
    Arc<FixedFees>,
    Arc<Router>,
    Arc<MsgRouter>,
    Arc<StderrLogger>,
>;
pub type Messenger = OnionMessenger<
    Arc<KeysManager>,
    Arc<KeysManager>,
    Arc<StderrLogger>,
    Arc<ChanMan>,
    Arc<MsgRouter>,
    Arc<ChanMan>,
    Arc<ReportingAsyncPayments>,
    IgnoringMessageHandler,
    IgnoringMessageHandler,
>;
pub type Peers = PeerManager<
    SocketDescriptor,
    Arc<ChanMan>,
    IgnoringMessageHandler,
    Arc<Messenger>,
    Arc<StderrLogger>,
    Arc<Liquidity>,
    Arc<KeysManager>,
    Arc<ChainMon>,
>;

pub struct Node {
    pub node_id: PublicKey,
    pub keys: Arc<KeysManager>,
    pub graph: Arc<Graph>,
    pub message_router: Arc<MsgRouter>,
    pub chain_monitor: Arc<ChainMon>,
    pub channel_manager: Arc<ChanMan>,
    pub messenger: Arc<Messenger>,
    pub liquidity: Arc<Liquidity>,
    pub lsps5_answers: Lsps5Answers,
    /// One validator for the node's life, as a wallet's notification proxy keeps one: it
    /// remembers the last signatures it accepted and rejects their replays.
    pub lsps5_validator: LSPS5Validator,
    pub peers: Arc<Peers>,
}

impl Node {
    pub fn new(name: &str, seed: [u8; 32], best_block: BestBlock, log_level: Level) -> Node {
        let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or(Duration::ZERO);
        let logger = Arc::new(StderrLogger { name: name.to_owned(), min_level: log_level });
        let keys = Arc::new(KeysManager::new(&seed, now.as_secs(), now.subsec_nanos(), true));
        let fees = Arc::new(FixedFees);
        let broadcaster = Arc::new(LogBroadcaster);
        let graph = Arc::new(NetworkGraph::new(Network::Regtest, logger.clone()));
        let scorer = Arc::new(RwLock::new(ProbabilisticScorer::new(
            ProbabilisticScoringDecayParameters::default(),
            graph.clone(),
            logger.clone(),
        )));
        let router = Arc::new(DefaultRouter::new(
            graph.clone(),
            logger.clone(),
            keys.clone(),
            scorer,
            ProbabilisticScoringFeeParameters::default(),
        ));
        let message_router = Arc::new(DefaultMessageRouter::new(graph.clone(), keys.clone()));
        let chain_monitor = Arc::new(ChainMonitor::new(
            None,
            broadcaster.clone(),
            logger.clone(),
            fees.clone(),
            Arc::new(MemoryPersister),
            keys.clone(),
            keys.get_peer_storage_key(),
        ));

        let config = UserConfig {
            // Every inbound channel surfaces as Event::OpenChannelRequest, where the LSP's
            // zero-conf channel is accepted as from a trusted peer.
            manually_accept_inbound_channels: true,
            channel_handshake_config: ChannelHandshakeConfig {
                negotiate_anchors_zero_fee_htlc_tx: true,
                ..Default::default()
            },
            ..Default::default()
        };
        let channel_manager = Arc::new(ChannelManager::new(
            fees,
            chain_monitor.clone(),
            broadcaster.clone(),
            router,
            message_router.clone(),
            logger.clone(),
            keys.clone(),
            keys.clone(),
            keys.clone(),
            config,
            ChainParameters { network: Network::Regtest, best_block },
            now.as_secs() as u32,
        ));
        let async_payments = Arc::new(ReportingAsyncPayments::new(channel_manager.clone()));
        let messenger = Arc::new(OnionMessenger::new(
            keys.clone(),
            keys.clone(),
            logger.clone(),
            channel_manager.clone(),
            message_router.clone(),
            channel_manager.clone(),
            async_payments,
            IgnoringMessageHandler {},
            IgnoringMessageHandler {},
        ));
        // The in-memory store cannot fail, so neither can the construction.
        let liquidity = Arc::new(
            liquidity::client(&keys, &channel_manager, &broadcaster)
                .expect("LiquidityManager over an in-memory store"),
        );
        let peers = Arc::new(PeerManager::new(
            MessageHandler {
                chan_handler: channel_manager.clone(),
                route_handler: IgnoringMessageHandler {},
                onion_message_handler: messenger.clone(),
                custom_message_handler: liquidity.clone(),
                send_only_message_handler: chain_monitor.clone(),
            },
            now.as_secs() as u32,
            &keys.get_secure_random_bytes(),
            logger,
            keys.clone(),
        ));
        Node {
            node_id: channel_manager.get_our_node_id(),
            keys,
            graph,
            message_router,
            chain_monitor,
            channel_manager,
            messenger,
            liquidity,
            lsps5_answers: Lsps5Answers::default(),
            lsps5_validator: LSPS5Validator::new(),
            peers,
        }
    }
}

/// LDK's log on stderr, one line per record; the driver sends it to a file.
pub struct StderrLogger {
    name: String,
    min_level: Level,
}

impl Logger for StderrLogger {
    fn log(&self, record: Record) {
        if record.level < self.min_level {
            return;
        }
        let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or(Duration::ZERO);
        let peer = record.peer_id.map(|p| format!(" peer={p}")).unwrap_or_default();
        eprintln!(
            "{}.{:03} {} {:<5} [{}:{}]{} {}",
            now.as_secs(),
            now.subsec_millis(),
            self.name,
            record.level,
            record.module_path,
            record.line,
            peer,
            record.args
        );
    }
}

/// 253 sat/kW (1 sat/vB) for every target: regtest has no fee market, and lnd's regtest
/// feerates are above it, so LDK's lower-bound checks on the LSP's updates pass.
pub struct FixedFees;

impl FeeEstimator for FixedFees {
    fn get_est_sat_per_1000_weight(&self, _target: ConfirmationTarget) -> u32 {
        253
    }
}

/// The LSP funds every channel, so LDK has nothing to broadcast but a force-close.
pub struct LogBroadcaster;

impl BroadcasterInterface for LogBroadcaster {
    fn broadcast_transactions(&self, txs: &[&Transaction]) {
        for tx in txs {
            eprintln!("lndmailbox-ldk: not broadcasting transaction {}", tx.compute_txid());
        }
    }
}

/// Monitors stay in ChainMonitor's memory: a node lives only as long as its test.
pub struct MemoryPersister;

impl Persist<InMemorySigner> for MemoryPersister {
    fn persist_new_channel(
        &self, _name: MonitorName, _monitor: &ChannelMonitor<InMemorySigner>,
    ) -> ChannelMonitorUpdateStatus {
        ChannelMonitorUpdateStatus::Completed
    }

    fn update_persisted_channel(
        &self, _name: MonitorName, _update: Option<&ChannelMonitorUpdate>,
        _monitor: &ChannelMonitor<InMemorySigner>,
    ) -> ChannelMonitorUpdateStatus {
        ChannelMonitorUpdateStatus::Completed
    }

    fn archive_persisted_channel(&self, _name: MonitorName) {}
}
