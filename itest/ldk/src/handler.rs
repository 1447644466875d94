//! The OnionMessenger's async-payments handler: the ChannelManager's own, with a report of
//! each held_htlc_available and release_held_htlc on stdout.
//!
//! Answers are LDK's: `handle_held_htlc_available` returns whatever the ChannelManager returns
//! (a release_held_htlc over the reply path when the context checks out), so the itest sees
//! exactly what a real LDK wallet would send.

use std::sync::Arc;

use lightning::blinded_path::message::AsyncPaymentsContext;
use lightning::onion_message::async_payments::{
    AsyncPaymentsMessage, AsyncPaymentsMessageHandler, HeldHtlcAvailable, OfferPaths,
    OfferPathsRequest, ReleaseHeldHtlc, ServeStaticInvoice, StaticInvoicePersisted,
};
use lightning::onion_message::messenger::{
    MessageSendInstructions, Responder, ResponseInstruction,
};
use serde_json::json;

use crate::node::ChanMan;
use crate::out::{context_json, emit};

pub struct ReportingAsyncPayments {
    channel_manager: Arc<ChanMan>,
}

impl ReportingAsyncPayments {
    pub fn new(channel_manager: Arc<ChanMan>) -> Self {
        ReportingAsyncPayments { channel_manager }
    }
}

impl AsyncPaymentsMessageHandler for ReportingAsyncPayments {
    fn handle_offer_paths_request(
        &self, message: OfferPathsRequest, context: AsyncPaymentsContext,
        responder: Option<Responder>,
    ) -> Option<(OfferPaths, ResponseInstruction)> {
        self.channel_manager.handle_offer_paths_request(message, context, responder)
    }

    fn handle_offer_paths(
        &self, message: OfferPaths, context: AsyncPaymentsContext, responder: Option<Responder>,
    ) -> Option<(ServeStaticInvoice, ResponseInstruction)> {
        self.channel_manager.handle_offer_paths(message, context, responder)
    }

    fn handle_serve_static_invoice(
        &self, message: ServeStaticInvoice, context: AsyncPaymentsContext,
        responder: Option<Responder>,
    ) {
        self.channel_manager.handle_serve_static_invoice(message, context, responder)
    }

    fn handle_static_invoice_persisted(
        &self, message: StaticInvoicePersisted, context: AsyncPaymentsContext,
    ) {
        self.channel_manager.handle_static_invoice_persisted(message, context)
    }

    fn handle_held_htlc_available(
        &self, message: HeldHtlcAvailable, context: AsyncPaymentsContext,
        responder: Option<Responder>,
    ) -> Option<(ReleaseHeldHtlc, ResponseInstruction)> {
        let reported = context_json(&context);
        let has_reply_path = responder.is_some();
        let answer = self.channel_manager.handle_held_htlc_available(message, context, responder);
        emit(json!({
            "event": "held_htlc_available",
            "context": reported,
            "has_reply_path": has_reply_path,
            "answered": answer.is_some(),
        }));
        answer
    }

    fn handle_release_held_htlc(&self, message: ReleaseHeldHtlc, context: AsyncPaymentsContext) {
        emit(json!({"event": "release_held_htlc", "context": context_json(&context)}));
        self.channel_manager.handle_release_held_htlc(message, context)
    }

    fn release_pending_messages(&self) -> Vec<(AsyncPaymentsMessage, MessageSendInstructions)> {
        self.channel_manager.release_pending_messages()
    }
}
