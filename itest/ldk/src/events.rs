//! LDK's events, handled the way a phone wallet behind an LSP handles them, and reported on
//! stdout when the itest cares about them.

use lightning::bitcoin::hex::DisplayHex;
use lightning::events::{Event, ReplayEvent};
use lightning::sign::EntropySource;
use serde_json::json;

use crate::node::Node;
use crate::out::{channel_json, channel_type_name, emit};

pub fn handle(node: &Node, event: Event) -> Result<(), ReplayEvent> {
    match event {
        Event::OpenChannelRequest {
            temporary_channel_id,
            counterparty_node_id,
            channel_type,
            ..
        } => {
            // The LSP is trusted: that is what accepting its zero-conf channel means.
            let random = node.keys.get_secure_random_bytes();
            let mut user_channel_id = [0u8; 16];
            user_channel_id.copy_from_slice(&random[..16]);
            let accepted = node.channel_manager.accept_inbound_channel_from_trusted_peer_0conf(
                &temporary_channel_id,
                &counterparty_node_id,
                u128::from_be_bytes(user_channel_id),
                None,
            );
            let mut report = json!({
                "event": "open_channel_request",
                "counterparty": counterparty_node_id.to_string(),
                "channel_type": channel_type_name(&channel_type),
                "accepted": accepted.is_ok(),
            });
            if let Err(e) = accepted {
                report["error"] = json!(format!("{e:?}"));
            }
            emit(report);
        },
        Event::ChannelReady { channel_id, counterparty_node_id, .. } => {
            let details = node
                .channel_manager
                .list_channels_with_counterparty(&counterparty_node_id)
                .into_iter()
                .find(|c| c.channel_id == channel_id);
            let mut report = json!({
                "event": "channel_ready",
                "channel_id": channel_id.0.to_lower_hex_string(),
                "counterparty": counterparty_node_id.to_string(),
                "short_channel_id": null,
                "inbound_scid_alias": null,
                "outbound_scid_alias": null,
            });
            if let Some(details) = details {
                let listed = channel_json(&details);
                for key in ["short_channel_id", "inbound_scid_alias", "outbound_scid_alias"] {
                    report[key] = listed[key].clone();
                }
            }
            emit(report);
        },
        Event::ChannelClosed { channel_id, counterparty_node_id, reason, .. } => {
            emit(json!({
                "event": "channel_closed",
                "channel_id": channel_id.0.to_lower_hex_string(),
                "counterparty": counterparty_node_id.map(|id| id.to_string()),
                "reason": reason.to_string(),
            }));
        },
        other => eprintln!("lndmailbox-ldk: unhandled event {other:?}"),
    }
    Ok(())
}
