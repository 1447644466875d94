//! The LSPS5 commands: a wallet registering, listing and removing its webhooks with its
//! LSP through lightning-liquidity's client, and checking a notification the way a wallet's
//! notification proxy does, with lightning-liquidity's `LSPS5Validator`.
//!
//! `lsps5_set_webhook {lsp, app_name, url}` -> `{num_webhooks, max_webhooks, no_change}`;
//! `lsps5_list_webhooks {lsp}` -> `{app_names, max_webhooks}`;
//! `lsps5_remove_webhook {lsp, app_name}` -> `{}`;
//! `lsps5_validate {lsp, timestamp, signature, body, fresh?}` -> `{method,
//! rendered_timestamp}`: the notification's method, and the timestamp as the validator
//! renders it for the signed text. It does not check the header's text: it parses the
//! timestamp and signs-checks chrono's `to_rfc3339()` of it. The node's one validator
//! rejects a signature it accepted recently (a replay); `fresh: true` checks with a new
//! validator, which remembers nothing.
//! A refusal carries the LSPS error's `code`. An answer the LSP does not send within
//! [`ANSWER_TIMEOUT`] is an error.

use std::str::FromStr;
use std::time::{Duration, Instant};

use lightning::bitcoin::secp256k1::PublicKey;
use lightning_liquidity::lsps0::ser::{LSPSDateTime, LSPSRequestId};
use lightning_liquidity::lsps5::event::LSPS5ClientEvent;
use lightning_liquidity::lsps5::msgs::{LSPS5Error, WebhookNotification};
use lightning_liquidity::lsps5::validator::LSPS5Validator;
use serde_json::{json, Map, Value};

use crate::commands::{object, string_param, Failure, POLL};
use crate::node::Node;

const ANSWER_TIMEOUT: Duration = Duration::from_secs(30);

type Fields = Result<Map<String, Value>, Failure>;

fn lsp(request: &Map<String, Value>) -> Result<PublicKey, Failure> {
    let text = string_param(request, "lsp")?;
    PublicKey::from_str(text).map_err(|e| Failure::from(format!("lsp {text:?}: {e}")))
}

fn refused(error: LSPS5Error) -> Failure {
    let (code, message) = match &error {
        LSPS5Error::Protocol(e) => (e.code(), e.message()),
        LSPS5Error::Client(e) => (e.code(), e.message()),
    };
    Failure { error: message.to_owned(), code: Some(code) }
}

/// The LSP's answer to `request_id`, as the background loop handed it over.
async fn answer(node: &Node, request_id: &LSPSRequestId) -> Result<LSPS5ClientEvent, Failure> {
    let deadline = Instant::now() + ANSWER_TIMEOUT;
    loop {
        if let Some(event) = node.lsps5_answers.take(request_id) {
            return Ok(event);
        }
        if Instant::now() >= deadline {
            return Err(format!("no LSPS5 answer within {ANSWER_TIMEOUT:?}").into());
        }
        tokio::time::sleep(POLL).await;
    }
}

fn no_client() -> Failure {
    "no LSPS5 client".to_owned().into()
}

pub async fn set_webhook(node: &Node, request: &Map<String, Value>) -> Fields {
    let lsp = lsp(request)?;
    let app_name = string_param(request, "app_name")?.to_owned();
    let url = string_param(request, "url")?.to_owned();
    let request_id = node
        .liquidity
        .lsps5_client_handler()
        .ok_or_else(no_client)?
        .set_webhook(lsp, app_name, url)
        .map_err(refused)?;
    match answer(node, &request_id).await? {
        LSPS5ClientEvent::WebhookRegistered { num_webhooks, max_webhooks, no_change, .. } => {
            Ok(object(json!({
                "num_webhooks": num_webhooks,
                "max_webhooks": max_webhooks,
                "no_change": no_change,
            })))
        },
        LSPS5ClientEvent::WebhookRegistrationFailed { error, .. } => Err(refused(error)),
        other => Err(format!("unexpected answer {other:?}").into()),
    }
}

pub async fn list_webhooks(node: &Node, request: &Map<String, Value>) -> Fields {
    let request_id =
        node.liquidity.lsps5_client_handler().ok_or_else(no_client)?.list_webhooks(lsp(request)?);
    match answer(node, &request_id).await? {
        LSPS5ClientEvent::WebhooksListed { app_names, max_webhooks, .. } => {
            let names: Vec<String> = app_names.into_iter().map(String::from).collect();
            Ok(object(json!({"app_names": names, "max_webhooks": max_webhooks})))
        },
        other => Err(format!("unexpected answer {other:?}").into()),
    }
}

pub async fn remove_webhook(node: &Node, request: &Map<String, Value>) -> Fields {
    let lsp = lsp(request)?;
    let app_name = string_param(request, "app_name")?.to_owned();
    let request_id = node
        .liquidity
        .lsps5_client_handler()
        .ok_or_else(no_client)?
        .remove_webhook(lsp, app_name)
        .map_err(refused)?;
    match answer(node, &request_id).await? {
        LSPS5ClientEvent::WebhookRemoved { .. } => Ok(Map::new()),
        LSPS5ClientEvent::WebhookRemovalFailed { error, .. } => Err(refused(error)),
        other => Err(format!("unexpected answer {other:?}").into()),
    }
}

pub fn validate(node: &Node, request: &Map<String, Value>) -> Fields {
    let lsp = lsp(request)?;
    let text = string_param(request, "timestamp")?;
    let timestamp = LSPSDateTime::from_str(text)
        .map_err(|()| Failure::from(format!("timestamp {text:?} does not parse")))?;
    let signature = string_param(request, "signature")?;
    let body = string_param(request, "body")?;
    let notification: WebhookNotification = serde_json::from_str(body)
        .map_err(|e| Failure::from(format!("body is no notification: {e}")))?;
    let fresh = request.get("fresh").and_then(Value::as_bool).unwrap_or(false);
    let new_validator;
    let validator = if fresh {
        new_validator = LSPS5Validator::new();
        &new_validator
    } else {
        &node.lsps5_validator
    };
    let valid = validator
        .validate(lsp, &timestamp, signature, &notification)
        .map_err(|e| refused(e.into()))?;
    let method = serde_json::to_value(&valid)
        .ok()
        .and_then(|v| v.get("method").cloned())
        .unwrap_or(Value::Null);
    Ok(object(json!({"method": method, "rendered_timestamp": timestamp.to_rfc3339()})))
}
