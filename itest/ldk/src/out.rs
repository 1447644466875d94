//! Stdout carries JSON lines only: events and command answers, one object per line. The
//! JSON shapes that events and answers share live here too.

use std::io::Write;

use lightning::bitcoin::hex::DisplayHex;
use lightning::blinded_path::message::AsyncPaymentsContext;
use lightning::ln::channel_state::ChannelDetails;
use lightning::types::features::ChannelTypeFeatures;
use serde_json::{json, Value};

pub fn emit(value: Value) {
    let mut out = std::io::stdout().lock();
    // A closed stdout means the driver is gone; there is no one left to tell.
    let _ = writeln!(out, "{value}");
    let _ = out.flush();
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

/// One channel, as the `channels` answer lists it.
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

/// The context an async-payments message arrived with, as the events' `context` object.
pub fn context_json(context: &AsyncPaymentsContext) -> Value {
    match context {
        AsyncPaymentsContext::InboundPayment { path_absolute_expiry } => {
            json!({"kind": "inbound_payment", "path_absolute_expiry": path_absolute_expiry.as_secs()})
        },
        AsyncPaymentsContext::OutboundPayment { payment_id } => {
            json!({"kind": "outbound_payment", "payment_id": payment_id.0.to_lower_hex_string()})
        },
        AsyncPaymentsContext::OfferPathsRequest { .. } => json!({"kind": "offer_paths_request"}),
        AsyncPaymentsContext::OfferPaths { .. } => json!({"kind": "offer_paths"}),
        AsyncPaymentsContext::ServeStaticInvoice { .. } => json!({"kind": "serve_static_invoice"}),
        AsyncPaymentsContext::StaticInvoicePersisted { .. } => {
            json!({"kind": "static_invoice_persisted"})
        },
        AsyncPaymentsContext::ReleaseHeldHtlc { .. } => json!({"kind": "release_held_htlc"}),
    }
}
