//! `publish`: one event, confirmed by the broker.

use std::process::ExitCode;

use lapin::BasicProperties;
use lapin::types::ShortString;

use crate::broker::connection::{connect, open_confirm_channel};
use crate::broker::publisher::Publisher;
use crate::config::BrokerConfig;

/// The JSON body the demo and `publish` send: what a typical auth service emits.
pub fn event_body(event_id: &str, anonymous: &str, user: &str) -> Vec<u8> {
    let occurred_at = time::OffsetDateTime::now_utc()
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default();
    serde_json::json!({
        "eventId": event_id,
        "occurredAt": occurred_at,
        "anonymousId": anonymous,
        "userId": user,
    })
    .to_string()
    .into_bytes()
}

pub fn event_properties(message_id: &str) -> BasicProperties {
    BasicProperties::default()
        .with_delivery_mode(2)
        .with_content_type(ShortString::from("application/json"))
        .with_message_id(ShortString::from(message_id))
}

pub async fn run(
    config: &BrokerConfig,
    event: &str,
    anonymous: &str,
    user: &str,
    message_id: Option<String>,
) -> ExitCode {
    let message_id = message_id.unwrap_or_else(|| uuid::Uuid::new_v4().to_string());
    let connection = match connect(config, "identity-link-worker publish").await {
        Ok(connection) => connection,
        Err(error) => {
            eprintln!("publish: {error}");
            return ExitCode::FAILURE;
        }
    };
    let result = async {
        let publisher = Publisher::new(
            open_confirm_channel(&connection)
                .await
                .map_err(|e| e.to_string())?,
        );
        publisher
            .publish(
                &config.exchange,
                event,
                &event_body(&message_id, anonymous, user),
                event_properties(&message_id),
            )
            .await
            .map_err(|e| e.to_string())?;
        Ok::<(), String>(())
    }
    .await;
    let _ = connection.close(200, "published".into()).await;
    match result {
        Ok(()) => {
            println!(
                "published {event} message_id={message_id} to exchange {:?} (confirmed)",
                config.exchange
            );
            ExitCode::SUCCESS
        }
        Err(error) => {
            eprintln!("publish: {error}");
            ExitCode::FAILURE
        }
    }
}
