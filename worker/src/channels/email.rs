//! Email over SMTP with lettre's pooled async transport (`SMTP_URL`), or to the outbox as `.eml`.
//! Messages are multipart/alternative (text + HTML), with `Message-ID`, `Date` and `From`
//! (`MAIL_FROM`), optional attachments and an optional iCalendar part.
//!
//! What comes back ([`ReturnPaths`]): each email's envelope sender (SMTP `MAIL FROM`, and its
//! `Return-Path` header) is the VERP address `bounces+<token>@MAIL_BOUNCE_DOMAIN`, the token
//! naming the delivery, signed ([`dashlight_core::signing`]), so a bounce tells which delivery
//! failed. An email a person may opt out of carries `List-Unsubscribe` (the
//! `PUBLIC_BASE_URL/u/<token>` link and an `unsubscribe+<token>@` `mailto:`) and
//! `List-Unsubscribe-Post: List-Unsubscribe=One-Click` (RFC 8058).

use dashlight_core::{kinds::Kind, signing};
use lettre::{
    Address, AsyncSmtpTransport, AsyncTransport, Message, Tokio1Executor,
    address::Envelope,
    message::{
        Attachment, Mailbox, MultiPart, SinglePart,
        header::{ContentType, HeaderName, HeaderValue},
    },
};

use super::{SendError, Sent, error_chain, outbox::Outbox};

/// A file attached to an email.
#[derive(Debug, Clone)]
pub struct EmailAttachment {
    /// File name shown to the recipient.
    pub filename: String,
    /// MIME type, e.g. `application/pdf`.
    pub content_type: String,
    /// Content.
    pub bytes: Vec<u8>,
}

/// One email.
#[derive(Debug, Clone)]
pub struct Email {
    /// Recipient mailbox (`Name <addr>` or `addr`).
    pub to: String,
    /// Subject line.
    pub subject: String,
    /// Plain text body.
    pub text: String,
    /// HTML body.
    pub html: String,
    /// Attachments.
    pub attachments: Vec<EmailAttachment>,
    /// An iCalendar object and its METHOD (`REQUEST`, `CANCEL`), sent as a `text/calendar`
    /// alternative and as an `invite.ics` attachment.
    pub calendar: Option<(String, String)>,
    /// The user and kind a `List-Unsubscribe` turns off; `None` for emails a person cannot opt
    /// out of (and for the school's own).
    pub unsubscribe: Option<(i64, Kind)>,
}

/// What every email says about where replies about it go: the signing key, the domain of the
/// VERP envelope sender and of the unsubscribe `mailto:`, and the base of the unsubscribe link.
#[derive(Debug, Clone)]
pub struct ReturnPaths {
    /// The installation's signing key.
    pub key: signing::Key,
    /// `MAIL_BOUNCE_DOMAIN`.
    pub bounce_domain: String,
    /// `PUBLIC_BASE_URL`, without a trailing slash.
    pub public_base_url: String,
}

impl ReturnPaths {
    /// The VERP envelope sender of a delivery's email.
    pub fn verp(&self, delivery_id: i64) -> String {
        signing::verp_address(&self.key, delivery_id, &self.bounce_domain)
    }

    /// The `List-Unsubscribe` value for a user's emails of one kind.
    pub fn list_unsubscribe(&self, user_id: i64, kind: Kind) -> String {
        format!(
            "<{}/u/{}>, <mailto:{}>",
            self.public_base_url,
            self.key.unsubscribe_token(user_id, kind),
            signing::unsubscribe_address(&self.key, user_id, kind, &self.bounce_domain)
        )
    }
}

/// Where email goes.
#[derive(Clone)]
pub enum EmailSender {
    /// An SMTP server.
    Smtp {
        /// Pooled transport.
        transport: AsyncSmtpTransport<Tokio1Executor>,
        /// The `From` mailbox.
        from: Mailbox,
        /// VERP and unsubscribe addresses.
        returns: ReturnPaths,
    },
    /// No SMTP configured.
    Outbox {
        /// The folder.
        outbox: Outbox,
        /// The `From` mailbox.
        from: Mailbox,
        /// VERP and unsubscribe addresses (shown in the `.eml`).
        returns: ReturnPaths,
    },
}

impl std::fmt::Debug for EmailSender {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            EmailSender::Smtp { from, .. } => write!(f, "EmailSender::Smtp(from {from})"),
            EmailSender::Outbox { outbox, .. } => write!(f, "EmailSender::Outbox({})", outbox.dir().display()),
        }
    }
}

/// Parses `MAIL_FROM`.
pub fn parse_from(mail_from: &str) -> Result<Mailbox, String> {
    mail_from
        .parse()
        .map_err(|e| format!("MAIL_FROM: {mail_from:?} is not a mailbox such as `Name <addr@host>`: {e}"))
}

/// Builds the SMTP transport from `SMTP_URL` (lettre's URL form); a bad URL fails at start-up.
/// `max_connections` bounds the pool (lettre's default of 10 would serialise a worker whose
/// concurrency is higher).
pub fn smtp_transport(url: &str, max_connections: u32) -> Result<AsyncSmtpTransport<Tokio1Executor>, String> {
    let builder = AsyncSmtpTransport::<Tokio1Executor>::from_url(url).map_err(|e| format!("SMTP_URL: {}", error_chain(&e)))?;
    Ok(builder
        .timeout(Some(std::time::Duration::from_secs(30)))
        .pool_config(lettre::transport::smtp::PoolConfig::new().max_size(max_connections))
        .build())
}

impl EmailSender {
    fn from(&self) -> &Mailbox {
        match self {
            EmailSender::Smtp { from, .. } | EmailSender::Outbox { from, .. } => from,
        }
    }

    /// The VERP and unsubscribe addresses.
    pub fn returns(&self) -> &ReturnPaths {
        match self {
            EmailSender::Smtp { returns, .. } | EmailSender::Outbox { returns, .. } => returns,
        }
    }

    /// Builds the RFC 5322 message of a delivery, with its envelope (VERP sender).
    pub fn build(&self, delivery_id: i64, email: &Email) -> Result<Message, SendError> {
        let to: Mailbox = email
            .to
            .parse()
            .map_err(|e| SendError::permanent(format!("recipient {:?} is not a valid address: {e}", email.to)))?;
        let mut alternative = MultiPart::alternative()
            .singlepart(SinglePart::plain(email.text.clone()))
            .singlepart(SinglePart::html(email.html.clone()));
        if let Some((method, ics)) = &email.calendar {
            let ct = ContentType::parse(&format!("text/calendar; charset=UTF-8; method={method}")).expect("valid content type");
            alternative = alternative.singlepart(SinglePart::builder().header(ct).body(ics.clone()));
        }
        let mut body = if email.attachments.is_empty() && email.calendar.is_none() {
            None
        } else {
            Some(MultiPart::mixed().multipart(alternative.clone()))
        };
        if let Some(mixed) = body.as_mut() {
            for a in &email.attachments {
                let ct = ContentType::parse(&a.content_type)
                    .map_err(|e| SendError::permanent(format!("attachment type {:?}: {e}", a.content_type)))?;
                *mixed = std::mem::replace(mixed, MultiPart::mixed().build())
                    .singlepart(Attachment::new(a.filename.clone()).body(a.bytes.clone(), ct));
            }
            if let Some((_, ics)) = &email.calendar {
                let ct = ContentType::parse("application/ics").expect("valid content type");
                *mixed = std::mem::replace(mixed, MultiPart::mixed().build())
                    .singlepart(Attachment::new("invite.ics".into()).body(ics.clone(), ct));
            }
        }
        let verp = self.returns().verp(delivery_id);
        let verp_addr: Address = verp
            .parse()
            .map_err(|e| SendError::permanent(format!("VERP address {verp:?} is not valid (check MAIL_BOUNCE_DOMAIN): {e}")))?;
        let envelope = Envelope::new(Some(verp_addr), vec![to.email.clone()])
            .map_err(|e| SendError::permanent(format!("cannot build the envelope: {e}")))?;
        let mut builder = Message::builder()
            .from(self.from().clone())
            .to(to)
            .subject(email.subject.clone())
            .message_id(None)
            .date_now()
            .envelope(envelope)
            .raw_header(HeaderValue::new(HeaderName::new_from_ascii_str("Return-Path"), format!("<{verp}>")));
        if let Some((user_id, kind)) = email.unsubscribe {
            builder = builder
                .raw_header(HeaderValue::new(
                    HeaderName::new_from_ascii_str("List-Unsubscribe"),
                    self.returns().list_unsubscribe(user_id, kind),
                ))
                .raw_header(HeaderValue::new(
                    HeaderName::new_from_ascii_str("List-Unsubscribe-Post"),
                    "List-Unsubscribe=One-Click".to_owned(),
                ));
        }
        let msg = match body {
            Some(mixed) => builder.multipart(mixed),
            None => builder.multipart(alternative),
        };
        msg.map_err(|e| SendError::permanent(format!("cannot build the email: {e}")))
    }

    /// Sends one email.
    pub async fn send(&self, delivery_id: i64, email: &Email) -> Result<Sent, SendError> {
        let msg = self.build(delivery_id, email)?;
        let message_id = msg.headers().get_raw("Message-ID").map(|s| s.trim().to_owned());
        match self {
            EmailSender::Outbox { outbox, .. } => {
                let sent = outbox.write("email", delivery_id, "eml", &msg.formatted()).await?;
                Ok(Sent {
                    provider_message_id: message_id.or(sent.provider_message_id),
                })
            }
            EmailSender::Smtp { transport, .. } => match transport.send(msg).await {
                Ok(_) => Ok(Sent {
                    provider_message_id: message_id,
                }),
                Err(e) => Err(classify_smtp(&e)),
            },
        }
    }
}

/// SMTP 5xx is permanent; 4xx, connection problems, timeouts and a pooled connection the server
/// closed while idle ("incomplete response", lettre #743) are transient.
fn classify_smtp(e: &lettre::transport::smtp::Error) -> SendError {
    let detail = error_chain(e);
    if e.is_permanent() {
        let code = e.status().map(|c| c.to_string()).unwrap_or_default();
        SendError::permanent(format!("SMTP server refused the message ({code}): {detail}"))
    } else if e.is_transient() {
        let code = e.status().map(|c| c.to_string()).unwrap_or_default();
        SendError::transient(format!("SMTP server deferred the message ({code}): {detail}"))
    } else {
        SendError::transient(format!("SMTP: {detail}"))
    }
}
