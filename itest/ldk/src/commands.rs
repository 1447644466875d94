//! The commands on stdin: `{"id": N, "cmd": NAME, ...params}`, each answered with
//! `{"id": N, "ok": true, ...result}` or `{"id": N, "ok": false, "error": STR, "code"?: INT}`
//! (`code` when the error has one: an LSPS error's, lsps5.rs).
//!
//! A command's bytes come from the driver, never from a peer, but a bad one still gets an
//! error answer rather than a crash.

use std::net::SocketAddr;
use std::str::FromStr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use lightning::bitcoin::hex::{DisplayHex, FromHex};
use lightning::bitcoin::secp256k1::{self, PublicKey, Secp256k1};
use lightning::blinded_path::message::{
    AsyncPaymentsContext, BlindedMessagePath, MessageContext, MessageForwardNode,
};
use lightning::blinded_path::{Direction, IntroductionNode};
use lightning::ln::channelmanager::PaymentId;
use lightning::onion_message::async_payments::{AsyncPaymentsMessage, HeldHtlcAvailable};
use lightning::onion_message::messenger::{
    Destination, MessageRouter, MessageSendInstructions, NodeIdMessageRouter, OnionMessagePath,
    SendSuccess,
};
use lightning::sign::{EntropySource, NodeSigner, ReceiveAuthKey};
use lightning::util::ser::{Readable, Writeable};
use serde_json::{json, Map, Value};

use crate::lsps5;
use crate::node::Node;
use crate::out::channel_json;

/// How long `connect` and `disconnect` wait for the peer to come or go.
const PEER_TIMEOUT: Duration = Duration::from_secs(20);
pub const POLL: Duration = Duration::from_millis(20);

pub enum Outcome {
    Answer(Value),
    /// Answer, then exit 0.
    Stop(Value),
}

/// Runs one command line and returns its answer.
pub async fn run(node: &Arc<Node>, line: &str) -> Outcome {
    let request: Map<String, Value> = match serde_json::from_str(line) {
        Ok(Value::Object(map)) => map,
        Ok(_) => {
            return Outcome::Answer(failure(
                Value::Null,
                "a command is a JSON object".to_owned().into(),
            ))
        },
        Err(e) => return Outcome::Answer(failure(Value::Null, format!("not JSON: {e}").into())),
    };
    let id = request.get("id").cloned().unwrap_or(Value::Null);
    let cmd = request.get("cmd").and_then(Value::as_str).unwrap_or_default();
    let result = match cmd {
        "connect" => connect(node, &request).await.map_err(Failure::from),
        "disconnect" => disconnect(node, &request).await.map_err(Failure::from),
        "peers" => Ok(peers(node)),
        "channels" => Ok(channels(node)),
        "held_htlc_paths" => held_htlc_paths(node, &request).map_err(Failure::from),
        "send_held_htlc_available" => {
            send_held_htlc_available(node, &request).map_err(Failure::from)
        },
        "lsps5_set_webhook" => lsps5::set_webhook(node, &request).await,
        "lsps5_list_webhooks" => lsps5::list_webhooks(node, &request).await,
        "lsps5_remove_webhook" => lsps5::remove_webhook(node, &request).await,
        "lsps5_validate" => lsps5::validate(node, &request),
        "stop" => return Outcome::Stop(success(id, Map::new())),
        other => Err(format!("unknown command {other:?}").into()),
    };
    Outcome::Answer(match result {
        Ok(fields) => success(id, fields),
        Err(error) => failure(id, error),
    })
}

fn success(id: Value, mut fields: Map<String, Value>) -> Value {
    fields.insert("id".into(), id);
    fields.insert("ok".into(), Value::Bool(true));
    Value::Object(fields)
}

/// A command's error: what went wrong, and the error code when the error has one.
pub struct Failure {
    pub error: String,
    pub code: Option<i32>,
}

impl From<String> for Failure {
    fn from(error: String) -> Failure {
        Failure { error, code: None }
    }
}

fn failure(id: Value, failure: Failure) -> Value {
    let mut answer = json!({"id": id, "ok": false, "error": failure.error});
    if let Some(code) = failure.code {
        answer["code"] = json!(code);
    }
    answer
}

pub fn object(value: Value) -> Map<String, Value> {
    match value {
        Value::Object(map) => map,
        _ => Map::new(),
    }
}

pub fn string_param<'a>(request: &'a Map<String, Value>, name: &str) -> Result<&'a str, String> {
    request.get(name).and_then(Value::as_str).ok_or_else(|| format!("missing string {name:?}"))
}

fn node_id_param(request: &Map<String, Value>) -> Result<PublicKey, String> {
    let hex = string_param(request, "node_id")?;
    PublicKey::from_str(hex).map_err(|e| format!("bad node_id {hex:?}: {e}"))
}

/// Waits until `done()` holds, up to [`PEER_TIMEOUT`].
async fn poll_until(what: &str, done: impl Fn() -> bool) -> Result<(), String> {
    let deadline = tokio::time::Instant::now() + PEER_TIMEOUT;
    while !done() {
        if tokio::time::Instant::now() > deadline {
            return Err(format!("timed out after {}s waiting for {what}", PEER_TIMEOUT.as_secs()));
        }
        tokio::time::sleep(POLL).await;
    }
    Ok(())
}

async fn connect(
    node: &Arc<Node>, request: &Map<String, Value>,
) -> Result<Map<String, Value>, String> {
    let node_id = node_id_param(request)?;
    let addr_text = string_param(request, "addr")?;
    let addr =
        SocketAddr::from_str(addr_text).map_err(|e| format!("bad addr {addr_text:?}: {e}"))?;
    if node.peers.peer_by_node_id(&node_id).is_none() {
        let Some(closed) =
            lightning_net_tokio::connect_outbound(node.peers.clone(), node_id, addr).await
        else {
            return Err(format!("could not reach {addr}"));
        };
        // The returned future ends when the connection does; keep driving it in the background.
        let connection = tokio::spawn(closed);
        poll_until("the peer's init", || {
            node.peers.peer_by_node_id(&node_id).is_some() || connection.is_finished()
        })
        .await?;
        if node.peers.peer_by_node_id(&node_id).is_none() {
            return Err(format!("{node_id} closed the connection before init"));
        }
    }
    Ok(Map::new())
}

async fn disconnect(
    node: &Arc<Node>, request: &Map<String, Value>,
) -> Result<Map<String, Value>, String> {
    let node_id = node_id_param(request)?;
    node.peers.disconnect_by_node_id(node_id);
    poll_until("the peer to go", || node.peers.peer_by_node_id(&node_id).is_none()).await?;
    Ok(Map::new())
}

fn peers(node: &Node) -> Map<String, Value> {
    let ids: Vec<String> =
        node.peers.list_peers().iter().map(|p| p.counterparty_node_id.to_string()).collect();
    object(json!({"peers": ids}))
}

fn channels(node: &Node) -> Map<String, Value> {
    let channels: Vec<Value> =
        node.channel_manager.list_channels().iter().map(channel_json).collect();
    object(json!({"channels": channels}))
}

/// A MessageRouter that builds nothing and only keeps the peers it is handed: given to
/// `ChannelManager::create_offer_builder_using_router`, it reveals the private
/// `get_peers_for_blinded_path()`, the peers (and SCIDs) LDK's flow builds every path over.
#[derive(Default)]
struct PeerCapture(Mutex<Option<Vec<MessageForwardNode>>>);

impl MessageRouter for PeerCapture {
    fn find_path(
        &self, _sender: PublicKey, _peers: Vec<PublicKey>, _destination: Destination,
    ) -> Result<OnionMessagePath, ()> {
        Err(())
    }

    fn create_blinded_paths<T: secp256k1::Signing + secp256k1::Verification>(
        &self, _recipient: PublicKey, _receive_key: ReceiveAuthKey, _context: MessageContext,
        peers: Vec<MessageForwardNode>, _secp_ctx: &Secp256k1<T>,
    ) -> Result<Vec<BlindedMessagePath>, ()> {
        if let Ok(mut captured) = self.0.lock() {
            *captured = Some(peers);
        }
        Err(())
    }
}

/// `ChannelManager::get_peers_for_blinded_path()`: connected peers that support onion
/// messages, each with the inbound SCID (alias) of its oldest usable channel, if any.
fn peers_for_blinded_path(node: &Node) -> Result<Vec<MessageForwardNode>, String> {
    let capture = PeerCapture::default();
    // The offer itself fails (the capture builds no path); only the peers matter.
    let _ = node.channel_manager.create_offer_builder_using_router(&capture);
    let peers = capture
        .0
        .lock()
        .map_err(|_| "peer capture poisoned".to_string())?
        .take()
        .ok_or("LDK did not ask for blinded paths")?;
    Ok(peers)
}

/// Blinded paths to us over `peers` through the node's DefaultMessageRouter, as the flow's
/// `create_blinded_paths` builds them (compact: an LSP hop names us by SCID when it has one).
fn blinded_paths_to_us(
    node: &Node, context: MessageContext, peers: &[MessageForwardNode],
) -> Result<Vec<BlindedMessagePath>, String> {
    node.message_router
        .create_blinded_paths(
            node.node_id,
            node.keys.get_receive_auth_key(),
            context,
            peers.to_vec(),
            &Secp256k1::new(),
        )
        .ok()
        .filter(|paths| !paths.is_empty())
        .ok_or_else(|| no_path(peers))
}

fn no_path(peers: &[MessageForwardNode]) -> String {
    format!(
        "no blinded path: {} peers for blinded paths (connected, with onion messages)",
        peers.len()
    )
}

/// A blinded path to us, for the answers: its introduction node, its length and what the
/// introduction node's (the LSP's) encrypted TLV names as the next hop: the SCID the router
/// was handed for that peer when `compact`, else our node id.
fn describe_path(
    node: &Node, path: &BlindedMessagePath, peers: &[MessageForwardNode], compact: bool,
) -> Map<String, Value> {
    let introduction_node = match path.introduction_node() {
        IntroductionNode::NodeId(id) => json!({"node_id": id.to_string()}),
        IntroductionNode::DirectedShortChannelId(direction, scid) => json!({
            "scid": scid,
            "direction": match direction { Direction::NodeOne => 0, Direction::NodeTwo => 1 },
        }),
    };
    let lsp = match path.introduction_node() {
        IntroductionNode::NodeId(id) => peers.iter().find(|p| p.node_id == *id),
        IntroductionNode::DirectedShortChannelId(..) => None,
    };
    let lsp_next_hop = match lsp {
        Some(MessageForwardNode { short_channel_id: Some(scid), .. }) if compact => {
            json!({"scid": scid})
        },
        Some(_) => json!({"node_id": node.node_id.to_string()}),
        None => Value::Null,
    };
    object(json!({
        "hex": path.encode().to_lower_hex_string(),
        "introduction_node": introduction_node,
        "hops": path.blinded_hops().len(),
        "lsp_next_hop": lsp_next_hop,
    }))
}

/// The held_htlc_available paths of a static invoice, as LDK's flow builds them: the
/// InboundPayment context over the ChannelManager's peers for blinded paths, through the
/// node's DefaultMessageRouter (compact: an LSP hop names the next hop by SCID).
///
/// Two deliberate differences: `expiry_secs` is the context's expiry from now (the flow adds
/// a two-hour buffer to the invoice's relative expiry), so a test can build a path that
/// expires soon; and `by_node_id: true`, a debug option and NOT what LDK does, builds through
/// NodeIdMessageRouter instead, whose LSP hop names the next hop by node id.
fn held_htlc_paths(
    node: &Node, request: &Map<String, Value>,
) -> Result<Map<String, Value>, String> {
    let expiry_secs = request
        .get("expiry_secs")
        .and_then(Value::as_u64)
        .ok_or("missing integer \"expiry_secs\"")?;
    let by_node_id = request.get("by_node_id").and_then(Value::as_bool).unwrap_or(false);
    let peers = peers_for_blinded_path(node)?;

    let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or(Duration::ZERO);
    let context = MessageContext::AsyncPayments(AsyncPaymentsContext::InboundPayment {
        path_absolute_expiry: now + Duration::from_secs(expiry_secs),
    });
    let paths = if by_node_id {
        NodeIdMessageRouter::new(node.graph.clone(), node.keys.clone())
            .create_blinded_paths(
                node.node_id,
                node.keys.get_receive_auth_key(),
                context,
                peers.clone(),
                &Secp256k1::new(),
            )
            .map_err(|()| no_path(&peers))?
    } else {
        blinded_paths_to_us(node, context, &peers)?
    };

    let described: Vec<Value> = paths
        .iter()
        .map(|path| Value::Object(describe_path(node, path, &peers, !by_node_id)))
        .collect();
    let peers_json: Vec<Value> = peers
        .iter()
        .map(|p| json!({"node_id": p.node_id.to_string(), "short_channel_id": p.short_channel_id}))
        .collect();
    Ok(object(json!({"paths": described, "peers": peers_json, "by_node_id": by_node_id})))
}

/// How many messages the flow sends for one request, over its (path, reply path) pairs
/// (`offers/flow.rs` `OFFERS_MESSAGE_REQUEST_LIMIT`).
const MESSAGE_REQUEST_LIMIT: usize = 10;

/// Sends held_htlc_available over a blinded path the way a payer's ChannelManager does for a
/// static invoice when it cannot hold the HTLC at its LSP (`ChannelManager` ->
/// `OffersMessageFlow::enqueue_held_htlc_available` with `HeldHtlcReplyPath::ToUs`): reply
/// paths built by the flow's `create_blinded_paths` with context OutboundPayment (a fresh
/// payment id) over `get_peers_for_blinded_path()`, so they are compact and the LSP names
/// us by our channel's SCID alias; then one message per (path, reply path) pair with
/// `WithSpecifiedReplyPath` (`enqueue_onion_message_with_reply_paths`). The answer lists the
/// reply paths (described like `held_htlc_paths`' paths) and how each message went.
fn send_held_htlc_available(
    node: &Node, request: &Map<String, Value>,
) -> Result<Map<String, Value>, String> {
    let hex = string_param(request, "path")?;
    let bytes = Vec::<u8>::from_hex(hex).map_err(|e| format!("path is not hex: {e}"))?;
    let path = BlindedMessagePath::read(&mut &bytes[..])
        .map_err(|e| format!("path is not a BlindedMessagePath: {e:?}"))?;
    let payment_id = PaymentId(node.keys.get_secure_random_bytes());
    let peers = peers_for_blinded_path(node)?;
    let context =
        MessageContext::AsyncPayments(AsyncPaymentsContext::OutboundPayment { payment_id });
    let reply_paths = blinded_paths_to_us(node, context, &peers)?;

    let message_paths = [path];
    let mut sent = Vec::new();
    let pairs = reply_paths
        .iter()
        .flat_map(|reply_path| message_paths.iter().map(move |path| (path, reply_path)))
        .take(MESSAGE_REQUEST_LIMIT);
    for (path, reply_path) in pairs {
        let how = node
            .messenger
            .send_onion_message(
                AsyncPaymentsMessage::HeldHtlcAvailable(HeldHtlcAvailable {}),
                MessageSendInstructions::WithSpecifiedReplyPath {
                    destination: Destination::BlindedPath(path.clone()),
                    reply_path: reply_path.clone(),
                },
            )
            .map_err(|e| format!("send_onion_message: {e:?}"))?;
        sent.push(match how {
            SendSuccess::Buffered => json!("buffered"),
            SendSuccess::BufferedAwaitingConnection(peer) => {
                json!(format!("buffered_awaiting_connection {peer}"))
            },
        });
    }
    node.peers.process_events();
    let described: Vec<Value> =
        reply_paths.iter().map(|p| Value::Object(describe_path(node, p, &peers, true))).collect();
    Ok(object(json!({
        "payment_id": payment_id.0.to_lower_hex_string(),
        "reply_paths": described,
        "sent": sent,
    })))
}
