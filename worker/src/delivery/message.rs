//! Rendering a claimed delivery from its kind's templates and handing it to its channel. The
//! only code between the planner and the providers; it writes nothing.

use dashlight_core::kinds::Channel;
use lettre::message::Mailbox;
use serde_json::{Value, json};

use super::{Device, NotificationRow, Pipeline, Recipient, record::Claimed};
use crate::{
    channels::{
        SendError, Sent,
        email::{Email, EmailAttachment},
        push::PushMessage,
    },
    render::Part,
};

impl Pipeline {
    /// Renders and sends one claimed delivery; never panics on a provider's answer (a panic
    /// in a channel is caught by the caller and counted as a transient failure).
    pub(crate) async fn render_and_send(
        &self,
        n: &NotificationRow,
        r: &Recipient,
        devices: &[Device],
        d: &Claimed,
    ) -> Result<Sent, SendError> {
        let kind = n.kind;
        let ctx = self.context(n, r);
        let render = |part| {
            self.renderer
                .render(kind, part, &ctx)
                .map_err(|e| SendError::permanent(format!("template: {e}")))
        };
        match d.channel {
            Channel::Email => {
                let name = format!("{} {}", r.first_name, r.last_name).trim().to_owned();
                let to = match d.target.parse::<lettre::Address>() {
                    Ok(addr) => Mailbox::new(if n.user_id.is_some() { Some(name) } else { None }, addr).to_string(),
                    Err(e) => {
                        return Err(SendError::permanent(format!(
                            "recipient {:?} is not a valid address: {e}",
                            d.target
                        )));
                    }
                };
                let mut email = Email {
                    to,
                    subject: render(Part::Subject)?.trim().to_owned(),
                    text: render(Part::EmailText)?,
                    html: render(Part::EmailHtml)?,
                    attachments: vec![],
                    calendar: None,
                    // List-Unsubscribe on the kinds a person may turn off (docs/hearing-back.md).
                    unsubscribe: n.user_id.filter(|_| kind.email_opt_out_allowed()).map(|u| (u, kind)),
                };
                if let Some(path) = n.data.pointer("/invoice/pdf_path").and_then(Value::as_str) {
                    let bytes = tokio::fs::read(path)
                        .await
                        .map_err(|e| SendError::transient(format!("cannot read invoice PDF {path}: {e}")))?;
                    let number = n.data.pointer("/invoice/number").and_then(Value::as_str).unwrap_or("invoice");
                    email.attachments.push(EmailAttachment {
                        filename: format!("{number}.pdf"),
                        content_type: "application/pdf".into(),
                        bytes,
                    });
                }
                if let (Some(method), Some(ics)) = (
                    n.data.pointer("/calendar/method").and_then(Value::as_str),
                    n.data.pointer("/calendar/ics").and_then(Value::as_str),
                ) {
                    email.calendar = Some((method.to_owned(), ics.to_owned()));
                }
                self.email.send(d.id, &email).await
            }
            Channel::Sms => self.sms.send(d.id, &d.target, render(Part::Sms)?.trim()).await,
            Channel::Push => {
                let Some(dev) = devices.iter().find(|x| Some(x.id) == d.device_id) else {
                    return Err(SendError::permanent("push device no longer active"));
                };
                let mut payload = json!({
                    "title": render(Part::PushTitle)?.trim(),
                    "body": render(Part::PushBody)?.trim(),
                    // A message with a link of its own (a slot offer) opens it; others the
                    // person's page at the booking or the notification.
                    "url": n
                        .data
                        .pointer("/offer/url")
                        .and_then(Value::as_str)
                        .map(str::to_owned)
                        .or_else(|| {
                            let page = n.data.get("page_path").and_then(Value::as_str)?;
                            Some(match n.booking_id {
                                Some(b) => format!("{page}#booking-{b}"),
                                None => format!("{page}#notification-{}", n.id),
                            })
                        })
                        .unwrap_or_else(|| "/".into()),
                    "tag": format!("{}:{}", n.kind.as_str(), n.booking_id.unwrap_or(n.id)),
                });
                // A lesson reminder asks for a confirmation: the service worker shows a Confirm
                // action that POSTs to the lesson's confirmation address (signed for it).
                if let Some(path) = n.data.get("confirm_path").and_then(Value::as_str) {
                    payload["actions"] = json!([{ "action": "confirm", "title": "Confirm" }]);
                    payload["confirm_url"] = json!(format!("{path}/push"));
                }
                let now = self.clock.now();
                let ttl = match n.expires_at {
                    Some(e) => (e - now).num_seconds().clamp(60, 86_400) as u32,
                    None => 86_400,
                };
                let msg = PushMessage {
                    endpoint: &dev.push_endpoint,
                    p256dh: &dev.p256dh,
                    auth: &dev.auth,
                    payload: serde_json::to_vec(&payload).expect("json"),
                    ttl,
                    urgency: kind.urgency(),
                };
                self.push.send(d.id, &msg).await
            }
        }
    }

    fn context(&self, n: &NotificationRow, r: &Recipient) -> Value {
        let mut ctx = match &n.data {
            Value::Object(m) => Value::Object(m.clone()),
            _ => json!({}),
        };
        ctx["recipient"] = json!({"first_name": r.first_name, "last_name": r.last_name, "timezone": r.timezone});
        ctx["school"] = json!({"name": self.settings.school_name});
        ctx
    }
}
