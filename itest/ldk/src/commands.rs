//! The commands on stdin: `{"id": N, "cmd": NAME, ...params}`, each answered with
//! `{"id": N, "ok": true, ...result}` or `{"id": N, "ok": false, "error": STR}`.
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
use lightning::ln::channel_state::ChannelDetails;
use lightning::ln::channelmanager::PaymentId;
use lightning::onion_message::async_payments::{AsyncPaymentsMessage, HeldHtlcAvailable};
use lightning::onion_message::messenger::{
    Destination, MessageRouter, MessageSendInstructions, NodeIdMessageRouter, OnionMessagePath,
    SendSuccess,
};
use lightning::sign::{EntropySource, NodeSigner, ReceiveAuthKey};
use lightning::types::features::ChannelTypeFeatures;
use lightning::util::ser::{Readable, Writeable};
use serde_json::{json, Map, Value};

use crate::node::Node;

/// How long `connect` and `disconnect` wait for the peer to come or go.
const PEER_TIMEOUT: Duration = Duration::from_secs(20);
const POLL: Duration = Duration::from_millis(20);

pub enum Outcome {
    Answer(Value),
    /// Answer, then exit 0.
    Stop(Value),
}

/// Runs one command line and returns its answer.
pub async fn run(node: &Arc<Node>, line: &str) -> Outcome {
    let request: Map<String, Value> = match serde_json::from_str(line) {
        Ok(Value::Object(map)) => map,
        Ok(_) => return Outcome::Answer(failure(Value::Null, "a command is a JSON object".into())),
        Err(e) => return Outcome::Answer(failure(Value::Null, format!("not JSON: {e}"))),
    };
    let id = request.get("id").cloned().unwrap_or(Value::Null);
    let cmd = request.get("cmd").and_then(Value::as_str).unwrap_or_default();
    let result = match cmd {
        "connect" => connect(node, &request).await,
        "disconnect" => disconnect(node, &request).await,
        "peers" => Ok(peers(node)),
        "channels" => Ok(channels(node)),
        "held_htlc_paths" => held_htlc_paths(node, &request),
        "send_held_htlc_available" => send_held_htlc_available(node, &request),
        "stop" => return Outcome::Stop(success(id, Map::new())),
        other => Err(format!("unknown command {other:?}")),
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

fn failure(id: Value, error: String) -> Value {
    json!({"id": id, "ok": false, "error": error})
}

fn object(value: Value) -> Map<String, Value> {
    match value {
        Value::Object(map) => map,
        _ => Map::new(),
    }
}

fn string_param<'a>(request: &'a Map<String, Value>, name: &str) -> Result<&'a str, String> {
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

/// A compact name for a channel type: its features joined by "+", by their BOLT names.
pub fn channel_type_name(features: &ChannelTypeFeatures) -> String {
    let named = [
        (features.supports_static_remote_key(), "static_remotekey"),
        (features.supports_anchors_zero_fee_htlc_tx(), "anchors_zero_fee_htlc_tx"),
        (features.supports_anchor_zero_fee_commitments(), "anchor_zero_fee_commitments"),
        (features.supports_scid_privacy(), "scid_alias"),
        (features.supports_zero_conf(), "zeroconf"),
    ];
    let names: Vec<&str> = named.iter().filter(|(has, _)| *has).map(|(_, name)| *name).collect();
    if names.is_empty() {
        "legacy".into()
    } else {
        names.join("+")
    }
}

pub fn channel_json(channel: &ChannelDetails) -> Value {
    json!({
        "channel_id": channel.channel_id.0.to_lower_hex_string(),
        "counterparty": channel.counterparty.node_id.to_string(),
        "is_usable": channel.is_usable,
        "is_channel_ready": channel.is_channel_ready,
        "short_channel_id": channel.short_channel_id,
        "inbound_scid_alias": channel.inbound_scid_alias,
        "outbound_scid_alias": channel.outbound_scid_alias,
        "inbound_payment_scid": channel.get_inbound_payment_scid(),
        "channel_type": channel.channel_type.as_ref().map(channel_type_name),
    })
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

    let capture = PeerCapture::default();
    // The offer itself fails (the capture builds no path); only the peers matter.
    let _ = node.channel_manager.create_offer_builder_using_router(&capture);
    let peers = capture
        .0
        .lock()
        .map_err(|_| "peer capture poisoned".to_string())?
        .take()
        .ok_or("LDK did not ask for blinded paths")?;

    let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or(Duration::ZERO);
    let context = MessageContext::AsyncPayments(AsyncPaymentsContext::InboundPayment {
        path_absolute_expiry: now + Duration::from_secs(expiry_secs),
    });
    let secp_ctx = Secp256k1::new();
    let receive_key = node.keys.get_receive_auth_key();
    let built = if by_node_id {
        NodeIdMessageRouter::new(node.graph.clone(), node.keys.clone()).create_blinded_paths(
            node.node_id,
            receive_key,
            context,
            peers.clone(),
            &secp_ctx,
        )
    } else {
        node.message_router.create_blinded_paths(
            node.node_id,
            receive_key,
            context,
            peers.clone(),
            &secp_ctx,
        )
    };
    let paths = built.map_err(|()| {
        format!(
            "no blinded path: {} peers for blinded paths (connected, with onion messages)",
            peers.len()
        )
    })?;

    let described: Vec<Value> = paths
        .iter()
        .map(|path| {
            let introduction_node = match path.introduction_node() {
                IntroductionNode::NodeId(id) => json!({"node_id": id.to_string()}),
                IntroductionNode::DirectedShortChannelId(direction, scid) => json!({
                    "scid": scid,
                    "direction": match direction { Direction::NodeOne => 0, Direction::NodeTwo => 1 },
                }),
            };
            // What the introduction node's (the LSP's) encrypted TLV names as the next hop:
            // the SCID the router was handed for that peer, else our node id.
            let lsp = match path.introduction_node() {
                IntroductionNode::NodeId(id) => peers.iter().find(|p| p.node_id == *id),
                IntroductionNode::DirectedShortChannelId(..) => None,
            };
            let lsp_next_hop = match lsp {
                Some(MessageForwardNode { short_channel_id: Some(scid), .. }) if !by_node_id => {
                    json!({"scid": scid})
                },
                Some(_) => json!({"node_id": node.node_id.to_string()}),
                None => Value::Null,
            };
            json!({
                "hex": path.encode().to_lower_hex_string(),
                "introduction_node": introduction_node,
                "hops": path.blinded_hops().len(),
                "lsp_next_hop": lsp_next_hop,
            })
        })
        .collect();
    let peers_json: Vec<Value> = peers
        .iter()
        .map(|p| json!({"node_id": p.node_id.to_string(), "short_channel_id": p.short_channel_id}))
        .collect();
    Ok(object(json!({"paths": described, "peers": peers_json, "by_node_id": by_node_id})))
}

/// Sends held_htlc_available over a blinded path with a reply path to us, the way a payer's
/// ChannelManager does for a static invoice (context OutboundPayment with a fresh payment id).
fn send_held_htlc_available(
    node: &Node, request: &Map<String, Value>,
) -> Result<Map<String, Value>, String> {
    let hex = string_param(request, "path")?;
    let bytes = Vec::<u8>::from_hex(hex).map_err(|e| format!("path is not hex: {e}"))?;
    let path = BlindedMessagePath::read(&mut &bytes[..])
        .map_err(|e| format!("path is not a BlindedMessagePath: {e:?}"))?;
    let payment_id = PaymentId(node.keys.get_secure_random_bytes());
    let sent = node.messenger.send_onion_message(
        AsyncPaymentsMessage::HeldHtlcAvailable(HeldHtlcAvailable {}),
        MessageSendInstructions::WithReplyPath {
            destination: Destination::BlindedPath(path),
            context: MessageContext::AsyncPayments(AsyncPaymentsContext::OutboundPayment {
                payment_id,
            }),
        },
    );
    let sent = sent.map_err(|e| format!("send_onion_message: {e:?}"))?;
    node.peers.process_events();
    let how = match sent {
        SendSuccess::Buffered => json!("buffered"),
        SendSuccess::BufferedAwaitingConnection(peer) => {
            json!(format!("buffered_awaiting_connection {peer}"))
        },
    };
    Ok(object(json!({"payment_id": payment_id.0.to_lower_hex_string(), "send": how})))
}
