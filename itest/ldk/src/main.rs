//! lndmailbox-ldk: one LDK node per process, for the lndmailbox itest.
//!
//!     lndmailbox-ldk --name NAME --best-block HASH:HEIGHT [--seed HEX] [--log-level LEVEL]
//!
//! Commands arrive as JSON lines on stdin, events and answers leave as JSON lines on stdout,
//! LDK's log goes to stderr. End of stdin means the driver is gone: the node exits. A panic
//! aborts the process (Cargo.toml), so the driver sees it die.
//!
//! Events, `{"event": KIND, ...}`, pushed as they happen (events.rs, handler.rs, `background`):
//!
//! - `ready {node_id}`: once, first.
//! - `peer_connected {node_id}`, `peer_disconnected {node_id}`.
//! - `open_channel_request {counterparty, channel_type, accepted, error?}`: every inbound
//!   channel is accepted as zero-conf from a trusted peer.
//! - `channel_ready {channel_id, counterparty, short_channel_id, inbound_scid_alias,
//!   outbound_scid_alias}` (integers or null).
//! - `channel_closed {channel_id, counterparty, reason}`: `counterparty` is null when LDK does
//!   not know it; `reason` is LDK's `ClosureReason` as text.
//! - `held_htlc_available {context, has_reply_path, answered}` and `release_held_htlc
//!   {context}`: an async-payments message reached LDK's handler. `context` is
//!   `{"kind": "inbound_payment", "path_absolute_expiry": SECS}`, `{"kind":
//!   "outbound_payment", "payment_id": HEX}` or `{"kind": OTHER}`.
//!
//! Commands, `{"id": N, "cmd": NAME, ...params}`, each answered `{"id": N, "ok": true,
//! ...result}` or `{"id": N, "ok": false, "error": STR, "code"?: INT}` (commands.rs):
//!
//! - `connect {node_id, addr}`: dials over BOLT 8, answers once init is done (up to 10 s for
//!   TCP, then 20 s for init).
//! - `disconnect {node_id}`: answers once the peer is gone (up to 20 s).
//! - `peers {}` -> `{peers: [HEX]}`; `channels {}` -> `{channels: [{channel_id, counterparty,
//!   is_usable, is_channel_ready, short_channel_id, inbound_scid_alias, outbound_scid_alias,
//!   inbound_payment_scid, channel_type}]}`.
//! - `held_htlc_paths {expiry_secs, by_node_id?}` -> `{paths: [PATH], peers: [{node_id,
//!   short_channel_id}], by_node_id}`: a static invoice's held_htlc_available paths, built as
//!   LDK's flow builds them.
//! - `send_held_htlc_available {path: HEX}` -> `{payment_id, reply_paths: [PATH], sent:
//!   ["buffered" | "buffered_awaiting_connection NODE"]}`: as a payer's ChannelManager sends
//!   it, one message per (path, reply path) pair.
//! - `lsps5_set_webhook {lsp, app_name, url}` -> `{num_webhooks, max_webhooks, no_change}`,
//!   `lsps5_list_webhooks {lsp}` -> `{app_names, max_webhooks}`, `lsps5_remove_webhook {lsp,
//!   app_name}` -> `{}`: lightning-liquidity's LSPS5 client asks the LSP over LSPS0 and
//!   waits up to 30 s for its answer; a refusal's answer carries `code` (lsps5.rs).
//! - `lsps5_validate {lsp, timestamp, signature, body, fresh?}` -> `{method,
//!   rendered_timestamp}`: `LSPS5Validator` checks a received notification (lsps5.rs).
//! - `stop {}`: answers, then exits 0.
//!
//! A PATH is `{hex, introduction_node: {node_id} | {scid, direction}, hops, lsp_next_hop:
//! {scid} | {node_id} | null}`: `hex` is the BlindedMessagePath as LDK writes it, and
//! `lsp_next_hop` what the introduction node's (the LSP's) encrypted TLV names as the next
//! hop.

mod commands;
mod events;
mod handler;
mod liquidity;
mod lsps5;
mod node;
mod out;

use std::collections::HashSet;
use std::process::ExitCode;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use lightning::bitcoin::hex::FromHex;
use lightning::bitcoin::secp256k1::PublicKey;
use lightning::bitcoin::BlockHash;
use lightning::chain::BestBlock;
use lightning::events::EventsProvider;
use lightning::util::logger::Level;
use serde_json::json;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::task::JoinSet;

use crate::commands::Outcome;
use crate::node::Node;
use crate::out::emit;

const USAGE: &str =
    "usage: lndmailbox-ldk --name NAME --best-block HASH:HEIGHT [--seed HEX] [--log-level LEVEL]";

struct Args {
    name: String,
    best_block: BestBlock,
    seed: Option<[u8; 32]>,
    log_level: Level,
}

fn parse_args(mut argv: impl Iterator<Item = String>) -> Result<Args, String> {
    let (mut name, mut best_block, mut seed, mut log_level) = (None, None, None, Level::Debug);
    while let Some(flag) = argv.next() {
        let value = argv.next().ok_or_else(|| format!("{flag} needs a value"))?;
        match flag.as_str() {
            "--name" => name = Some(value),
            "--best-block" => {
                let (hash, height) = value.split_once(':').ok_or("--best-block is HASH:HEIGHT")?;
                best_block = Some(BestBlock {
                    block_hash: BlockHash::from_str(hash)
                        .map_err(|e| format!("bad block hash: {e}"))?,
                    height: height.parse().map_err(|e| format!("bad height: {e}"))?,
                });
            },
            "--seed" => {
                seed = Some(<[u8; 32]>::from_hex(&value).map_err(|e| format!("bad seed: {e}"))?)
            },
            "--log-level" => {
                log_level = match value.to_ascii_lowercase().as_str() {
                    "gossip" => Level::Gossip,
                    "trace" => Level::Trace,
                    "debug" => Level::Debug,
                    "info" => Level::Info,
                    "warn" => Level::Warn,
                    "error" => Level::Error,
                    _ => return Err(format!("bad log level {value:?}")),
                }
            },
            _ => return Err(format!("unknown flag {flag}")),
        }
    }
    Ok(Args {
        name: name.ok_or("--name is required")?,
        best_block: best_block.ok_or("--best-block is required")?,
        seed,
        log_level,
    })
}

fn random_seed() -> std::io::Result<[u8; 32]> {
    use std::io::Read;
    let mut seed = [0u8; 32];
    std::fs::File::open("/dev/urandom")?.read_exact(&mut seed)?;
    Ok(seed)
}

fn main() -> ExitCode {
    let args = match parse_args(std::env::args().skip(1)) {
        Ok(args) => args,
        Err(e) => {
            eprintln!("lndmailbox-ldk: {e}\n{USAGE}");
            return ExitCode::from(2);
        },
    };
    let seed = match args.seed.map_or_else(random_seed, Ok) {
        Ok(seed) => seed,
        Err(e) => {
            eprintln!("lndmailbox-ldk: no random seed: {e}");
            return ExitCode::FAILURE;
        },
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("lndmailbox-ldk: no tokio runtime: {e}");
            return ExitCode::FAILURE;
        },
    };
    runtime.block_on(run(Arc::new(Node::new(&args.name, seed, args.best_block, args.log_level))));
    ExitCode::SUCCESS
}

async fn run(node: Arc<Node>) {
    tokio::spawn(background(node.clone()));
    emit(json!({"event": "ready", "node_id": node.node_id.to_string()}));

    let mut lines = BufReader::new(tokio::io::stdin()).lines();
    let mut running = JoinSet::new();
    while let Ok(Some(line)) = lines.next_line().await {
        if line.trim().is_empty() {
            continue;
        }
        // Each command runs on its own, so a slow `connect` holds up nothing else.
        let node = node.clone();
        running.spawn(async move {
            match commands::run(&node, &line).await {
                Outcome::Answer(answer) => emit(answer),
                Outcome::Stop(answer) => {
                    node.peers.disconnect_all_peers();
                    emit(answer);
                    std::process::exit(0);
                },
            }
        });
    }
    // Commands already read still get their answers.
    running.join_all().await;
    node.peers.disconnect_all_peers();
}

/// What lightning-background-processor would do, reduced to what this node needs: handle
/// events, flush queued messages to peers, tick the timers, and report peers coming and going.
async fn background(node: Arc<Node>) {
    let mut tick = tokio::time::interval(Duration::from_millis(20));
    let mut ticks: u64 = 0;
    let mut known: HashSet<PublicKey> = HashSet::new();
    let handler = |event| events::handle(&node, event);
    loop {
        tick.tick().await;
        ticks += 1;
        node.channel_manager.process_pending_events(&handler);
        node.chain_monitor.process_pending_events(&handler);
        node.messenger.process_pending_events(&handler);
        for event in node.liquidity.get_and_clear_pending_events() {
            liquidity::handle(&node.lsps5_answers, event);
        }
        node.peers.process_events();
        if ticks % 500 == 0 {
            node.peers.timer_tick_occurred(); // every 10 s
        }
        if ticks % 3000 == 0 {
            node.channel_manager.timer_tick_occurred(); // every minute
        }

        let now: HashSet<PublicKey> =
            node.peers.list_peers().into_iter().map(|p| p.counterparty_node_id).collect();
        for gone in known.difference(&now) {
            emit(json!({"event": "peer_disconnected", "node_id": gone.to_string()}));
        }
        for new in now.difference(&known) {
            emit(json!({"event": "peer_connected", "node_id": new.to_string()}));
        }
        known = now;
    }
}
